"""Where projections write: the PostgreSQL read models and the Redis read models.

Both apply a batch's `Changes` as increments together with the new checkpoint, atomically, and
only if the stored checkpoint is exactly where the batch starts and no newer lease holder (a higher
fencing token) has written. A crash anywhere therefore neither loses nor doubles a vote, and a
paused or zombie worker that lost its lease cannot overwrite a newer worker's results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Protocol

import msgspec
import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from events.store import Checkpoint
from infra.redis_keys import generation_key, namespace
from projections.model import Changes, DayTotals, rescale_factor

log = logging.getLogger("voteledger.projections")


class Fenced(Exception):
    """The store has moved past this worker: its checkpoint or fence is not what we expected."""


@dataclass(frozen=True, slots=True)
class State:
    """What a projection has applied so far, as stored with its read models."""

    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    watermark: int = 0
    epoch: float | None = None
    events_applied: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    """One batch to apply: its changes, where it ends, and what the reader learned."""

    changes: Changes
    checkpoint: Checkpoint
    watermark: int
    events: int
    last_event_at: datetime | None
    caught_up: bool = False  # the batch reached everything readable at the time


class Target(Protocol):
    name: str

    async def load(self) -> State: ...

    async def apply(self, state: State, step: Step, fence: int, half_life: float) -> State: ...


def _advanced(state: State, step: Step) -> State:
    return replace(
        state,
        checkpoint=step.checkpoint,
        watermark=step.watermark,
        epoch=step.changes.epoch if step.changes.epoch is not None else state.epoch,
        events_applied=state.events_applied + step.events,
    )


# --- PostgreSQL ---------------------------------------------------------------------------------

_PG_LOAD = """
SELECT tx_id::text, position, watermark, trend_epoch, events_applied
FROM {schema}.checkpoint WHERE projection = 'postgres'
"""
# The checkpoint row is updated first: it both checks that nobody moved it (the batch starts
# exactly where the store stands, and no higher fence has written) and locks it until commit.
_PG_ADVANCE = """
UPDATE {schema}.checkpoint
SET tx_id = %(to_tx)s::text::xid8, position = %(to_pos)s, watermark = %(watermark)s,
    fence = %(fence)s, trend_epoch = %(epoch)s, events_applied = events_applied + %(events)s,
    last_event_at = coalesce(%(last_event_at)s, last_event_at), updated_at = now()
WHERE projection = 'postgres'
  AND tx_id = %(from_tx)s::text::xid8 AND position = %(from_pos)s AND fence <= %(fence)s
"""
_PG_RESCALE = "UPDATE {schema}.items SET trend = trend * %s WHERE trend <> 0"
_PG_ITEMS = """
INSERT INTO {schema}.items AS i (item_id, item_type, title, listed_at, up, down, net, wilson,
                                 trend, first_vote_at, last_vote_at)
SELECT e.item_id, c.item_type, coalesce(c.title, ''), c.listed_at, c.up, c.down, c.up - c.down,
       wilson_lower_bound(c.up, c.down), c.trend, c.first_vote_at, c.last_vote_at
FROM jsonb_each(%s::jsonb) AS e(item_id, totals),
     jsonb_to_record(e.totals) AS c(item_type text, title text, listed_at timestamptz, up bigint,
                                    down bigint, trend float8, first_vote_at timestamptz,
                                    last_vote_at timestamptz)
ON CONFLICT (item_id) DO UPDATE SET
    item_type = excluded.item_type,
    title = CASE WHEN excluded.listed_at IS NULL THEN i.title ELSE excluded.title END,
    listed_at = coalesce(excluded.listed_at, i.listed_at),
    up = i.up + excluded.up,
    down = i.down + excluded.down,
    net = i.net + excluded.net,
    wilson = wilson_lower_bound(i.up + excluded.up, i.down + excluded.down),
    trend = i.trend + excluded.trend,
    first_vote_at = least(i.first_vote_at, excluded.first_vote_at),
    last_vote_at = greatest(i.last_vote_at, excluded.last_vote_at)
"""
_PG_DAYS = """
INSERT INTO {schema}.daily AS d (day, item_id, item_type, up, down, net)
SELECT byday.day::date, e.item_id, c.item_type, c.up, c.down, c.up - c.down
FROM jsonb_each(%s::jsonb) AS byday(day, items), jsonb_each(byday.items) AS e(item_id, totals),
     jsonb_to_record(e.totals) AS c(item_type text, up bigint, down bigint)
ON CONFLICT (day, item_id) DO UPDATE SET
    up = d.up + excluded.up, down = d.down + excluded.down, net = d.net + excluded.net
