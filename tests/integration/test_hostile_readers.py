"""The query API against hostile readers, in process, on real PostgreSQL and Redis with a running
projector: forged cursors, script errors, far-away positions, junk URLs, waiters, redirects, CORS,
and aborted votes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import redis.asyncio as aioredis

from infra.settings import Settings
from queries.app import create_app as create_query_app
from queries.side import ReadSide
from tests.conftest import fresh_database, make_settings
from tests.integration.conftest import command_api
from tests.integration.measure_waiters import transactions
from tests.integration.test_query_api import Stack, query_api, running_stack, settled, vote

pytestmark = pytest.mark.timeout(180)
CACHE_BYTES = 2**18


@pytest.fixture(scope="module")
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    """A running worker and both APIs (the query API with a small page cache, the command API
    with one CORS origin), one agent and 12 songs with a vote each."""
    overrides = {
        "VOTELEDGER_QUERY_CACHE_BYTES": str(CACHE_BYTES),
        "VOTELEDGER_COMMAND_CORS_ORIGINS": "https://shop.example",
    }
    async with running_stack(redis_url, 12, **overrides) as stack:
        for song in stack.songs:
            await vote(stack, song, "up")
        yield stack


def side_app(stack: Stack) -> Any:
    transport = stack.query._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app


def side_of(stack: Stack) -> ReadSide:
    side: ReadSide = side_app(stack).state.side
    return side


def forged(*fields: object) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(list(fields))).decode().rstrip("=")


def forged_cursors(generation: int) -> list[tuple[str, int]]:
    """(cursor, expected status): NaN, infinities, huge rank, wrong list, wrong generation."""
    return [
        (forged(generation, "top:song", float("nan"), "song-1", 2), 422),
        (forged(generation, "top:song", float("inf"), "song-1", 2), 422),
        (forged(generation, "top:song", float("-inf"), "song-1", 2), 422),
        (forged(generation, "top:song", 1.0, "song-1", 2**64 - 1), 422),
        (forged(generation, "trend:song", 1.0, "song-1", 2), 422),
        (forged(generation, "top:song", 1.0, "no such/id", 2), 422),
        (forged(generation + 7, "top:song", 1.0, "song-1", 2), 410),
    ]


async def test_forged_cursors_answer_4xx_and_leave_reads_on_redis(stack: Stack) -> None:
    """Each forged cursor is a 4xx problem, and the next read still comes from Redis."""
    await settled(stack)
    side = side_of(stack)
    for cursor, status in forged_cursors(side.redis_generation):
        response = await stack.query.get(
            "/api/v1/top", params={"item_type": "song", "cursor": cursor}
        )
        assert response.status_code == status, (cursor, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert side.redis_usable()
        after = await stack.query.get("/api/v1/top", params={"item_type": "song", "limit": 2})
        assert after.headers["X-Read-Model"] == "redis"


async def test_forged_cursors_answer_4xx_from_the_postgres_fallback(stack: Stack) -> None:
    """The same cursors paged from PostgreSQL (Redis unreachable) are refused the same way."""
    await settled(stack)
    fallback = make_settings(
        stack.settings.database_url, "redis://127.0.0.1:1/0", stack.settings.redis_prefix
    )
    async with query_api(fallback) as pg:
        generation = await side_of(stack).postgres.generation()
        for cursor, status in forged_cursors(generation):
            response = await pg.get("/api/v1/top", params={"item_type": "song", "cursor": cursor})
            assert response.status_code == status, (cursor, response.text)
            assert response.headers["X-Read-Model"] if response.status_code == 200 else True


async def test_a_script_error_fails_one_request_and_never_moves_reads_to_postgres(
    stack: Stack,
) -> None:
    """A page script that errors answers that request 500; the side does not take it as "Redis
    down", so the next read is from Redis."""
    await settled(stack)
    side = side_of(stack)
    working = side.redis._page
    side.redis._page = side.client.register_script("return redis.error_reply('boom')")
    app = side_app(stack)
    try:
        # As a server would: the 500 is answered, not raised into the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            broken = await client.get("/api/v1/top", params={"item_type": "song", "limit": 3})
        assert broken.status_code == 500
        assert side.redis_usable()
    finally:
        side.redis._page = working
    after = await stack.query.get("/api/v1/top", params={"item_type": "song", "limit": 3})
    assert after.status_code == 200 and after.headers["X-Read-Model"] == "redis"


