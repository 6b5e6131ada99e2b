"""Concurrent vote requests share transactions.

Each request waits in a queue; a few workers take whatever has queued up (at most `max_batch`)
and record it with `handlers.record_votes` in one transaction. Under load, batches grow by
themselves while the previous one commits; alone, a vote is a batch of one, with no added delay.
"""

from __future__ import annotations

import asyncio
import contextlib

from psycopg_pool import AsyncConnectionPool

from commands.handlers import Known, Outcome, VoteRequest, record_votes


class VoteBatcher:
    def __init__(
        self, pool: AsyncConnectionPool, known: Known, *, max_batch: int = 256, workers: int = 2
    ) -> None:
        self.pool = pool
        self.known = known
        self.max_batch = max_batch
        self.workers = workers
        self._queue: asyncio.Queue[tuple[VoteRequest, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the command API is shutting down"))

    async def submit(self, request: VoteRequest) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await record_votes(self.pool, [r for r, _ in batch], self.known)
            except Exception as exc:  # the whole transaction failed: every request learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():  # a client that went away still had its vote recorded
                    future.set_result(outcome)
