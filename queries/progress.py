"""How far a read model has got, and waiting for it: waiters are woken when it moves, never by
polling a store each.

`Progress` is moved by whoever learns a position (the projector's notices for Redis). `Watched`
learns it itself, for a store that sends no notices (the PostgreSQL read models): while anyone
waits, one task per process reads the position every `every` seconds, however many wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable

from queries.shapes import is_unavailable

log = logging.getLogger("voteledger.queries")

Read = Callable[[], Awaitable[tuple[int, int]]]  # (position, ledger head)


class Progress:
    """The position a read model reflects, and the highest ledger head it has reported."""

    def __init__(self) -> None:
        self.position = 0
        self.head = 0
        # Waiters by the position they wait for: a move wakes only those it satisfies. Woken all
        # at once, a thousand waiters re-armed a thousand timeouts at each of the projector's
        # dozens of batches a second.
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._count = itertools.count()
        self._gone = 0  # waiters in the heap that left without being woken

    def moved(self, position: int, head: int = 0) -> None:
        self.head = max(self.head, head)
        if position > self.position:
            self.position = position
            heap = self._heap
            while heap and heap[0][0] <= position:
                future = heapq.heappop(heap)[2]
                if not future.done():
                    future.set_result(None)

    def restart(self) -> None:
        """Another generation: its position is learnt afresh."""
        self.position = 0

    async def wait_for(self, position: int, seconds: float) -> None:
        """Until `position` is reached, or `seconds` have passed.

        Waiters read the store again only then, not at every move: with many requests waiting, a
        read each per notice saturated the process (1,000 reads/s waiting at 1,000 votes/s)."""
        if self.position >= position or seconds <= 0:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (position, next(self._count), future))
        try:
            async with asyncio.timeout(seconds):
                await future
        except TimeoutError:
            pass
        finally:
            if future.cancelled() or not future.done():  # left unwoken (timed out, cancelled):
                future.cancel()  # its entry is dropped when a move reaches it, or below
                self._gone += 1
                if self._gone > 64 and 2 * self._gone > len(self._heap):
                    self._drop_gone()

    def _drop_gone(self) -> None:
        """Forget the waiters that left before their position was reached, once they are most
        of the heap (positions far ahead, never reached, must not pile up)."""
        self._heap = [w for w in self._heap if not w[2].done()]
        heapq.heapify(self._heap)
        self._gone = 0


class Watched(Progress):
    """A Progress that reads its own position (with `read`) while anyone waits for it."""

    def __init__(self, read: Read, every: float) -> None:
        super().__init__()
        self._read = read
        self.every = every
        self.reads = 0  # how many times the position was read: what waiting costs the store
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None

    async def wait_for(self, position: int, seconds: float) -> None:
        self._waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            await super().wait_for(position, seconds)
        finally:
            self._waiters -= 1

    async def _poll(self) -> None:
        while self._waiters:
            try:
                self.reads += 1
                self.moved(*await self._read())
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("reading the read model's position failed")
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
