"""The query API against real PostgreSQL, Redis and a running projector (in-process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from infra.settings import Settings
from projections.runner import run_worker
from queries.app import create_app as create_query_app
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.integration.conftest import Agent, command_api, new_agent, new_item

pytestmark = pytest.mark.timeout(180)


@contextlib.asynccontextmanager
async def query_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_query_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
            yield client


@dataclass
class Stack:
    settings: Settings
    command: httpx.AsyncClient
    query: httpx.AsyncClient
    agent: Agent
    songs: list[str]


@contextlib.asynccontextmanager
async def running_stack(redis_url: str, songs: int, **overrides: str) -> AsyncIterator[Stack]:
    """A database of its own, a running worker, both APIs, one agent and `songs` songs."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        overrides = {"VOTELEDGER_POLL_INTERVAL": "0.2"} | overrides
        settings = make_settings(url, redis_url, prefix, **overrides)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop))
        try:
            async with command_api(settings) as command, query_api(settings) as query:
                agent = await new_agent(command)
                items = [await new_item(command, "song") for _ in range(songs)]
                yield Stack(settings, command, query, agent, items)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)


@pytest.fixture(scope="module")
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    """A database of its own, a running worker, both APIs, one agent and 25 songs."""
    async with running_stack(redis_url, 25) as stack:
        yield stack


async def vote(stack: Stack, item_id: str, direction: str, agent: Agent | None = None) -> int:
    response = await stack.command.post(
        "/api/v1/vote",
        json={"item_id": item_id, "vote": direction},
        headers=(agent or stack.agent).headers,
    )
    assert response.status_code in (200, 201), response.text
    return int(response.json()["position"] or 0)  # None: a retraction of no vote


async def settled(stack: Stack, at: int = 0) -> int:
    """Wait until Redis serves the latest position (at least `at`); returns it. The vote this
    casts may change nothing (then its position is its slot's last event, maybe an old one)."""
    position = max(at, await vote(stack, stack.songs[0], "up"))
    for _ in range(200):
        response = await stack.query.get(
            "/api/v1/top", params={"item_type": "song", "min_position": position, "wait_ms": 100}
        )
        if response.status_code == 200 and response.headers["X-Read-Model"] == "redis":
            return position
        await asyncio.sleep(0.05)
    raise AssertionError("the Redis read model never caught up")


async def test_paging_returns_every_item_once_in_rank_order(stack: Stack) -> None:
    """Pages of 7 over 25+ songs return each exactly once, in the order of one big page."""
    for i, song in enumerate(stack.songs[:10]):
        await vote(stack, song, "up" if i % 3 else "down")
    await settled(stack)
    whole = (
        await stack.query.get("/api/v1/top", params={"item_type": "song", "limit": 200})
    ).json()
    seen, cursor = [], None
    while True:
        params = {"item_type": "song", "limit": 7} | ({"cursor": cursor} if cursor else {})
        page = (await stack.query.get("/api/v1/top", params=params)).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["item_id"] for e in seen] == [e["item_id"] for e in whole["items"]]
    assert [e["rank"] for e in seen] == list(range(1, len(seen) + 1))
    assert len(seen) >= 25 and len({e["item_id"] for e in seen}) == len(seen)
    scores = [(e["score"], e["item_id"]) for e in seen]
    assert scores == sorted(scores, reverse=True)


async def test_redis_and_postgres_answer_the_same(stack: Stack, redis_prefix: str) -> None:
    """At one position, every list and detail from Redis equals the PostgreSQL fallback's."""
    last = 0
    for i, song in enumerate(stack.songs):
        last = max(last, await vote(stack, song, ["up", "down", "none", "up"][i % 4]))
    position = await settled(stack, last)
    fallback = make_settings(
        stack.settings.database_url, "redis://127.0.0.1:1/0", stack.settings.redis_prefix
    )
    requests = [
        ("/api/v1/top", {"item_type": "song", "limit": 200}),
        ("/api/v1/top", {"item_type": "song", "sort": "confidence", "limit": 200}),
        ("/api/v1/top", {"item_type": "song", "min_votes": 1, "limit": 5}),
        ("/api/v1/top/daily", {"item_type": "song", "limit": 200}),
        ("/api/v1/trending", {"item_type": "song", "limit": 200}),
        (f"/api/v1/items/{stack.songs[3]}", {}),
    ]
    async with query_api(fallback) as pg:
        for path, params in requests:
            params = params | {"min_position": position}
            from_redis = await stack.query.get(path, params=params)
            from_pg = await pg.get(path, params=params)
            assert from_redis.headers["X-Read-Model"] == "redis"
            assert from_pg.headers["X-Read-Model"] == "postgres"
            assert from_redis.headers["X-Ledger-Position"] == from_pg.headers["X-Ledger-Position"]
            decaying = path.endswith("trending")
            assert _without_decay(from_redis.json(), decaying) == _without_decay(
                from_pg.json(), decaying
            ), path
            _assert_trending_close(from_redis.json(), from_pg.json())


