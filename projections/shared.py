"""One ledger read and one fold for both projections of a worker while they catch up.

Two projections catching up in one worker would each read, decode and fold the same events: most
of a catch-up's CPU. The first to read a catch-up batch (a full one: more follow at once) keeps it
here, with the folds made of it; the other, arriving at the same checkpoint, takes it instead of
reading. The one ahead waits for the other (at most `patience`) rather than keep more than
`depth` batches; when the other does not come (it stands at another checkpoint, lost its lease,
or its store is down), sharing pauses for a while and each reads alone.

Live batches (complete ones) are never kept: each projection reads the newest state itself. A
batch is a fact about the ledger that stays true, so applying one read a moment earlier is as
correct as applying one read now (see events.store.Batch and projections.watermark).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psycopg

from events import store
from events.store import Batch, Checkpoint
from projections.model import Changes, fold


@dataclass(slots=True)
class Read:
    """A batch, and its folds by trending epoch (the same for both stores unless one rebased)."""

    batch: Batch
    _folds: dict[float, Changes] = field(default_factory=dict)

    def fold(self, epoch: float, half_life: float) -> Changes:
        changes = self._folds.get(epoch)
        if changes is None:
            changes = self._folds[epoch] = fold(self.batch.events, epoch, half_life)
        return changes


class SharedReads:
    def __init__(
        self, share: bool, *, depth: int = 4, patience: float = 1.0, pause: float = 30.0
    ) -> None:
        self.share = share
        self.depth = depth
        self.patience = patience
        self.pause = pause
        # By the checkpoint each batch starts after, in the order they were read; a read still
        # under way is here too, so two projections at one checkpoint never both read it.
        self._kept: dict[Checkpoint, asyncio.Future[Read]] = {}
        self._taken = asyncio.Condition()
        self._paused_until = 0.0
        self.shared = 0  # batches taken from here instead of read

    async def read(self, conn: psycopg.AsyncConnection, after: Checkpoint, limit: int) -> Read:
        if after in self._kept:
            return await self._take(after)
        if self._sharing() and len(self._kept) >= self.depth:
            async with self._taken:
                try:
                    await asyncio.wait_for(
                        self._taken.wait_for(lambda: len(self._kept) < self.depth), self.patience
                    )
                except TimeoutError:  # the other is not following: each reads alone for a while
                    self._kept.clear()
                    self._paused_until = time.monotonic() + self.pause
        if not self._sharing():
            return Read(await store.read_batch(conn, after, limit))
        future: asyncio.Future[Read] = asyncio.get_running_loop().create_future()
        self._kept[after] = future
        try:
            read = Read(await store.read_batch(conn, after, limit))
        except BaseException as exc:
            if self._kept.get(after) is future:
                del self._kept[after]
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # marked as retrieved: a follower may never come for it
            raise
        future.set_result(read)
        if read.batch.complete and self._kept.get(after) is future:
            del self._kept[after]  # live: the other reads the newest state itself
        return read

    async def _take(self, after: Checkpoint) -> Read:
        # Batches kept before this one start at checkpoints both projections have passed.
        for checkpoint in list(self._kept):
            future = self._kept.pop(checkpoint)
            if checkpoint == after:
                break
        async with self._taken:
            self._taken.notify_all()
        self.shared += 1
        return await future

    def _sharing(self) -> bool:
        return self.share and time.monotonic() >= self._paused_until
