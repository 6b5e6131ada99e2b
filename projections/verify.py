"""Compare read models with an independent fold of the ledger.

The fold here reads the ledger in position order with a plain query (not the runner's gap-safe
reader) and folds it in one go, so it shares no ordering, batching or epoch logic with the
runner. Trending sums are compared as decayed values at one instant, since their stored form
depends on the epoch each store chose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from events.codec import decode
from events.store import Checkpoint
from events.types import Recorded
from projections.model import Changes, DayTotals, ItemTotals, decayed, fold_all, wilson_lower_bound

_REL = 1e-9


@dataclass(frozen=True, slots=True)
class Difference:
    store: str
    key: str
    field: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return f"{self.store} {self.key} {self.field}: expected {self.expected!r}, " + (
            f"got {self.actual!r}"
        )


# Events up to a checkpoint in read order: (tx_id, position) <= the checkpoint's pair.
_LEDGER = """
SELECT position, tx_id::text, recorded_at, payload::text FROM ledger
WHERE (tx_id, position) <= (%s::text::xid8, %s)
ORDER BY position
"""


async def ledger_fold(conn: psycopg.AsyncConnection, upto: Checkpoint, half_life: float) -> Changes:
    """The read model an independent, single fold of the ledger up to `upto` gives."""
    await conn.execute("SET TIME ZONE 'UTC'")
    records = []
    async with conn.cursor(name="verify_ledger") as cur:
        cur.itersize = 20_000
        await cur.execute(_LEDGER, (str(upto.tx_id), upto.position))
        async for position, tx_id, at, payload in cur:
            records.append(Recorded(position, int(tx_id), at, decode(payload)))
    return fold_all(iter(records), half_life, batch=len(records) or 1)


async def postgres_model(
    conn: psycopg.AsyncConnection, generation: int
) -> tuple[Changes, list[Difference]]:
    """The PostgreSQL read models of a generation, and any row whose derived columns (net,
    wilson) disagree with its own counts."""
    schema = sql.Identifier(f"rm_g{generation}")
    model, broken = Changes(), []
    cur = await conn.execute(
        sql.SQL("SELECT trend_epoch FROM {} WHERE projection = 'postgres'").format(
            sql.Identifier(f"rm_g{generation}", "checkpoint")
        )
    )
    row = await cur.fetchone()
    model.epoch = row[0] if row else None
    cur = await conn.execute(
        sql.SQL(
            "SELECT item_id, item_type, title, listed_at, up, down, net, wilson, trend, "
            "first_vote_at, last_vote_at FROM {}.items"
        ).format(schema)
    )
    async for row in cur:
        item_id, item_type, title, listed_at, up, down, net, wilson, trend, first, last = row
        model.items[item_id] = ItemTotals(
            item_type, title if listed_at else None, listed_at, up, down, first, last, trend
        )
        if net != up - down:
            broken.append(Difference("postgres", f"item {item_id}", "net", up - down, net))
        if not math.isclose(wilson, wilson_lower_bound(up, down), rel_tol=_REL, abs_tol=1e-12):
            want = wilson_lower_bound(up, down)
            broken.append(Difference("postgres", f"item {item_id}", "wilson", want, wilson))
    cur = await conn.execute(
        sql.SQL("SELECT day, item_id, item_type, up, down, net FROM {}.daily").format(schema)
    )
    async for day, item_id, item_type, up, down, net in cur:
        model.days[(day, item_id)] = DayTotals(item_type, up, down)
        if net != up - down:
            broken.append(Difference("postgres", f"daily {day} {item_id}", "net", up - down, net))
    return model, broken


async def redis_model(client: aioredis.Redis, ns: str) -> tuple[Changes, list[Difference]]:
    """The Redis read models as a model (daily holds the net only, as `up`), and any item whose
    sorted-set scores disagree with its hash."""
    meta = await client.hgetall(f"{ns}:meta")
    model = Changes(epoch=float(meta[b"epoch"]) if meta.get(b"epoch") else None)
    broken = []
    async for key in client.scan_iter(match=f"{ns}:item:*", count=1000):
        item_id = _text(key)[len(ns) + len(":item:") :]
        h = await client.hgetall(key)
        item_type = _text(h[b"item_type"])
        up, down = int(h.get(b"up", 0)), int(h.get(b"down", 0))
        trend = await client.zscore(f"{ns}:trend:{item_type}", item_id)
        top = await client.zscore(f"{ns}:top:{item_type}", item_id)
        conf = await client.zscore(f"{ns}:conf:{item_type}", item_id)
        item = ItemTotals(item_type, _text(h[b"title"]) if b"title" in h else None)
        item.up, item.down, item.trend = up, down, trend if trend is not None else math.nan
        key_label = f"item {item_id}"
        if top != up - down:
            broken.append(Difference("redis", key_label, "top score", up - down, top))
        if int(h.get(b"net", 0)) != up - down:
            broken.append(Difference("redis", key_label, "net", up - down, h.get(b"net")))
        want = wilson_lower_bound(up, down)
        if conf is None or not math.isclose(conf, want, rel_tol=_REL, abs_tol=1e-12):
            broken.append(Difference("redis", key_label, "confidence score", want, conf))
        model.items[item_id] = item
    async for key in client.scan_iter(match=f"{ns}:daily:*", count=1000):
        _, item_type, day = _text(key)[len(ns) + 1 :].split(":")
        members: list[tuple[bytes, float]] = await client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        for member, score in members:
            model.days[(date.fromisoformat(day), _text(member))] = DayTotals(
                item_type, int(score), 0
            )
    return model, broken


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def compare(
    store: str,
    expected: Changes,
    actual: Changes,
    half_life: float,
    *,
    at: float,
    days_from: date | None = None,
    daily_net_only: bool = False,
    item_times: bool = True,
    limit: int = 20,
) -> list[Difference]:
    """The first `limit` differences between an expected and an actual read model."""
    out: list[Difference] = []

    def differ(key: str, name: str, want: object, got: object) -> bool:
        out.append(Difference(store, key, name, want, got))
        return len(out) >= limit

    for item_id in sorted(expected.items.keys() | actual.items.keys()):
        want, got = expected.items.get(item_id), actual.items.get(item_id)
        if want is None or got is None:
            if differ(f"item {item_id}", "presence", want is not None, got is not None):
                return out
            continue
        fields = ["item_type", "title", "up", "down"]
        if item_times:
            fields += ["first_vote_at", "last_vote_at"]
        for name in fields:
            w, g = getattr(want, name), getattr(got, name)
            if w != g and differ(f"item {item_id}", name, w, g):
                return out
        want_trend = decayed(want.trend, expected.epoch or 0.0, at, half_life)
        got_trend = decayed(got.trend, actual.epoch or 0.0, at, half_life)
        close = math.isclose(want_trend, got_trend, rel_tol=1e-7, abs_tol=1e-9)
        if not close and differ(f"item {item_id}", "trending", want_trend, got_trend):
            return out
    keys = expected.days.keys() | actual.days.keys()
    if days_from is not None:
        keys = {k for k in keys if k[0] >= days_from}
    for key in sorted(keys):
        want_day, got_day = expected.days.get(key), actual.days.get(key)
        label = f"daily {key[0]} {key[1]}"
        if want_day is None or got_day is None:
            if differ(label, "presence", want_day is not None, got_day is not None):
                return out
            continue
        if daily_net_only:
            pairs = [("net", want_day.net, got_day.up)]
        else:
            pairs = [("up", want_day.up, got_day.up), ("down", want_day.down, got_day.down)]
        for name, want_value, got_value in pairs:
            if want_value != got_value and differ(label, name, want_value, got_value):
                return out
    return out


def to_json(differences: list[Difference]) -> list[dict[str, str]]:
    return [
        {"store": d.store, "key": d.key, "field": d.field, "expected": str(d.expected),
         "actual": str(d.actual)}
        for d in differences
    ]  # fmt: skip
