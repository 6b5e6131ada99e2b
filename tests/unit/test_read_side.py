"""ReadSide.respond without I/O: a stub `produce` stands in for the stores (nothing is started)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

import queries.side
from infra.problems import Problem
from infra.settings import Settings
from queries.cache import Cached
from queries.side import Ask, Produce, Produced, ReadSide


@pytest.fixture
async def side() -> AsyncIterator[ReadSide]:
    settings = Settings.from_env(
        {
            "VOTELEDGER_ENV": "test",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    side = ReadSide(settings)
    yield side
    await side.stop()


def answers(*produced: Produced) -> tuple[Produce, list[Produced]]:
    """A `produce` giving `produced` in turn (the last one again when they run out)."""
    calls: list[Produced] = []

    async def produce() -> Produced:
        answer = produced[min(len(calls), len(produced) - 1)]
        calls.append(answer)
        return answer

    return produce, calls


async def test_etag_revalidation_answers_304_with_the_same_headers(side: ReadSide) -> None:
    """The body's ETag in If-None-Match answers 304, empty, with the same headers."""
    produce, _ = answers(("postgres", b'{"a":1}', 3))
    first = await side.respond("k", produce, Ask())
    again = await side.respond("k", produce, Ask(if_none_match=first.headers["etag"]))
    assert first.status_code == 200 and first.body == b'{"a":1}'
    assert first.headers["x-ledger-position"] == "3" and first.headers["x-read-model"] == "postgres"
    assert again.status_code == 304 and again.body == b""
    for header in ("etag", "x-ledger-position", "x-read-model", "cache-control"):
        assert again.headers[header] == first.headers[header]


async def test_redis_answers_are_cached_for_their_url(side: ReadSide) -> None:
    """An answer from Redis is kept: the same key and URL are answered without producing."""
    side.redis_live = True
    produce, calls = answers(("redis", b"[]", 5))
    url = ("/api/v1/top", b"item_type=song")
    await side.respond("k", produce, Ask(url=url))
    again = await side.respond("k", produce, Ask(url=url))
    assert len(calls) == 1 and again.headers["x-read-model"] == "redis"
    cached = side.current_page(url)
    assert cached is not None and cached.body == b"[]" and cached.position == 5
    side.served = 6  # an answer given since is ahead of it: route normally
    assert side.current_page(url) is None


async def test_a_landed_flight_still_listed_is_read_afresh_not_spun_on(side: ReadSide) -> None:
    """A read whose flight has landed, before the callback that unlists it has run, and whose
    answer is short of a position Redis has already reached, reads again: awaiting the landed
    flight would return at once, and the request would spin, holding the event loop."""
    side.redis_live = True
    stale = side.cache.put("k", b"old", 3, side.redis_generation)
    landed: asyncio.Future[tuple[str, Cached]] = asyncio.get_running_loop().create_future()
    landed.set_result(("redis", stale))
    side._flights["k"] = landed  # as between its landing and its callback
    side.moved(9)  # Redis reflects 9: the stale answer is no longer served from the cache
    produce, calls = answers(("redis", b"new", 9))
    response = await asyncio.wait_for(side.respond("k", produce, Ask(min_position=9)), 2)
    assert response.body == b"new" and len(calls) == 1


async def test_waiting_too_long_for_redis_refuses_the_read_without_falling_back(
    side: ReadSide, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overloaded process (every request-path Redis turn taken) answers 503 busy, and keeps
    using Redis: falling back would clear the cache and move the load to PostgreSQL."""
    monkeypatch.setattr(queries.side, "_REDIS_POOL_WAIT", 0.05)
    side.redis_live = True
    side.cache.put("kept", b"{}", 1, side.redis_generation)
    while not side._redis_turns.locked():
        await side._redis_turns.acquire()
    with pytest.raises(Problem) as refused:
        await side.detail("song-1", datetime.now(UTC).date())
    assert refused.value.status == 503 and refused.value.slug == "busy"
    assert refused.value.headers["Retry-After"] == "1"
    assert side.redis_usable() and side.cache.get("kept", side.redis_generation, 0) is not None
