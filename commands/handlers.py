"""Command handlers: one transaction per command. All SQL of the command side lives here."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from commands.decide import CastVote, ItemTypeMismatch, Slot, UnknownItem, decide, evolve
from commands.models import VoteOut
from events import store
from events.types import AgentRegistered, AgentRevoked, Direction, ItemListed, ItemType, VoteCast
from infra.metrics import EVENTS_APPENDED

API_KEY_PREFIX = "vlk_"


def key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


# --- agents and catalogue ---------------------------------------------------------------------

_INSERT_AGENT = "INSERT INTO agents (agent_id, name, key_digest) VALUES (%s, %s, %s)"
_REVOKE_AGENT = """
UPDATE agents SET revoked_at = now() WHERE agent_id = %s AND revoked_at IS NULL RETURNING agent_id
"""
_AGENT_EXISTS = "SELECT 1 FROM agents WHERE agent_id = %s"
_AGENT_BY_KEY = "SELECT agent_id, revoked_at FROM agents WHERE key_digest = %s"
_INSERT_ITEM = """
INSERT INTO items (item_id, item_type, title) VALUES (%s, %s, %s)
ON CONFLICT (item_id) DO NOTHING RETURNING item_id
"""


@dataclass(frozen=True, slots=True)
class NewAgent:
    agent_id: uuid.UUID
    api_key: str
    position: int


class AlreadyExists(Exception):
    pass


class NotFound(Exception):
    pass


async def register_agent(pool: AsyncConnectionPool, name: str = "") -> NewAgent:
    """A new agent and its API key. Only the key's digest is stored; the key is shown once."""
    agent_id = uuid.uuid4()
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(_INSERT_AGENT, (agent_id, name, key_digest(api_key)))
        position, _ = await store.append(conn, AgentRegistered(agent_id=agent_id, name=name))
    EVENTS_APPENDED.labels("AgentRegistered").inc()
    return NewAgent(agent_id, api_key, position)


async def revoke_agent(pool: AsyncConnectionPool, agent_id: uuid.UUID) -> int | None:
    """Revoke an agent's key; returns the event position, or None if it was already revoked."""
    async with pool.connection() as conn, conn.transaction():
        if await (await conn.execute(_REVOKE_AGENT, (agent_id,))).fetchone() is None:
            if await (await conn.execute(_AGENT_EXISTS, (agent_id,))).fetchone() is None:
                raise NotFound(str(agent_id))
            return None
        position, _ = await store.append(conn, AgentRevoked(agent_id=agent_id))
    EVENTS_APPENDED.labels("AgentRevoked").inc()
    return position


async def list_item(
    pool: AsyncConnectionPool, item_id: str, item_type: ItemType, title: str
) -> int:
    """Add an item to the catalogue; returns the event position."""
    async with pool.connection() as conn, conn.transaction():
        if await (await conn.execute(_INSERT_ITEM, (item_id, item_type, title))).fetchone() is None:
            raise AlreadyExists(item_id)
        position, _ = await store.append(
            conn, ItemListed(item_id=item_id, item_type=item_type, title=title)
        )
    EVENTS_APPENDED.labels("ItemListed").inc()
    return position


# --- votes ------------------------------------------------------------------------------------
#
# Votes that arrive together are recorded in one transaction: one commit, so one WAL flush, for
# the lot (on a durable disk the flush, not the work, is what limits single-vote transactions).
# A batch costs three round trips however large it is (pipeline mode; a fourth when a request
# reuses an idempotency key, to read the stored response): slot locks, then the slot
# states with their agents' revocation, idempotency claims and unknown item types; the events
# (their positions come back); the slots' new states, stored idempotent responses and the COMMIT.
# `decide` runs in between, command by command, on the slots as each leaves them.

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
# The key-to-agent mapping never changes and is cached; revocation is checked in every batch.
# Every write of a slot happens under its lock, so the states read after the locks are the
# latest (each statement takes a new snapshot) and stay so until this transaction commits. A slot
# with no row yet reads as NULLs: the empty slot.
_SLOT_STATES = """
SELECT t.a, t.i, s.direction, s.cast_at, s.version, s.last_position, ag.revoked_at IS NOT NULL
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, i text)
JOIN agents AS ag ON ag.agent_id = t.a
LEFT JOIN vote_slots AS s ON s.agent_id = t.a AND s.item_id = t.i
"""
_ITEM_TYPES = "SELECT item_id, item_type FROM items WHERE item_id = ANY(%s)"
# A slot's cast time is its last event's recorded time: both are now(), the transaction's start.
_SAVE_SLOTS = """
INSERT INTO vote_slots AS s (agent_id, item_id, direction, cast_at, version, last_position)
SELECT t.a, t.i, t.d, now(), t.v, t.p
FROM jsonb_to_recordset(%s::jsonb) AS t(a uuid, i text, d text, v bigint, p bigint)
ON CONFLICT (agent_id, item_id) DO UPDATE SET
    direction = EXCLUDED.direction, cast_at = EXCLUDED.cast_at,
    version = EXCLUDED.version, last_position = EXCLUDED.last_position
"""
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


