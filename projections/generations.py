"""The generation pointers: which generation of each read-model store readers use now.

Each store has its own pointer, so each can be rebuilt on its own: PostgreSQL's is the one row of
`read_model_generation`, Redis's the string `{<prefix>}:generation`. A Redis without its pointer
(first start, or flushed) follows PostgreSQL's. The Redis read models also record which ledger
they are of (`{<prefix>}:ledger`), so a Redis reused by another ledger is cleared, not projected
onto. Every read of a pointer goes through here; the switches happen in the stores' modules,
each under its own check (see `switch` there). The key names are projections.redis_keys'.

A Redis written under the old key names (`<prefix>:generation`, `<prefix>:ledger`, a tag of its
own per generation) has no owner under the new ones: it is adopted like an unrecorded Redis, so
its read models are rebuilt from the start of the ledger once, and the old keys are deleted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import redis.asyncio as aioredis

from projections import redis_keys

log = logging.getLogger("voteledger.projections")

_READ = "SELECT generation FROM read_model_generation"
# Locks the pointer until commit: nobody switches it under a rebuild comparing positions.
_READ_FOR_UPDATE = "SELECT generation FROM read_model_generation FOR UPDATE"
_WRITE = "UPDATE read_model_generation SET generation = %s, switched_at = now()"


async def postgres(conn: psycopg.AsyncConnection) -> int:
    """The generation of the PostgreSQL read models readers use now."""
    row = await (await conn.execute(_READ)).fetchone()
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
    return redis_keys.pointer(prefix)


async def redis(client: aioredis.Redis, prefix: str, fallback: Callable[[], Awaitable[int]]) -> int:
    """The generation of the Redis read models readers use now; `fallback` (PostgreSQL's
    pointer) when Redis has none yet."""
    raw = await client.get(redis_key(prefix))
    return int(raw) if raw else await fallback()


async def claim_redis(client: aioredis.Redis, prefix: str, generation: int) -> None:
    """Set the Redis pointer unless it is set already (a first start, or a flushed Redis)."""
    await client.set(redis_key(prefix), generation, nx=True)


# --- which ledger the Redis read models are of ---------------------------------------------------

_LEDGER_ID = "SELECT ledger_id::text FROM ledger_identity"


async def ledger_id(conn: psycopg.AsyncConnection) -> str:
    """The id `migrate` gave this ledger (0007_projection_health.sql)."""
    row = await (await conn.execute(_LEDGER_ID)).fetchone()
    assert row is not None, "ledger_identity has no row: run `voteledger migrate`"
    return str(row[0])


def ledger_key(prefix: str) -> str:
    return redis_keys.owner(prefix)


async def adopt_redis(client: aioredis.Redis, prefix: str, ledger: str) -> str | None:
    """Make the Redis read models under `prefix` this ledger's. Models recorded as another
    ledger's, or models with no ledger recorded, are cleared (with the pointer) so that they are
    rebuilt from the start of this ledger, never projected onto; so are any keys under the old
    names. Returns what they were recorded as then ("unrecorded" for none), None when nothing
    was cleared."""
    raw = await client.get(ledger_key(prefix))
    stored = raw.decode() if isinstance(raw, bytes) else raw
    if stored == ledger:
        return None
    legacy = await _drop_legacy(client, prefix)
    found = await _generation_keys(client, prefix)
    if found or stored is not None:
        for start in range(0, len(found), 1000):
            await client.unlink(*found[start : start + 1000])
        await client.delete(redis_key(prefix))
    await client.set(ledger_key(prefix), ledger)
    if not found and stored is None and not legacy:
        return None
    return stored or "unrecorded"


async def _generation_keys(client: aioredis.Redis, prefix: str) -> list[bytes]:
    """Every key of every generation under `prefix` (they share the tag `{prefix}`)."""
    pattern, exact = redis_keys.all_generation_keys(prefix)
    return [key async for key in _scan(client, pattern, exact)]


async def _drop_legacy(client: aioredis.Redis, prefix: str) -> int:
    """Delete the keys under the old names (each key on its own: they span hash slots);
    returns how many there were."""
    pattern, exact = redis_keys.legacy_generation_keys(prefix)
    dropped: int = 0
    for name in redis_keys.legacy_singles(prefix):
        dropped += int(await client.unlink(name))
    pipe = client.pipeline(transaction=False)
    async for key in _scan(client, pattern, exact):
        pipe.unlink(key)
        if len(pipe) >= 1000:
            dropped += sum(await pipe.execute())
    dropped += sum(await pipe.execute())
    if dropped:
        log.warning("redis %r: deleted %d keys under the old key names", prefix, dropped)
    return dropped


async def _scan(
    client: aioredis.Redis, pattern: str, exact: re.Pattern[str]
) -> AsyncIterator[bytes]:
    async for key in client.scan_iter(match=pattern, count=1000):
        if exact.fullmatch(key.decode(errors="replace")):
            yield key
