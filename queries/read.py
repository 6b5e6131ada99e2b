"""Read functions over the read models: Redis first, the PostgreSQL read models as fallback.

Both readers return the same shapes, computed the same way (ranking order is score descending,
ties by item id descending, bytewise), so a client cannot tell which one answered except by the
`X-Read-Model` header. Neither ever touches the ledger. All SQL and Lua of the read side is here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Literal, cast

import msgspec
import psycopg
import redis.asyncio as aioredis
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from events.types import ItemType
from infra.redis_keys import namespace
from projections.model import decayed

ListName = Literal["top", "confidence", "trending", "daily"]
_ZSET = {"top": "top", "confidence": "conf", "trending": "trend"}
_SCORE_COLUMN = {"top": "net", "confidence": "wilson", "trending": "trend"}


class BadCursor(ValueError):
    """The cursor was not issued for this list and generation."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last item's stored score and id, and its rank."""

    generation: int
    list_key: str
    score: float
    item_id: str
    rank: int

    def encode(self) -> str:
        raw = msgspec.msgpack.encode(
            [self.generation, self.list_key, self.score, self.item_id, self.rank]
        )
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, generation: int, list_key: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            gen, key, score, item_id, rank = msgspec.msgpack.decode(raw)
            cursor = cls(int(gen), str(key), float(score), str(item_id), int(rank))
        except (binascii.Error, msgspec.DecodeError, ValueError, TypeError) as exc:
            raise BadCursor("the cursor is malformed") from exc
        if cursor.list_key != list_key:
            raise BadCursor("the cursor belongs to another list")
        if cursor.generation != generation:
            raise BadCursor("the rankings were rebuilt since this cursor was issued; start over")
        return cursor


# The response shapes: encoded with msgspec, and what the OpenAPI document shows (infra.openapi).
class Entry(msgspec.Struct, frozen=True):
    rank: int
    item_id: str
    item_type: ItemType
    title: str
    score: float
    up: int
    down: int


class Page(msgspec.Struct, frozen=True):
    items: list[Entry]
    next_cursor: str | None
    position: int


class Detail(msgspec.Struct, frozen=True):
    item_id: str
    item_type: ItemType
    title: str
    up: int
    down: int
    net: int
    confidence: float
    trending: float
    rank_top: int | None
    rank_trending: int | None
    rank_daily: int | None
    daily_net: int | None


class DetailAt(Detail, frozen=True):
    """An item's detail with the ledger position it reflects: the item endpoint's body."""

    position: int


@dataclass(frozen=True, slots=True)
class ListQuery:
    name: ListName
    item_type: str
    limit: int
    cursor: str | None = None
    min_votes: int = 0
    day: date | None = None

    @property
    def list_key(self) -> str:
        if self.name == "daily":
            assert self.day is not None
            return f"daily:{self.item_type}:{self.day.isoformat()}"
        return f"{_ZSET[self.name]}:{self.item_type}"


def _display(name: str, stored: float, epoch: float | None, now: float, half_life: float) -> float:
    """Trending sums are stored relative to an epoch; clients see decayed net votes now."""
    if name == "trending":
        return decayed(stored, epoch or now, now, half_life)
    return stored


# --- Redis --------------------------------------------------------------------------------------


class NotReady(Exception):
    """This read model cannot answer now (it is rebuilding, or missing)."""


class RedisReader:
    def __init__(self, client: aioredis.Redis, prefix: str, half_life: float) -> None:
        self.client = client
        self.prefix = prefix
        self.half_life = half_life
        # redis-py's Script runs EVALSHA and reloads the script when Redis answers NOSCRIPT.
        files = resources.files("queries")
        self._page = client.register_script(files.joinpath("page.lua").read_text())
        self._item = client.register_script(files.joinpath("item.lua").read_text())

    async def page(self, generation: int, query: ListQuery, now: float) -> Page:
        cursor = Cursor.decode(query.cursor, generation, query.list_key) if query.cursor else None
        result = await self._page(
            keys=[namespace(self.prefix, generation)],
            args=[
                query.list_key,
                query.limit,
                repr(cursor.score) if cursor else "",
                cursor.item_id if cursor else "",
                query.min_votes,
            ],
        )
        watermark, epoch, live, rows, last_id, last_score, more = result
        if live != b"1":
            raise NotReady("the Redis read models are not caught up")
        epoch_value = float(epoch) if epoch else None
        rank = cursor.rank if cursor else 0
        entries = []
        for item_id, score, item_type, title, up, down in rows:
            rank += 1
            entries.append(
                Entry(
                    rank,
                    item_id.decode(),
                    cast(ItemType, item_type.decode()),
                    title.decode(),
                    _display(query.name, float(score), epoch_value, now, self.half_life),
                    int(up),
                    int(down),
                )
            )
        next_cursor = None
        if more and last_id:
            next_cursor = Cursor(
                generation, query.list_key, float(last_score), last_id.decode(), rank
            ).encode()
        return Page(entries, next_cursor, int(watermark))

    async def detail(
        self, generation: int, item_id: str, today: date, now: float
    ) -> tuple[Detail | None, int]:
        watermark, epoch, live, found = await self._item(
            keys=[namespace(self.prefix, generation)], args=[item_id, today.isoformat()]
        )
        if live != b"1":
            raise NotReady("the Redis read models are not caught up")
        if not found:
            return None, int(watermark)
        item_type, title, up, down, conf, trend, r_top, r_trend, r_daily, daily = found
        up, down = int(up), int(down)
        detail = Detail(
            item_id, cast(ItemType, item_type.decode()), title.decode(), up, down, up - down,
            float(conf),
            _display("trending", float(trend), float(epoch) if epoch else None, now,
                     self.half_life),
            r_top, r_trend, r_daily, int(float(daily)) if daily is not None else None,
        )  # fmt: skip
        return detail, int(watermark)

    async def position(self, generation: int) -> tuple[int, bool]:
        """The watermark of a generation and whether it is live (caught up at least once)."""
        watermark, live = await self.client.hmget(
            f"{namespace(self.prefix, generation)}:meta", ["watermark", "live"]
        )
        return int(watermark or 0), live == b"1"


