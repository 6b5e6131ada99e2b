"""Command handlers: one transaction per command. All SQL of the command side lives here."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from commands.decide import CastVote, Slot, decide, evolve
from events import store
from events.types import AgentRegistered, AgentRevoked, ItemListed, ItemType, VoteCast
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
# A vote costs two round trips to PostgreSQL (pipeline mode): one sends the slot lock, the
# revocation check, the idempotency claim, the item lookup and the slot read together; `decide`
# runs on the answers; the second sends the event, the slot update and the COMMIT.

# Taken before anything else in a vote's transaction, and it assigns no transaction id. So two
# votes on one slot get their transaction ids in the order they hold the slot, and the projectors,
# which read in transaction-id order, see each slot's events in the order they were decided: no
# read model ever shows a transient count (such as -1 up) that the slot never had.
_SLOT_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s::text), hashtext(%s))"
# The key-to-agent mapping never changes and is cached; revocation is checked in every vote.
_AGENT_REVOKED = "SELECT revoked_at IS NOT NULL FROM agents WHERE agent_id = %s"
_ITEM_TYPE = "SELECT item_type FROM items WHERE item_id = %s"
# The slot row serialises every vote of one agent on one item. Creating it first (a no-op when it
# exists, or when there is no such item) means concurrent first votes queue on the same row.
_ENSURE_SLOT = """
INSERT INTO vote_slots (agent_id, item_id) SELECT %s, item_id FROM items WHERE item_id = %s
ON CONFLICT DO NOTHING
"""
_LOCK_SLOT = """
SELECT direction, cast_at, version, last_position FROM vote_slots
WHERE agent_id = %s AND item_id = %s FOR UPDATE
"""
# The slot's cast time is its event's recorded time (both are now(), the transaction's start),
# and its last position the one the event just drew.
_UPDATE_SLOT = """
UPDATE vote_slots
SET direction = %s, cast_at = now(), version = %s,
    last_position = currval(pg_get_serial_sequence('events', 'position'))
WHERE agent_id = %s AND item_id = %s
"""
# Inserted in the first round trip: a concurrent request with the same key blocks on this row
# until the first commits (then replays its response) or rolls back (then acts itself).
_CLAIM_KEY = """
INSERT INTO idempotency_keys (agent_id, key, request_hash) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING RETURNING 1
"""
_STORED_KEY = """
SELECT request_hash, status, response FROM idempotency_keys WHERE agent_id = %s AND key = %s
"""
_STORE_RESPONSE = """
UPDATE idempotency_keys SET status = %s, response = %s WHERE agent_id = %s AND key = %s
"""
_PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)"


class VoteResult(msgspec.Struct, frozen=True):
    position: int | None
    item_id: str
    vote: str
    previous: str
    changed: bool


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

    A key seen before answers from the cache as not revoked: each vote checks revocation itself.
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
    """Record a vote: lock the slot, decide, append, all in one transaction."""
    known = known or Known(0)
    key = (command.agent_id, command.item_id)
    item_type = known.item_types.get(command.item_id)
    appended = None
    async with pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(_SLOT_LOCK, key)
        revoked = await conn.execute(_AGENT_REVOKED, (command.agent_id,))
        claim = None
        if idempotency_key is not None:
            claim = await conn.execute(
                _CLAIM_KEY, (command.agent_id, idempotency_key, request_hash(command))
            )
        item = None if item_type else await conn.execute(_ITEM_TYPE, (command.item_id,))
        await conn.execute(_ENSURE_SLOT, key)
        slot_row = await (await conn.execute(_LOCK_SLOT, key)).fetchone()  # round trip 1
        if (await revoked.fetchone() or (True,))[0]:
            raise Revoked(str(command.agent_id))
        if claim is not None and await claim.fetchone() is None:
            return await _replay(conn, command, idempotency_key)  # type: ignore[arg-type]
        if item is not None:
            row = await item.fetchone()
            item_type = row[0] if row else None
            if item_type:
                Known._put(known.item_types, command.item_id, item_type, known.size)
        slot, position = Slot(), None
        if slot_row is not None:
            direction, cast_at, version, position = slot_row
            slot = Slot(direction=direction, cast_at=cast_at, version=version)
        events = decide(command, item_type, slot)  # raises for an unknown item or wrong type
        for event in events:
            appended = await store.append_later(conn, event)
            slot = evolve(slot, event, None)
            await conn.execute(
                _UPDATE_SLOT, (slot.direction, slot.version, command.agent_id, command.item_id)
            )
        if idempotency_key is not None:
            if appended is not None:  # the stored body needs the position: one more trip
                position, appended = (await store.appended(appended))[0], None
            reply = _reply(command, events, slot, position)
            await conn.execute(
                _STORE_RESPONSE, (reply.status, reply.body, command.agent_id, idempotency_key)
            )
        # Leaving the pipeline sends the COMMIT with the event: round trip 2. (The result is read
        # before the connection goes back to the pool, which resets it.)
        if appended is not None:
            position = (await store.appended(appended))[0]
    if events:
        EVENTS_APPENDED.labels("VoteCast").inc(len(events))
    return _reply(command, events, slot, position)


def _reply(command: CastVote, events: list[VoteCast], slot: Slot, position: int | None) -> Reply:
    return Reply(
        201 if events else 200,
        msgspec.json.encode(
            VoteResult(
                position=position,
                item_id=command.item_id,
                vote=command.direction,
                previous=events[0].previous if events else slot.direction,
                changed=bool(events),
            )
        ),
    )


async def _replay(conn: psycopg.AsyncConnection, command: CastVote, key: str) -> Reply:
    """The stored response of a request already made with this key."""
    row = await (await conn.execute(_STORED_KEY, (command.agent_id, key))).fetchone()
    assert row is not None and row[1] is not None, "a claimed key always commits with its response"
    if bytes(row[0]) != request_hash(command):
        raise KeyReuseMismatch(key)
    return Reply(row[1], bytes(row[2]), replayed=True)


async def purge_idempotency_keys(pool: AsyncConnectionPool, ttl_seconds: int) -> int:
    """Delete idempotency keys older than the TTL; returns how many."""
    async with pool.connection() as conn:
        cur = await conn.execute(_PURGE_KEYS, (ttl_seconds,))
        return cur.rowcount
