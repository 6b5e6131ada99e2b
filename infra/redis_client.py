"""Clients of the Redis primary: at REDIS_URL, or found through Redis Sentinel.

With VOTELEDGER_REDIS_SENTINELS set (host:port,...), the primary is whichever server the
sentinels name for VOTELEDGER_REDIS_SENTINEL_MASTER. REDIS_URL then gives only the password, user
and database number (its host is not used). Every caller gets the same kind of client either way.

redis-py asks the sentinels only when it opens a connection, so pooled connections would stay
with a former primary, which goes on accepting writes until the sentinels demote it (seconds
later) and then throws them away. The pools here ask at most once every FOLLOW_SECONDS when they
hand a connection out, and reconnect one that is not to the primary they were told of.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from infra.settings import Settings

FOLLOW_SECONDS = 1.0


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel-managed pool that follows a failover within FOLLOW_SECONDS."""

    _asked_at = 0.0

    async def follow(self) -> None:
        """Ask the sentinels for the primary, unless asked within FOLLOW_SECONDS."""
        now = time.monotonic()
        if now - self._asked_at >= FOLLOW_SECONDS:
            self._asked_at = now
            # On a change, this drops the idle connections. With no sentinel answering, keep
            # what we have: connecting will say so.
            with contextlib.suppress(RedisError, OSError):
                await self.get_master_address()  # type: ignore[no-untyped-call]

    def stale(self, connection: Any) -> bool:
        """Whether `connection` is to a server that is no longer the primary."""
        return bool(self.master_address) and (
            (connection.host, connection.port) != self.master_address
        )

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        await self.follow()
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.stale(connection):
            await connection.disconnect()  # was in use during the switch: to the new primary
            await connection.connect()
        return connection


async def moved_away(client: Any, connection: Any) -> bool:
    """Whether a long-held connection of `client` (a subscription's) is no longer to the
    primary, so its holder should open a new one; always False without Sentinel."""
    pool = client.connection_pool
    if not isinstance(pool, _FollowingPool) or connection is None:
        return False
    await pool.follow()
    return pool.stale(connection)


class _BlockingFollowingPool(_FollowingPool, aioredis.BlockingConnectionPool):
    """The same, waiting for a free connection instead of opening more."""


class _SentinelClient(aioredis.Redis):
    """Closing the client closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


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
    if max_connections is not None:
        options |= {"max_connections": max_connections}
    return sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=_SentinelClient,
        connection_pool_class=_FollowingPool if max_connections is None else _BlockingFollowingPool,
        **options,
    )