@dataclass(frozen=True, slots=True)
class Reply:
    """A status and body, exactly as sent and, with an idempotency key, as replayed."""

    status: int
    body: bytes
    replayed: bool = False


class KeyReuseMismatch(Exception):
    """An idempotency key was reused with a different request."""


class Revoked(Exception):
    """The agent's key was revoked."""


@dataclass(frozen=True, slots=True)
class VoteRequest:
    command: CastVote
    idempotency_key: str | None = None

    @property
    def slot(self) -> tuple[uuid.UUID, str]:
        return self.command.agent_id, self.command.item_id


Outcome = Reply | Exception  # what one vote request gets: its reply, or why it was refused


class Known:
    """Facts that never change once written, cached per process: which agent an API key digest
    belongs to, and an item's type. Bounded; only what the database confirmed is kept."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self.agents: OrderedDict[bytes, uuid.UUID] = OrderedDict()
        self.item_types: OrderedDict[str, ItemType] = OrderedDict()

    @staticmethod
    def _put(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > size:
            cache.popitem(last=False)


def request_hash(command: CastVote) -> bytes:
    canonical = msgspec.json.encode(
        [str(command.agent_id), command.item_id, command.direction, command.claimed_item_type]
    )
    return hashlib.sha256(canonical).digest()


async def agent_for_key(
    pool: AsyncConnectionPool, api_key: str, known: Known
) -> tuple[uuid.UUID, bool] | None:
    """The agent an API key belongs to and whether it is revoked; None for an unknown key.

    A key seen before answers from the cache as not revoked: every vote checks revocation itself.
    """
    digest = key_digest(api_key)
    agent_id = known.agents.get(digest)
    if agent_id is not None:
        return agent_id, False
    async with pool.connection() as conn:
        row = await (await conn.execute(_AGENT_BY_KEY, (digest,))).fetchone()
    if row is None:
        return None
    Known._put(known.agents, digest, row[0], known.size)
    return row[0], row[1] is not None


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


_encoder = msgspec.json.Encoder()


def _rows(names: str, rows: Iterable[tuple[Any, ...]]) -> tuple[str]:
    """A batch's rows as the one JSON parameter of a statement (read with jsonb_to_recordset):
    psycopg dumps a Python list element by element, msgspec encodes the lot in C. Each column is
    named by one letter of `names`; bytes become base64."""
    return (_encoder.encode([dict(zip(names, row, strict=True)) for row in rows]).decode(),)


async def record_votes(
    pool: AsyncConnectionPool, requests: list[VoteRequest], known: Known
) -> list[Outcome]:
    """Record a batch of votes in one transaction; one outcome per request, in order."""
    slots = list({r.slot for r in requests})  # the lock statement orders them
    item_types = {
        r.command.item_id: known.item_types[r.command.item_id]
        for r in requests
        if r.command.item_id in known.item_types
    }
    unknown_items = sorted({r.command.item_id for r in requests} - item_types.keys())
    # One request per idempotency key does the work; repeats within the batch share its reply.
    owners: dict[tuple[uuid.UUID, str], int] = {}
    for n, r in enumerate(requests):
        if r.idempotency_key is not None:
            owners.setdefault((r.command.agent_id, r.idempotency_key), n)
    claims = list(owners)  # the claim statement orders them
    outcomes: list[Outcome | None] = [None] * len(requests)
    decided: list[tuple[int, VoteCast]] = []  # (request, event), in decision order
    async with pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(_LOCK_SLOTS, _rows("ai", slots))
        claim_cur = None
        if claims:
            hashed = [(a, k, request_hash(requests[owners[a, k]].command)) for a, k in claims]
            claim_cur = await conn.execute(_CLAIM_KEYS, _rows("akh", hashed))
        items_cur = await conn.execute(_ITEM_TYPES, (unknown_items,)) if unknown_items else None
        slot_rows = await (await conn.execute(_SLOT_STATES, _rows("ai", slots))).fetchall()
        # -- round trip 1 done: everything above is answered
        revoked = {row[0] for row in slot_rows if row[-1]}
        claimed = {(a, k) for a, k in await claim_cur.fetchall()} if claim_cur else set()
        for item_id, item_type in await items_cur.fetchall() if items_cur else []:
            item_types[item_id] = item_type
            Known._put(known.item_types, item_id, item_type, known.size)
        replays = await _replays(conn, [k for k in claims if k not in claimed])
        state = {
            (a, i): (Slot(direction=d, cast_at=c, version=v), p)
            for a, i, d, c, v, p, _ in slot_rows
            if d is not None
        }
        for n, r in enumerate(requests):
            key = (r.command.agent_id, r.idempotency_key or "")
            if r.idempotency_key is not None and owners[key] != n:
                continue  # answered after the batch, with its key's owner
            if r.idempotency_key is not None and key in replays:
                outcomes[n] = _replayed(r.command, replays[key])
            elif r.command.agent_id in revoked:
                outcomes[n] = Revoked(str(r.command.agent_id))
            else:
                outcomes[n] = _decide(r, item_types, state, decided, n)
        positions = []
        if decided:
            appends = await store.append_all_later(conn, [event for _, event in decided])
            positions = await store.positions(appends)
        # -- round trip 2 done: the events have their positions
        last_position: dict[tuple[uuid.UUID, str], int] = {}
        for (n, event), position in zip(decided, positions, strict=True):
            last_position[requests[n].slot] = position
            outcomes[n] = _reply(requests[n].command, event.previous, True, position)
        if last_position:
            saved = [
                (a, i, state[a, i][0].direction, state[a, i][0].version, p)
                for (a, i), p in last_position.items()
            ]
            await conn.execute(_SAVE_SLOTS, _rows("aidvp", saved))
        stored = [
            (k, outcomes[n]) for k, n in owners.items()
            if k in claimed and isinstance(outcomes[n], Reply)
        ]  # fmt: skip
        # A refused request leaves its key free, as if it had never been made.
        released = [k for k, n in owners.items() if k in claimed and k not in dict(stored)]
        if released:
            await conn.execute(_RELEASE_KEYS, _rows("ak", released))
        if stored:
            responses = [(a, k, o.status, o.body) for (a, k), o in stored]  # type: ignore[union-attr]
            await conn.execute(_STORE_RESPONSES, _rows("aksr", responses))
        # -- leaving the transaction sends the COMMIT: round trip 3
    for n, r in enumerate(requests):
        if outcomes[n] is None:  # a repeat of an idempotency key within the batch
            owner = owners[(r.command.agent_id, r.idempotency_key or "")]
            outcomes[n] = _repeat(r.command, requests[owner].command, outcomes[owner])
    if decided:
        EVENTS_APPENDED.labels("VoteCast").inc(len(decided))
    return [o for o in outcomes if o is not None]


def _decide(
    request: VoteRequest,
    item_types: dict[str, ItemType],
    state: dict[tuple[uuid.UUID, str], tuple[Slot, int | None]],
    decided: list[tuple[int, VoteCast]],
    n: int,
) -> Outcome | None:
    """Decide one request against its slot as the batch has left it so far."""
    command = request.command
    slot, last = state.get(request.slot, (Slot(), None))
    try:
        events = decide(command, item_types.get(command.item_id), slot)
    except (UnknownItem, ItemTypeMismatch) as exc:
        return exc
    if not events:
        return _reply(command, slot.direction, False, last)
    for event in events:
        slot = evolve(slot, event, None)
        decided.append((n, event))
    state[request.slot] = (slot, last)
    return None  # answered once the event has its position


def _reply(command: CastVote, previous: Direction, changed: bool, position: int | None) -> Reply:
    body = VoteOut(position, command.item_id, command.direction, previous, changed)
    return Reply(201 if changed else 200, msgspec.json.encode(body))


async def _replays(
    conn: psycopg.AsyncConnection, keys: list[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], tuple[bytes, int, bytes]]:
    """The stored (request hash, status, body) of keys another request has already used."""
    if not keys:
        return {}
    rows = await (await conn.execute(_STORED_KEYS, _rows("ak", keys))).fetchall()
    return {(a, k): (bytes(h), status, bytes(body)) for a, k, h, status, body in rows}


def _replayed(command: CastVote, stored: tuple[bytes, int, bytes]) -> Outcome:
    request_digest, status, body = stored
    if request_digest != request_hash(command):
        return KeyReuseMismatch(str(command.agent_id))
    return Reply(status, body, replayed=True)


def _repeat(command: CastVote, first: CastVote, outcome: Outcome | None) -> Outcome:
    """A second request with the key of an earlier one in the same batch."""
    if request_hash(command) != request_hash(first):
        return KeyReuseMismatch(str(command.agent_id))
    if isinstance(outcome, Reply):
        return Reply(outcome.status, outcome.body, replayed=True)
    assert outcome is not None
    return outcome


async def purge_idempotency_keys(pool: AsyncConnectionPool, ttl_seconds: int) -> int:
    """Delete idempotency keys older than the TTL; returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute(_PURGE_KEYS, (ttl_seconds,))
        return cur.rowcount