def _without_decay(body: dict[str, object], decaying: bool) -> object:
    """The body without trending scores (they decay between the two requests)."""
    if "items" in body:
        return [
            {k: v for k, v in e.items() if not (decaying and k == "score")}
            for e in body["items"]  # type: ignore[union-attr]
        ], body["next_cursor"] is None
    return {k: v for k, v in body.items() if k != "trending"}


def _assert_trending_close(a: dict[str, object], b: dict[str, object]) -> None:
    pairs = (
        zip(a["items"], b["items"], strict=True) if "items" in a else [(a, b)]  # type: ignore[arg-type]
    )
    for x, y in pairs:
        for key in ("score", "trending"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9)


async def test_min_position_beyond_the_head_answers_422_and_a_reached_one_at_once(
    stack: Stack,
) -> None:
    """A position beyond the ledger head answers a 422 problem (not-issued) without waiting out
    wait_ms; one the projection has reached answers at once."""
    position = await settled(stack)
    ahead = await stack.query.get(
        "/api/v1/top", params={"item_type": "song", "min_position": position + 10**6, "wait_ms": 50}
    )
    assert ahead.status_code == 422
    assert ahead.headers["content-type"] == "application/problem+json"
    assert ahead.json()["type"] == "/problems/not-issued"
    reached = await stack.query.get(
        "/api/v1/top", params={"item_type": "song", "min_position": position}
    )
    assert reached.status_code == 200 and int(reached.headers["X-Ledger-Position"]) >= position


async def test_etag_revalidation(stack: Stack) -> None:
    """Lists carry an ETag and Cache-Control; If-None-Match with it answers 304."""
    await settled(stack)
    first = await stack.query.get("/api/v1/trending", params={"item_type": "song"})
    assert first.headers["Cache-Control"] == "public, no-cache"
    again = await stack.query.get(
        "/api/v1/trending",
        params={"item_type": "song"},
        headers={"If-None-Match": first.headers["ETag"]},
    )
    assert again.status_code in (200, 304)  # 200 only if trending decayed between the two
    if again.status_code == 200:
        assert again.headers["ETag"] != first.headers["ETag"]
    top = await stack.query.get("/api/v1/top", params={"item_type": "song"})
    same = await stack.query.get(
        "/api/v1/top", params={"item_type": "song"}, headers={"If-None-Match": top.headers["ETag"]}
    )
    assert same.status_code == 304 and same.content == b""


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/top", {"item_type": "album"}, 422),
        ("/api/v1/top", {}, 422),
        ("/api/v1/top", {"item_type": "song", "limit": 0}, 422),
        ("/api/v1/top", {"item_type": "song", "limit": 201}, 422),
        ("/api/v1/top", {"item_type": "song", "sort": "hot"}, 422),
        ("/api/v1/top", {"item_type": "song", "cursor": "not-a-cursor"}, 422),
        ("/api/v1/top", {"item_type": "song", "wait_ms": 6000, "min_position": 1}, 422),
        ("/api/v1/top/daily", {"item_type": "song", "date": "2026-13-45"}, 422),
        ("/api/v1/items/no-such-item", {}, 404),
        ("/api/v1/items/bad id", {}, 422),
    ],
)
async def test_errors_are_problem_details(
    stack: Stack, path: str, params: dict[str, object], status: int
) -> None:
    """Bad queries answer problem+json with the right status."""
    response = await stack.query.get(path, params=params)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


async def test_cursor_of_another_list_is_refused(stack: Stack) -> None:
    """A cursor from the trending list cannot page the top list."""
    await settled(stack)
    page = (
        await stack.query.get("/api/v1/trending", params={"item_type": "song", "limit": 2})
    ).json()
    response = await stack.query.get(
        "/api/v1/top", params={"item_type": "song", "cursor": page["next_cursor"]}
    )
    assert response.status_code == 422


