"""Connection pools. Created closed, opened in an app's lifespan, never at import."""

from __future__ import annotations

import time
import weakref

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from infra.settings import Role, Settings

# A connection handed back within this many seconds was working then: checking it again before
# its next use would cost a round trip on every batch under load, to catch what the next
# statement reports anyway. One that sat idle longer (a restarted or failed-over server, a
# firewall's idle cut) is checked, and replaced instead of failing a request.
FRESH_SECONDS = 1.0
_returned: weakref.WeakKeyDictionary[AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_returned(conn: AsyncConnection) -> None:
    _returned[conn] = time.monotonic()


async def _check_if_idle(conn: AsyncConnection) -> None:
    returned = _returned.get(conn)
    if returned is not None and time.monotonic() - returned < FRESH_SECONDS and not conn.broken:
        return
    await AsyncConnectionPool.check_connection(conn)


def pool_for(settings: Settings, role: Role, *, name: str | None = None) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        settings.url_for(role),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        name=name or role,
        check=_check_if_idle,
        reset=_note_returned,
        timeout=settings.pool_timeout,
    )
