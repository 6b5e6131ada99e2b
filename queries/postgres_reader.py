"""The PostgreSQL reader, the fallback when Redis cannot answer: its SQL, and one REPEATABLE READ
snapshot per read that reads the generation pointer, the rows and the watermark together.

Ranks count what ranks above, in the same order as the lists (score descending, ties by item id
descending, bytewise: `COLLATE "C"` on the read models), so Redis and PostgreSQL agree.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projections import generations
from projections.model import sign
from projections.postgres_store import schema
from queries.explain_shapes import DayRow, OwnerRow, Stored
from queries.shapes import (
    Cursor,
    Detail,
    Entry,
    ItemDaily,
    ListQuery,
    Page,
    daily_series,
    display,
)

_SCORE_COLUMN = {
    "top": "net",
    "confidence": "wilson",
    "independent": "independent",
    "trending": "trend",
    "daily": "net",
}

_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"
# ledger_head: every generation's checkpoint has it since 0007_projection_health.sql.
_POSITION = """
SELECT watermark, trend_epoch, ledger_head
FROM {schema}.checkpoint WHERE projection = 'postgres'
"""
_LIST = """
SELECT item_id, item_type, title, up, down, {score}
FROM {schema}.items
WHERE item_type = %(item_type)s AND up + down >= %(min_votes)s
  AND (%(after)s::boolean IS NOT TRUE OR ({score}, item_id) < (%(score)s, %(item_id)s))
ORDER BY {score} DESC, item_id DESC
LIMIT %(limit)s
"""
_DAILY = """
SELECT d.item_id, d.item_type, i.title, i.up, i.down, d.net
FROM {schema}.daily AS d JOIN {schema}.items AS i USING (item_id)
WHERE d.day = %(day)s AND d.item_type = %(item_type)s AND i.up + i.down >= %(min_votes)s
  AND (%(after)s::boolean IS NOT TRUE OR (d.net, d.item_id) < (%(score)s, %(item_id)s))
ORDER BY d.net DESC, d.item_id DESC
LIMIT %(limit)s
"""
_DETAIL = """
SELECT i.item_type, i.title, i.up, i.down, i.net, i.wilson, i.trend,
  (SELECT count(*) + 1 FROM {schema}.items o WHERE o.item_type = i.item_type
     AND (o.net, o.item_id) > (i.net, i.item_id)),
  (SELECT count(*) + 1 FROM {schema}.items o WHERE o.item_type = i.item_type
     AND (o.trend, o.item_id) > (i.trend, i.item_id)),
  (SELECT count(*) + 1 FROM {schema}.daily o WHERE o.item_type = i.item_type
     AND o.day = d.day AND (o.net, o.item_id) > (d.net, d.item_id)),
  d.net, i.independent, i.owners,
  (SELECT count(*) + 1 FROM {schema}.items o WHERE o.item_type = i.item_type
     AND (o.independent, o.item_id) > (i.independent, i.item_id))
