"""Concurrent vote requests share rate-limit checks and transactions.

Each request waits in a queue; a few workers take whatever has queued up (at most `max_batch`),
check the whole batch against the rate limit in one Redis call, and record the votes it admits
with `record.record_votes` in one transaction. Under load, batches grow by themselves while the
previous one commits; alone, a vote is a batch of one, with no added delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from commands.known import Known
from commands.plan import Outcome, VoteRequest
from commands.ratelimit import Decision, RateLimiter
from commands.record import record_votes
from infra.metrics import VOTE_BATCH, VOTE_BATCH_SECONDS


@dataclass(frozen=True, slots=True)
class Answer:
    decision: Decision  # the rate limit's, for the response headers
    outcome: Outcome | None  # None when the rate limit refused the request: nothing was recorded


class VoteBatcher:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        known: Known,
        limiter: RateLimiter,
        *,
        max_batch: int = 256,
        workers: int = 2,
    ) -> None:
        self.pool = pool
        self.known = known
        self.limiter = limiter
        self.max_batch = max_batch
        self.workers = workers
        self._queue: asyncio.Queue[tuple[VoteRequest, asyncio.Future[Answer]]] = asyncio.Queue()
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

    async def submit(self, request: VoteRequest) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            VOTE_BATCH.observe(len(batch))
            started = time.perf_counter()
            try:
                await self._answer(batch)
            except Exception as exc:  # the whole transaction failed: every request learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            finally:
                VOTE_BATCH_SECONDS.observe(time.perf_counter() - started)

    async def _answer(self, batch: list[tuple[VoteRequest, asyncio.Future[Answer]]]) -> None:
        agents = [str(request.command.agent_id) for request, _ in batch]
        decisions = await self.limiter.check_many(agents)
        admitted = []
        for (request, future), decision in zip(batch, decisions, strict=True):
            if decision.allowed:
                admitted.append((request, future, decision))
            elif not future.done():  # refused now: it waits for no transaction
                future.set_result(Answer(decision, None))
        if not admitted:
            return
        outcomes = await record_votes(self.pool, [r for r, _, _ in admitted], self.known)
        for (_, future, decision), outcome in zip(admitted, outcomes, strict=True):
            if not future.done():  # a client that went away still had its vote recorded
                future.set_result(Answer(decision, outcome))
