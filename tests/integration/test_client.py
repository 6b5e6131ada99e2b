"""The typed client (clients/python) against a running stack: the command API, the query API
and a projector as processes on a database and Redis prefix of this module's own, plus a second
command API with a low rate limit. Each behaviour is checked through `Client` and `AsyncClient`.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest
from voteledger_client import (
    AsyncClient,
    Client,
    DayNet,
    Detail,
    Direction,
    Entry,
    Explanation,
    ItemHistory,
    ItemType,
    Page,
    ProblemError,
    RetryPolicy,
)

from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Stack:
    settings: Settings
    command: str
    query: str
    # A command API that allows an agent one vote a second (burst 1): a second vote within the
    # second is refused with Retry-After: 1, with room to spare on a busy machine.
    limited: str


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2")
        with (
            worker_process(settings),
            uvicorn_server("commands.app:create_app", settings) as command,
            uvicorn_server("queries.app:create_app", settings) as query,
            uvicorn_server(
                "commands.app:create_app",
                settings,
                VOTELEDGER_RATE_LIMIT_PER_SECOND="1",
                VOTELEDGER_RATE_LIMIT_BURST="1",
            ) as limited,
        ):
            yield Stack(settings, command, query, limited)


@pytest.fixture(scope="module")
def operator(stack: Stack) -> Iterator[Client]:
    with Client(stack.command, stack.query, operator_token=OPERATOR_TOKEN) as client:
        yield client


def new_key(operator: Client) -> str:
    agent = operator.create_agent("client test")
    assert isinstance(agent.agent_id, uuid.UUID)
    return agent.api_key


def new_item(operator: Client, item_type: ItemType = "song") -> str:
    item_id = f"{item_type}-{uuid.uuid4().hex[:12]}"
    listed = operator.add_item(item_id, item_type, f"Title of {item_id}")
    assert (listed.item_id, listed.position > 0) == (item_id, True)
    return item_id


def votes_recorded(stack: Stack, item_id: str) -> int:
    with psycopg.connect(stack.settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE event_type = 'VoteCast' AND item_id = %s", (item_id,)
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class Seen:
    """The vote requests a test transport saw: status, Retry-After, Idempotency-Key, when."""

    votes: list[tuple[int, str | None, str, float, float]] = field(default_factory=list)
    fail_first: bool = False

    def answer(
        self, request: httpx.Request, response: httpx.Response, sent: float
    ) -> httpx.Response:
        if request.url.path != "/api/v1/vote":
            return response
        key = request.headers["idempotency-key"]
        self.votes.append(
            (response.status_code, response.headers.get("retry-after"), key, sent, time.monotonic())
        )
        if self.fail_first and len(self.votes) == 1:
            # The vote reached the server and was recorded; the client is told 503 instead.
            return httpx.Response(503, json=_UNAVAILABLE, headers={"Retry-After": "0"})
        return response


_UNAVAILABLE = {
    "type": "/problems/unavailable",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "injected",
}


class Recording(httpx.BaseTransport):
    def __init__(self, seen: Seen) -> None:
        self.seen, self.inner = seen, httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        response.read()
        return self.seen.answer(request, response, sent)

    def close(self) -> None:
        self.inner.close()


class AsyncRecording(httpx.AsyncBaseTransport):
    def __init__(self, seen: Seen) -> None:
        self.seen, self.inner = seen, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = await self.inner.handle_async_request(request)
        await response.aread()
        return self.seen.answer(request, response, sent)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- a vote retried across a lost answer is recorded once --------------------------------------


def _assert_recorded_once(
    stack: Stack, seen: Seen, item_id: str, replayed: bool, changed: bool
) -> None:
    (first, _, key, *_), (second, _, again, *_) = seen.votes
    assert (first, second, key) == (201, 201, again)  # the one key, the server's same answer
    assert replayed and changed
    assert votes_recorded(stack, item_id) == 1


def test_a_vote_retried_after_a_503_is_recorded_once(stack: Stack, operator: Client) -> None:
    item_id, seen = new_item(operator), Seen(fail_first=True)
    with Client(stack.command, stack.query, new_key(operator), transport=Recording(seen)) as client:
        result = client.vote(item_id, "up")
    _assert_recorded_once(stack, seen, item_id, result.replayed, result.changed)


async def test_a_vote_retried_after_a_503_is_recorded_once_async(
    stack: Stack, operator: Client
) -> None:
    item_id, seen = new_item(operator), Seen(fail_first=True)
    transport = AsyncRecording(seen)
    async with AsyncClient(
        stack.command, stack.query, new_key(operator), transport=transport
    ) as client:
        result = await client.vote(item_id, "up")
    _assert_recorded_once(stack, seen, item_id, result.replayed, result.changed)


# --- a 429 waits as Retry-After says -------------------------------------------------------------


def _assert_waited(seen: Seen) -> None:
    """The first vote passed, the second was refused with Retry-After and sent again no sooner."""
    statuses = [status for status, *_ in seen.votes]
    assert statuses == [201, 429, 201], statuses
    _, retry_after, _, _, refused_at = seen.votes[1]
    assert retry_after is not None
    assert seen.votes[2][3] - refused_at >= float(retry_after)


def test_a_rate_limited_vote_waits_as_told(stack: Stack, operator: Client) -> None:
    seen, items = Seen(), [new_item(operator), new_item(operator)]
    with Client(stack.limited, stack.query, new_key(operator), transport=Recording(seen)) as client:
        results = [client.vote(item_id, "up") for item_id in items]
    _assert_waited(seen)
    assert [r.changed for r in results] == [True, True]
    assert results[1].rate_limit is not None and results[1].rate_limit.quota == 1


async def test_a_rate_limited_vote_waits_as_told_async(stack: Stack, operator: Client) -> None:
    seen, items = Seen(), [new_item(operator), new_item(operator)]
    transport = AsyncRecording(seen)
    async with AsyncClient(
        stack.limited, stack.query, new_key(operator), transport=transport
    ) as client:
        results = [await client.vote(item_id, "up") for item_id in items]
    _assert_waited(seen)
    assert [r.changed for r in results] == [True, True]


def test_a_wait_longer_than_allowed_raises_the_429(stack: Stack, operator: Client) -> None:
    item_id = new_item(operator)
    policy = RetryPolicy(retry_after_max=0.5)
    with Client(stack.limited, stack.query, new_key(operator), retry=policy) as client:
        client.vote(item_id, "up")
        with pytest.raises(ProblemError) as refused:
            client.vote(item_id, "down")
    error = refused.value
    assert (error.status, error.type) == (429, "/problems/rate-limited")
    assert error.retry_after is not None and error.retry_after >= 1
    assert error.rate_limit is not None and error.rate_limit.remaining == 0


# --- read your writes -------------------------------------------------------------------------

SEQUENCE: list[Direction] = ["up", "down", "none", "down", "up", "none"]


def _counts(vote: Direction) -> tuple[int, int]:
    return int(vote == "up"), int(vote == "down")


def test_vote_and_read_always_sees_the_vote(stack: Stack, operator: Client) -> None:
    item_id = new_item(operator)
    with Client(stack.command, stack.query, new_key(operator)) as client:
        for vote in itertools.islice(itertools.cycle(SEQUENCE), 15):
            seen = client.vote_and_read(item_id, vote)
            assert (seen.item.up, seen.item.down) == _counts(vote)
            assert seen.vote.position is not None and seen.item.position >= seen.vote.position


async def test_vote_and_read_always_sees_the_vote_async(stack: Stack, operator: Client) -> None:
    item_id = new_item(operator)
    async with AsyncClient(stack.command, stack.query, new_key(operator)) as client:
        for vote in itertools.islice(itertools.cycle(SEQUENCE), 15):
            seen = await client.vote_and_read(item_id, vote)
            assert (seen.item.up, seen.item.down) == _counts(vote)
            assert seen.vote.position is not None and seen.item.position >= seen.vote.position


# --- typed reads and paging ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools(stack: Stack, operator: Client) -> tuple[list[str], int]:
    """The module's only tools, each voted on (3 up, 2 down); and the last vote's position."""
    items = [new_item(operator, "tool") for _ in range(5)]
    with Client(stack.command, stack.query, new_key(operator)) as client:
        votes = [client.vote(item_id, "up" if n < 3 else "down") for n, item_id in enumerate(items)]
    position = votes[-1].position
    assert position is not None
    return items, position


def _assert_ranking(entries: list[Entry], items: list[str]) -> None:
    assert sorted(entry.item_id for entry in entries) == sorted(items)
    assert [entry.rank for entry in entries] == [1, 2, 3, 4, 5]
    assert all(isinstance(entry, Entry) and entry.item_type == "tool" for entry in entries)
    # Pages are read moments apart: a later page's trending scores have decayed a little more.
    scores = [entry.score for entry in entries]
    assert all(score >= after - 1e-4 for score, after in itertools.pairwise(scores)), scores


def test_reads_are_typed_and_paging_walks_every_item(
    stack: Stack, tools: tuple[list[str], int]
) -> None:
    items, position = tools
    with Client(stack.command, stack.query) as client:
        page = client.top("tool", limit=2, min_position=position)
        assert isinstance(page, Page) and len(page.items) == 2 and page.next_cursor is not None
        assert page.position >= position and page.read_model in {"redis", "postgres"}
        for walk in (
            client.iter_top("tool", limit=2, min_position=position),
            client.iter_top("tool", sort="confidence", limit=3, min_position=position),
            client.iter_daily("tool", limit=2, min_position=position),
            client.iter_trending("tool", limit=4, min_position=position),
        ):
            _assert_ranking(list(walk), items)
        assert [e.score for e in client.top("tool", min_position=position).items] == [
            1,
            1,
            1,
            -1,
            -1,
        ]
        assert client.top("tool", min_votes=2, min_position=position).items == []
        detail = client.item(items[0], min_position=position)
    assert isinstance(detail, Detail)
    assert (detail.item_id, detail.item_type, detail.up, detail.down, detail.net) == (
        items[0],
        "tool",
        1,
        0,
        1,
    )
    assert detail.rank_top is not None and detail.daily_net == 1


async def test_reads_are_typed_and_paging_walks_every_item_async(
    stack: Stack, tools: tuple[list[str], int]
) -> None:
    items, position = tools
    async with AsyncClient(stack.command, stack.query) as client:
        _assert_ranking(
            [e async for e in client.iter_top("tool", limit=2, min_position=position)], items
        )
        _assert_ranking(
            [e async for e in client.iter_trending("tool", limit=3, min_position=position)], items
        )
        page = await client.daily("tool", limit=5, min_position=position)
        detail = await client.item(items[4], min_position=position)
    assert [entry.score for entry in page.items] == [1, 1, 1, -1, -1] and page.next_cursor is None
    assert (detail.up, detail.down, detail.net, detail.daily_net) == (0, 1, -1, -1)


# --- errors -----------------------------------------------------------------------------------


def _assert_unknown_item(error: ProblemError, item_id: str) -> None:
    assert (error.status, error.type, error.title) == (404, "/problems/unknown-item", "Not Found")
    assert item_id in error.detail


def test_an_unknown_item_is_a_problem_error(stack: Stack, operator: Client) -> None:
    seen = Seen()
    with Client(stack.command, stack.query, new_key(operator), transport=Recording(seen)) as client:
        with pytest.raises(ProblemError) as voted:
            client.vote("song-never-listed", "up")
        with pytest.raises(ProblemError) as read:
            client.item("song-never-listed")
    _assert_unknown_item(voted.value, "song-never-listed")
    _assert_unknown_item(read.value, "song-never-listed")
    assert len(seen.votes) == 1  # a 404 is not retried


async def test_an_unknown_item_is_a_problem_error_async(stack: Stack, operator: Client) -> None:
    async with AsyncClient(stack.command, stack.query, new_key(operator)) as client:
        with pytest.raises(ProblemError) as voted:
            await client.vote("tool-never-listed", "down")
    _assert_unknown_item(voted.value, "tool-never-listed")


# --- explain, daily series, history, digest and as-of charts -----------------------------------


def _history_once_listed(client: Client, item_id: str) -> ItemHistory:
    """The item's history once the PostgreSQL read models have its listing (history takes no
    min_position: they may be a moment behind the Redis read that waited for it)."""
    deadline = time.monotonic() + 3
    while True:
        try:
            return client.history(item_id)
        except ProblemError as error:
            if error.type != "/problems/unknown-item" or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _assert_no_snapshot(error: ProblemError, day: date) -> None:
    assert (error.status, error.type) == (404, "/problems/no-snapshot")
    assert day.isoformat() in error.detail


def test_explain_series_and_history_are_typed(stack: Stack, operator: Client) -> None:
    """Two owners' agents up, one down: every chart's components add up to its score; the
    series has today's net; a new item has no history yet, and today has no snapshot."""
    item_id, today = new_item(operator), datetime.now(UTC).date()
    votes = []
    for vote in ("up", "up", "down"):
        with Client(stack.command, stack.query, new_key(operator)) as agent:
            votes.append(agent.vote(item_id, vote))
    position = max(v.position or 0 for v in votes)
    with Client(stack.command, stack.query) as client:
        net = client.explain(item_id, "net", min_position=position)
        owners = client.explain(item_id, "independent", limit=2, min_position=position)
        trending = client.explain(item_id, "trending", min_position=position)
        series = client.daily_series(item_id, 3, min_position=position)
        history = _history_once_listed(client, item_id)
        with pytest.raises(ProblemError) as bad_range:
            client.history(item_id, start=today, end=today - timedelta(days=1))
        with pytest.raises(ProblemError) as digest:
            client.digest(today)
        with pytest.raises(ProblemError) as as_of:
            client.top("song", as_of=today)
    assert isinstance(net, Explanation) and net.position >= position
    assert [(c.label, c.value) for c in net.components] == [("up", 2), ("down", -1)]
    assert sum(c.value or 0 for c in net.components) == net.score == net.total == 1
    assert [c.label for c in owners.components][-1] == "rest" and owners.components_truncated
    assert sum(c.sign or 0 for c in owners.components) == owners.score == 1
    assert trending.half_life and trending.components[0].day == today
    assert math.fsum(c.contribution or 0.0 for c in trending.components) == pytest.approx(
        trending.score
    )
    assert [(d.day, d.net) for d in series.days] == [
        (today - timedelta(days=2), 0),
        (today - timedelta(days=1), 0),
        (today, 1),
    ]
    assert (history.item_id, history.days, history.end) == (
        item_id,
        [],
        today - timedelta(days=1),
    )
    assert history.start == history.end - timedelta(days=29)
    assert (bad_range.value.status, bad_range.value.type) == (422, "/problems/bad-range")
    _assert_no_snapshot(digest.value, today)
    _assert_no_snapshot(as_of.value, today)


async def test_explain_series_and_as_of_async(stack: Stack, tools: tuple[list[str], int]) -> None:
    items, position = tools
    today = datetime.now(UTC).date()
    async with AsyncClient(stack.command, stack.query) as client:
        net = await client.explain(items[4], min_position=position)
        confidence = await client.explain(items[0], "confidence", min_position=position)
        series = await client.daily_series(items[4], min_position=position)
        with pytest.raises(ProblemError) as as_of:
            await client.trending("tool", as_of=today)
        with pytest.raises(ProblemError) as walked:
            _ = [e async for e in client.iter_top("tool", as_of=today - timedelta(days=1))]
        with pytest.raises(ProblemError) as unknown:
            await client.history("tool-never-listed")
    assert (net.score, net.total, net.sort) == (-1, -1, "net")
    assert [c.label for c in confidence.components] == ["up", "down", "z"]
    assert confidence.score == confidence.total and 0 < confidence.score < 1
    assert len(series.days) == 30 and series.days[-1] == DayNet(today, -1)
    assert sum(d.net for d in series.days) == -1
    _assert_no_snapshot(as_of.value, today)
    _assert_no_snapshot(walked.value, today - timedelta(days=1))
    _assert_unknown_item(unknown.value, "tool-never-listed")
