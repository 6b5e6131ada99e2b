"""The projector worker: gap-safe batch read -> pure fold -> atomic apply, per projection.

Crash-only: all progress is in the stores (checkpoint with the effects), so a worker that dies at
any point is simply restarted, or replaced by the standby that takes over its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import psycopg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from events import store
from events.store import Batch
from infra import metrics as m
from infra.redis_keys import generation_key
from infra.settings import Settings
from projections.lease import Lease, LeaseLost
from projections.model import Changes, choose_epoch
from projections.shared import Read, SharedReads
from projections.targets import Fenced, PostgresTarget, RedisTarget, State, Step, Target
from projections.watermark import Watermark

log = logging.getLogger("voteledger.projector")

PROJECTIONS = ("postgres", "redis")
_HELD_POLL = 0.005  # positions are drawn but not readable yet: their transactions end very soon
_GENERATION_CHECK = 1.0
_PARTITION_EVERY = 3600.0


async def active_generation(conn: psycopg.AsyncConnection) -> int:
    row = await (await conn.execute("SELECT generation FROM read_model_generation")).fetchone()
    assert row is not None
    return int(row[0])


def next_batch_size(size: int, batch: Batch, low: int, high: int) -> int:
    """Grow while batches come back full (catching up), shrink back when live."""
    if not batch.complete:
        return min(high, size * 2)
    return max(low, size // 2)


class ProjectionRunner:
    def __init__(
        self, settings: Settings, name: str, stop: asyncio.Event, reads: SharedReads | None = None
    ) -> None:
        self.settings = settings
        self.name = name
        self.stop = stop
        self.reads = reads or SharedReads(share=False)
        self.conninfo = settings.url_for("projector")
        self.half_life = settings.trending_half_life_seconds

    async def run(self) -> None:
        while not self.stop.is_set():
            lease = Lease(self.conninfo, self.name)
            log.info("%s: waiting for the lease", self.name)
            if not await lease.acquire(self.stop):
                return
            log.info("%s: lease taken (fence %d)", self.name, lease.fence)
            m.PROJECTION_LEASE_HELD.labels(self.name).set(1)
            try:
                await self._project(lease)
            except (
                Fenced,
                LeaseLost,
                psycopg.errors.UndefinedTable,
                psycopg.errors.InvalidSchemaName,
            ) as exc:
                # UndefinedTable: a rebuild switched generations and dropped the one this worker
                # was still writing before it noticed; it starts over on the current pointer.
                log.warning("%s: stepping down: %s", self.name, exc)
            except (psycopg.OperationalError, RedisError, OSError) as exc:
                log.warning("%s: store unavailable, retrying: %s", self.name, exc)
                await asyncio.sleep(1.0)
            finally:
                m.PROJECTION_LEASE_HELD.labels(self.name).set(0)
                await lease.release()

    async def _project(self, lease: Lease) -> None:
        connect = psycopg.AsyncConnection.connect
        async with contextlib.AsyncExitStack() as stack:
            reader = await stack.enter_async_context(await connect(self.conninfo, autocommit=True))
            listener = await stack.enter_async_context(
                await connect(self.conninfo, autocommit=True)
            )
            await store.configure_reader(reader)
            await listener.execute("LISTEN voteledger_events")
            target: Target
            if self.name == "postgres":
                # Autocommit: each apply is its own explicit transaction, and nothing stays
                # open between batches.
                conn = await stack.enter_async_context(
                    await connect(self.conninfo, autocommit=True)
                )
                generation = await active_generation(reader)
                target = PostgresTarget(conn, generation)

                async def current() -> int:
                    return await active_generation(reader)
            else:
                client = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=10)
                stack.push_async_callback(client.aclose)

                async def current() -> int:
                    # Each store has its own pointer, so each can be rebuilt on its own.
                    raw = await client.get(generation_key(self.settings.redis_prefix))
                    return int(raw) if raw else await active_generation(reader)

                generation = await current()
                target = RedisTarget(
                    client, self.settings.redis_prefix, generation,
                    self.settings.daily_retention_days, self.settings.changes_stream_max,
                )  # fmt: skip
            await self._loop(lease, reader, listener, target, generation, current)

    async def _loop(
        self,
        lease: Lease,
        reader: psycopg.AsyncConnection,
        listener: psycopg.AsyncConnection,
        target: Target,
        generation: int,
        current_generation: Callable[[], Awaitable[int]],
    ) -> None:
        state = await target.load()
        log.info(
            "%s: generation %d from position %d (watermark %d)",
            self.name, generation, state.checkpoint.position, state.watermark,
        )  # fmt: skip
        tracker = Watermark(state.watermark)
        size = self.settings.batch_min
        held_since: float | None = None
        quiet_polls = 0  # polls in a row that found positions drawn but nothing new to apply
        last_event_at: datetime | None = None
        next_generation_check = time.monotonic() + _GENERATION_CHECK
        while not self.stop.is_set():
            read = await self.reads.read(reader, state.checkpoint, size)
            batch = read.batch
            watermark = tracker.observe(batch)
            if batch.events or watermark != state.watermark:
                state = await self._apply(target, state, read, watermark, lease.fence)
                quiet_polls = 0
                if batch.events:
                    last_event_at = batch.events[-1].recorded_at
            else:
                quiet_polls += 1
            size = next_batch_size(size, batch, self.settings.batch_min, self.settings.batch_max)
            lag = max(0, batch.allocated - watermark)
            m.PROJECTION_LAG_EVENTS.labels(self.name).set(lag)
            m.PROJECTION_WATERMARK.labels(self.name).set(watermark)
            lag_seconds = 0.0
            if lag and last_event_at is not None:
                lag_seconds = max(0.0, (datetime.now(UTC) - last_event_at).total_seconds())
            m.PROJECTION_LAG_SECONDS.labels(self.name).set(lag_seconds)
            if not batch.complete:
                continue
            if lag and await store.held_back(reader):
                held_since = held_since or time.monotonic()
            else:
                held_since = None
            m.PROJECTION_HELD_BACK_SECONDS.labels(self.name).set(
                time.monotonic() - held_since if held_since else 0.0
            )
            await lease.check()
            if time.monotonic() >= next_generation_check:
                if await current_generation() != generation:
                    log.info("%s: active generation changed; switching", self.name)
                    return
                next_generation_check = time.monotonic() + _GENERATION_CHECK
            # Drawn positions whose transactions are still open will be readable very soon,
            # usually: poll quickly, backing off while nothing moves (a long transaction).
            wait = self.settings.poll_interval
            if lag:
                wait = min(wait, _HELD_POLL * 2 ** min(quiet_polls, 10))
            await self._wait(listener, wait)

    async def _apply(
        self, target: Target, state: State, read: Read, watermark: int, fence: int
    ) -> State:
        batch = read.batch
        epoch = choose_epoch(state.epoch, batch.events, self.half_life)
        changes = Changes(epoch)
        if batch.events:
            assert epoch is not None  # choose_epoch always has one for a non-empty batch
            changes = read.fold(epoch, self.half_life)
        step = Step(
            changes,
            batch.checkpoint or state.checkpoint,
            watermark,
            len(batch.events),
            max((r.recorded_at for r in batch.events), default=None),
            caught_up=batch.complete,
        )
        started = time.perf_counter()
        state = await target.apply(state, step, fence, self.half_life)
        m.PROJECTION_APPLY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        if batch.events:
            m.PROJECTION_APPLIED.labels(self.name).inc(len(batch.events))
            m.PROJECTION_BATCH.labels(self.name).observe(len(batch.events))
        return state

    async def _wait(self, listener: psycopg.AsyncConnection, seconds: float) -> None:
        """Sleep until a NOTIFY (only a wake-up: the loop reads from its checkpoint anyway)."""
        async for _ in listener.notifies(timeout=seconds, stop_after=1):
            pass


async def maintain_partitions(settings: Settings, stop: asyncio.Event) -> None:
    """Keep monthly partitions created ahead, whatever happens to `migrate` runs."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.url_for("projector"), autocommit=True
            ) as conn:
                await conn.execute("SELECT ensure_event_partitions(now(), 2)")
        except psycopg.Error as exc:
            log.warning("partition maintenance failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _PARTITION_EVERY)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    projections: tuple[str, ...] = PROJECTIONS,
    reads: SharedReads | None = None,
) -> None:
    """Run the given projections (each under its own lease) until `stop` is set."""
    reads = reads or SharedReads(share=len(projections) > 1)
    tasks = [
        asyncio.create_task(ProjectionRunner(settings, name, stop, reads).run(), name=name)
        for name in projections
    ]
    tasks.append(asyncio.create_task(maintain_partitions(settings, stop), name="partitions"))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
