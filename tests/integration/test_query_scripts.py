"""The Redis reader's scripts against real Redis: the named contracts where values are absent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest
import redis.asyncio as aioredis

from projections.redis_store import meta_key, namespace
from queries.redis_reader import RedisReader
from queries.shapes import ListQuery, NotReady
from tests.conftest import fresh_redis_prefix

DAY = date(2026, 3, 1)


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[RedisReader]:
    """A reader of generation 1 under a prefix of this test's own, its meta hash live at 42."""
    with fresh_redis_prefix(redis_url) as prefix:
        client = aioredis.Redis.from_url(redis_url)
        await client.hset(meta_key(prefix, 1), mapping={"watermark": 42, "live": 1})
        try:
            yield RedisReader(client, prefix, 3600.0)
        finally:
            await client.aclose()


async def test_an_empty_list_is_an_empty_page(reader: RedisReader) -> None:
    """No members: no rows (cjson would encode an empty list as a map), no cursor."""
    page = await reader.page(1, ListQuery("daily", "song", 10, day=DAY), 0.0)
    assert (page.items, page.next_cursor, page.position) == ([], None, 42)


async def test_an_item_without_ranks_has_them_absent(reader: RedisReader) -> None:
    """An item in no list has no ranks and no daily net; an unknown item is None."""
    ns = namespace(reader.prefix, 1)
    await reader.client.hset(
        f"{ns}:item:s1", mapping={"item_type": "song", "title": "T", "up": 2, "down": 1}
    )
    detail, position = await reader.detail(1, "s1", DAY, 0.0)
    assert detail is not None and position == 42
    assert (detail.up, detail.down, detail.net, detail.confidence) == (2, 1, 1, 0.0)
    assert (detail.rank_top, detail.rank_trending, detail.rank_daily, detail.daily_net) == (
        (None,) * 4
    )
    assert await reader.detail(1, "nothing", DAY, 0.0) == (None, 42)


async def test_scores_and_cursors_keep_exact_doubles(reader: RedisReader) -> None:
    """A score that JSON numbers would round (15 digits in cjson) comes back exact, and a cursor
    at it pages on from the right member."""
    ns = namespace(reader.prefix, 1)
    score = 0.1 + 0.2  # 0.30000000000000004
    for item_id in ("a", "b", "c"):
        await reader.client.hset(
            f"{ns}:item:{item_id}", mapping={"item_type": "song", "title": item_id, "up": 1}
        )
        await reader.client.zadd(f"{ns}:conf:song", {item_id: score})
    first = await reader.page(1, ListQuery("confidence", "song", 2), 0.0)
    assert [(e.item_id, e.score) for e in first.items] == [("c", score), ("b", score)]
    assert first.next_cursor is not None
    rest = await reader.page(1, ListQuery("confidence", "song", 2, first.next_cursor), 0.0)
    assert [(e.rank, e.item_id) for e in rest.items] == [(3, "a")] and rest.next_cursor is None


async def test_a_generation_not_live_is_not_ready(reader: RedisReader) -> None:
    """Without `live` in the meta hash the reader refuses, so PostgreSQL answers instead."""
    await reader.client.hdel(meta_key(reader.prefix, 1), "live")
    with pytest.raises(NotReady):
        await reader.page(1, ListQuery("top", "song", 5), 0.0)
    with pytest.raises(NotReady):
        await reader.detail(1, "s1", DAY, 0.0)
