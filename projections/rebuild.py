"""Zero-downtime rebuild: a new generation of a read model, built beside the live one.

1. Fold the whole ledger in memory (one gap-safe pass with big batches).
2. Write the result in bulk into the new generation (`ReadModelStore.write`), with its checkpoint
   and watermark, and check what was written against that fold.
3. Catch up incrementally with the live head while writes go on (the same apply as the worker).
4. Switch the store's generation pointer, only once the new generation is at least as far as the
   live one (so no reader ever sees the position go backwards); keep applying until the live
   workers have moved over; then drop the old generation.

Until step 4 nothing live is touched: an interrupted or crashed rebuild leaves the live generation
serving, and the next rebuild clears what the failed one left and starts cleanly. Only one
rebuild runs at a time (an advisory lock). The stores are independent and rebuilt side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import psycopg

from events import store
from events.store import Checkpoint
from infra.settings import Settings
from projections import snapshots, verify
from projections.model import Changes
from projections.postgres_store import PostgresStore
from projections.readmodel import Fenced, ReadModelStore, State, step_for
from projections.snapshot_store import Spool
from projections.stores import connect, open_store
from projections.watermark import Watermark

_BULK_BATCH = 50_000
_LIVE_BATCH = 5_000
_HANDOVER_SECONDS = 1.5  # workers notice a new pointer within about a second
_LOCK = "SELECT pg_try_advisory_lock(hashtext('voteledger:rebuild'))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext('voteledger:rebuild'))"


class RebuildError(RuntimeError):
    """The rebuild could not finish; the live generation is untouched."""


class Progress(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Report:
    projection: str
    old_generation: int
    new_generation: int
    events: int
    position: int
    seconds: float


@dataclass(slots=True)
class Folded:
    model: Changes
    state: State
    days: Spool  # the days the fold closed, for the PostgreSQL read models


async def _fold_ledger(
    conn: psycopg.AsyncConnection,
    half_life: float,
    progress: Progress,
    spool: Spool,
    close_days: bool,
) -> Folded:
    """Everything the gap-safe reader can see now, folded in memory (with `close_days`, the
    closed days into `spool`: only the PostgreSQL read models keep them)."""
    progress.phase("folding the ledger", total=await store.head(conn))
    tracker, checkpoint, count = Watermark(), Checkpoint(), 0
    days = snapshots.DayFold(half_life, spool.add if close_days else None, Changes())
    while True:
        try:
            batch = await store.read_batch(conn, checkpoint, _BULK_BATCH)
        except store.Undecodable as exc:
            raise RebuildError(f"cannot fold the event at {exc}") from exc
        tracker.observe(batch)
        if batch.events:
            days.add(batch.events)
            checkpoint = batch.checkpoint or checkpoint
            count += len(batch.events)
            progress.advance(len(batch.events))
        if batch.complete:
            model, spool.open_day = days.model, days.open_day
            state = State(checkpoint, tracker.value, model.epoch, count, head=batch.allocated)
            return Folded(model, state, spool)


@dataclass(slots=True)
class _Building:
    """One store's new generation while it catches up with the live head."""

    target: ReadModelStore
    generation: int
    reader: psycopg.AsyncConnection
    state: State
    tracker: Watermark
    half_life: float
    progress: Progress

    async def catch_up(self, watermark: int = 0) -> None:
        """Apply batches until the reader has caught up and the watermark is at least
        `watermark`."""
        while True:
            try:
                batch = await store.read_batch(self.reader, self.state.checkpoint, _LIVE_BATCH)
            except store.Undecodable as exc:
                raise RebuildError(f"cannot fold the event at {exc}") from exc
            reached = self.tracker.observe(batch)
            if batch.events or reached != self.state.watermark:
                step = step_for(batch, self.state, reached, self.half_life)
                step = snapshots.with_events(step, batch.events)
                self.state = await self.target.apply(
                    self.generation, self.state, step, 0, self.half_life
                )
                self.progress.advance(len(batch.events))
            if batch.complete and self.state.watermark >= watermark:
                return
            if batch.complete:
                await asyncio.sleep(0.01)

    async def switch_from(self, old: int) -> None:
        """Catch up with the live generation's watermark, then switch readers over."""
        while True:
            live_watermark = await self._live_watermark(old)
            await self.catch_up(live_watermark)
            if await self.target.switch(old, self.generation):
                return

    async def _live_watermark(self, generation: int) -> int:
        state = await self.target.checkpoint(generation)
        return state.watermark if state else 0

    async def hand_over(self) -> None:
        """Keep the new generation moving until the live workers take it over (their writes
        carry a fence above ours, after which ours are refused)."""
        deadline = time.monotonic() + _HANDOVER_SECONDS
        with contextlib.suppress(Fenced):
            while time.monotonic() < deadline:
                await self.catch_up()
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _rebuild_lock(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    row = await (await conn.execute(_LOCK)).fetchone()
    if not row or not row[0]:
        raise RebuildError("another rebuild is running")
    try:
        yield
    finally:
        await conn.execute(_UNLOCK)


async def rebuild(
    settings: Settings, projections: tuple[str, ...], progress: Progress
) -> list[Report]:
    """Rebuild the named read models ("postgres", "redis") into new generations."""
    half_life, url = settings.trending_half_life_seconds, settings.database_url
    async with contextlib.AsyncExitStack() as stack:

        async def reader() -> psycopg.AsyncConnection:
            conn = await connect(stack, url)
            await store.configure_reader(conn)
            return conn

        await stack.enter_async_context(_rebuild_lock(await connect(stack, url)))
        started = time.perf_counter()
        spool = Spool()
        stack.callback(spool.rows.close)  # whatever happens, and when no PostgreSQL store uses it
        close_days = "postgres" in projections
        folded = await _fold_ledger(await reader(), half_life, progress, spool, close_days)
        jobs = []
        for name in projections:
            target, own_reader = await open_store(name, settings, stack, url), await reader()
            jobs.append(_rebuild_one(target, folded, own_reader, half_life, progress, started))
        return list(await asyncio.gather(*jobs))


async def _rebuild_one(
    target: ReadModelStore,
    folded: Folded,
    reader: psycopg.AsyncConnection,
    half_life: float,
    progress: Progress,
    started: float,
) -> Report:
    old = await target.live()
    new = old + 1
    # What an interrupted rebuild left behind (a half-built generation, or an old one it had no
    # time to drop) goes first, so this rebuild starts cleanly.
    for generation in await target.generations():
        if generation != old:
            await target.drop(generation)
    switched = False
    try:
        building = await _write_checked(target, new, folded, reader, half_life, progress)
        progress.phase(f"{target.name}: catching up with the live head", total=None)
        await building.catch_up()
        progress.phase(f"{target.name}: switching to generation {new}")
        await building.switch_from(old)
        switched = True
        await building.hand_over()
        await target.drop(old)
        state = building.state
        seconds = time.perf_counter() - started
        return Report(target.name, old, new, state.events_applied, state.watermark, seconds)
    finally:
        if not switched:
            # Leave nothing half-built behind when we can help it; a crash is cleaned up by the
            # next rebuild, which drops the same generation number before writing it.
            with contextlib.suppress(Exception):
                await target.drop(new)


async def _write_checked(
    target: ReadModelStore,
    generation: int,
    folded: Folded,
    reader: psycopg.AsyncConnection,
    half_life: float,
    progress: Progress,
) -> _Building:
    """Write the fold into the new generation and check it: what was written must be exactly
    the fresh fold, before anything else moves it."""
    progress.phase(f"{target.name}: writing generation {generation}", total=None)
    await target.write(generation, folded.model, folded.state)
    if isinstance(target, PostgresStore):
        await folded.days.write(target.conn, generation)
    dump = await target.dump(generation)
    found = verify.differences(target.name, dump, folded.model, half_life)
    if found:
        raise RebuildError(
            f"generation {generation} of {target.name} differs from a fresh fold:\n"
            + "\n".join(map(str, found))
        )
    tracker = Watermark(folded.state.watermark)
    return _Building(target, generation, reader, folded.state, tracker, half_life, progress)
