"""The query side against hostile input, without I/O: forged cursors, script errors, junk URLs,
waiters, aborted requests and redirects."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import Message, Receive, Scope, Send

from infra.http import EdgeMiddleware
from infra.metrics import HTTP_REQUESTS
from infra.problems import Problem
from infra.settings import Settings, SettingsError
from queries.cache import PageCache
from queries.progress import Watched
from queries.shapes import BadCursor, Cursor, NotReady, StaleCursor, is_unavailable
from queries.side import Ask, Produced, ReadSide

ENV = {
    "VOTELEDGER_ENV": "test",
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def forged(*fields: object) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(list(fields))).decode().rstrip("=")


@pytest.mark.parametrize(
    "fields",
    [
        (3, "top:song", float("nan"), "song-1", 5),
        (3, "top:song", float("inf"), "song-1", 5),
        (3, "top:song", float("-inf"), "song-1", 5),
        (3, "top:song", 1.0, "song-1", 2**64 - 1),
        (3, "top:song", 1.0, "song-1", -1),
        (3, "top:song", 1.0, "bad id", 5),
        (3, "top:song", 1.0, "x" * 129, 5),
        (3, "top:song", True, "song-1", 5),
        (3, "top:song", "1.0", "song-1", 5),
        (3, "top:song", 1.0, "song-1"),
        (3, "trend:song", 1.0, "song-1", 5),
    ],
)
def test_forged_cursors_are_bad_not_stale(fields: tuple[object, ...]) -> None:
    """Non-finite scores, ranks out of range, ids outside the id pattern, wrong types or another
    list: a BadCursor (422), never passed on to a store."""
    with pytest.raises(BadCursor) as raised:
        Cursor.decode(forged(*fields), 3, "top:song")
    assert not isinstance(raised.value, StaleCursor)


def test_a_forged_cursor_of_another_generation_is_stale() -> None:
    """A well-formed cursor of a generation other than the current one answers 410."""
    with pytest.raises(StaleCursor):
        Cursor.decode(forged(2**40, "top:song", 1.0, "song-1", 5), 3, "top:song")


def test_only_failing_to_reach_a_store_counts_as_unavailable() -> None:
    """Connection failures and timeouts mean "Redis is down"; a script's ResponseError does not."""
    assert is_unavailable(RedisConnectionError("refused"))
    assert is_unavailable(RedisTimeoutError("slow"))
    assert is_unavailable(OSError("reset"))
    assert is_unavailable(NotReady("rebuilding"))
    assert not is_unavailable(ResponseError("user_script:1: bad argument"))


def test_the_page_cache_stays_under_its_byte_bound_under_junk_urls() -> None:
    """Thousands of distinct ~20 KB junk URLs, each with a page, never take the cache over its
    byte bound, and the most recent ones are still answered."""
    cache = PageCache(max_bytes=2**20)
    body = b"x" * 2000
    for i in range(3000):
        url = ("/api/v1/top", b"item_type=song&junk=" + str(i).encode() * 4000)
        key = ("top", "song", 50, None, 0, None, i)
        cache.put(key, body, 1, 1)
        cache.remember_url(url, key)
        assert cache.bytes <= 2**20
    assert 0 < len(cache) < 3000
    assert cache.key_for(url) == key and cache.get(key, 1, 1) is not None


def test_an_entry_larger_than_an_eighth_of_the_bound_is_not_kept() -> None:
    """One huge answer cannot flush every other entry."""
    cache = PageCache(max_bytes=2**16)
    cache.put("small", b"x", 1, 1)
    cache.put("huge", b"x" * 2**14, 1, 1)
    assert cache.get("small", 1, 1) is not None and cache.get("huge", 1, 1) is None


def test_origins_are_parsed_and_checked() -> None:
    """CORS origins: any by default on the query API, none on the command API; junk refused."""
    settings = Settings.from_env(ENV)
    assert settings.cors_origins == ("*",) and settings.command_cors_origins == ()
    custom = Settings.from_env(ENV | {"VOTELEDGER_CORS_ORIGINS": "https://a.example, http://b:8"})
    assert custom.cors_origins == ("https://a.example", "http://b:8")
    assert Settings.from_env(ENV | {"VOTELEDGER_CORS_ORIGINS": ""}).cors_origins == ()
    with pytest.raises(SettingsError):
        Settings.from_env(ENV | {"VOTELEDGER_CORS_ORIGINS": "example.com"})


# --- respond: waiting, refusing, sharing ----------------------------------------------------


@pytest.fixture
async def side() -> AsyncIterator[ReadSide]:
    side = ReadSide(Settings.from_env(ENV))
    yield side
    await side.stop()


def counting(*produced: Produced, delay: float = 0.0) -> tuple[Any, list[Produced]]:
    calls: list[Produced] = []

    async def produce() -> Produced:
        await asyncio.sleep(delay)
        answer = produced[min(len(calls), len(produced) - 1)]
        calls.append(answer)
        return answer

    return produce, calls


