"""The PostgreSQL read models: their tables, their SQL, and every operation on them.

Generation N lives in schema `rm_g<N>` (made by `create_read_models`, 0004_read_models.sql):
`items`, `daily`, and the `checkpoint` row that commits in the same transaction as they do.
Ranking order is score descending, ties by item id descending bytewise (`COLLATE "C"`), as in
Redis. Every statement is composed here, once per generation.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from events.store import Checkpoint
from projections import generations, independent_pg, snapshot_store
from projections.model import (
    Changes,
    DayTotals,
    ItemTotals,
    keep_above,
    rescale_factor,
    standings,
    wilson_lower_bound,
)
from projections.readmodel import Coverage, Difference, Dump, Fenced, State, Step, advanced

_REL = 1e-9  # how close a stored Wilson bound must be to the one its counts give


def schema(generation: int) -> sql.Identifier:
    """The schema of one generation of the read models."""
    return sql.Identifier(f"rm_g{generation}")


_GENERATIONS = "SELECT substr(nspname, 5)::int FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$'"
_CREATE = "SELECT create_read_models(%s)"
_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"

_TEXT = {
    "drop": "DROP SCHEMA IF EXISTS {schema} CASCADE",
    "load": """
SELECT tx_id::text, position, watermark, trend_epoch, events_applied, last_event_at, ledger_head
FROM {schema}.checkpoint WHERE projection = 'postgres'
""",
    # The checkpoint row is updated first: it both checks that nobody moved it (the batch starts
    # exactly where the store stands, and no higher fence has written) and locks it until commit.
    "advance": """
UPDATE {schema}.checkpoint
SET tx_id = %(to_tx)s::text::xid8, position = %(to_pos)s, watermark = %(watermark)s,
    fence = %(fence)s, trend_epoch = %(epoch)s, events_applied = events_applied + %(events)s,
    last_event_at = coalesce(%(last_event_at)s, last_event_at),
    ledger_head = greatest(ledger_head, %(head)s), updated_at = now()
WHERE projection = 'postgres'
  AND tx_id = %(from_tx)s::text::xid8 AND position = %(from_pos)s AND fence <= %(fence)s
""",
    # Sums too small to survive the factor become 0 (see projections.model.keep_above): a float8
    # product that underflows is an error in PostgreSQL.
    "rescale": """
UPDATE {schema}.items
SET trend = CASE WHEN abs(trend) >= %(keep)s THEN trend * %(factor)s ELSE 0 END
WHERE trend <> 0
""",
    # With the per-(item, owner) totals (projections.independent_pg.MOVED): one write per item.
    "items": "WITH"
    + independent_pg.MOVED
    + """
INSERT INTO {schema}.items AS i (item_id, item_type, title, listed_at, up, down, net, wilson,
                                 trend, first_vote_at, last_vote_at, independent, owners)
SELECT e.item_id, c.item_type, coalesce(c.title, ''), c.listed_at, c.up, c.down, c.up - c.down,
       wilson_lower_bound(c.up, c.down), c.trend, c.first_vote_at, c.last_vote_at,
       coalesce(m.score, 0), coalesce(m.count, 0)
FROM jsonb_each(%(items)s::jsonb) AS e(item_id, totals)
     CROSS JOIN LATERAL jsonb_to_record(e.totals)
         AS c(item_type text, title text, listed_at timestamptz, up bigint, down bigint,
              trend float8, first_vote_at timestamptz, last_vote_at timestamptz)
     LEFT JOIN moved AS m ON m.item_id = e.item_id COLLATE "C"
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
    last_vote_at = greatest(i.last_vote_at, excluded.last_vote_at),
    independent = i.independent + excluded.independent,
    owners = i.owners + excluded.owners
""",
    "days": """
INSERT INTO {schema}.daily AS d (day, item_id, item_type, up, down, net, trend)
SELECT byday.day::date, e.item_id, c.item_type, c.up, c.down, c.up - c.down, c.trend
FROM jsonb_each(%s::jsonb) AS byday(day, items), jsonb_each(byday.items) AS e(item_id, totals),
     jsonb_to_record(e.totals) AS c(item_type text, up bigint, down bigint, trend float8)
ON CONFLICT (day, item_id) DO UPDATE SET
    up = d.up + excluded.up, down = d.down + excluded.down, net = d.net + excluded.net,
    trend = d.trend + excluded.trend
""",
    "copy_items": """
