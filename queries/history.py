"""Charts as they stood: as-of charts, an item's rank history and each day's digest, read from the
daily snapshots in the PostgreSQL read models (projections.snapshots says what they are).

`GET /api/v1/top?as_of=` and `GET /api/v1/trending?as_of=` are the live routes (queries.routes)
handing over to `answer_as_of`; the item history and the digest are routes of their own here. A
snapshot never changes once its day has closed, so each answer is its own ETag; the position is
that of the last event applied before the day closed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from infra.openapi import json_response
from infra.problems import Problem
from projections import snapshot_store
from queries.answers import response, unknown_item
from queries.cache import Cached
from queries.params import ItemId, Side
from queries.shapes import BadCursor, Cursor, Entry, Page, StaleCursor
from queries.side import Ask, ReadSide

MAX_HISTORY_DAYS = 366
_encoder = msgspec.json.Encoder()

AsOf = Annotated[
    date | None,
    Query(description="YYYY-MM-DD (UTC): the chart as it stood when that day closed"),
]


class ChartDigest(msgspec.Struct, frozen=True):
    """One link of the snapshots' hash chain."""

    day: date = msgspec.field(name="date")
    digest: str  # SHA-256 (hex) of the previous digest and the day's rows
    previous: str  # the previous day's digest ("" for the first day)
    position: int  # the last event applied before the day closed


class Placing(msgspec.Struct, frozen=True):
    rank: int
    score: float


class HistoryDay(msgspec.Struct, frozen=True, omit_defaults=True):
    """An item's place on each chart of its type as one day closed."""

    day: date = msgspec.field(name="date")
    net: Placing | None = None
    confidence: Placing | None = None
    independent: Placing | None = None
    trending: Placing | None = None


class ItemHistory(msgspec.Struct, frozen=True):
    item_id: str
    first: date = msgspec.field(name="from")
    last: date = msgspec.field(name="to")
    days: list[HistoryDay]  # the closed days of the range, oldest first
    position: int


_PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_NO_SNAPSHOT = {"description": "No snapshot of that day (problem /problems/no-snapshot)"}


def _doc(struct: Any, what: str, **errors: dict[str, Any]) -> dict[str, Any]:
    responses: dict[int | str, Any] = {
        200: json_response(struct, what),
        304: {"description": "Not modified"},
    }
    responses.update(
        {int(code[1:]): {**text, "content": _PROBLEM} for code, text in errors.items()}
    )
    return {"response_class": Response, "responses": responses}


AS_OF_DOC = {404: {**_NO_SNAPSHOT, "content": _PROBLEM}}


def _answer(body: bytes, position: int, generation: int, if_none_match: str | None) -> Response:
    return response(Cached.of(body, position, generation), "postgres", if_none_match)


def no_snapshot(day: date) -> Problem:
    return Problem(
        404,
        f"there is no snapshot of {day.isoformat()}: the day has not closed, or "
        "is before the first one",
        slug="no-snapshot",
    )


async def answer_as_of(
    side: ReadSide,
    chart: str,
    item_type: str,
    day: date,
    limit: int,
    cursor: str | None,
    ask: Ask,
) -> Response:
    """A page of one chart as `day` closed; paged by rank with the same cursors as live lists."""
    list_key = f"asof:{chart}:{item_type}:{day.isoformat()}"
    async with side.postgres.snapshot() as (conn, generation):
        try:
            after = Cursor.decode(cursor, generation, list_key) if cursor else None
        except BadCursor as exc:
            raise Problem(410 if isinstance(exc, StaleCursor) else 422, str(exc), slug="bad-cursor")
        link = await snapshot_store.day(conn, generation, day)
        if link is None:
            raise no_snapshot(day)
        params = {"day": day, "chart": chart, "item_type": item_type, "limit": limit + 1}
        rows = await snapshot_store.page(
            conn, generation, params | {"after": after.rank if after else 0}
        )
    entries = [
        Entry(rank, item_id, item_type, title, float(score), up, down)
        for rank, item_id, item_type, title, up, down, score in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = entries[-1]
        next_cursor = Cursor(generation, list_key, last.score, last.item_id, last.rank).encode()
    body = _encoder.encode(Page(entries, next_cursor, link.position))
    return _answer(body, link.position, generation, ask.if_none_match)


router = APIRouter()


def _if_none_match(request: Request) -> str | None:
    return request.headers.get("if-none-match")


IfNoneMatch = Annotated[str | None, Depends(_if_none_match)]


@router.get(
    "/api/v1/charts/{date}/digest",
    summary="The hash-chain link of one day's chart snapshot",
    **_doc(ChartDigest, "The day's digest", e404=_NO_SNAPSHOT),
)
async def chart_digest(
    side: Side,
    day: Annotated[date, Path(alias="date", description="YYYY-MM-DD (UTC)")],
    if_none_match: IfNoneMatch,
) -> Response:
    async with side.postgres.snapshot() as (conn, generation):
        link = await snapshot_store.day(conn, generation, day)
    if link is None:
        raise no_snapshot(day)
    body = _encoder.encode(ChartDigest(link.day, link.digest, link.previous, link.position))
    return _answer(body, link.position, generation, if_none_match)


@router.get(
    "/api/v1/items/{item_id}/history",
    summary="One item's daily rank and score on each chart, from the daily snapshots",
    **_doc(
        ItemHistory,
        "The item's places, one entry per closed day of the range",
        e404={"description": "No such item (problem /problems/unknown-item)"},
        e422={"description": f"A bad range: from after to, or over {MAX_HISTORY_DAYS} days"},
    ),
)
async def item_history(
    side: Side,
    item_id: ItemId,
    if_none_match: IfNoneMatch,
    first: Annotated[
        date | None, Query(alias="from", description="YYYY-MM-DD (UTC); default 29 days before to")
    ] = None,
    last: Annotated[
        date | None, Query(alias="to", description="YYYY-MM-DD (UTC); default yesterday")
    ] = None,
) -> Response:
    last = last or datetime.now(UTC).date() - timedelta(days=1)
    first = first or last - timedelta(days=min(29, (last - date.min).days))
    if first > last:
        raise Problem(422, "from is after to", slug="bad-range")
    if (last - first).days >= MAX_HISTORY_DAYS:
        raise Problem(422, f"the range is over {MAX_HISTORY_DAYS} days", slug="bad-range")
    async with side.postgres.snapshot() as (conn, generation):
        found = await snapshot_store.history(conn, generation, item_id, first, last)
        position = await snapshot_store.position_within(conn, generation, first, last)
    if found is None:
        raise unknown_item(item_id)
    body = _encoder.encode(ItemHistory(item_id, first, last, _days(found), position))
    return _answer(body, position, generation, if_none_match)


def _days(rows: list[tuple[Any, ...]]) -> list[HistoryDay]:
    by_day: dict[date, dict[str, Placing]] = {}
    for day, chart, rank, score in rows:
        by_day.setdefault(day, {})[chart] = Placing(rank, float(score))
    return [HistoryDay(day, **charts) for day, charts in sorted(by_day.items())]
