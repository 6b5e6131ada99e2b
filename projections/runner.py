"""The projector worker: gap-safe batch read -> pure fold -> atomic apply, per projection.

Crash-only: all progress is in the stores (checkpoint with the effects), so a worker that dies at
any point is simply restarted, or replaced by the standby that takes over its lease.

An event a projection cannot fold (it does not decode, or its store refuses the values) is no
crash: the projection stalls just before it, says so (projections.health), keeps its lease and
tries again every `stall_retry` seconds, resuming from there once the event can be folded (an
upcaster in a new release, or a fixed store). The other projection of the worker goes on unless
it meets the same event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from redis.exceptions import RedisError, ResponseError

from events import partitions, store
from events.store import Batch, Checkpoint, Undecodable
from infra import metrics as m
from infra.settings import Settings
from projections import snapshots
from projections.health import Reporter
from projections.lease import Lease, LeaseLost, sleep_or_stop
from projections.readmodel import Broken, Fenced, ReadModelStore, State, step_for
from projections.shared import Read, SharedReads
from projections.stores import NAMES, connect, open_store
from projections.watermark import Watermark

log = logging.getLogger("voteledger.projector")

PROJECTIONS = NAMES
_HELD_POLL = 0.005  # positions are drawn but not readable yet: their transactions end very soon
_GENERATION_CHECK = 1.0
# Live, a batch follows the last one within tens of milliseconds. What is only a report or a
# quick step-down (fencing already refuses a stale worker's writes) is checked once a second,
# not once a batch: each is a round trip.
_CHECK_EVERY = 1.0
_PARTITION_EVERY = 3600.0
_STOP_CHECK = 0.05  # seconds: how soon an idle worker notices it is asked to stop
# A rebuild switched generations and dropped the one this worker was still writing before it
# noticed (UndefinedTable), or the store moved past it: it starts over on the current pointer.
_STEP_DOWN = (Fenced, LeaseLost, psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
# A store refusing the values of a batch (a script error, a value out of range): retrying at once
# would meet the same values, so the projection stalls at the event instead.
_REFUSED = (ResponseError, psycopg.errors.DataError, Broken)
STALL_RETRY = 30.0


def next_batch_size(size: int, batch: Batch, low: int, high: int) -> int:
    """Grow while batches come back full (catching up), shrink back when live."""
    if not batch.complete:
        return min(high, size * 2)
    return max(low, size // 2)


@dataclass(slots=True)
class _Pace:
    """How the loop reads: batch size, how long nothing moved, and the lag it reports."""

    size: int
    # A store refused a batch ending here: read one event at a time up to it, to find the event.
    one_by_one_until: Checkpoint | None = None
    quiet_polls: int = 0  # polls in a row that found positions drawn but nothing new to apply
    held_since: float | None = None
    last_event_at: datetime | None = None

    def lag_seconds(self, lag: int) -> float:
        if not lag or self.last_event_at is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.last_event_at).total_seconds())

    def wait(self, lag: int, poll_interval: float) -> float:
        """Drawn positions whose transactions are still open will be readable very soon,
        usually: poll quickly, backing off while nothing moves (a long transaction)."""
        if not lag:
            return poll_interval
        return min(poll_interval, _HELD_POLL * (1 << min(self.quiet_polls, 10)))


class ProjectionRunner:
    def __init__(
        self,
        settings: Settings,
        name: str,
        stop: asyncio.Event,
        reads: SharedReads | None = None,
        stall_retry: float = STALL_RETRY,
    ) -> None:
        self.settings = settings
        self.name = name
        self.stop = stop
        self.reads = reads or SharedReads(share=False)
        self.conninfo = settings.url_for("projector")
        self.half_life = settings.trending_half_life_seconds
        self.stall_retry = stall_retry
        self.health = Reporter(name)

    async def run(self) -> None:
        # The series exist from the start, so an alert sees a standby's first takeover too.
        m.PROJECTION_LEASE_ACQUIRED.labels(self.name)
        m.PROJECTION_LEASE_HELD.labels(self.name).set(0)
        while not self.stop.is_set():
            lease = Lease(self.conninfo, self.name)
            log.info("%s: waiting for the lease", self.name)
            if not await lease.acquire(self.stop):
                return
            log.info("%s: lease taken (fence %d)", self.name, lease.fence)
            m.PROJECTION_LEASE_HELD.labels(self.name).set(1)
            try:
                await self._project(lease)
            except _STEP_DOWN as exc:
                log.warning("%s: stepping down: %s", self.name, exc)
                self.health.stepped_down()  # a standby now: the new holder reports health
            except (psycopg.OperationalError, RedisError, OSError) as exc:
                log.warning("%s: store unavailable, retrying: %s", self.name, exc)
                await asyncio.sleep(1.0)
            finally:
                m.PROJECTION_LEASE_HELD.labels(self.name).set(0)
                await lease.release()

    async def _project(self, lease: Lease) -> None:
        async with contextlib.AsyncExitStack() as stack:
            reader = await connect(stack, self.conninfo)
            await store.configure_reader(reader)
            listener = await connect(stack, self.conninfo)
            await listener.execute("LISTEN voteledger_events")
            target = await open_store(
                self.name, self.settings, stack, self.conninfo, redis_timeout=10
            )
            await self._loop(lease, reader, listener, target)

    async def _loop(
        self,
        lease: Lease,
        reader: psycopg.AsyncConnection,
        listener: psycopg.AsyncConnection,
        target: ReadModelStore,
    ) -> None:
        generation = await target.live()
        state = await target.start(generation)
        log.info(
            "%s: generation %d from position %d (watermark %d)",
            *(self.name, generation, state.checkpoint.position, state.watermark),
        )
        tracker, pace = Watermark(state.watermark), _Pace(self.settings.batch_min)
        next_generation_check = next_check = time.monotonic() + _GENERATION_CHECK
        while not self.stop.is_set():
            batch, started = None, time.monotonic()
            try:
                read = await self.reads.read(reader, state.checkpoint, pace.size)
                batch, watermark = read.batch, tracker.observe(read.batch)
                moved = bool(batch.events) or watermark != state.watermark
                if moved:
                    state = await self._apply(
                        target, generation, state, read, watermark, lease.fence
                    )
            except (Undecodable, *_REFUSED) as exc:
                # The tracker may have counted the batch that was not applied: start it afresh
                # from what is applied (it learns the pending bounds again from the next reads).
                tracker = Watermark(state.watermark)
                if not await self._stalled(exc, batch, state, reader, pace, lease):
                    return
                continue
            pace.quiet_polls = 0 if moved else pace.quiet_polls + 1
            if pace.one_by_one_until is not None and state.checkpoint >= pace.one_by_one_until:
                pace.one_by_one_until = None
            lag = self._observed(pace, batch, watermark)
            await self.health.observed(reader, batch.allocated, state.watermark)
            if not batch.complete:
                continue
            probe = time.monotonic() >= next_check
            await self._held_back(pace, reader, lag, probe)
            if probe:
                await lease.check()
                next_check = time.monotonic() + _CHECK_EVERY
            if time.monotonic() >= next_generation_check:
                if await target.live() != generation:
                    log.info("%s: active generation changed; switching", self.name)
                    return
                next_generation_check = time.monotonic() + _GENERATION_CHECK
            await self._gather(started)
            await self._wait(listener, pace.wait(lag, self.settings.poll_interval))

    async def _stalled(
        self,
        exc: Exception,
        batch: Batch | None,
        state: State,
        reader: psycopg.AsyncConnection,
        pace: _Pace,
        lease: Lease,
    ) -> bool:
        """Stall at the event that cannot be folded, report it, and wait before trying again;
        False when the worker is stopping. A batch a store refused is first retried one event at
        a time, so that the stall names the event and everything before it is applied."""
        if isinstance(exc, Undecodable):
            position, reason = exc.position, exc.reason
        elif batch is not None and len(batch.events) > 1:
            pace.one_by_one_until, pace.size = batch.checkpoint, 1
            return True
        else:
            position = batch.events[0].position if batch and batch.events else state.watermark
            reason = f"the {self.name} store refused it: {exc}"
        await self.health.stalled(reader, position, reason)
        await sleep_or_stop(self.stop, self.stall_retry)
        await lease.check()
        return not self.stop.is_set()

    def _observed(self, pace: _Pace, batch: Batch, watermark: int) -> int:
        """Take note of a batch read: batch size, lag metrics. Returns the lag in positions."""
        if batch.events:
            pace.last_event_at = batch.events[-1].recorded_at
        settings = self.settings
        pace.size = next_batch_size(pace.size, batch, settings.batch_min, settings.batch_max)
        if pace.one_by_one_until is not None:
            pace.size = 1
        lag = max(0, batch.allocated - watermark)
        m.PROJECTION_LAG_EVENTS.labels(self.name).set(lag)
        m.PROJECTION_WATERMARK.labels(self.name).set(watermark)
        m.PROJECTION_HEAD.labels(self.name).set(batch.allocated)
        m.PROJECTION_LAG_SECONDS.labels(self.name).set(pace.lag_seconds(lag))
        return lag

    async def _held_back(
        self, pace: _Pace, reader: psycopg.AsyncConnection, lag: int, probe: bool
    ) -> None:
        """Report how long an open transaction has kept committed events from the reader
        (asking PostgreSQL only when `probe`; no lag needs no asking)."""
        if not lag:
            pace.held_since = None
        elif probe and await store.held_back(reader):
            pace.held_since = pace.held_since or time.monotonic()
        elif probe:
            pace.held_since = None
        held = time.monotonic() - pace.held_since if pace.held_since else 0.0
        m.PROJECTION_HELD_BACK_SECONDS.labels(self.name).set(held)

    async def _apply(
        self,
        target: ReadModelStore,
        generation: int,
        state: State,
        read: Read,
        watermark: int,
        fence: int,
    ) -> State:
        batch = read.batch
        step = step_for(
            batch, state, watermark, self.half_life, lambda e: read.fold(e, self.half_life)
        )
        step = snapshots.with_events(step, batch.events)  # days close where its events say
        started = time.perf_counter()
        state = await target.apply(generation, state, step, fence, self.half_life)
        m.PROJECTION_APPLY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        if batch.events:
            m.PROJECTION_APPLIED.labels(self.name).inc(len(batch.events))
            m.PROJECTION_BATCH.labels(self.name).observe(len(batch.events))
        return state

    async def _gather(self, started: float) -> None:
        """Let live events gather for the next batch until `batch_interval` after this one
        started (NOTIFYs meanwhile wait in the listener's connection)."""
        left = started + self.settings.batch_interval - time.monotonic()
        if left > 0:
            await sleep_or_stop(self.stop, left)

    async def _wait(self, listener: psycopg.AsyncConnection, seconds: float) -> None:
        """Sleep until a NOTIFY (only a wake-up: the loop reads from its checkpoint anyway), in
        steps short enough that a stopping worker gives its lease up at once."""
        until = time.monotonic() + seconds
        notified = False
        while not notified and (left := until - time.monotonic()) > 0 and not self.stop.is_set():
            # Run to its end (stop_after): a generator left half-way would keep the connection.
            async for _ in listener.notifies(timeout=min(left, _STOP_CHECK), stop_after=1):
                notified = True


async def maintain_partitions(settings: Settings, stop: asyncio.Event) -> None:
    """Keep monthly partitions created ahead, whatever happens to `migrate` runs."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.url_for("projector"), autocommit=True
            ) as conn:
                ready_until = await partitions.ensure_ahead(conn, 2)
                m.PARTITIONS_READY_UNTIL.set(ready_until.timestamp())
        except psycopg.Error as exc:
            log.warning("partition maintenance failed: %s", exc)
        await sleep_or_stop(stop, _PARTITION_EVERY)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    projections: tuple[str, ...] = PROJECTIONS,
    reads: SharedReads | None = None,
    stall_retry: float = STALL_RETRY,
) -> None:
    """Run the given projections (each under its own lease) until `stop` is set."""
    reads = reads or SharedReads(share=len(projections) > 1)
    tasks = [
        asyncio.create_task(
            ProjectionRunner(settings, name, stop, reads, stall_retry).run(), name=name
        )
        for name in projections
    ]
    tasks.append(asyncio.create_task(maintain_partitions(settings, stop), name="partitions"))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
