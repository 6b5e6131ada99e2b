"""Zero-downtime rebuild: a new generation of a read model, built beside the live one.

1. Fold the whole ledger in memory (one gap-safe pass with big batches).
2. Write the result in bulk into the new generation (COPY into fresh tables; pipelined Redis
   writes under a new hash tag), with its checkpoint and watermark.
3. Catch up incrementally with the live head while writes go on (the same targets as the worker).
4. Check the new generation against an independent fold of the ledger.
5. Switch the store's generation pointer, only once the new generation is at least as far as the
   live one (so no reader ever sees the position go backwards); keep applying until the live
   workers have moved over; then drop the old generation.

Until step 5 nothing live is touched: an interrupted or crashed rebuild leaves the live generation
serving, and the next rebuild clears what the failed one left and starts cleanly. Only one
rebuild runs at a time (an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from events import store
from events.store import Checkpoint
from infra.redis_keys import generation_key, namespace
from infra.settings import Settings
from projections import verify
from projections.model import Changes, choose_epoch, fold, merge, wilson_lower_bound
from projections.targets import Fenced, PostgresTarget, RedisTarget, State, Step, Target
from projections.watermark import Watermark

_BULK_BATCH = 50_000
_LIVE_BATCH = 5_000
_HANDOVER_SECONDS = 1.5  # workers notice a new pointer within about a second
_LOCK = "SELECT pg_try_advisory_lock(hashtext('voteledger:rebuild'))"


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


async def _fold_ledger(
    conn: psycopg.AsyncConnection, half_life: float, progress: Progress
) -> Folded:
    """Everything the gap-safe reader can see now, folded in memory."""
    cur = await conn.execute("SELECT coalesce(pg_sequence_last_value('events_position_seq'), 0)")
    head = (await cur.fetchone() or (0,))[0]
    progress.phase("folding the ledger", total=head)
    model, tracker, checkpoint, count = Changes(), Watermark(), Checkpoint(), 0
    while True:
        batch = await store.read_batch(conn, checkpoint, _BULK_BATCH)
        tracker.observe(batch)
        if batch.events:
            epoch = choose_epoch(model.epoch, batch.events, half_life)
            assert epoch is not None
            model = merge(model, fold(batch.events, epoch, half_life), half_life)
            checkpoint = batch.checkpoint or checkpoint
            count += len(batch.events)
            progress.advance(len(batch.events))
        if batch.complete:
            break
    return Folded(model, State(checkpoint, tracker.value, model.epoch, count))


# --- writing a generation in bulk ---------------------------------------------------------------

_COPY_ITEMS = (
    "COPY {schema}.items (item_id, item_type, title, listed_at, up, down, net, wilson, trend, "
    "first_vote_at, last_vote_at) FROM STDIN"
)
_COPY_DAILY = "COPY {schema}.daily (day, item_id, item_type, up, down, net) FROM STDIN"
_SET_CHECKPOINT = """
UPDATE {schema}.checkpoint
SET tx_id = %s::text::xid8, position = %s, watermark = %s, trend_epoch = %s, events_applied = %s,
    fence = 0, updated_at = now()