# --- PostgreSQL ---------------------------------------------------------------------------------

_PG_POSITION = (
    "SELECT watermark, trend_epoch FROM {schema}.checkpoint WHERE projection = 'postgres'"
)
_PG_LIST = """
SELECT item_id, item_type, title, up, down, {score}
FROM {schema}.items
WHERE item_type = %(item_type)s AND up + down >= %(min_votes)s
  AND (%(after)s::boolean IS NOT TRUE OR ({score}, item_id) < (%(score)s, %(item_id)s))
ORDER BY {score} DESC, item_id DESC
LIMIT %(limit)s
"""
_PG_DAILY = """
SELECT d.item_id, d.item_type, i.title, i.up, i.down, d.net
FROM {schema}.daily AS d JOIN {schema}.items AS i USING (item_id)
WHERE d.day = %(day)s AND d.item_type = %(item_type)s AND i.up + i.down >= %(min_votes)s
  AND (%(after)s::boolean IS NOT TRUE OR (d.net, d.item_id) < (%(score)s, %(item_id)s))
ORDER BY d.net DESC, d.item_id DESC
LIMIT %(limit)s
"""
# Ranks count what ranks above, in the same order as the lists.
_PG_DETAIL = """
SELECT i.item_type, i.title, i.up, i.down, i.net, i.wilson, i.trend,
  (SELECT count(*) + 1 FROM {schema}.items o WHERE o.item_type = i.item_type
     AND (o.net, o.item_id) > (i.net, i.item_id)),
  (SELECT count(*) + 1 FROM {schema}.items o WHERE o.item_type = i.item_type
     AND (o.trend, o.item_id) > (i.trend, i.item_id)),
  (SELECT count(*) + 1 FROM {schema}.daily o WHERE o.item_type = i.item_type
     AND o.day = d.day AND (o.net, o.item_id) > (d.net, d.item_id)),
  d.net
FROM {schema}.items AS i
LEFT JOIN {schema}.daily AS d ON d.item_id = i.item_id AND d.day = %(day)s
WHERE i.item_id = %(item_id)s
"""
_PG_GENERATION = "SELECT generation FROM read_model_generation"


class PostgresReader:
    """Each read runs in one REPEATABLE READ snapshot that also reads the generation pointer, so
    rows, watermark and generation always belong together."""

    def __init__(self, pool: AsyncConnectionPool, half_life: float) -> None:
        self.pool = pool
        self.half_life = half_life

    @staticmethod
    def _q(text: str, generation: int, score: str = "net") -> sql.Composed:
        return sql.SQL(text).format(
            schema=sql.Identifier(f"rm_g{generation}"), score=sql.Identifier(score)
        )

    async def generation(self) -> int:
        async with self.pool.connection() as conn:
            return await _generation(conn)

    async def page(self, query: ListQuery, now: float) -> Page:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_SNAPSHOT)
            generation = await _generation(conn)
            cursor = (
                Cursor.decode(query.cursor, generation, query.list_key) if query.cursor else None
            )
            params = {
                "item_type": query.item_type,
                "min_votes": query.min_votes,
                "after": cursor is not None,
                "score": cursor.score if cursor else None,
                "item_id": cursor.item_id if cursor else None,
                "limit": query.limit + 1,
                "day": query.day,
            }
            if query.name == "daily":
                statement = self._q(_PG_DAILY, generation)
            else:
                statement = self._q(_PG_LIST, generation, _SCORE_COLUMN[query.name])
            rows = await (await conn.execute(statement, params)).fetchall()
            head = await (await conn.execute(self._q(_PG_POSITION, generation))).fetchone()
        assert head is not None
        watermark, epoch = head
        rank = cursor.rank if cursor else 0
        entries = []
        for item_id, item_type, title, up, down, score in rows[: query.limit]:
            rank += 1
            entries.append(
                Entry(rank, item_id, item_type, title,
                      _display(query.name, float(score), epoch, now, self.half_life), up, down)
            )  # fmt: skip
        next_cursor = None
        if len(rows) > query.limit:
            last = rows[query.limit - 1]
            next_cursor = Cursor(generation, query.list_key, float(last[5]), last[0], rank).encode()
        return Page(entries, next_cursor, int(watermark))

    async def detail(self, item_id: str, today: date, now: float) -> tuple[Detail | None, int]:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_SNAPSHOT)
            generation = await _generation(conn)
            cur = await conn.execute(
                self._q(_PG_DETAIL, generation), {"item_id": item_id, "day": today}
            )
            row = await cur.fetchone()
            head = await (await conn.execute(self._q(_PG_POSITION, generation))).fetchone()
        assert head is not None
        watermark, epoch = head
        if row is None:
            return None, int(watermark)
        item_type, title, up, down, net, wilson, trend, r_top, r_trend, r_daily, daily = row
        detail = Detail(
            item_id, item_type, title, up, down, net, wilson,
            _display("trending", trend, epoch, now, self.half_life),
            r_top, r_trend, r_daily if daily is not None else None, daily,
        )  # fmt: skip
        return detail, int(watermark)


_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"


async def _generation(conn: psycopg.AsyncConnection) -> int:
    row = await (await conn.execute(_PG_GENERATION)).fetchone()
    assert row is not None
    return int(row[0])


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean "this store cannot answer now", as opposed to bugs."""
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError | OSError | NotReady | psycopg.OperationalError)