async def test_min_position_beyond_the_head_is_refused_at_once(stack: Stack) -> None:
    """A position far beyond the ledger head answers 422 within the grace, not 5 s then 503; a
    position just voted answers 200 at once."""
    position = await settled(stack)
    started = time.monotonic()
    ahead = await stack.query.get(
        "/api/v1/top",
        params={"item_type": "song", "min_position": position + 10**6, "wait_ms": 5000},
    )
    assert ahead.status_code == 422, ahead.text
    assert ahead.json()["type"] == "/problems/not-issued"
    assert time.monotonic() - started < 2
    fresh = await vote(stack, stack.songs[1], "down")
    reached = await stack.query.get(
        "/api/v1/top", params={"item_type": "song", "min_position": fresh, "wait_ms": 5000}
    )
    assert reached.status_code == 200 and int(reached.headers["X-Ledger-Position"]) >= fresh


async def test_thousands_of_junk_urls_keep_the_page_cache_under_its_bound(stack: Stack) -> None:
    """3,000 distinct URLs with ~4 KB of junk parameters each: the cache's byte total never
    exceeds VOTELEDGER_QUERY_CACHE_BYTES."""
    await settled(stack)
    side = side_of(stack)
    for i in range(3000):
        junk = f"{i:05d}" * 800
        response = await stack.query.get(f"/api/v1/top?item_type=song&limit=3&junk{i}={junk}")
        assert response.status_code == 200
        assert side.cache.bytes <= CACHE_BYTES
    assert side.cache.max_bytes == CACHE_BYTES and side.cache.bytes > CACHE_BYTES // 2


async def test_no_redirect_takes_its_host_from_the_request(stack: Stack) -> None:
    """A trailing slash is a 404 on the query API (no redirect); the command API's redirect of
    the vote path names no host."""
    evil = {"Host": "evil.example"}
    query = await stack.query.get("/api/v1/top/", params={"item_type": "song"}, headers=evil)
    assert query.status_code == 404 and "location" not in query.headers
    command = await stack.command.post("/api/v1/vote/", json={}, headers=evil)
    assert command.status_code in (307, 308)
    assert command.headers["location"] == "/api/v1/vote"


