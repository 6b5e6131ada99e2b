"""Agents and their API keys: registration, revocation, and which agent a key belongs to.

Owns the `agents` table: only a key's SHA-256 digest is stored; the key itself is shown once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg_pool import AsyncConnectionPool

from commands.known import Known
from events import store
from events.types import AgentRegistered, AgentRevoked
from infra.metrics import EVENTS_APPENDED

_INSERT_AGENT = "INSERT INTO agents (agent_id, name, key_digest, owner) VALUES (%s, %s, %s, %s)"
# Registrations under one owner are serialised by a transaction-scoped lock on the owner (one
# bigint key: a key space apart from the vote slots' two-int4 locks), so two of them cannot
# both see room for one more agent. Counted after the lock: READ COMMITTED gives the count a
# snapshot taken after the other registration committed.
_LOCK_OWNER = "SELECT pg_advisory_xact_lock(hashtextextended('owner:' || %s, 0))"
_COUNT_OWNED = "SELECT count(*) FROM agents WHERE owner = %s AND revoked_at IS NULL"
# FOR UPDATE: two revocations of one agent are serialised, so only one appends AgentRevoked.
_LOCK_AGENT = "SELECT revoked_at IS NOT NULL FROM agents WHERE agent_id = %s FOR UPDATE"
_REVOKE_AGENT = "UPDATE agents SET revoked_at = now() WHERE agent_id = %s"
_AGENT_BY_KEY = "SELECT agent_id, revoked_at FROM agents WHERE key_digest = %s"
_PROFILE_BY_KEY = (
    "SELECT agent_id, name, owner, revoked_at IS NOT NULL FROM agents WHERE key_digest = %s"
)
_COPY_AGENTS = "COPY agents (agent_id, name, key_digest, owner) FROM STDIN"
_LIST_AGENTS = (
    "SELECT agent_id, name, owner, created_at, revoked_at FROM agents ORDER BY created_at"
)

API_KEY_PREFIX = "vlk_"


def key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewAgent:
    agent_id: uuid.UUID
    api_key: str
    position: int
    owner: str


@dataclass(frozen=True, slots=True)
class Listed:
    """An agent as operators see it: never its key."""

    agent_id: uuid.UUID
    name: str
    owner: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Profile:
    """An agent as its own key shows it."""

    agent_id: uuid.UUID
    name: str
    owner: str
    revoked: bool


class NotFound(Exception):
    pass


class OwnerLimit(Exception):
    """The owner already has as many agents (not revoked) as the cap allows."""

    def __init__(self, owner: str, cap: int) -> None:
        super().__init__(f"owner {owner!r} already has {cap} agents, the most one owner may have")
        self.owner = owner
        self.cap = cap


async def register_agent(
    pool: AsyncConnectionPool,
    name: str = "",
    owner: str | None = None,
    max_per_owner: int | None = None,
) -> NewAgent:
    """A new agent and its API key. Only the key's digest is stored; the key is shown once.

    Without an owner the agent is its own (its id as text); the event names the owner either way.
    With `max_per_owner`, raises OwnerLimit when the owner's agents not revoked already reach it.
    """
    agent_id = uuid.uuid4()
    owner = owner or str(agent_id)
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with pool.connection() as conn, conn.transaction():
        if max_per_owner is not None:
            await conn.execute(_LOCK_OWNER, (owner,))
            row = await (await conn.execute(_COUNT_OWNED, (owner,))).fetchone()
            if row is not None and row[0] >= max_per_owner:
                raise OwnerLimit(owner, max_per_owner)
        await conn.execute(_INSERT_AGENT, (agent_id, name, key_digest(api_key), owner))
        event = AgentRegistered(agent_id=agent_id, name=name, owner=owner)
        position, _ = await store.append(conn, event)
    EVENTS_APPENDED.labels("AgentRegistered").inc()
    return NewAgent(agent_id, api_key, position, owner)


async def revoke_agent(pool: AsyncConnectionPool, agent_id: uuid.UUID) -> int | None:
    """Revoke an agent's key; returns the event position, or None if it was already revoked.

    The event comes first: the database lets `revoked_at` be set only in a transaction that has
    appended the agent's AgentRevoked (0006_guards.sql), so a bare UPDATE cannot revoke behind
    the ledger's back.
    """
    async with pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(_LOCK_AGENT, (agent_id,))).fetchone()
        if row is None:
            raise NotFound(str(agent_id))
        if row[0]:
            return None
        position, _ = await store.append(conn, AgentRevoked(agent_id=agent_id))
        await conn.execute(_REVOKE_AGENT, (agent_id,))
    EVENTS_APPENDED.labels("AgentRevoked").inc()
    return position


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
    known.add_agent(digest, row[0])
    return row[0], row[1] is not None


async def profile_for_key(pool: AsyncConnectionPool, api_key: str) -> Profile | None:
    """The agent an API key belongs to, read afresh (never from the key cache, so a revoked key
    reads as revoked at once); None for an unknown key."""
    async with pool.connection() as conn:
        row = await (await conn.execute(_PROFILE_BY_KEY, (key_digest(api_key),))).fetchone()
    return None if row is None else Profile(*row)


async def list_agents(pool: AsyncConnectionPool) -> list[Listed]:
    """Every agent, oldest first."""
    async with pool.connection() as conn:
        return [Listed(*row) for row in await (await conn.execute(_LIST_AGENTS)).fetchall()]


def copy_agents(
    conn: psycopg.Connection, agents: Iterable[tuple[uuid.UUID, str]], name: str
) -> None:
    """Bulk-insert (agent, owner) pairs (no events: the caller appends those) with keys nobody
    holds."""
    with conn.cursor().copy(_COPY_AGENTS) as copy:
        for agent_id, owner in agents:
            digest = hashlib.sha256(secrets.token_bytes(16)).digest()
            copy.write_row((agent_id, name, digest, owner))
