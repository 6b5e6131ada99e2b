"""One ledger read and one fold for both projections of a worker while they catch up.

Two projections catching up in one worker would each read, decode and fold the same events: most
of a catch-up's CPU. The first to read a catch-up batch (a full one: more follow at once) keeps it
here, with the folds made of it; the other, arriving at the same checkpoint, takes it instead of
reading. The one ahead waits for the other (at most `patience`) rather than keep more than
`depth` batches; when the other does not come (it stands at another checkpoint, lost its lease,
or its store is down), sharing pauses for a while and each reads alone. The patience outlasts a
slow store's batch (the PostgreSQL read models may take over a second for a catch-up batch that
closes a day): the one ahead waiting costs nothing, as the worker is done when the slower is,
while reading alone would decode and fold every batch twice in the one process.

A read that meets an event it cannot decode raises `Undecodable` for it (the batch before it is
cut short, so everything before it is applied); the other projection gets the same error.

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
from events.store import Batch, Checkpoint, Undecodable
from projections.model import Changes, fold


@dataclass(slots=True)
class Read:
    """A batch, and its folds by the trending epoch before it (the same for both stores, as they
    stand at the same checkpoint)."""

    batch: Batch
    _folds: dict[float | None, Changes] = field(default_factory=dict)

    def fold(self, since: float | None, half_life: float) -> Changes:
        changes = self._folds.get(since)
        if changes is None:
            changes = self._folds[since] = fold(self.batch.events, since, half_life)
        return changes


class SharedReads:
    def __init__(
        self, share: bool, *, depth: int = 4, patience: float = 5.0, pause: float = 30.0
    ) -> None:
        self.share = share
        self.depth = depth
        self.patience = patience
        self.pause = pause
        # By the checkpoint each batch starts after, in the order they were read; a read still
        # under way is here too, so two projections at one checkpoint never both read it.
        self._kept: dict[Checkpoint, asyncio.Future[Read]] = {}
        self._room = asyncio.Event()  # set when a kept read is taken or the kept ones dropped
        self._paused_until = 0.0
        self.shared = 0  # batches taken from here instead of read

    async def read(self, conn: psycopg.AsyncConnection, after: Checkpoint, limit: int) -> Read:
        if after in self._kept:
            kept = self._take(after)
            try:
                # Shielded: this projection being cancelled must not cancel the other's read.
                return await asyncio.shield(kept)
            except Undecodable:  # a fact about the ledger: this projection meets it too
                raise
            except Exception:  # the other's read failed: this projection reads for itself
                return Read(await store.read_batch(conn, after, limit))
        if self._sharing() and len(self._kept) >= self.depth:
            try:
                async with asyncio.timeout(self.patience):
                    while len(self._kept) >= self.depth:
                        self._room.clear()
                        await self._room.wait()
            except TimeoutError:  # the other is not following: each reads alone for a while
                self._stop_sharing(self.pause)
        if not self._sharing():
            return Read(await store.read_batch(conn, after, limit))
        future: asyncio.Future[Read] = asyncio.get_running_loop().create_future()
        self._kept[after] = future
        try:
            read = Read(await store.read_batch(conn, after, limit))
        except BaseException as exc:
            if self._kept.get(after) is future:
                del self._kept[after]
            if not future.done():
                # Never a cancellation: the other projection was not cancelled, it reads itself.
                # An undecodable event is passed on as it is: re-reading would meet it again.
                failure = exc if isinstance(exc, Undecodable) else None
                future.set_exception(failure or RuntimeError(f"the shared read failed: {exc!r}"))
                future.exception()  # marked as retrieved: a follower may never come for it
            raise
        if not future.done():
            future.set_result(read)
        if read.batch.complete:
            # Live now: whatever is kept is stale, and the other reads the newest state itself.
            self._stop_sharing(0.0)
        return read

    def _take(self, after: Checkpoint) -> asyncio.Future[Read]:
        """The read kept for `after`; kept reads of earlier checkpoints are dropped: both
        projections have passed them."""
        future = self._kept.pop(after)
        for checkpoint in [c for c in self._kept if c <= after]:
            del self._kept[checkpoint]
        self.shared += 1
        self._room.set()
        return future

    def _stop_sharing(self, seconds: float) -> None:
        self._kept.clear()
        self._paused_until = time.monotonic() + seconds
        self._room.set()

    def _sharing(self) -> bool:
        return self.share and time.monotonic() >= self._paused_until