async def test_cors_lets_any_origin_read_rankings(stack: Stack) -> None:
    """Preflight and simple GETs (cached ones too) from a browser origin are allowed, without
    credentials; the command API allows only its configured origin."""
    origin = {"Origin": "https://other.example"}
    preflight = await stack.query.options(
        "/api/v1/top",
        headers=origin
        | {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "If-None-Match",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers
    for _ in range(2):  # the second from the page cache, before routing
        page = await stack.query.get("/api/v1/top", params={"item_type": "song"}, headers=origin)
        assert page.headers["access-control-allow-origin"] == "*"
        assert "X-Ledger-Position" in page.headers["access-control-expose-headers"]
    refused = await stack.command.get("/healthz", headers=origin)
    assert "access-control-allow-origin" not in refused.headers
    shop = await stack.command.get("/healthz", headers={"Origin": "https://shop.example"})
    assert shop.headers["access-control-allow-origin"] == "https://shop.example"


async def test_the_command_api_sends_no_cors_headers_unless_configured(stack: Stack) -> None:
    """With VOTELEDGER_COMMAND_CORS_ORIGINS unset, no CORS header on votes or preflights."""
    async with command_api(stack.settings.__class__.from_env(_env(stack.settings))) as command:
        voted = await command.post(
            "/api/v1/vote",
            json={"item_id": stack.songs[2], "vote": "up"},
            headers=stack.agent.headers | {"Origin": "https://shop.example"},
        )
        assert voted.status_code in (200, 201)
        assert not any(name.startswith("access-control") for name in voted.headers)


def _env(settings: Settings) -> dict[str, str]:
    return {
        "VOTELEDGER_ENV": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "VOTELEDGER_REDIS_PREFIX": settings.redis_prefix,
        "VOTELEDGER_OPERATOR_TOKEN": settings.operator_token,
        "VOTELEDGER_RATE_LIMIT_BURST": "100000",
        "VOTELEDGER_RATE_LIMIT_PER_SECOND": "100000",
    }


async def test_an_aborted_vote_counts_as_499_and_one_sent_in_full_is_recorded(
    stack: Stack,
) -> None:
    """A client that goes away before its body is labelled 499, not 500; one that goes away
    after sending its vote still has it recorded."""
    transport = stack.command._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = transport.app
    headers = [
        (b"authorization", f"Bearer {stack.agent.api_key}".encode()),
        (b"content-type", b"application/json"),
    ]
    scope = {"type": "http", "method": "POST", "path": "/api/v1/vote", "headers": headers}
    scope |= {"query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": ""}
    body = msgspec.json.encode({"item_id": stack.songs[3], "vote": "down"})

    async def ignore(message: object) -> None:
        pass

    await app(dict(scope), _messages({"type": "http.disconnect"}), ignore)
    sent_then_gone = _messages({"type": "http.request", "body": body}, {"type": "http.disconnect"})
    await app(dict(scope), sent_then_gone, ignore)
    metrics = (await stack.query.get("/metrics")).text + (await stack.command.get("/metrics")).text
    assert 'route="/api/v1/vote",status="499"' in metrics
    assert 'app="command",route="/api/v1/vote",status="500"' not in metrics
    with psycopg.connect(stack.settings.database_url) as conn:
        row = conn.execute(
            "SELECT direction FROM vote_slots WHERE item_id = %s", (stack.songs[3],)
        ).fetchone()
    assert row is not None and row[0] == "down"


def _messages(*messages: dict[str, object]) -> object:
    queue = list(messages)

    async def receive() -> dict[str, object]:
        if len(queue) > 1:
            return queue.pop(0)
        await asyncio.sleep(0)
        return queue[0]

    return receive


async def test_waiters_on_the_fallback_cost_postgres_a_few_transactions(redis_url: str) -> None:
    """20 concurrent min_position waiters answered from PostgreSQL (Redis unreachable) for 2 s:
    one shared position reader, not a read per waiter every 25 ms (~1,000 transactions/s)."""
    with fresh_database() as url:
        settings = make_settings(url, "redis://127.0.0.1:1/0", "waiters")
        app = create_query_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://q") as client:
                await client.get("/api/v1/top", params={"item_type": "song"})
                before = transactions(url)
                params = {"item_type": "song", "min_position": 1, "wait_ms": 2000}
                answers = await asyncio.gather(
                    *[client.get("/api/v1/top", params=params) for _ in range(20)]
                )
                await asyncio.sleep(1.2)  # backends report their counts when idle
                spent = transactions(url) - before - 1  # less reading `before`
    assert {a.status_code for a in answers} == {425}
    assert answers[0].json()["type"] == "/problems/not-yet"
    assert spent < 60, spent


async def test_redis_clients_are_named_for_this_api(stack: Stack, redis_url: str) -> None:
    """The query API's Redis connections carry CLIENT SETNAME "<prefix>:query"."""
    await settled(stack)
    client = aioredis.Redis.from_url(redis_url)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    assert any(c["name"] == f"{stack.settings.redis_prefix}:query" for c in clients)
