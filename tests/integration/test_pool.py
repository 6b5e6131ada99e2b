"""The pools check a connection before use only when it sat idle (infra.db)."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from infra import db
from infra.settings import Settings


async def _backend_pid(pool: db.AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
        assert row is not None
        return int(row[0])


def _kill(admin_conn: psycopg.Connection, pid: int) -> None:
    admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_an_idle_connection_that_died_is_replaced_before_use(
    settings: Settings, admin_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "FRESH_SECONDS", 0.0)  # every connection counts as idle
    pool = db.pool_for(settings, "command", name="test-idle")
    await pool.open(wait=True)
    try:
        first = await _backend_pid(pool)
        _kill(admin_conn, first)
        assert await _backend_pid(pool) != first  # the check replaced it: no error
    finally:
        await pool.close()


async def test_a_connection_just_handed_back_is_used_without_a_check(
    settings: Settings, admin_conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trade-off: a server that goes away within FRESH_SECONDS of a connection's last use
    fails that connection's next statement (the request learns it), and the pool replaces it."""
    monkeypatch.setattr(db, "FRESH_SECONDS", 3600.0)
    one = dataclasses.replace(settings, pool_min_size=1, pool_max_size=1)
    pool = db.pool_for(one, "command", name="test-fresh")
    await pool.open(wait=True)
    try:
        first = await _backend_pid(pool)
        _kill(admin_conn, first)
        with pytest.raises(psycopg.OperationalError):
            await _backend_pid(pool)
        assert await _backend_pid(pool) != first
    finally:
        await pool.close()
