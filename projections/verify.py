"""Compare read models with an independent fold of the ledger.

The fold here reads the ledger in position order with a plain query (not the runner's gap-safe
reader) and folds it in one go, so it shares no ordering, batching or epoch logic with the
runner. Trending sums are compared as decayed values at one instant, since their stored form
depends on the epoch each store chose.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources

import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from events.codec import decode
from events.store import Checkpoint
from events.types import Recorded
from infra.redis_keys import namespace
from projections.model import (
    Changes,
    DayTotals,
    ItemTotals,
    decayed,
    fold,
    merge,
    wilson_lower_bound,
)

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


# Events up to a checkpoint in read order: (tx_id, position) <= the checkpoint's pair. COPY is the
# fastest way out of PostgreSQL; it takes no parameters, hence the literals.
_LEDGER = """
COPY (
    SELECT position, tx_id::text, recorded_at, payload::text FROM ledger
    WHERE (tx_id, position) <= ({tx_id}::text::xid8, {position})
    ORDER BY position
) TO STDOUT
"""
_NEWEST = """
SELECT extract(epoch FROM max(recorded_at)) FROM ledger
WHERE (tx_id, position) <= (%s::text::xid8, %s)
"""


async def ledger_fold(conn: psycopg.AsyncConnection, upto: Checkpoint, half_life: float) -> Changes:
    """The read model an independent, single fold of the ledger up to `upto` gives.

    Streams the ledger and folds it in chunks against one epoch, the newest event's hour, so no
    rebase happens in between (nor any of the runner's batching)."""
    await conn.execute("SET TIME ZONE 'UTC'")
    row = await (await conn.execute(_NEWEST, (str(upto.tx_id), upto.position))).fetchone()
    if row is None or row[0] is None:
        return Changes()
    epoch = math.floor(float(row[0]) / 3600) * 3600.0
    model = Changes(epoch=epoch)
    chunk: list[Recorded] = []
    statement = sql.SQL(_LEDGER).format(tx_id=str(upto.tx_id), position=upto.position)
    async with conn.cursor().copy(statement) as copy:
        copy.set_types(["int8", "text", "timestamptz", "text"])
        async for position, tx_id, at, payload in copy.rows():
            chunk.append(Recorded(position, int(tx_id), at, decode(payload)))
            if len(chunk) >= 20_000:
                merge(model, fold(chunk, epoch, half_life), half_life)
                chunk = []
    return merge(model, fold(chunk, epoch, half_life), half_life)


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


async def redis_model(
    client: aioredis.Redis, ns: str, retention_days: int, today: date
) -> tuple[Changes, list[Difference], dict[str, str]]:
    """The Redis read models of one namespace as a model (daily holds the net only, as `up`),
    any item whose sorted-set scores disagree with its hash, and the meta hash; read in one
    atomic script so the projector cannot move in between."""
    dates = [(today - timedelta(days=n)).isoformat() for n in range(-1, retention_days + 1)]
    script = client.register_script(resources.files("projections").joinpath("dump.lua").read_text())
    raw_meta, items, days = await script(keys=[ns], args=dates)
    meta = {_text(raw_meta[i]): _text(raw_meta[i + 1]) for i in range(0, len(raw_meta), 2)}
    model = Changes(epoch=float(meta["epoch"]) if meta.get("epoch") else None)
    broken = []
    for item_id, item_type, title, up, down, net, top, conf, trend in items:
        key = f"item {_text(item_id)}"
        totals = ItemTotals(_text(item_type) if item_type else "?", _text(title) if title else None)
        totals.up, totals.down = int(up), int(down)
        totals.trend = float(trend) if trend is not None else math.nan
        model.items[_text(item_id)] = totals
        if int(net) != totals.net:
            broken.append(Difference("redis", key, "net", totals.net, int(net)))
        if float(top) != totals.net:
            broken.append(Difference("redis", key, "top score", totals.net, float(top)))
        want = wilson_lower_bound(totals.up, totals.down)
        if conf is None or float(conf) != want:
            broken.append(Difference("redis", key, "confidence score", want, conf))
    for day, item_type, scores in days:
        for n in range(0, len(scores), 2):
            model.days[(date.fromisoformat(_text(day)), _text(scores[n]))] = DayTotals(
                _text(item_type), int(float(scores[n + 1])), 0
            )
    return model, broken, meta


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

    fields = ["item_type", "title", "up", "down"]
    if item_times:
        fields += ["first_vote_at", "last_vote_at"]

    def item_differs(item_id: str) -> bool:
        # Equal stored trends mean equal trending only when both are relative to one epoch.
        want, got = expected.items.get(item_id), actual.items.get(item_id)
        return want is None or got is None or want != got or expected.epoch != actual.epoch

    # Equal entries are skipped first (most are), so only differing keys are sorted and labelled.
    item_ids = expected.items.keys() | actual.items.keys()
    for item_id in sorted(i for i in item_ids if item_differs(i)):
        want, got = expected.items.get(item_id), actual.items.get(item_id)
        if want is None or got is None:
            if differ(f"item {item_id}", "presence", want is not None, got is not None):
                return out
            continue
        for name in fields:
            w, g = getattr(want, name), getattr(got, name)
            if w != g and differ(f"item {item_id}", name, w, g):
                return out
        want_trend = decayed(want.trend, expected.epoch or 0.0, at, half_life)
        got_trend = decayed(got.trend, actual.epoch or 0.0, at, half_life)
        close = math.isclose(want_trend, got_trend, rel_tol=1e-7, abs_tol=1e-9)
        if not close and differ(f"item {item_id}", "trending", want_trend, got_trend):
            return out

    def pairs(want: DayTotals, got: DayTotals) -> list[tuple[str, int, int]]:
        if daily_net_only:  # such a store keeps only the net, in `up`
            return [("net", want.net, got.up)]
        return [("up", want.up, got.up), ("down", want.down, got.down)]

    def day_differs(key: tuple[date, str]) -> bool:
        want, got = expected.days.get(key), actual.days.get(key)
        return want is None or got is None or any(w != g for _, w, g in pairs(want, got))

    keys = expected.days.keys() | actual.days.keys()
    if days_from is not None:
        keys = {k for k in keys if k[0] >= days_from}
    for key in sorted(k for k in keys if day_differs(k)):
        want_day, got_day = expected.days.get(key), actual.days.get(key)
        label = f"daily {key[0]} {key[1]}"
        if want_day is None or got_day is None:
            if differ(label, "presence", want_day is not None, got_day is not None):
                return out
            continue
        for name, want_value, got_value in pairs(want_day, got_day):
            if want_value != got_value and differ(label, name, want_value, got_value):
                return out
    return out


def to_json(differences: list[Difference]) -> list[dict[str, str]]:
    return [
        {"store": d.store, "key": d.key, "field": d.field, "expected": str(d.expected),
         "actual": str(d.actual)}
        for d in differences
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    store: str
    generation: int
    checkpoint: Checkpoint
    items: int
    differences: list[Difference]


_PG_CHECKPOINT = "SELECT tx_id::text, position FROM {} WHERE projection = 'postgres'"


async def _ledger_fold_once(
    conn: psycopg.AsyncConnection,
    upto: Checkpoint,
    half_life: float,
    folds: dict[Checkpoint, Changes] | None,
) -> Changes:
    """`ledger_fold`, kept in `folds`: stores checked at the same checkpoint share one fold."""
    folds = {} if folds is None else folds
    if upto not in folds:
        folds[upto] = await ledger_fold(conn, upto, half_life)
    return folds[upto]


async def check_postgres(
    url: str,
    generation: int,
    half_life: float,
    limit: int = 20,
    folds: dict[Checkpoint, Changes] | None = None,
) -> Outcome:
    """Compare one generation of the PostgreSQL read models with the ledger folded up to the
    checkpoint they were read at (one REPEATABLE READ snapshot for rows and checkpoint)."""
    connect = psycopg.AsyncConnection.connect
    async with await connect(url) as snap, await connect(url, autocommit=True) as ledger:
        await snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = await (
            await snap.execute(
                sql.SQL(_PG_CHECKPOINT).format(sql.Identifier(f"rm_g{generation}", "checkpoint"))
            )
        ).fetchone()
        assert row is not None
        checkpoint = Checkpoint(int(row[0]), row[1])
        actual, broken = await postgres_model(snap, generation)
        await snap.rollback()
        expected = await _ledger_fold_once(ledger, checkpoint, half_life, folds)
    differences = broken + compare(
        "postgres", expected, actual, half_life, at=time.time(), limit=limit
    )
    return Outcome("postgres", generation, checkpoint, len(actual.items), differences[:limit])


async def check_redis(
    client: aioredis.Redis,
    url: str,
    prefix: str,
    generation: int,
    half_life: float,
    retention_days: int,
    limit: int = 20,
    folds: dict[Checkpoint, Changes] | None = None,
) -> Outcome:
    """Compare one generation of the Redis read models with the ledger folded up to the
    checkpoint they were read at (one atomic dump)."""
    today = datetime.now(UTC).date()
    actual, broken, meta = await redis_model(
        client, namespace(prefix, generation), retention_days, today
    )
    checkpoint = Checkpoint(int(meta.get("tx_id", 0)), int(meta.get("position", 0)))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as ledger:
        expected = await _ledger_fold_once(ledger, checkpoint, half_life, folds)
    differences = broken + compare(
        "redis", expected, actual, half_life, at=time.time(),
        days_from=today - timedelta(days=retention_days), daily_net_only=True,
        item_times=False, limit=limit,
    )  # fmt: skip
    return Outcome("redis", generation, checkpoint, len(actual.items), differences[:limit])
