"""Putting bad rows into the ledger the way only the schema owner can, for the stall proofs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import psycopg

T = TypeVar("T")

_INSERT = """
INSERT INTO events (event_type, agent_id, item_id, payload, recorded_at)
VALUES (%s, %s, %s, %s::jsonb, coalesce(%s, now()))
RETURNING position
"""
# Guards on `events` (payload checks, owned columns) refuse such rows from application roles; a
# trigger may refuse them from the owner too, and replica mode skips triggers for this session.
_REFUSED = (psycopg.errors.RaiseException, psycopg.errors.CheckViolation)


def insert_as_owner(
    url: str,
    event_type: str,
    payload: str,
    *,
    item_id: str | None = None,
    recorded_at: datetime | None = None,
) -> int:
    """Append a row no application role could (the schema owner's connection); its position."""
    params = (event_type, None, item_id, payload, recorded_at)
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute(_INSERT, params).fetchone()
        except _REFUSED:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                row = conn.execute(_INSERT, params).fetchone()
    assert row is not None
    return int(row[0])


async def eventually(check: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """The first truthy value of `check`, polled until `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {within} s: {value!r}")
        await asyncio.sleep(0.1)
