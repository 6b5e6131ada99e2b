"""GET /api/v1/items/{item_id}/explain: components that add up exactly to the chart's score, from
Redis and from PostgreSQL (Redis unreachable) alike.

The ledger is written directly with recording times days apart; a projector and two query APIs
(one with Redis, one without) run in-process, once for the module."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from events.types import AgentRegistered, Direction, Event, ItemListed, VoteCast
from tests.integration.two_readers import Apis, two_readers

pytestmark = pytest.mark.timeout(60)
NOW = datetime.now(UTC).replace(microsecond=0)


class Ledger:
    """Events with explicit recording times; agents registered for owners as they first vote."""

    def __init__(self) -> None:
        self.rows: list[tuple[Event, datetime]] = []
        self.slots: dict[tuple[uuid.UUID, str], tuple[Direction, datetime]] = {}

    def list(self, item_id: str) -> None:
        self.rows.append((ItemListed(item_id, "song", item_id), NOW - timedelta(days=60)))

    def agent(self, owner: str) -> uuid.UUID:
        agent = uuid.uuid4()
        self.rows.append((AgentRegistered(agent, owner, owner), NOW - timedelta(days=60)))
        return agent

    def vote(
        self, agent: uuid.UUID, owner: str, item: str, direction: Direction, at: datetime
    ) -> None:
        previous, cast_at = self.slots.get((agent, item), ("none", None))
        event = VoteCast(agent, item, "song", direction, previous, cast_at, owner)
        self.rows.append((event, at))
        self.slots[(agent, item)] = (direction, at)


def _ledger() -> Ledger:
    """song-a: owners alice (-1), dave (+1), farm (3 agents: +1 +1 -1), bob (2 agents: +1 -1),
    carol (voted, then retracted), over 40 days (so Redis no longer keeps all its days).
    song-b: votes over the last three days only, several a day. song-c: listed, no votes."""
    ledger = Ledger()
    for item in ("song-a", "song-b", "song-c"):
        ledger.list(item)
    day = timedelta(days=1)
    alice, dave, carol = (ledger.agent(o) for o in ("alice", "dave", "carol"))
    farm = [ledger.agent("farm") for _ in range(3)]
    bob = [ledger.agent("bob") for _ in range(2)]
    ledger.vote(carol, "carol", "song-a", "up", NOW - 40 * day)
    ledger.vote(alice, "alice", "song-a", "down", NOW - 10 * day)
    ledger.vote(farm[0], "farm", "song-a", "up", NOW - 10 * day)
    ledger.vote(farm[1], "farm", "song-a", "up", NOW - 3 * day)
    ledger.vote(farm[2], "farm", "song-a", "down", NOW - 3 * day)
    ledger.vote(bob[0], "bob", "song-a", "up", NOW - 2 * day)
    ledger.vote(bob[1], "bob", "song-a", "down", NOW - day)
    ledger.vote(carol, "carol", "song-a", "none", NOW - day)
    ledger.vote(dave, "dave", "song-a", "up", NOW)
    voters = [ledger.agent(f"b{n}") for n in range(4)]
    for n, agent in enumerate(voters):
        ledger.vote(agent, f"b{n}", "song-b", "up", NOW - 2 * day + n * timedelta(hours=3))
    ledger.vote(voters[0], "b0", "song-b", "down", NOW - day)
    ledger.vote(voters[1], "b1", "song-b", "none", NOW - timedelta(hours=1))
    return ledger


_LEDGER = _ledger()
VALUE = {"up": 1, "down": -1, "none": 0}


@pytest.fixture(scope="module")
async def apis(redis_url: str) -> AsyncIterator[Apis]:
    async with two_readers(redis_url, _LEDGER.rows, "/api/v1/items/song-a") as apis:
        yield apis


async def _explain(client: httpx.AsyncClient, item: str, sort: str, **params: Any) -> Any:
    response = await client.get(f"/api/v1/items/{item}/explain", params={"sort": sort} | params)
    assert response.status_code == 200, response.text
    return response


def _adds_up(body: dict[str, Any]) -> None:
    """The components give the total, and the total the score (trending: with `rounding`)."""
    parts, sort = body["components"], body["sort"]
    if sort == "net":
        assert sum(p["value"] for p in parts) == body["total"] == body["score"]
    elif sort == "independent":
        assert sum(p["sign"] for p in parts) == body["total"] == body["score"]
    elif sort == "confidence":
        assert [p["label"] for p in parts] == ["up", "down", "z"]
        assert body["total"] == body["score"]  # bit-identical: the chart's own function
    else:
        days = [p for p in parts if "date" in p]
        for p in days:
            assert p["weight"] * p["factor"] == p["contribution"]
        assert math.fsum(p["contribution"] for p in days) == body["total"]
        rounding = [p for p in parts if p.get("label") == "rounding"]
        assert len(days) + len(rounding) == len(parts)
        if rounding:
            assert rounding[0]["contribution"] == body["score"] - body["total"] != 0
        else:
            assert body["total"] == body["score"]
        assert math.isclose(math.fsum(p["contribution"] for p in parts), body["score"])


def _timeless(body: dict[str, Any]) -> dict[str, Any]:
    """A trending explanation without what depends on the instant it was decayed to."""
    if body["sort"] != "trending":
        return body
    days = [{k: p[k] for k in ("date", "net", "weight")} for p in body["components"] if "date" in p]
    return {"item_id": body["item_id"], "position": body["position"], "days": days}


@pytest.mark.parametrize("sort", ["net", "independent", "confidence", "trending"])
async def test_components_add_up_to_the_score_in_both_stores(apis: Apis, sort: str) -> None:
    """For every item, the same explanation from Redis and from PostgreSQL, at the same
    position, adding up to the item's score as item detail gives it (trending: decayed to
    another instant, so close). song-a has a day older than Redis keeps: PostgreSQL explains
    its trending score."""
    for item in ("song-a", "song-b", "song-c"):
        bodies = []
        for client, source in ((apis.redis, "redis"), (apis.postgres, "postgres")):
            response = await _explain(client, item, sort, min_position=apis.position)
            if (item, sort) == ("song-a", "trending"):
                source = "postgres"
            assert response.headers["X-Read-Model"] == source
            body = response.json()
            _adds_up(body)
            detail = (await client.get(f"/api/v1/items/{item}")).json()
            shown = detail[sort]  # item detail names each score as its chart
            if sort == "trending":
                assert math.isclose(body["score"], shown, rel_tol=1e-5), (item, source)
            else:
                assert body["score"] == shown, (item, source)
            assert body["position"] == apis.position == int(response.headers["X-Ledger-Position"])
            bodies.append(_timeless(body))
        assert bodies[0] == bodies[1], item


async def test_trending_days_hold_each_days_weights(apis: Apis) -> None:
    """song-b's days: net votes and the sum of each vote's 2^((t - end of day)/h)."""
    h = 6 * 3600.0
    expected: dict[str, list[float]] = {}
    for event, at in _LEDGER.rows:
        if isinstance(event, VoteCast) and event.item_id == "song-b":
            day = at.date()
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            delta = VALUE[event.direction] - VALUE[event.previous]
            expected.setdefault(day.isoformat(), []).append(
                delta * 2.0 ** ((at - end).total_seconds() / h)
            )
    body = (await _explain(apis.redis, "song-b", "trending")).json()
    days = {p["date"]: p for p in body["components"] if "date" in p}
    assert sorted(days) == sorted(expected)
    for day, weights in expected.items():
        assert math.isclose(days[day]["weight"], math.fsum(weights), rel_tol=1e-12), day
    assert body["half_life"] == h and body["formula"].startswith("sum over days")


async def test_the_independent_score_lists_each_owner_once(apis: Apis) -> None:
    """Owners by |sum| then name, the one whose agents all retracted left out; past `limit`,
    one `rest` component carries the others' signs."""
    for client in (apis.redis, apis.postgres):
        body = (await _explain(client, "song-a", "independent")).json()
        assert body["components"] == [
            {"owner": "alice", "agents": 1, "sum": -1, "sign": -1},
            {"owner": "dave", "agents": 1, "sum": 1, "sign": 1},
            {"owner": "farm", "agents": 3, "sum": 1, "sign": 1},
            {"owner": "bob", "agents": 2, "sum": 0, "sign": 0},
        ]
        assert body["score"] == body["total"] == 1
        assert "components_truncated" not in body
        short = (await _explain(client, "song-a", "independent", limit=1)).json()
        assert short["components"] == [
            {"owner": "alice", "agents": 1, "sum": -1, "sign": -1},
            {"label": "rest", "owners": 3, "sign": 2},
        ]
        assert short["components_truncated"] is True
        assert short["score"] == short["total"] == 1


async def test_net_and_confidence_components(apis: Apis) -> None:
    body = (await _explain(apis.redis, "song-a", "net")).json()
    assert body["components"] == [{"label": "up", "value": 4}, {"label": "down", "value": -3}]
    conf = (await _explain(apis.redis, "song-b", "confidence")).json()
    assert conf["components"][:2] == [{"label": "up", "value": 2}, {"label": "down", "value": 1}]
    assert conf["components"][2]["label"] == "z"
    assert "sqrt" in conf["formula"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/items/song-nope/explain", 404),
        ("/api/v1/items/song-a/explain?sort=bogus", 422),
        ("/api/v1/items/song-a/explain?sort=independent&limit=1001", 422),
        ("/api/v1/items/song-a/explain?min_position=-1", 422),
    ],
)
async def test_bad_requests_are_problem_details(apis: Apis, path: str, status: int) -> None:
    for client in (apis.redis, apis.postgres):
        response = await client.get(path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