COPY {schema}.items (item_id, item_type, title, listed_at, up, down, net, wilson, trend,
                     first_vote_at, last_vote_at, independent, owners) FROM STDIN
""",
    "copy_daily": "COPY {schema}.daily (day, item_id, item_type, up, down, net, trend) FROM STDIN",
    "set_checkpoint": """
UPDATE {schema}.checkpoint
SET tx_id = %s::text::xid8, position = %s, watermark = %s, trend_epoch = %s, events_applied = %s,
    last_event_at = %s, ledger_head = %s, fence = 0, independent_ready = true,
    updated_at = now()
WHERE projection = 'postgres'
""",
    "watermark": "SELECT watermark FROM {schema}.checkpoint WHERE projection = 'postgres'",
    "dump_items": """
SELECT item_id, item_type, title, listed_at, up, down, net, wilson, trend, first_vote_at,
       last_vote_at, independent, owners
FROM {schema}.items
""",
    "dump_daily": "SELECT day, item_id, item_type, up, down, net, trend FROM {schema}.daily",
}


@functools.lru_cache(maxsize=16)
def statements(generation: int) -> dict[str, sql.Composed]:
    """Every statement of the store, composed for one generation."""
    return {key: sql.SQL(text).format(schema=schema(generation)) for key, text in _TEXT.items()}


_encoder = msgspec.json.Encoder()


def _json(value: object) -> str:
    # One JSON parameter, encoded by msgspec in C: psycopg would dump Python lists element by
    # element.
    return _encoder.encode(value).decode()


class PostgresStore:
    """The PostgreSQL read models, through one autocommit connection: the projector role's to
    apply, the owner's to write, switch and drop generations."""

    name = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn

    async def live(self) -> int:
        return await generations.postgres(self.conn)

    async def generations(self) -> list[int]:
        return sorted(g for (g,) in await (await self.conn.execute(_GENERATIONS)).fetchall())

    async def checkpoint(self, generation: int) -> State | None:
        row = await (await self.conn.execute(statements(generation)["load"])).fetchone()
        if row is None:
            return None
        tx_id, position, watermark, epoch, applied, last_event_at, head = row
        checkpoint = Checkpoint(int(tx_id), position)
        return State(checkpoint, watermark, epoch, applied, last_event_at, head)

    async def start(self, generation: int) -> State:
        state = await self.checkpoint(generation)
        if state is None:  # made by create_read_models with its row: never lost on its own
            raise RuntimeError(f"generation {generation} has no postgres checkpoint row")
        # A generation from before the independent chart gets its data once, in place.
        if not await independent_pg.ready(self.conn, generation):
            await independent_pg.fill(self.conn, generation)
        return state

    async def apply(
        self, generation: int, state: State, step: Step, fence: int, half_life: float
    ) -> State:
        q = statements(generation)
        changes = step.changes
        epoch = changes.epoch if changes.epoch is not None else state.epoch
        async with self.conn.transaction():
            cur = await self.conn.execute(q["advance"], _advance_params(state, step, fence, epoch))
            if cur.rowcount != 1:
                raise Fenced("postgres checkpoint moved or a newer lease holder wrote")
            # In pieces split where UTC days close: each closed day's charts are snapshotted
            # between them (projections.snapshots), in this transaction.
            before = state.epoch
            for piece in await snapshot_store.pieces(self.conn, generation, state, step, half_life):
                await snapshot_store.close_days(self.conn, generation, piece, before, half_life)
                before = await self._increments(generation, before, piece.changes, half_life)
        return advanced(state, step)

    async def _increments(
        self, generation: int, before: float | None, changes: Changes, half_life: float
    ) -> float | None:
        """Apply `changes` after the trending epoch `before`; returns the epoch after them."""
        q = statements(generation)
        epoch = changes.epoch if changes.epoch is not None else before
        if before is not None and epoch is not None and epoch != before:
            factor = rescale_factor(before, epoch, half_life)
            rescale = {"factor": factor, "keep": keep_above(factor)}
            await self.conn.execute(q["rescale"], rescale)
        if changes.items:
            owners = independent_pg.owner_rows(changes.owners)
            await self.conn.execute(q["items"], {"items": _json(changes.items), "owners": owners})
        if changes.days:
            await self.conn.execute(q["days"], (_json(_by_day(changes)),))
        return epoch

    async def write(self, generation: int, model: Changes, state: State) -> None:
        q = statements(generation)
        async with self.conn.transaction():
            await self.conn.execute(q["drop"])
            await self.conn.execute(_CREATE, (generation,))
            await self.conn.execute(snapshot_store.CREATE, (generation,))
            async with self.conn.cursor().copy(q["copy_items"]) as copy:
                scores = standings(model.owners)
                for item_id, t in model.items.items():
                    await copy.write_row((*_item_row(item_id, t), *scores.get(item_id, (0, 0))))
            async with self.conn.cursor().copy(q["copy_daily"]) as copy:
                for (day, item_id), d in model.days.items():
                    await copy.write_row((day, item_id, d.item_type, d.up, d.down, d.net, d.trend))
            await independent_pg.write(self.conn, generation, model)
            await self.conn.execute(q["set_checkpoint"], _checkpoint_row(state))

    async def dump(self, generation: int) -> Dump:
        """Rows and checkpoint in one REPEATABLE READ snapshot."""
        q = statements(generation)
        async with self.conn.transaction():
            await self.conn.execute(_SNAPSHOT)
            state = await self.checkpoint(generation)
            assert state is not None
            model, broken = Changes(epoch=state.epoch), []
            async for row in await self.conn.execute(q["dump_items"]):
                broken += _read_item(model, row)
            async for row in await self.conn.execute(q["dump_daily"]):
                broken += _read_day(model, row)
            broken += await independent_pg.dump(self.conn, generation, model)
        return Dump(model, broken, state, Coverage())

    async def switch(self, old: int, new: int) -> bool:
        async with self.conn.transaction():
            await generations.lock_postgres(self.conn)
            if await self._watermark(new) < await self._watermark(old):
                return False
            await generations.set_postgres(self.conn, new)
        return True

    async def drop(self, generation: int) -> None:
        await self.conn.execute(statements(generation)["drop"])

    async def _watermark(self, generation: int) -> int:
        row = await (await self.conn.execute(statements(generation)["watermark"])).fetchone()
        return int(row[0]) if row else 0


