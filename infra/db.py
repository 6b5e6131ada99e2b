"""Connection pools. Created closed, opened in an app's lifespan, never at import."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from infra.settings import Role, Settings


def pool_for(settings: Settings, role: Role, *, name: str | None = None) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        settings.url_for(role),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        name=name or role,
        # A broken connection is replaced instead of failing the next request.
        check=AsyncConnectionPool.check_connection,
        timeout=settings.pool_timeout,
    )
