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

_INSERT_AGENT = "INSERT INTO agents (agent_id, name, key_digest) VALUES (%s, %s, %s)"
# FOR UPDATE: two revocations of one agent are serialised, so only one appends AgentRevoked.
_LOCK_AGENT = "SELECT revoked_at IS NOT NULL FROM agents WHERE agent_id = %s FOR UPDATE"
_REVOKE_AGENT = "UPDATE agents SET revoked_at = now() WHERE agent_id = %s"
_AGENT_BY_KEY = "SELECT agent_id, revoked_at FROM agents WHERE key_digest = %s"
_COPY_AGENTS = "COPY agents (agent_id, name, key_digest) FROM STDIN"
_LIST_AGENTS = "SELECT agent_id, name, created_at, revoked_at FROM agents ORDER BY created_at"

API_KEY_PREFIX = "vlk_"


def key_digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewAgent:
    agent_id: uuid.UUID
    api_key: str
    position: int


@dataclass(frozen=True, slots=True)
class Listed:
    """An agent as operators see it: never its key."""

    agent_id: uuid.UUID
    name: str
    created_at: datetime
    revoked_at: datetime | None


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


async def list_agents(pool: AsyncConnectionPool) -> list[Listed]:
    """Every agent, oldest first."""
    async with pool.connection() as conn:
        return [Listed(*row) for row in await (await conn.execute(_LIST_AGENTS)).fetchall()]


def copy_agents(conn: psycopg.Connection, agents: Iterable[uuid.UUID], name: str) -> None:
    """Bulk-insert agents (no events: the caller appends those) with keys nobody holds."""
    with conn.cursor().copy(_COPY_AGENTS) as copy:
        for agent_id in agents:
            copy.write_row((agent_id, name, hashlib.sha256(secrets.token_bytes(16)).digest()))
