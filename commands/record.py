"""The vote transaction: records a batch of votes, and owns the tables only votes write.

Owns `vote_slots` (each agent's current vote on each item) and `idempotency_keys`; the decisions
are `commands/plan.py`'s, this module only runs the round trips around them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from commands import catalogue
from commands.decide import CastVote, Slot
from commands.known import Known
from commands.plan import (
    Answer,
    Found,
    KeyId,
    Outcome,
    Reply,
    Stored,
    VoteRequest,
    claims,
    plan_batch,
)
from events import store
from events.types import Event
from infra.metrics import EVENTS_APPENDED

# Votes that arrive together are recorded in one transaction: one commit, so one WAL flush, for
# the lot (on a durable disk the flush, not the work, is what limits single-vote transactions).
# A batch costs three round trips however large it is (pipeline mode; a fourth when a request
# reuses an idempotency key, to read the stored response): slot locks, then the slot
# states with their agents' revocation, idempotency claims and unknown item types; the events
# (their positions come back); the slots' new states, stored idempotent responses and the COMMIT.
# `plan_batch` runs in between, deciding command by command on the slots as each leaves them.

# Taken before anything else, in one order, and assigning no transaction id: two votes on one slot
# get their transaction ids in the order they hold the slot, so the projectors, which read in
# transaction-id order, see each slot's events in the order they were decided; no read model ever
# shows a transient count (such as -1 up) that the slot never had. Taking them in the order of
# their keys means two batches never wait for each other in a cycle: PostgreSQL evaluates a
# volatile function of the select list after the ORDER BY's sort, row by row in sorted order.
_LOCK_SLOTS = """
SELECT pg_advisory_xact_lock(k1, k2)
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, i text), hashtext(a::text) AS k1, hashtext(i) AS k2
ORDER BY k1, k2
"""
# The key-to-agent mapping never changes and is cached; revocation is checked in every batch,
# and the agent's owner (which never changes either) comes with that lookup, for its VoteCast.
# Every write of a slot happens under its lock, so the states read after the locks are the
# latest (each statement takes a new snapshot) and stay so until this transaction commits. A slot
# with no row yet reads as NULLs: the empty slot. Each row is looked up by its primary key (the
# LIMIT keeps the planner from turning the lookups into a join): the planner guesses 100 rows for
# any jsonb_to_recordset, and for 100 rows it would rather hash-join a sequential scan of the
# whole table, a cost that grows with the table.
_SLOT_STATES = """
SELECT t.a, t.i, s.direction, s.cast_at, s.version, s.last_position, ag.owner, ag.revoked
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, i text)
CROSS JOIN LATERAL (
    SELECT owner, revoked_at IS NOT NULL AS revoked FROM agents WHERE agent_id = t.a LIMIT 1
) AS ag
LEFT JOIN LATERAL (
    SELECT * FROM vote_slots WHERE agent_id = t.a AND item_id = t.i LIMIT 1
) AS s ON true
"""
# A slot's cast time is its last event's recorded time: both are now(), the transaction's start.
_SAVE_SLOTS = """
INSERT INTO vote_slots AS s (agent_id, item_id, direction, cast_at, version, last_position)
SELECT t.a, t.i, t.d, now(), t.v, t.p
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, i text, d text, v bigint, p bigint)
ON CONFLICT (agent_id, item_id) DO UPDATE SET
    direction = EXCLUDED.direction, cast_at = EXCLUDED.cast_at,
    version = EXCLUDED.version, last_position = EXCLUDED.last_position