async def test_query_role_reads_only_read_models(stack: Stack) -> None:
    """The query API connects as voteledger_query, which cannot select from the ledger."""
    with psycopg.connect(stack.settings.url_for("query")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("voteledger_query",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1 FROM events LIMIT 1")
    assert "voteledger_query" in stack.settings.url_for("query")


async def test_service_endpoints(stack: Stack) -> None:
    """Health, readiness, metrics and the OpenAPI document are served."""
    assert (await stack.query.get("/healthz")).json() == {"status": "ok"}
    assert (await stack.query.get("/readyz")).json()["status"] == "ready"
    assert "voteledger_http_requests_total" in (await stack.query.get("/metrics")).text
    paths = (await stack.query.get("/openapi.json")).json()["paths"]
    assert {"/api/v1/top", "/api/v1/top/daily", "/api/v1/trending", "/api/v1/stream"} <= set(paths)
    assert (await stack.query.get("/docs")).status_code == 200


async def test_item_detail_ranks(stack: Stack) -> None:
    """Item detail shows counts, scores and ranks consistent with the lists."""
    other = await new_agent(stack.command)
    await vote(stack, stack.songs[5], "up", other)
    position = await vote(stack, stack.songs[5], "up")
    detail = (
        await stack.query.get(f"/api/v1/items/{stack.songs[5]}", params={"min_position": position})
    ).json()
    top = (
        await stack.query.get(
            "/api/v1/top", params={"item_type": "song", "limit": 200, "min_position": position}
        )
    ).json()
    ranks = {e["item_id"]: e["rank"] for e in top["items"]}
    assert detail["rank_top"] == ranks[stack.songs[5]]
    assert detail["net"] == detail["up"] - detail["down"] and detail["up"] >= 2
    assert detail["item_type"] == "song" and detail["title"].startswith("Title of")
    assert detail["rank_daily"] is not None and detail["daily_net"] is not None
    assert 0 < detail["confidence"] < 1


async def test_repeated_page_is_answered_from_the_cache_with_the_same_headers(
    stack: Stack,
) -> None:
    """A page asked for again while current is answered before routing, byte for byte the same,
    and a new vote makes the next request fetch afresh."""
    await settled(stack)
    url = "/api/v1/top?item_type=song&limit=3"
    first = await stack.query.get(url)
    again = await stack.query.get(url)
    assert again.content == first.content
    for header in ("ETag", "X-Ledger-Position", "X-Read-Model", "Cache-Control"):
        assert again.headers[header] == first.headers[header]
    assert 'route="(cached page)"' in (await stack.query.get("/metrics")).text
    position = await vote(stack, stack.songs[7], "up")
    fresh = await stack.query.get(url + f"&min_position={position}")
    assert int(fresh.headers["X-Ledger-Position"]) >= position
    after = await stack.query.get(url)
    assert int(after.headers["X-Ledger-Position"]) >= position


async def test_item_reads_answered_before_routing_match_the_route(stack: Stack) -> None:
    """queries.direct answers item reads itself; an unknown parameter (which the route ignores)
    sends the same read through the route instead. Both answer identically, errors included."""
    song = stack.songs[3]
    position = await vote(stack, song, "up")
    await settled(stack)
    etag = (await stack.query.get(f"/api/v1/items/{song}")).headers["ETag"]
    reads = [
        (f"/api/v1/items/{song}", {}, {}),
        (f"/api/v1/items/{song}", {"min_position": position, "wait_ms": 100}, {}),
        (f"/api/v1/items/{song}", {"min_position": position + 10**6, "wait_ms": 50}, {}),
        (f"/api/v1/items/{song}", {}, {"If-None-Match": etag}),
        ("/api/v1/items/no-such-song", {}, {}),
    ]
    headers = ("content-type", "etag", "x-ledger-position", "x-read-model", "x-ledger-head")
    for path, params, sent in reads:
        direct = await stack.query.get(path, params=params, headers=sent)
        routed = await stack.query.get(path, params=params | {"via": "route"}, headers=sent)
        assert direct.status_code == routed.status_code, path
        assert direct.content == routed.content, path
        assert [direct.headers.get(h) for h in headers] == [routed.headers.get(h) for h in headers]
    statuses = [
        (await stack.query.get(path, params=params, headers=sent)).status_code
        for path, params, sent in reads
    ]
    assert statuses == [200, 200, 422, 304, 404]