FROM {schema}.items AS i
LEFT JOIN {schema}.daily AS d ON d.item_id = i.item_id AND d.day = %(day)s
WHERE i.item_id = %(item_id)s
"""
# The item's row alone when it gained nothing on those days; none for an unknown item. One index
# probe per day: (day, item_id) is the daily table's key.
_SERIES = """
SELECT d.day, d.net
FROM {schema}.items AS i
LEFT JOIN {schema}.daily AS d ON d.item_id = i.item_id AND d.day = ANY(%(days)s)
WHERE i.item_id = %(item_id)s
"""

# An item's explanation: its chart scores, then (independent) its voting owners, largest |value|
# first (ties by owner, bytewise: as queries.explain orders them) with the count and sum of signs
# of all of them, or (trending) its days and whether the generation keeps per-day sums.
_EXPLAIN = """
SELECT item_type, up, down, net, wilson, independent, trend FROM {schema}.items
WHERE item_id = %(item_id)s
"""
_EXPLAIN_OWNERS = """
SELECT owner, value, active, count(*) OVER (), sum(sign(value)) OVER ()
FROM {schema}.item_owners WHERE item_id = %(item_id)s AND active > 0
ORDER BY abs(value) DESC, owner
LIMIT %(limit)s
"""
_EXPLAIN_DAYS = """
SELECT day, net, trend FROM {schema}.daily WHERE item_id = %(item_id)s ORDER BY day
"""
_DAY_TREND_READY = """
SELECT day_trend_ready FROM {schema}.checkpoint WHERE projection = 'postgres'
"""
_EXPLAIN_SCORE = {"net": 3, "confidence": 4, "independent": 5, "trending": 6}

Row = tuple[Any, ...]


@functools.lru_cache(maxsize=64)
def _statement(text: str, generation: int, score: str = "net") -> sql.Composed:
    """A statement composed for one generation (and score column), once."""
    return sql.SQL(text).format(schema=schema(generation), score=sql.Identifier(score))


class PostgresReader:
    """Each read runs in one REPEATABLE READ snapshot that also reads the generation pointer, so
    rows, watermark and generation always belong together."""

    def __init__(self, pool: AsyncConnectionPool, half_life: float) -> None:
        self.pool = pool
        self.half_life = half_life
        self.head = 0  # the highest ledger head the projector has written with its checkpoint

    async def generation(self) -> int:
        async with self.pool.connection() as conn:
            return await generations.postgres(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[tuple[psycopg.AsyncConnection, int]]:
        """A read-only snapshot of the read models and the generation it sees."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_SNAPSHOT)
            yield conn, await generations.postgres(conn)

    async def position(self) -> tuple[int, int]:
        """The watermark the read models reflect and the ledger head, in one snapshot."""
        async with self.snapshot() as (conn, generation):
            watermark, _ = await self._position(conn, generation)
        return watermark, self.head

    async def _position(
        self, conn: psycopg.AsyncConnection, generation: int
    ) -> tuple[int, float | None]:
        """The watermark this snapshot reflects and the trending epoch; notes the head."""
        row = await (await conn.execute(_statement(_POSITION, generation))).fetchone()
        assert row is not None
        watermark, epoch, head = row
        self.head = max(self.head, head or 0)
        return int(watermark), epoch

    async def page(self, query: ListQuery, now: float) -> Page:
        async with self.snapshot() as (conn, generation):
            cursor = query.after(generation)
            text = _DAILY if query.name == "daily" else _LIST
            statement = _statement(text, generation, _SCORE_COLUMN[query.name])
            rows = await (await conn.execute(statement, _page_params(query, cursor))).fetchall()
            watermark, epoch = await self._position(conn, generation)
        rank = cursor.rank if cursor else 0
        entries = []
        for item_id, item_type, title, up, down, score in rows[: query.limit]:
            rank += 1
            shown = display(query.name, float(score), epoch, now, self.half_life)
            entries.append(Entry(rank, item_id, item_type, title, shown, up, down))
        next_cursor = None
        if len(rows) > query.limit:
            last = rows[query.limit - 1]
            next_cursor = Cursor(generation, query.list_key, float(last[5]), last[0], rank).encode()
        return Page(entries, next_cursor, watermark)

    async def detail(self, item_id: str, today: date, now: float) -> tuple[Detail | None, int]:
        async with self.snapshot() as (conn, generation):
            params = {"item_id": item_id, "day": today}
            cur = await conn.execute(_statement(_DETAIL, generation), params)
            row = await cur.fetchone()
            watermark, epoch = await self._position(conn, generation)
        if row is None:
            return None, watermark
        return self._detail(item_id, row, epoch, now), watermark

    async def daily(self, item_id: str, days: list[date]) -> tuple[ItemDaily | None, int]:
        """An item's net votes on each of `days`, or None if unknown."""
        async with self.snapshot() as (conn, generation):
            params = {"item_id": item_id, "days": days}
            rows = await (await conn.execute(_statement(_SERIES, generation), params)).fetchall()
            watermark, _ = await self._position(conn, generation)
        if not rows:
            return None, watermark
        nets = {day: net for day, net in rows if day is not None}
        return daily_series(item_id, days, nets), watermark

    async def explain(self, item_id: str, sort: str, limit: int) -> tuple[Stored | None, int]:
        """An item's stored numbers on one chart (at most `limit` owners), or None if unknown."""
        params = {"item_id": item_id, "limit": limit}
        async with self.snapshot() as (conn, generation):
            cur = await conn.execute(_statement(_EXPLAIN, generation), params)
            row = await cur.fetchone()
            watermark, epoch = await self._position(conn, generation)
            if row is None:
                return None, watermark
            found = Stored(row[0], row[1], row[2], float(row[_EXPLAIN_SCORE[sort]]), epoch)
            if sort == "independent":
                query = _statement(_EXPLAIN_OWNERS, generation)
                owners = await (await conn.execute(query, params)).fetchall()
                found = _with_owners(found, owners)
            elif sort == "trending":
                query = _statement(_EXPLAIN_DAYS, generation)
                days = await (await conn.execute(query, params)).fetchall()
                ready = await conn.execute(_statement(_DAY_TREND_READY, generation))
                complete = bool((await ready.fetchone() or (False,))[0])
                rows = [DayRow(day, net, trend) for day, net, trend in days]
                found = replace(found, days=rows, complete=complete)
        return found, watermark

    def _detail(self, item_id: str, row: Row, epoch: float | None, now: float) -> Detail:
        item_type, title, up, down, net, wilson, trend, r_top, r_trend, r_daily, daily, *more = row
        trending = display("trending", trend, epoch, now, self.half_life)
        r_daily = r_daily if daily is not None else None
        return Detail(
            item_id,
            item_type,
            title,
            up,
            down,
            net,
            wilson,
            trending,
            r_top,
            r_trend,
            r_daily,
            daily,
            *more,
        )


def _with_owners(found: Stored, rows: list[Row]) -> Stored:
    """The owners shown, and the count and sum of signs of those past the limit."""
    shown = [OwnerRow(owner, value, active) for owner, value, active, _, _ in rows]
    count, signs = (rows[0][3], rows[0][4]) if rows else (0, 0)
    left_sign = int(signs) - sum(sign(o.value) for o in shown)
    return replace(found, owners=shown, others=count - len(shown), others_sign=left_sign)


def _page_params(query: ListQuery, cursor: Cursor | None) -> dict[str, Any]:
    return {
        "item_type": query.item_type,
        "min_votes": query.min_votes,
        "after": cursor is not None,
        "score": cursor.score if cursor else None,
        "item_id": cursor.item_id if cursor else None,
        "limit": query.limit + 1,
        "day": query.day,
    }
