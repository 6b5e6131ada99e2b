"""The naive design: the seed's own design written plainly, the baseline of the whole-stack bench.

    uvicorn --factory bench.naive:create_app   (DATABASE_URL; tables made by `prepare`)

One FastAPI app, one `votes` table with UNIQUE (agent_id, item_id), a `votes` counter column on
`items` updated in the same statement as the vote, top lists read with ORDER BY. Agents send the
same bearer keys as to voteledger (stored as the same SHA-256 hashes) and the same bodies; one
durable transaction per vote, one round trip. It has none of voteledger's guarantees (no ledger,
no idempotency keys, no rate limit, no read models): that is the point of comparing.

Written the way a competent engineer would write it plainly, not sandbagged: a connection pool,
one statement per request, pydantic validation, the counter kept in the same transaction. Top
lists sort `items` on each request (no index on the counter, so that the counter update stays a
HOT update: an index there would slow every vote down).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import psycopg
from fastapi import FastAPI, Header, HTTPException, Query
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

SCHEMA = "naive"

TABLES = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.agents (agent_id uuid PRIMARY KEY, key_hash bytea NOT NULL UNIQUE);
CREATE TABLE {SCHEMA}.items (
    item_id text PRIMARY KEY,
    item_type text NOT NULL,
    title text NOT NULL,
    votes integer NOT NULL DEFAULT 0
);
CREATE TABLE {SCHEMA}.votes (
    agent_id uuid NOT NULL REFERENCES {SCHEMA}.agents,
    item_id text NOT NULL REFERENCES {SCHEMA}.items,
    vote smallint NOT NULL,
    voted_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, item_id)
);
"""

# The vote and the counter in one statement: the agent's old vote (locked), the upsert, and the
# counter moved by the difference. No row back: unknown key. An unknown item fails the FK.
VOTE = f"""
WITH agent AS (
    SELECT agent_id FROM {SCHEMA}.agents WHERE key_hash = %(key)s
), old AS (
    SELECT v.vote FROM {SCHEMA}.votes v JOIN agent a USING (agent_id)
    WHERE v.item_id = %(item)s FOR UPDATE
), new AS (
    INSERT INTO {SCHEMA}.votes (agent_id, item_id, vote)
    SELECT agent_id, %(item)s, %(vote)s FROM agent
    ON CONFLICT (agent_id, item_id) DO UPDATE SET vote = excluded.vote, voted_at = now()
    RETURNING vote
)
UPDATE {SCHEMA}.items
SET votes = votes + (SELECT vote FROM new) - coalesce((SELECT vote FROM old), 0)
WHERE item_id = %(item)s AND EXISTS (SELECT 1 FROM new)
RETURNING votes
"""

TOP = f"""
SELECT item_id, title, votes FROM {SCHEMA}.items
WHERE item_type = %s ORDER BY votes DESC, item_id LIMIT %s
"""

SIGN = {"up": 1, "down": -1, "none": 0}


def prepare(conn: psycopg.Connection) -> None:
    """The naive tables, holding voteledger's agents (their key hashes) and catalogue."""
    conn.execute(TABLES)  # type: ignore[arg-type]
    conn.execute(f"INSERT INTO {SCHEMA}.agents SELECT agent_id, key_digest FROM agents")  # type: ignore[arg-type]
    conn.execute(  # type: ignore[arg-type]
        f"INSERT INTO {SCHEMA}.items (item_id, item_type, title) "
        "SELECT item_id, item_type, title FROM items"
    )
    conn.execute(f"ANALYZE {SCHEMA}.agents; ANALYZE {SCHEMA}.items")  # type: ignore[arg-type]


def drop(conn: psycopg.Connection) -> None:
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")  # type: ignore[arg-type]


class VoteRequest(BaseModel):
    item_id: str
    vote: Literal["up", "down", "none"]


class VoteReply(BaseModel):
    item_id: str
    votes: int


class Entry(BaseModel):
    item_id: str
    title: str
    votes: int


def create_app() -> FastAPI:
    pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=20, max_size=20, open=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        yield
        await pool.close()

    app = FastAPI(title="naive votes", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/vote")
    async def vote(body: VoteRequest, authorization: str = Header()) -> VoteReply:
        key = hashlib.sha256(authorization.removeprefix("Bearer ").encode()).digest()
        params = {"key": key, "item": body.item_id, "vote": SIGN[body.vote]}
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute(VOTE, params)).fetchone()
        except psycopg.errors.ForeignKeyViolation:
            raise HTTPException(404, "unknown item") from None
        if row is None:
            raise HTTPException(401, "unknown key")
        return VoteReply(item_id=body.item_id, votes=row[0])

    @app.get("/api/v1/top")
    async def top(
        item_type: Literal["song", "tool"], limit: int = Query(50, ge=1, le=100)
    ) -> list[Entry]:
        async with pool.connection() as conn:
            rows = await (await conn.execute(TOP, (item_type, limit))).fetchall()
        return [Entry(item_id=r[0], title=r[1], votes=r[2]) for r in rows]

    return app
