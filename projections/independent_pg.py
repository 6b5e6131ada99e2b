"""The independent chart in the PostgreSQL read models (0011_independent.sql).

Each generation keeps the additive per-(item, owner) totals in `item_owners`, and on `items` the
two values they give, `independent` (the sum of the owners' signs) and `owners` (how many vote).
A batch adds its totals and moves each item's two values by what its touched (item, owner) rows
changed, in the statement that adds its item totals (`MOVED`), inside the store's apply
transaction.

`checkpoint.independent_ready` says the generation holds them up to its checkpoint. One made
before the independent chart existed has the columns but no data: `fill` folds the ledger up to
its checkpoint and writes them, in one transaction holding the checkpoint row, so that the
projector upgrades a live generation in place, once, and readers see it before or after.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from events import store
from events.store import Checkpoint
from events.types import VoteCast
from projections.model import Changes, OwnerTotals, standings
from projections.readmodel import Difference

log = logging.getLogger("voteledger.projections")

# The CTEs that add a batch's per-(item, owner) totals (`owner_delta`, one row each from the
# fold) and give each touched item what they move its independent score and owner count by
# (`moved`). An (item, owner)'s totals before the batch are its totals after it (RETURNING)
# less the batch's: no second look-up of the table. The items' upsert
# (projections.postgres_store) joins `moved`, so a batch writes each item row once: its scores
# are indexed columns, and a second update would add a second row version and index entries.
MOVED = """
owner_delta AS (
    SELECT o.item_id COLLATE "C" AS item_id, o.owner COLLATE "C" AS owner, o.value, o.active
    FROM jsonb_to_recordset(%(owners)s::jsonb)
         AS o(item_id text, owner text, value bigint, active bigint)
), owner_new AS (
    INSERT INTO {schema}.item_owners AS t (item_id, owner, value, active)
    SELECT item_id, owner, value, active FROM owner_delta
    ON CONFLICT (item_id, owner) DO UPDATE
    SET value = t.value + excluded.value, active = t.active + excluded.active
    RETURNING t.item_id, t.owner, t.value, t.active
), moved AS (
    SELECT n.item_id,
           sum(sign(n.value) - sign(n.value - d.value))::bigint AS score,
           sum((n.active > 0)::int - (n.active - d.active > 0)::int)::bigint AS count
    FROM owner_new AS n JOIN owner_delta AS d ON d.item_id = n.item_id AND d.owner = n.owner
    GROUP BY n.item_id
)
"""

_TEXT = {
    "copy": "COPY {schema}.item_owners (item_id, owner, value, active) FROM STDIN",
    "dump": "SELECT item_id, owner, value, active FROM {schema}.item_owners",
    "ready": "SELECT independent_ready FROM {schema}.checkpoint WHERE projection = 'postgres'",
    "lock": """
SELECT tx_id::text, position, independent_ready FROM {schema}.checkpoint
WHERE projection = 'postgres' FOR UPDATE
""",
    "set_owners": """
INSERT INTO {schema}.item_owners AS t (item_id, owner, value, active)
SELECT o.item_id, o.owner, o.value, o.active
FROM jsonb_to_recordset(%s::jsonb) AS o(item_id text, owner text, value bigint, active bigint)
ON CONFLICT (item_id, owner) DO UPDATE SET value = excluded.value, active = excluded.active
""",
    "set_items": """
UPDATE {schema}.items AS i SET independent = coalesce(s.independent, 0),
                               owners = coalesce(s.owners, 0)
FROM {schema}.items AS k
LEFT JOIN jsonb_to_recordset(%s::jsonb) AS s(item_id text, independent bigint, owners bigint)
    ON s.item_id = k.item_id
WHERE i.item_id = k.item_id
  AND (i.independent, i.owners) IS DISTINCT FROM (coalesce(s.independent, 0), coalesce(s.owners, 0))
""",
    "mark_ready": """
