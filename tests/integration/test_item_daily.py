"""GET /api/v1/items/{item_id}/daily: an item's net votes per UTC day, from Redis within the days
it keeps and from PostgreSQL beyond them (or when Redis is unreachable), the same either way.

The ledger is written directly, with recording times days apart (as `voteledger seed` does), so
that the read models hold votes of past days; a projector and the query API run in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from events.types import AgentRegistered, Event, ItemListed, VoteCast
from queries.app import create_app
from tests.conftest import make_settings
from tests.integration.two_readers import Apis, two_readers

pytestmark = pytest.mark.timeout(60)
TODAY = datetime.now(UTC).date()


def _ledger(now: datetime) -> list[tuple[Event, datetime]]:
    """song-x: +1 forty days ago, +1 five days ago, today one down (-1) and one up turned down
    (-2). song-y: listed, never voted for."""
    a, b, c = (uuid.uuid4() for _ in range(3))
    start = now - timedelta(days=50)
    x = {"item_id": "song-x", "item_type": "song"}
    five_days_ago = now - timedelta(days=5)
    return [
        *((AgentRegistered(agent_id=agent), start) for agent in (a, b, c)),
        (ItemListed(item_id="song-x", item_type="song", title="X"), start),
        (ItemListed(item_id="song-y", item_type="song", title="Y"), start),
        (VoteCast(agent_id=a, direction="up", previous="none", **x), now - timedelta(days=40)),
        (VoteCast(agent_id=b, direction="up", previous="none", **x), five_days_ago),
        (VoteCast(agent_id=c, direction="down", previous="none", **x), now),
        (
            VoteCast(
                agent_id=b, direction="down", previous="up", previous_cast_at=five_days_ago, **x
            ),
            now,
        ),
    ]


EXPECTED = {TODAY - timedelta(days=40): 1, TODAY - timedelta(days=5): 1, TODAY: -3}


def _expected(days: int) -> list[dict[str, object]]:
    span = [TODAY - timedelta(days=back) for back in range(days - 1, -1, -1)]
    return [{"date": day.isoformat(), "net": EXPECTED.get(day, 0)} for day in span]


@pytest.fixture(scope="module")
async def apis(redis_url: str) -> AsyncIterator[Apis]:
    async with two_readers(
        redis_url, _ledger(datetime.now(UTC)), "/api/v1/items/song-x/daily"
    ) as apis:
        yield apis


async def test_both_stores_answer_the_last_30_days_the_same(apis: Apis) -> None:
    """By default the last 30 days, oldest first, every day listed; the same body, position and
    ETag from Redis and from PostgreSQL."""
    from_redis = await apis.redis.get("/api/v1/items/song-x/daily")
    from_postgres = await apis.postgres.get("/api/v1/items/song-x/daily")
    assert from_redis.headers["X-Read-Model"] == "redis"
    assert from_postgres.headers["X-Read-Model"] == "postgres"
    body = {"item_id": "song-x", "days": _expected(30), "position": apis.position}
    assert from_redis.json() == from_postgres.json() == body
    for header in ("ETag", "X-Ledger-Position", "Cache-Control"):
        assert from_redis.headers[header] == from_postgres.headers[header], header
    quiet = await apis.redis.get("/api/v1/items/song-y/daily", params={"days": 3})
    assert quiet.json()["days"] == [{"date": d["date"], "net": 0} for d in _expected(3)]


async def test_days_redis_no_longer_keeps_come_from_postgres(apis: Apis) -> None:
    """Redis keeps 30 past days: 31 days ending today are still its to answer, 60 are not."""
    kept = await apis.redis.get("/api/v1/items/song-x/daily", params={"days": 31})
    assert kept.headers["X-Read-Model"] == "redis"
    assert kept.json()["days"] == _expected(31)
    older = await apis.redis.get("/api/v1/items/song-x/daily", params={"days": 60})
    assert older.headers["X-Read-Model"] == "postgres"
    assert older.json()["days"] == _expected(60)
    assert {"date": (TODAY - timedelta(days=40)).isoformat(), "net": 1} in older.json()["days"]


async def test_revalidation_and_read_your_writes(apis: Apis) -> None:
    first = await apis.redis.get("/api/v1/items/song-x/daily", params={"days": 7})
    again = await apis.redis.get(
        "/api/v1/items/song-x/daily",
        params={"days": 7, "min_position": apis.position},
        headers={"If-None-Match": first.headers["ETag"]},
    )
    assert again.status_code == 304
    ahead = await apis.redis.get(
        "/api/v1/items/song-x/daily", params={"min_position": apis.position + 1000}
    )
    assert ahead.status_code == 422
    assert ahead.json()["type"].endswith("/problems/not-issued")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/items/song-x/daily?days=0", 422),
        ("/api/v1/items/song-x/daily?days=91", 422),
        ("/api/v1/items/song-x/daily?days=week", 422),
        ("/api/v1/items/-x/daily", 422),
        ("/api/v1/items/song-nothing/daily", 404),
    ],
)
async def test_bad_requests_are_problem_details(apis: Apis, path: str, status: int) -> None:
    for client in (apis.redis, apis.postgres):
        response = await client.get(path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"


def test_the_daily_series_is_documented() -> None:
    schema = create_app(make_settings("postgresql://unused", "redis://unused", "x")).openapi()
    operation = schema["paths"]["/api/v1/items/{item_id}/daily"]["get"]
    days = next(p for p in operation["parameters"] if p["name"] == "days")
    assert (days["schema"]["minimum"], days["schema"]["maximum"]) == (1, 90)
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"item_id", "days", "position"}
    day = body["properties"]["days"]["items"]
    assert (day["properties"]["date"]["format"], set(day["required"])) == ("date", {"date", "net"})