def _advance_params(state: State, step: Step, fence: int, epoch: float | None) -> dict[str, object]:
    return {
        "from_tx": str(state.checkpoint.tx_id),
        "from_pos": state.checkpoint.position,
        "to_tx": str(step.checkpoint.tx_id),
        "to_pos": step.checkpoint.position,
        "watermark": step.watermark,
        "fence": fence,
        "epoch": epoch,
        "events": step.events,
        "last_event_at": step.last_event_at,
        "head": step.head,
    }


def _by_day(changes: Changes) -> dict[str, dict[str, DayTotals]]:
    by_day: dict[str, dict[str, DayTotals]] = {}
    for (day, item_id), totals in changes.days.items():
        by_day.setdefault(day.isoformat(), {})[item_id] = totals
    return by_day


def _item_row(item_id: str, t: ItemTotals) -> tuple[object, ...]:
    wilson = wilson_lower_bound(t.up, t.down)
    row = (item_id, t.item_type, t.title or "", t.listed_at, t.up, t.down, t.net, wilson, t.trend)
    return (*row, t.first_vote_at, t.last_vote_at)


def _checkpoint_row(state: State) -> tuple[object, ...]:
    c = state.checkpoint
    applied = state.events_applied
    at, head = state.last_event_at, state.head
    return (str(c.tx_id), c.position, state.watermark, state.epoch, applied, at, head)


def _read_item(model: Changes, row: tuple[Any, ...]) -> list[Difference]:
    """Add one dumped item row to `model`; its derived columns (net, wilson) that disagree with
    its own counts."""
    item_id, item_type, title, listed_at, up, down, net, wilson, trend, first, last, *more = row
    title = title if listed_at else None
    totals = ItemTotals(item_type, title, listed_at, up, down, first, last, trend, *more)
    model.items[item_id] = totals
    key, broken = f"item {item_id}", []
    if net != totals.net:
        broken.append(Difference("postgres", key, "net", totals.net, net))
    if not math.isclose(wilson, totals.wilson, rel_tol=_REL, abs_tol=1e-12):
        broken.append(Difference("postgres", key, "wilson", totals.wilson, wilson))
    return broken


def _read_day(model: Changes, row: tuple[Any, ...]) -> list[Difference]:
    day, item_id, item_type, up, down, net, trend = row
    totals = model.days[(day, item_id)] = DayTotals(item_type, up, down, trend)
    if net != totals.net:
        return [Difference("postgres", f"daily {day} {item_id}", "net", totals.net, net)]
    return []