UPDATE {schema}.checkpoint SET independent_ready = true WHERE projection = 'postgres'
""",
}


@functools.lru_cache(maxsize=16)
def statements(generation: int) -> dict[str, sql.Composed]:
    schema = sql.Identifier(f"rm_g{generation}")
    return {key: sql.SQL(text).format(schema=schema) for key, text in _TEXT.items()}


_encoder = msgspec.json.Encoder()


def owner_rows(owners: dict[tuple[str, str], OwnerTotals]) -> str:
    """A batch's per-(item, owner) totals as MOVED's `owners` parameter."""
    rows = [
        {"item_id": item_id, "owner": owner, "value": t.value, "active": t.active}
        for (item_id, owner), t in owners.items()
    ]
    return _encoder.encode(rows).decode()


async def write(conn: psycopg.AsyncConnection, generation: int, model: Changes) -> None:
    """Copy a whole model's per-(item, owner) totals into a fresh generation."""
    async with conn.cursor().copy(statements(generation)["copy"]) as copy:
        for (item_id, owner), t in model.owners.items():
            await copy.write_row((item_id, owner, t.value, t.active))


async def dump(conn: psycopg.AsyncConnection, generation: int, model: Changes) -> list[Difference]:
    """Read the per-(item, owner) totals into `model` (whose items are read already); the items
    whose stored independent score or owner count disagrees with their own totals."""
    async for item_id, owner, value, active in await conn.execute(statements(generation)["dump"]):
        model.owners[(item_id, owner)] = OwnerTotals(value, active)
    return _inconsistent(model)


def _inconsistent(model: Changes) -> list[Difference]:
    scores, broken = standings(model.owners), []
    for item_id, item in sorted(model.items.items()):
        independent, count = scores.get(item_id, (0, 0))
        if item.independent != independent:
            key = f"item {item_id}"
            broken.append(Difference("postgres", key, "independent", independent, item.independent))
        if item.owners != count:
            broken.append(Difference("postgres", f"item {item_id}", "owners", count, item.owners))
    return broken


async def ready(conn: psycopg.AsyncConnection, generation: int) -> bool:
    row = await (await conn.execute(statements(generation)["ready"])).fetchone()
    return bool(row and row[0])


async def fill(conn: psycopg.AsyncConnection, generation: int) -> bool:
    """Give a generation made before the independent chart its data, once; False when it had
    them already. The checkpoint row stays locked until the data are in: nothing applies
    meanwhile, and readers see the generation before or after."""
    q = statements(generation)
    async with conn.transaction():
        row = await (await conn.execute(q["lock"])).fetchone()
        assert row is not None, f"generation {generation} has no postgres checkpoint row"
        tx_id, position, done = row
        if done:
            return False
        owners = await owner_fold(conn, Checkpoint(int(tx_id), position))
        if owners:
            await conn.execute(q["set_owners"], (owner_rows(owners),))
        scores = [
            {"item_id": item_id, "independent": score, "owners": count}
            for item_id, (score, count) in standings(owners).items()
        ]
        await conn.execute(q["set_items"], (_encoder.encode(scores).decode(),))
        await conn.execute(q["mark_ready"])
    log.warning(
        "postgres generation %d: filled the independent chart up to its checkpoint", generation
    )
    return True


async def owner_fold(
    conn: psycopg.AsyncConnection, upto: Checkpoint
) -> dict[tuple[str, str], OwnerTotals]:
    """The per-(item, owner) totals of the ledger up to `upto` (the owner part of the fold
    alone: nothing else of a generation being filled is missing)."""
    owners: dict[tuple[str, str], OwnerTotals] = {}
    async for recorded in store.read_upto(conn, upto):
        event: Any = recorded.event
        if not isinstance(event, VoteCast):
            continue
        key = (event.item_id, event.owned_by)
        totals = owners.get(key)
        if totals is None:
            totals = owners[key] = OwnerTotals()
        totals.value += event.delta
        totals.active += (event.direction != "none") - (event.previous != "none")
    return owners