"""
_COPY_SLOTS = "COPY vote_slots (agent_id, item_id, direction, cast_at, version) FROM STDIN"
# Claimed in the first round trip: a concurrent request with the same key blocks on its row until
# the first commits (then replays its response) or rolls back (then acts itself).
_CLAIM_KEYS = """
INSERT INTO idempotency_keys (agent_id, key, request_hash)
SELECT t.a, t.k, decode(t.h, 'base64')
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, k text, h text) ORDER BY 1, 2
ON CONFLICT DO NOTHING RETURNING agent_id, key
"""
_STORED_KEYS = """
SELECT k.agent_id, k.key, k.request_hash, k.status, k.response FROM idempotency_keys AS k
JOIN jsonb_to_recordset(%s::jsonb) AS t(a uuid, k text) ON k.agent_id = t.a AND k.key = t.k
"""
_STORE_RESPONSES = """
UPDATE idempotency_keys AS k SET status = t.s, response = decode(t.r, 'base64')
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, k text, s smallint, r text)
WHERE k.agent_id = t.a AND k.key = t.k
"""
_RELEASE_KEYS = """
DELETE FROM idempotency_keys AS k USING jsonb_to_recordset(%s::jsonb) AS t(a uuid, k text)
WHERE k.agent_id = t.a AND k.key = t.k
"""
_PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)"
# The statistics' live-row count: an estimate, kept current without a scan of the table.
_COUNT_KEYS = """
SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables
WHERE relid = 'idempotency_keys'::regclass
"""

_encoder = msgspec.json.Encoder()


def _rows(names: str, rows: Iterable[tuple[Any, ...]]) -> tuple[str]:
    """A batch's rows as the one JSON parameter of a statement (read with jsonb_to_recordset):
    psycopg dumps a Python list element by element, msgspec encodes the lot in C. Each column is
    named by one letter of `names`; bytes become base64."""
    return (_encoder.encode([dict(zip(names, row, strict=True)) for row in rows]).decode(),)


async def cast_vote(
    pool: AsyncConnectionPool,
    command: CastVote,
    idempotency_key: str | None = None,
    known: Known | None = None,
) -> Reply:
    """Record one vote (a batch of one); raises what refused it."""
    [outcome] = await record_votes(pool, [VoteRequest(command, idempotency_key)], known or Known(0))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def record_votes(
    pool: AsyncConnectionPool, requests: list[VoteRequest], known: Known
) -> list[Outcome]:
    """Record a batch of votes in one transaction; one outcome per request, in order."""
    async with pool.connection() as conn, conn.pipeline(), conn.transaction():
        plan = plan_batch(requests, await _read(conn, requests, known))
        positions = await _append(conn, [event for _, event in plan.events])
        # -- round trip 2 done: the events have their positions
        answer = plan.answer(positions)
        await _write(conn, answer)
        # -- leaving the transaction sends the COMMIT: round trip 3
    if plan.events:
        EVENTS_APPENDED.labels("VoteCast").inc(len(plan.events))
    return answer.outcomes


async def _read(conn: psycopg.AsyncConnection, requests: list[VoteRequest], known: Known) -> Found:
    """Lock the batch's slots, claim its idempotency keys, and read what deciding needs."""
    slots = list({r.slot for r in requests})  # the lock statement orders them
    item_ids = {r.command.item_id for r in requests}
    item_types = {i: known.item_types[i] for i in item_ids if i in known.item_types}
    hashes = claims(requests)  # the claim statement orders them
    await conn.execute(_LOCK_SLOTS, _rows("ai", slots))
    claim_cur = None
    if hashes:
        claim_cur = await conn.execute(
            _CLAIM_KEYS, _rows("akh", [(*k, h) for k, h in hashes.items()])
        )
    unknown_items = sorted(item_ids - item_types.keys())
    items_cur = await catalogue.item_types_later(conn, unknown_items) if unknown_items else None
    slot_rows = await (await conn.execute(_SLOT_STATES, _rows("ai", slots))).fetchall()
    # -- round trip 1 done: everything above is answered
    claimed = {(a, k) for a, k in await claim_cur.fetchall()} if claim_cur else set()
    for item_id, item_type in await items_cur.fetchall() if items_cur else []:
        item_types[item_id] = item_type
        known.add_item_type(item_id, item_type)
    return Found(
        slots={(a, i): (Slot(d, c, v), p) for a, i, d, c, v, p, _, _ in slot_rows if d is not None},
        revoked={row[0] for row in slot_rows if row[-1]},
        owners={row[0]: row[-2] for row in slot_rows},
        item_types=item_types,
        claimed=claimed,
        stored=await _stored(conn, [k for k in hashes if k not in claimed]),
    )


async def _stored(conn: psycopg.AsyncConnection, keys: list[KeyId]) -> dict[KeyId, Stored]:
    """The stored responses of keys another request has already used."""
    if not keys:
        return {}
    rows = await (await conn.execute(_STORED_KEYS, _rows("ak", keys))).fetchall()
    return {(a, k): Stored(bytes(h), status, bytes(body)) for a, k, h, status, body in rows}


async def _append(conn: psycopg.AsyncConnection, events: list[Event]) -> list[int]:
    """Append the events; their positions, in order."""
    if not events:
        return []
    return await store.positions(await store.append_all_later(conn, events))


async def _write(conn: psycopg.AsyncConnection, answer: Answer) -> None:
    """Send the slots' new states and the idempotency keys' fates (answered with the COMMIT)."""
    if answer.slots:
        await conn.execute(_SAVE_SLOTS, _rows("aidvp", answer.slots))
    if answer.released:
        await conn.execute(_RELEASE_KEYS, _rows("ak", answer.released))
    if answer.stored:
        await conn.execute(_STORE_RESPONSES, _rows("aksr", answer.stored))


async def purge_idempotency_keys(pool: AsyncConnectionPool, ttl_seconds: int) -> tuple[int, int]:
    """Delete idempotency keys older than the TTL; returns how many, and about how many are left."""
    async with pool.connection() as conn:
        purged = (await conn.execute(_PURGE_KEYS, (ttl_seconds,))).rowcount
        row = await (await conn.execute(_COUNT_KEYS)).fetchone()
        return purged, row[0] if row else 0


def copy_slots(conn: psycopg.Connection, slots: Iterable[tuple[uuid.UUID, str, Slot]]) -> None:
    """Bulk-insert slots with no last position (seeding: their events are appended in bulk)."""
    with conn.cursor().copy(_COPY_SLOTS) as copy:
        for agent_id, item_id, slot in slots:
            copy.write_row((agent_id, item_id, slot.direction, slot.cast_at, slot.version))
