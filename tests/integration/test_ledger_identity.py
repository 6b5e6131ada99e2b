"""Redis belongs to one ledger; a far-future event never breaks a read model."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import redis.asyncio as aioredis

from events.codec import encode
from events.types import VoteCast
from infra.settings import Settings
from projections import generations
from projections.rebuild import rebuild
from projections.runner import run_worker
from tests.conftest import fresh_database, make_settings
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    populate,
    vote_load,
    wait_caught_up,
)
from tests.integration.stall_support import insert_as_owner
from tests.integration.test_query_api import query_api

pytestmark = pytest.mark.timeout(180)


async def _project(settings: Settings, seed: int | None) -> list[str]:
    """Some votes (none without a seed), projected until both read models reach the head;
    returns the items."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    items: list[str] = []
    try:
        if seed is not None:
            async with command_pool(settings) as pool:
                agents, items = await populate(pool, agents=3, items=5)
                await vote_load(pool, agents, items, seconds=0.5, writers=2, seed=seed)
        await wait_caught_up(settings, worker=worker)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    return items


async def _ledger_of(settings: Settings) -> str | None:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        raw = await client.get(generations.ledger_key(settings.redis_prefix))
    finally:
        await client.aclose()
    return raw.decode() if isinstance(raw, bytes) else raw


async def test_a_redis_of_another_ledger_is_cleared_and_rebuilt(
    isolated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Two databases sharing one Redis prefix: the second worker finds the first ledger's read
    models, clears them (logged) and rebuilds its own from the start, equal to its ledger."""
    await _project(isolated, seed=1)
    first = await _ledger_of(isolated)
    assert first is not None
    with fresh_database() as url:
        other = make_settings(
            url, isolated.redis_url, isolated.redis_prefix, VOTELEDGER_POLL_INTERVAL="0.2"
        )
        # Fewer events than the first ledger had, so nothing of it can hide in the comparison.
        await _project(other, seed=2)
        assert await _ledger_of(other) not in (None, first)
        assert any(f"held ledger {first}" in r.getMessage() for r in caplog.records)
        await assert_read_models_match_ledger(other)


async def test_a_far_future_vote_keeps_every_read_finite(isolated: Settings) -> None:
    """A vote dated 2100 (an owner's insert) is projected; /trending and the item answer 200 with
    finite values, both read models equal the ledger, and a rebuild succeeds."""
    items = await _project(isolated, seed=3)
    song = next(i for i in items if i.startswith("song"))
    vote = VoteCast(uuid.UUID(int=1), song, "song", "up", "none")
    future = datetime(2100, 1, 1, tzinfo=UTC)
    insert_as_owner(
        isolated.database_url, "VoteCast", encode(vote).decode(), item_id=song, recorded_at=future
    )
    await _project(isolated, seed=None)
    await assert_read_models_match_ledger(isolated)
    reports = await rebuild(isolated, ("postgres", "redis"), _Quiet())
    assert [r.new_generation for r in reports] == [2, 2]
    async with query_api(isolated) as client:
        for path in ("/api/v1/trending?item_type=song", f"/api/v1/items/{song}"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            _assert_finite(response.json())


def _assert_finite(body: object) -> None:
    if isinstance(body, dict):
        for value in body.values():
            _assert_finite(value)
    elif isinstance(body, list):
        for value in body:
            _assert_finite(value)
    elif isinstance(body, float):
        assert math.isfinite(body)


class _Quiet:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


async def test_the_projector_and_query_roles_read_the_ledger_id(isolated: Settings) -> None:
    """`migrate` gives the ledger one id, which the projector and query roles can read."""
    found = set()
    for role in ("projector", "query"):
        url = isolated.url_for(role)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            found.add(str(uuid.UUID(await generations.ledger_id(conn))))
    assert len(found) == 1
