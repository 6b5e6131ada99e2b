"""A ledger written directly (recording times of its own), a projector, and two in-process query
APIs over it: one reading Redis first, one whose Redis is unreachable, so that PostgreSQL answers
everything. For tests that compare what both read-model stores answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime

import httpx
import psycopg

from events import store
from events.types import Event
from infra.settings import Settings
from projections.runner import run_worker
from queries.app import create_app
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings


@dataclass
class Apis:
    redis: httpx.AsyncClient  # Redis first (PostgreSQL where Redis keeps too little)
    postgres: httpx.AsyncClient  # Redis unreachable: PostgreSQL answers everything
    position: int  # the last event's position


@contextlib.asynccontextmanager
async def query_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield client


@contextlib.asynccontextmanager
async def two_readers(
    redis_url: str, rows: Iterable[tuple[Event, datetime]], probe: str
) -> AsyncIterator[Apis]:
    """A fresh database and Redis prefix holding `rows`, projected; yields once `probe` (a GET
    path) answers from Redis at the last position."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2")
        with psycopg.connect(url) as conn, conn.transaction():
            store.append_many_sync(conn, rows)
            row = conn.execute("SELECT max(position) FROM events").fetchone()
        assert row is not None
        unreachable = make_settings(url, "redis://127.0.0.1:1/0", prefix)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop))
        try:
            async with query_api(settings) as redis, query_api(unreachable) as postgres:
                apis = Apis(redis, postgres, int(row[0]))
                await _until_redis_answers(apis, probe)
                yield apis
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)


async def _until_redis_answers(apis: Apis, probe: str) -> None:
    params = {"min_position": apis.position, "wait_ms": 1000}
    for _ in range(100):
        response = await apis.redis.get(probe, params=params)
        if response.status_code == 200 and response.headers["X-Read-Model"] == "redis":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the Redis read models never caught up")
