"""The generation pointers: which generation of each read-model store readers use now.

Each store has its own pointer, so each can be rebuilt on its own: PostgreSQL's is the one row of
`read_model_generation`, Redis's the string `<prefix>:generation`. A Redis without its pointer
(first start, or flushed) follows PostgreSQL's. Every read of a pointer goes through here; the
switches happen in the stores' modules, each under its own check (see `switch` there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
import redis.asyncio as aioredis

_READ = "SELECT generation FROM read_model_generation"
# Locks the pointer until commit: nobody switches it under a rebuild comparing positions.
_READ_FOR_UPDATE = "SELECT generation FROM read_model_generation FOR UPDATE"
_WRITE = "UPDATE read_model_generation SET generation = %s, switched_at = now()"


async def postgres(conn: psycopg.AsyncConnection) -> int:
    """The generation of the PostgreSQL read models readers use now."""
    row = await (await conn.execute(_READ)).fetchone()
    assert row is not None, "read_model_generation has no row: run `voteledger migrate`"
    return int(row[0])


def postgres_sync(conn: psycopg.Connection) -> int:
    """`postgres` for synchronous callers (the CLI)."""
    row = conn.execute(_READ).fetchone()
    assert row is not None, "read_model_generation has no row: run `voteledger migrate`"
    return int(row[0])


async def lock_postgres(conn: psycopg.AsyncConnection) -> int:
    """The PostgreSQL pointer, locked until the caller's transaction ends."""
    row = await (await conn.execute(_READ_FOR_UPDATE)).fetchone()
    assert row is not None
    return int(row[0])


async def set_postgres(conn: psycopg.AsyncConnection, generation: int) -> None:
    """Point PostgreSQL readers at `generation` (inside the caller's transaction)."""
    await conn.execute(_WRITE, (generation,))


def redis_key(prefix: str) -> str:
    return f"{prefix}:generation"


async def redis(client: aioredis.Redis, prefix: str, fallback: Callable[[], Awaitable[int]]) -> int:
    """The generation of the Redis read models readers use now; `fallback` (PostgreSQL's
    pointer) when Redis has none yet."""
    raw = await client.get(redis_key(prefix))
    return int(raw) if raw else await fallback()


async def claim_redis(client: aioredis.Redis, prefix: str, generation: int) -> None:
    """Set the Redis pointer unless it is set already (a first start, or a flushed Redis)."""
    await client.set(redis_key(prefix), generation, nx=True)