WHERE projection = 'postgres'
"""


async def _write_postgres(conn: psycopg.AsyncConnection, generation: int, folded: Folded) -> None:
    schema = sql.Identifier(f"rm_g{generation}")
    model, state = folded.model, folded.state
    async with conn.transaction():
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
        await conn.execute("SELECT create_read_models(%s)", (generation,))
        async with conn.cursor().copy(sql.SQL(_COPY_ITEMS).format(schema=schema)) as copy:
            for item_id, t in model.items.items():
                await copy.write_row(
                    (item_id, t.item_type, t.title or "", t.listed_at, t.up, t.down, t.net,
                     wilson_lower_bound(t.up, t.down), t.trend, t.first_vote_at, t.last_vote_at)
                )  # fmt: skip
        async with conn.cursor().copy(sql.SQL(_COPY_DAILY).format(schema=schema)) as copy:
            for (day, item_id), d in model.days.items():
                await copy.write_row((day, item_id, d.item_type, d.up, d.down, d.net))
        await conn.execute(
            sql.SQL(_SET_CHECKPOINT).format(schema=schema),
            (str(state.checkpoint.tx_id), state.checkpoint.position, state.watermark,
             state.epoch, state.events_applied),
        )  # fmt: skip


async def _clear_redis(client: aioredis.Redis, ns: str) -> None:
    batch = []
    async for key in client.scan_iter(match=f"{ns}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


async def _write_redis(
    client: aioredis.Redis, ns: str, folded: Folded, retention_days: int
) -> None:
    """The same keys and values the incremental Lua path produces, written in pipelined chunks."""
    await _clear_redis(client, ns)
    model, state = folded.model, folded.state
    pipe = client.pipeline(transaction=False)
    pending = 0
    for item_id, t in model.items.items():
        fields: dict[str | bytes, str | int] = {
            "item_type": t.item_type,
            "up": t.up,
            "down": t.down,
            "net": t.net,
        }
        if t.title is not None:
            fields["title"] = t.title
        pipe.hset(f"{ns}:item:{item_id}", mapping=fields)  # type: ignore[arg-type]
        pipe.zadd(f"{ns}:top:{t.item_type}", {item_id: t.net})
        pipe.zadd(f"{ns}:conf:{t.item_type}", {item_id: wilson_lower_bound(t.up, t.down)})
        pipe.zadd(f"{ns}:trend:{t.item_type}", {item_id: t.trend})
        pending += 4
        if pending >= 4000:
            await pipe.execute()
            pending = 0
    oldest = datetime.now(UTC).date() - timedelta(days=retention_days)
    for (day, item_id), d in model.days.items():
        if day < oldest:
            continue
        key = f"{ns}:daily:{d.item_type}:{day.isoformat()}"
        expire = datetime.combine(day, datetime.min.time(), UTC) + timedelta(
            days=retention_days + 1
        )
        pipe.zadd(key, {item_id: d.net})
        pipe.expireat(key, int(expire.timestamp()))
        pending += 2
        if pending >= 4000:
            await pipe.execute()
            pending = 0
    pipe.hset(
        f"{ns}:meta",
        mapping={
            "tx_id": state.checkpoint.tx_id,
            "position": state.checkpoint.position,
            "watermark": state.watermark,
            "fence": 0,
            "epoch": repr(state.epoch) if state.epoch is not None else "",
            "events_applied": state.events_applied,
        },
    )
    await pipe.execute()


# --- catching up, checking, switching -----------------------------------------------------------


async def _catch_up(
    reader: psycopg.AsyncConnection,
    target: Target,
    state: State,
    tracker: Watermark,
    half_life: float,
    progress: Progress,
    until: Callable[[State], bool] = lambda _: True,
) -> State:
    """Apply batches until the reader has caught up and `until(state)` holds."""
    while True:
        batch = await store.read_batch(reader, state.checkpoint, _LIVE_BATCH)
        watermark = tracker.observe(batch)
        if batch.events or watermark != state.watermark:
            epoch = choose_epoch(state.epoch, batch.events, half_life)
            changes = Changes(epoch)
            if batch.events:
                assert epoch is not None
                changes = fold(batch.events, epoch, half_life)
            step = Step(
                changes, batch.checkpoint or state.checkpoint, watermark, len(batch.events),
                max((r.recorded_at for r in batch.events), default=None), batch.complete,
            )  # fmt: skip
            state = await target.apply(state, step, 0, half_life)
            progress.advance(len(batch.events))
        if batch.complete and until(state):
            return state
        if batch.complete:
            await asyncio.sleep(0.01)


class Store(Protocol):
    """What differs between rebuilding the PostgreSQL and the Redis read models."""

    name: str

    async def live(self) -> tuple[int, int]: ...  # (generation, watermark) readers use now

    async def write(self, generation: int, folded: Folded) -> Target: ...

    async def check(
        self, generation: int, expected: Changes, half_life: float
    ) -> list[verify.Difference]: ...

    async def switch(self, old: int, new: int) -> bool: ...

    async def drop(self, generation: int) -> None: ...

    async def leftovers(self, live: int) -> list[int]: ...  # generations nobody reads


class PostgresStore:
    name = "postgres"

    def __init__(self, owner: psycopg.AsyncConnection, url: str) -> None:
        self.conn = owner
        self.url = url

    async def _watermark(self, generation: int) -> int:
        cur = await self.conn.execute(
            sql.SQL("SELECT watermark FROM {}.checkpoint").format(
                sql.Identifier(f"rm_g{generation}")
            )
        )
        return int((await cur.fetchone() or (0,))[0])

    async def live(self) -> tuple[int, int]:
        row = await (
            await self.conn.execute("SELECT generation FROM read_model_generation")
        ).fetchone()
        assert row is not None
        return int(row[0]), await self._watermark(int(row[0]))

    async def write(self, generation: int, folded: Folded) -> Target:
        await _write_postgres(self.conn, generation, folded)
        return PostgresTarget(self.conn, generation)

    async def check(
        self, generation: int, expected: Changes, half_life: float
    ) -> list[verify.Difference]:
        actual, broken = await verify.postgres_model(self.conn, generation)
        return broken + verify.compare("postgres", expected, actual, half_life, at=time.time())

    async def switch(self, old: int, new: int) -> bool:
        async with self.conn.transaction():
            # Locks the pointer: nobody switches it under us while we compare positions.
            await self.conn.execute("SELECT generation FROM read_model_generation FOR UPDATE")
            if await self._watermark(new) < await self._watermark(old):
                return False
            await self.conn.execute(
                "UPDATE read_model_generation SET generation = %s, switched_at = now()", (new,)
            )
        return True

    async def drop(self, generation: int) -> None:
        await self.conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"rm_g{generation}"))
        )

    async def leftovers(self, live: int) -> list[int]:
        cur = await self.conn.execute(
            "SELECT substr(nspname, 5)::int FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$'"
        )
        return [g for (g,) in await cur.fetchall() if g != live]


# Switches the Redis pointer only if the new generation is at least as far as the old one, and
# retires the old one in the same step: its worker's next apply is refused, so the old generation
# never gets ahead of what readers of the new one see. (The pointer and the two generations are
# in different hash slots: this script needs a single Redis server, not a cluster.)
_REDIS_SWITCH = """
local old = tonumber(redis.call('HGET', KEYS[2], 'watermark') or '0')
local new = tonumber(redis.call('HGET', KEYS[3], 'watermark') or '0')
if new < old then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'retired', 1)
return 1
"""


class RedisStore:
    name = "redis"

    def __init__(
        self, client: aioredis.Redis, owner: psycopg.AsyncConnection, settings: Settings
    ) -> None:
        self.client = client
        self.conn = owner
        self.settings = settings
        self.prefix = settings.redis_prefix

    async def live(self) -> tuple[int, int]:
        raw = await self.client.get(generation_key(self.prefix))
        if raw is None:
            row = await (
                await self.conn.execute("SELECT generation FROM read_model_generation")
            ).fetchone()
            generation = int(row[0]) if row else 1
        else:
            generation = int(raw)
        watermark = await self.client.hget(
            f"{namespace(self.prefix, generation)}:meta", "watermark"
        )
        return generation, int(watermark or 0)

    async def write(self, generation: int, folded: Folded) -> Target:
        ns = namespace(self.prefix, generation)
        await _write_redis(self.client, ns, folded, self.settings.daily_retention_days)
        return RedisTarget(
            self.client, self.prefix, generation, self.settings.daily_retention_days,
            self.settings.changes_stream_max,
        )  # fmt: skip

    async def check(
        self, generation: int, expected: Changes, half_life: float
    ) -> list[verify.Difference]:
        today = datetime.now(UTC).date()
        retention = self.settings.daily_retention_days
        actual, broken, _ = await verify.redis_model(
            self.client, namespace(self.prefix, generation), retention, today
        )
        return broken + verify.compare(
            "redis", expected, actual, half_life, at=time.time(),
            days_from=today - timedelta(days=retention), daily_net_only=True, item_times=False,
        )  # fmt: skip

    async def switch(self, old: int, new: int) -> bool:
        switched = await self.client.eval(
            _REDIS_SWITCH, 3, generation_key(self.prefix),
            f"{namespace(self.prefix, old)}:meta", f"{namespace(self.prefix, new)}:meta", new,
        )  # fmt: skip
        return bool(switched)

    async def drop(self, generation: int) -> None:
        await _clear_redis(self.client, namespace(self.prefix, generation))

    async def leftovers(self, live: int) -> list[int]:
        found = set()
        async for key in self.client.scan_iter(match=f"{{{self.prefix}:g*}}:meta", count=1000):
            tag = key.decode().split("}", 1)[0]  # "{prefix:gN"
            found.add(int(tag.rsplit(":g", 1)[1]))
        return sorted(found - {live})


@contextlib.asynccontextmanager
async def _rebuild_lock(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    row = await (await conn.execute(_LOCK)).fetchone()
    if not row or not row[0]:
        raise RebuildError("another rebuild is running")
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext('voteledger:rebuild'))")


async def rebuild(
    settings: Settings, projections: tuple[str, ...], progress: Progress
) -> list[Report]:
    """Rebuild the named read models ("postgres", "redis") into new generations."""
    half_life = settings.trending_half_life_seconds
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=30)
    try:
        async with contextlib.AsyncExitStack() as stack:

            async def connection() -> psycopg.AsyncConnection:
                conn = await stack.enter_async_context(
                    await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
                )
                await conn.execute("SET TIME ZONE 'UTC'")
                # Reads take a transaction id each (see events.store): nothing to make durable.
                await conn.execute("SET synchronous_commit = off")
                return conn

            async def reader() -> psycopg.AsyncConnection:
                conn = await connection()
                await store.configure_reader(conn)
                return conn

            await stack.enter_async_context(_rebuild_lock(await connection()))
            started = time.perf_counter()
            folded = await _fold_ledger(await reader(), half_life, progress)
            # The stores are independent: write, check, catch up and switch them side by side.
            jobs = []
            if "postgres" in projections:
                owner = await connection()
                store_pg = PostgresStore(owner, settings.database_url)
                jobs.append(_rebuild_one(store_pg, folded, await reader(), half_life,
                                         progress, started))  # fmt: skip
            if "redis" in projections:
                store_redis = RedisStore(client, await connection(), settings)
                jobs.append(_rebuild_one(store_redis, folded, await reader(), half_life,
                                         progress, started))  # fmt: skip
            return list(await asyncio.gather(*jobs))
    finally:
        await client.aclose()


async def _rebuild_one(
    target_store: Store,
    folded: Folded,
    reader: psycopg.AsyncConnection,
    half_life: float,
    progress: Progress,
    started: float,
) -> Report:
    old, _ = await target_store.live()
    new = old + 1
    # What an interrupted rebuild left behind (a half-built generation, or an old one it had no
    # time to drop) goes first, so this rebuild starts cleanly.
    for generation in await target_store.leftovers(old):
        await target_store.drop(generation)
    switched = False
    try:
        progress.phase(f"{target_store.name}: writing generation {new}", total=None)
        target = await target_store.write(new, folded)
        # What was written must be exactly the fresh fold: checked before anything else moves it.
        differences = await target_store.check(new, folded.model, half_life)
        if differences:
            raise RebuildError(
                f"generation {new} of {target_store.name} differs from a fresh fold:\n"
                + "\n".join(map(str, differences[:20]))
            )
        state, tracker = folded.state, Watermark(folded.state.watermark)
        progress.phase(f"{target_store.name}: catching up with the live head", total=None)
        state = await _catch_up(reader, target, state, tracker, half_life, progress)
        progress.phase(f"{target_store.name}: switching to generation {new}")
        while not switched:
            _, live_watermark = await target_store.live()
            state = await _catch_up(
                reader, target, state, tracker, half_life, progress,
                until=lambda s, w=live_watermark: s.watermark >= w,  # type: ignore[misc]
            )  # fmt: skip
            switched = await target_store.switch(old, new)
        # Keep the new generation moving until the live workers take it over (their writes
        # carry a fence above ours, after which ours are refused).
        deadline = time.monotonic() + _HANDOVER_SECONDS
        with contextlib.suppress(Fenced):
            while time.monotonic() < deadline:
                state = await _catch_up(reader, target, state, tracker, half_life, progress)
                await asyncio.sleep(0.05)
        await target_store.drop(old)
        return Report(
            target_store.name, old, new, state.events_applied, state.watermark,
            time.perf_counter() - started,
        )  # fmt: skip
    finally:
        if not switched:
            # Leave nothing half-built behind when we can help it; a crash is cleaned up by the
            # next rebuild, which drops the same generation number before writing it.
            with contextlib.suppress(Exception):
                await target_store.drop(new)