async def test_a_position_not_reached_in_time_answers_425_too_early(side: ReadSide) -> None:
    """An issued position (head unknown) not reached within wait_ms: 425 with Retry-After, a 4xx
    a schema fuzzer accepts and a client retries."""
    produce, _ = counting(("postgres", b"{}", 7))
    with pytest.raises(Problem) as raised:
        await side.respond("k", produce, Ask(min_position=8, wait_ms=30))
    assert raised.value.status == 425 and raised.value.slug == "not-yet"
    assert raised.value.headers == {"Retry-After": "1", "X-Ledger-Position": "7"}


async def test_a_position_beyond_the_head_is_refused_without_the_full_wait(
    side: ReadSide,
) -> None:
    """Beyond the head the projector reported: 422 after the short grace, not after wait_ms."""
    side.postgres.head = 10
    produce, _ = counting(("postgres", b"{}", 10))
    started = time.monotonic()
    with pytest.raises(Problem) as raised:
        await side.respond("k", produce, Ask(min_position=10**9, wait_ms=5000))
    assert raised.value.status == 422 and raised.value.slug == "not-issued"
    assert "the ledger head is 10" in raised.value.detail
    assert time.monotonic() - started < 1.5
    with pytest.raises(Problem):  # wait_ms=0: at once
        await side.respond("k", produce, Ask(min_position=11, wait_ms=0))


async def test_postgres_waiters_are_woken_by_its_progress_not_by_polling_each(
    side: ReadSide,
) -> None:
    """20 waiters on the fallback share one position reader; each reads its page only once
    the position is reached, and the 20 identical reads are one (single-flight)."""
    reads = 0

    async def position() -> tuple[int, int]:
        nonlocal reads
        reads += 1
        return (5 if reads < 5 else 8), 0

    side.postgres_progress = Watched(position, 0.02)
    produce, calls = counting(("postgres", b"{}", 5), ("postgres", b"{}", 8), delay=0.01)
    answers = await asyncio.gather(
        *[side.respond("k", produce, Ask(min_position=8, wait_ms=3000)) for _ in range(20)]
    )
    assert {a.headers["x-ledger-position"] for a in answers} == {"8"}
    assert len(calls) == 2  # one read before waiting, one after: shared by all 20
    assert 5 <= reads <= 8


async def test_an_answer_behind_one_already_given_waits_for_the_fallback_to_catch_up(
    side: ReadSide,
) -> None:
    """With position 10 answered, a fallback answer at 9 waits until its position reader
    reports 10, then reads again."""
    side.served = 10
    side.postgres_progress = Watched(_constant(10), 0.01)
    produce, calls = counting(("postgres", b"{}", 9), ("postgres", b"{}", 10))
    response = await side.respond("k", produce, Ask())
    assert response.headers["x-ledger-position"] == "10"
    assert [position for _, _, position in calls] == [9, 10]


def _constant(position: int) -> Any:
    async def read() -> tuple[int, int]:
        return position, 0

    return read


async def test_a_shared_read_survives_its_first_asker_going_away(side: ReadSide) -> None:
    """Single-flight: the request that started a read is cancelled; the others still get it."""
    produce, calls = counting(("postgres", b"[]", 3), delay=0.05)
    first = asyncio.create_task(side.respond("k", produce, Ask()))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(side.respond("k", produce, Ask()))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).headers["x-ledger-position"] == "3"
    assert len(calls) == 1


# --- the HTTP edge --------------------------------------------------------------------------


def _count(app: str, route: str, status: str) -> float:
    return HTTP_REQUESTS.labels(app, route, "POST", status)._value.get()


async def test_a_request_whose_client_went_away_counts_as_499_not_500() -> None:
    """An app that finds the client gone and answers nothing is labelled 499; one that fails
    without answering is still 500."""

    async def gone(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("bug")

    async def disconnect() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    scope["headers"] = [(b"content-type", b"application/json")]
    before = _count("unit", "unmatched", "499"), _count("unit", "unmatched", "500")
    await EdgeMiddleware(gone, name="unit", max_body_bytes=100)(dict(scope), disconnect, send)
    with pytest.raises(RuntimeError):
        await EdgeMiddleware(broken, name="unit", max_body_bytes=100)(dict(scope), disconnect, send)
    after = _count("unit", "unmatched", "499"), _count("unit", "unmatched", "500")
    assert after == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    ("location", "relative"),
    [
        (b"http://evil.example/api/v1/top?a=1", b"/api/v1/top?a=1"),
        (b"https://evil.example//evil.example/x", b"/evil.example/x"),
        (b"/api/v1/top", b"/api/v1/top"),
    ],
)
async def test_redirects_never_name_a_host(location: bytes, relative: bytes) -> None:
    """Whatever Location an app builds from the request's Host, it leaves as a path."""
    sent: list[Message] = []

    async def redirect(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 307, "headers": [(b"location", location)]}
        )
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    await EdgeMiddleware(redirect, name="unit", max_body_bytes=100)(scope, receive, send)
    assert dict(sent[0]["headers"])[b"location"] == relative
