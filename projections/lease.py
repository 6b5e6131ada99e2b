"""One active worker per projection: a session advisory lock plus a fencing token.

The lock lives as long as the worker's database session: when the worker dies, PostgreSQL ends the
session and releases it, and a standby polling for it takes over within a poll interval. Each new
holder increments the projection's fencing token; the stores refuse writes carrying an older one,
so a worker that lost its session (and so its lease) but is still running cannot overwrite what
the newer holder wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime

import psycopg

from infra.metrics import PROJECTION_LEASE_ACQUIRED

# A standby waits in the lock queue, so it holds the lease the moment the active worker's session
# ends (a stopping worker closes it at once), in waits of `poll` seconds between which it checks
# whether it is asked to stop itself.
_WAIT_FOR_LOCK = "SELECT pg_advisory_lock(hashtext('voteledger:projection:' || %s))"
_TAKE_FENCE = """
INSERT INTO projection_leases AS l (projection, fence, holder, acquired_at)
VALUES (%s, 1, %s, now())
ON CONFLICT (projection) DO UPDATE
SET fence = l.fence + 1, holder = excluded.holder, acquired_at = excluded.acquired_at
RETURNING fence
"""


_HOLDERS = "SELECT projection, fence, holder, acquired_at FROM projection_leases"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who last took a projection's lease, with which fencing token, and when."""

    fence: int = 0
    holder: str | None = None
    since: datetime | None = None


async def holders(conn: psycopg.AsyncConnection) -> dict[str, Holder]:
    """The last holder of each projection's lease."""
    rows = await (await conn.execute(_HOLDERS)).fetchall()
    return {name: Holder(fence, holder, since) for name, fence, holder, since in rows}


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseLost(Exception):
    """The lease's session ended: this worker must stop writing."""


class Lease:
    def __init__(self, conninfo: str, projection: str, *, poll: float = 0.5) -> None:
        self.conninfo = conninfo
        self.projection = projection
        self.poll = poll
        self.fence = 0
        self._conn: psycopg.AsyncConnection | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait (as a hot standby) until this worker holds the lease; False if asked to stop."""
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name=f"lease:{self.projection}"
                )
            except psycopg.OperationalError:
                await sleep_or_stop(stop, self.poll * 4)
                continue
            try:
                if await self._wait_for_lock(conn, stop):
                    fence = await (
                        await conn.execute(_TAKE_FENCE, (self.projection, worker_identity()))
                    ).fetchone()
                    assert fence is not None
                    self.fence, self._conn = fence[0], conn
                    PROJECTION_LEASE_ACQUIRED.labels(self.projection).inc()
                    return True
            except psycopg.OperationalError:
                pass
            await conn.close()
        return False

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection, stop: asyncio.Event) -> bool:
        """Queue for the lock until it is this session's (True) or `stop` is set (False)."""
        await conn.execute(f"SET lock_timeout = {int(self.poll * 1000)}")
        while not stop.is_set():
            try:
                await conn.execute(_WAIT_FOR_LOCK, (self.projection,))
            except psycopg.errors.LockNotAvailable:
                continue
            await conn.execute("SET lock_timeout = 0")
            return True
        return False

    async def check(self) -> None:
        """Raise LeaseLost unless the lease's session is still alive."""
        if self._conn is None or self._conn.closed:
            raise LeaseLost(self.projection)
        try:
            await self._conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise LeaseLost(self.projection) from exc

    async def release(self) -> None:
        if self._conn is not None:
            await self._conn.close()  # ending the session releases the advisory lock
            self._conn = None


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or until `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
