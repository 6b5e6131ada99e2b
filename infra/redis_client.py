"""Clients of the Redis primary: at REDIS_URL, or found through Redis Sentinel.

With VOTELEDGER_REDIS_SENTINELS set (host:port,...), the primary is whichever server the
sentinels name for VOTELEDGER_REDIS_SENTINEL_MASTER; after a failover, connections are made to
the new primary. REDIS_URL then gives only the password, user and database number (its host is
not used). Every caller gets the same kind of client either way.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from infra.settings import Settings


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of opening more."""


def connect(settings: Settings, *, max_connections: int | None = None, **options: Any) -> Any:
    """A client of the primary; `max_connections`: a bounded pool that waits its turn."""
    if not settings.redis_sentinels:
        if max_connections is None:
            return aioredis.Redis.from_url(settings.redis_url, **options)
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, **options
        )
        return aioredis.Redis(connection_pool=pool)
    auth = {k: v for k, v in parse_url(settings.redis_url).items() if k not in ("host", "port")}
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels),
        sentinel_kwargs={**timeouts, "password": settings.redis_sentinel_password or None},
        **auth,
    )
    if max_connections is None:
        return sentinel.master_for(settings.redis_sentinel_master, **options)
    return sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        **options,
    )