"""


_encoder = msgspec.json.Encoder()


def _json(value: object) -> str:
    return _encoder.encode(value).decode()


class PostgresTarget:
    name = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection, generation: int) -> None:
        self.conn = conn
        self.generation = generation
        schema = sql.Identifier(f"rm_g{generation}")
        self._sql = {
            key: sql.SQL(text).format(schema=schema)
            for key, text in {
                "load": _PG_LOAD,
                "advance": _PG_ADVANCE,
                "rescale": _PG_RESCALE,
                "items": _PG_ITEMS,
                "days": _PG_DAYS,
            }.items()
        }

    async def load(self) -> State:
        cur = await self.conn.execute(self._sql["load"])
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"rm_g{self.generation}.checkpoint has no postgres row")
        tx_id, position, watermark, epoch, applied = row
        return State(Checkpoint(int(tx_id), position), watermark, epoch, applied)

    async def apply(self, state: State, step: Step, fence: int, half_life: float) -> State:
        changes = step.changes
        epoch = changes.epoch if changes.epoch is not None else state.epoch
        async with self.conn.transaction():
            cur = await self.conn.execute(
                self._sql["advance"],
                {
                    "from_tx": str(state.checkpoint.tx_id),
                    "from_pos": state.checkpoint.position,
                    "to_tx": str(step.checkpoint.tx_id),
                    "to_pos": step.checkpoint.position,
                    "watermark": step.watermark,
                    "fence": fence,
                    "epoch": epoch,
                    "events": step.events,
                    "last_event_at": step.last_event_at,
                },
            )
            if cur.rowcount != 1:
                raise Fenced("postgres checkpoint moved or a newer lease holder wrote")
            if state.epoch is not None and epoch is not None and epoch != state.epoch:
                factor = rescale_factor(state.epoch, epoch, half_life)
                await self.conn.execute(self._sql["rescale"], (factor,))
            # Each as one JSON parameter, encoded by msgspec in C: psycopg would dump Python
            # lists element by element.
            if changes.items:
                await self.conn.execute(self._sql["items"], (_json(changes.items),))
            if changes.days:
                by_day: dict[str, dict[str, DayTotals]] = {}
                for (day, item_id), totals in changes.days.items():
                    by_day.setdefault(day.isoformat(), {})[item_id] = totals
                await self.conn.execute(self._sql["days"], (_json(by_day),))
        return _advanced(state, step)


# --- Redis --------------------------------------------------------------------------------------


class RedisTarget:
    name = "redis"

    def __init__(
        self, client: aioredis.Redis, prefix: str, generation: int, retention_days: int,
        stream_max: int,
    ) -> None:  # fmt: skip
        self.client = client
        self.prefix = prefix
        self.generation = generation
        self.ns = namespace(prefix, generation)
        self.retention_days = retention_days
        self.stream_max = stream_max
        # redis-py's Script runs EVALSHA and reloads the script when Redis answers NOSCRIPT.
        self._apply = client.register_script(
            resources.files("projections").joinpath("apply.lua").read_text()
        )

    async def load(self) -> State:
        # First start (or a flushed Redis): readers learn the generation from this key.
        await self.client.set(generation_key(self.prefix), self.generation, nx=True)
        meta = await self.client.hgetall(f"{self.ns}:meta")
        if not meta:
            # No checkpoint means Redis lost this generation (flushed, or restarted without
            # persistence): rebuild it from the start of the ledger, never from "now".
            await self._clear()
            log.warning("redis read models of %s missing: rebuilding from the start", self.ns)
            return State()
        epoch = meta.get(b"epoch")
        return State(
            Checkpoint(int(meta[b"tx_id"]), int(meta[b"position"])),
            int(meta[b"watermark"]),
            float(epoch) if epoch else None,
            int(meta.get(b"events_applied", 0)),
        )

    async def _clear(self) -> None:
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=f"{self.ns}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.client.unlink(*batch)
                batch = []
        if batch:
            await self.client.unlink(*batch)

    async def apply(self, state: State, step: Step, fence: int, half_life: float) -> State:
        changes = step.changes
        epoch = changes.epoch if changes.epoch is not None else state.epoch
        factor = 1.0
        if state.epoch is not None and epoch is not None and epoch != state.epoch:
            factor = rescale_factor(state.epoch, epoch, half_life)
        today = datetime.now(UTC).date()
        oldest_kept = today - timedelta(days=self.retention_days)
        day_rows = []
        for (day, item_id), totals in changes.days.items():
            if day < oldest_kept:
                continue  # Redis keeps only the recent days; PostgreSQL keeps them all
            expire = datetime.combine(day, datetime.min.time(), UTC) + timedelta(
                days=self.retention_days + 1
            )
            day_rows.append([day.isoformat(), totals.item_type, item_id, totals.net,
                             int(expire.timestamp())])  # fmt: skip
        args = {
            "from_tx": str(state.checkpoint.tx_id),
            "from_pos": str(state.checkpoint.position),
            "to_tx": str(step.checkpoint.tx_id),
            "to_pos": str(step.checkpoint.position),
            "watermark": str(step.watermark),  # a string: Lua would print big numbers as 1e+14
            "fence": fence,
            "epoch": repr(epoch) if epoch is not None else "",
            "factor": repr(factor),
            "events": step.events,
            "last_event_at": step.last_event_at.isoformat() if step.last_event_at else "",
            "stream_max": self.stream_max,
            "live": 1 if step.caught_up else 0,
            # title false: not listed in this batch (cjson turns null into a userdata, not nil)
            "items": [
                [i, t.item_type, t.title or False, t.up, t.down, repr(t.trend)]
                for i, t in changes.items.items()
            ],
            "days": day_rows,
        }
        result = await self._apply(keys=[self.ns], args=[msgspec.json.encode(args)])
        if int(result[0]) != 1:
            raise Fenced(f"redis refused the batch: {result[1].decode()}")
        return _advanced(state, step)
