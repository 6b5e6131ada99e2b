"""The query API's routes: each parses its parameters and calls one function; `answer_list`,
`answer_item` and `answer_daily` turn a read into a body and its errors into problem details.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from fastapi import (
    APIRouter,
    Depends,
    Header,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.requests import HTTPConnection
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from events.types import ItemType
from infra.metrics import metrics_response
from infra.openapi import json_response
from infra.problems import Problem
from queries import history
from queries.answers import NOT_YET_STATUS, unknown_item
from queries.params import ItemId, Side
from queries.shapes import (
    BadCursor,
    DetailAt,
    ItemDailyAt,
    ListName,
    ListQuery,
    Page,
    StaleCursor,
)
from queries.side import NOTHING, Ask, Produced, ReadSide
from queries.stream import Listener, StreamFull, StreamHub, change_events

MAX_WAIT_MS = 5000
MAX_POSITION = 2**62
MAX_SERIES_DAYS = 90

_encoder = msgspec.json.Encoder()


ItemTypeParam = Annotated[ItemType, Query(description="song or tool")]
LimitParam = Annotated[int, Query(ge=1, le=200)]
CursorParam = Annotated[str | None, Query(max_length=512, description="next_cursor of a page")]
MinPosition = Annotated[
    int | None,
    Query(
        ge=0, le=MAX_POSITION, description="Answer only once the data reflects this ledger position"
    ),
]
WaitMs = Annotated[
    int, Query(ge=0, le=MAX_WAIT_MS, description="How long to wait for min_position (ms)")
]

_HEADERS = {
    "X-Ledger-Position": {"description": "The ledger position the data reflects"},
    "X-Read-Model": {"description": "redis, or postgres when answering from the fallback"},
    "ETag": {"description": "Revalidate with If-None-Match"},
}
_NOT_MODIFIED = {"description": "Not modified (If-None-Match)"}
_PROBLEM: dict[str, Any] = {"application/problem+json": {}}
# What a read-your-writes request can be told besides its data: both are the client's to act on.
POSITION_ERRORS: dict[int | str, dict[str, Any]] = {
    NOT_YET_STATUS: {
        "description": "Too Early: the read models do not reflect min_position yet (problem "
        "type /problems/not-yet); retry after Retry-After seconds",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before retrying"},
            "X-Ledger-Position": {"description": "The position the read models reflect"},
        },
        "content": _PROBLEM,
    },
    422: {
        "description": "Invalid request; or min_position is beyond the ledger head "
        "(problem type /problems/not-issued) or the cursor is bad (/problems/bad-cursor)",
        "content": _PROBLEM,
    },
}
_LIST_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: json_response(Page, "A page of the ranking", headers=_HEADERS),
        304: _NOT_MODIFIED,
        410: {"description": "The cursor is of rankings rebuilt since", "content": _PROBLEM},
        **POSITION_ERRORS,
    },
}
_AS_OF_LIST_DOC = {**_LIST_DOC, "responses": {**_LIST_DOC["responses"], **history.AS_OF_DOC}}
_ITEM_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: json_response(DetailAt, "The item", headers=_HEADERS),
        304: _NOT_MODIFIED,
        **POSITION_ERRORS,
    },
}
_DAILY_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: json_response(ItemDailyAt, "The item's net votes per day", headers=_HEADERS),
        304: _NOT_MODIFIED,
        404: {
            "description": "No such item (problem type /problems/unknown-item)",
            "content": _PROBLEM,
        },
        **POSITION_ERRORS,
    },
}
_STREAM_DOC: dict[str, Any] = {
    "responses": {
        503: {
            "description": "This server streams to as many clients as it may; retry after "
            "Retry-After seconds",
            "headers": {"Retry-After": {"description": "Seconds to wait before retrying"}},
            "content": _PROBLEM,
        }
    }
}

router = APIRouter()


async def _ask(request: Request, min_position: MinPosition = None, wait_ms: WaitMs = 1000) -> Ask:
    """What a read asks besides its data: read your writes, revalidation, its URL."""
    url = (request.url.path, request.scope["query_string"])
    return Ask(min_position, wait_ms, request.headers.get("if-none-match"), url)


Asked = Annotated[Ask, Depends(_ask)]


async def answer_list(side: ReadSide, query: ListQuery, ask: Ask) -> Response:
    """A page of a ranking; a cursor of an earlier generation answers 410, any other bad one 422."""

    async def produce() -> Produced:
        try:
            source, page = await side.page(query)
        except BadCursor as exc:
            raise Problem(410 if isinstance(exc, StaleCursor) else 422, str(exc), slug="bad-cursor")
        return source, _encoder.encode(page), page.position

    key = (query.name, query.item_type, query.limit, query.cursor, query.min_votes, query.day)
    response = await side.respond(key, produce, ask)
    assert response is not None, "a page, even an empty one, is never NOTHING"
    return response


async def answer_item(side: ReadSide, item_id: str, ask: Ask) -> Response:
    """One item's detail as of today (UTC); an unknown item answers 404."""
    today = datetime.now(UTC).date()

    async def produce() -> Produced:
        source, found, position = await side.detail(item_id, today)
        if found is None:
            return source, NOTHING, position
        body = _encoder.encode(DetailAt(**msgspec.structs.asdict(found), position=position))
        return source, body, position

    response = await side.respond(("item", item_id, today), produce, ask)
    if response is None:
        raise unknown_item(item_id)
    return response


_SORT = (
    "net: up minus down votes; confidence: the Wilson lower bound of the up share; independent: "
    "each owner counts once, with the sign of the sum of its agents' votes on the item"
)
_SORTED: dict[str, ListName] = {
    "net": "top",
    "confidence": "confidence",
    "independent": "independent",
}


@router.get("/api/v1/top", summary="All-time rankings", **_AS_OF_LIST_DOC)
async def top(
    *,
    side: Side,
    item_type: ItemTypeParam,
    sort: Annotated[Literal["net", "confidence", "independent"], Query(description=_SORT)] = "net",
    limit: LimitParam = 50,
    cursor: CursorParam = None,
    min_votes: Annotated[int, Query(ge=0, le=10**9)] = 0,
    as_of: history.AsOf = None,
    ask: Asked,
) -> Response:
    if as_of is not None:  # from the day's snapshot (min_votes does not apply to one)
        return await history.answer_as_of(side, sort, item_type, as_of, limit, cursor, ask)
    query = ListQuery(_SORTED[sort], item_type, limit, cursor, min_votes)
    return await answer_list(side, query, ask)


@router.get("/api/v1/top/daily", summary="Net votes gained on one UTC day", **_LIST_DOC)
async def daily(
    *,
    side: Side,
    item_type: ItemTypeParam,
    day: Annotated[date | None, Query(alias="date", description="YYYY-MM-DD, UTC")] = None,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
    ask: Asked,
) -> Response:
    query = ListQuery("daily", item_type, limit, cursor, 0, day or datetime.now(UTC).date())
    return await answer_list(side, query, ask)


@router.get("/api/v1/trending", summary="Time-decayed net votes", **_AS_OF_LIST_DOC)
async def trending(
    *,
    side: Side,
    item_type: ItemTypeParam,
    limit: LimitParam = 50,
    cursor: CursorParam = None,
    as_of: history.AsOf = None,
    ask: Asked,
) -> Response:
    if as_of is not None:
        return await history.answer_as_of(side, "trending", item_type, as_of, limit, cursor, ask)
    query = ListQuery("trending", item_type, limit, cursor)
    return await answer_list(side, query, ask)


@router.get("/api/v1/items/{item_id}", summary="One item: counts, scores and ranks", **_ITEM_DOC)
async def item(
    *,
    side: Side,
    item_id: ItemId,
    ask: Asked,
) -> Response:
    return await answer_item(side, item_id, ask)


async def answer_daily(side: ReadSide, item_id: str, count: int, ask: Ask) -> Response:
    """An item's net votes on each of the last `count` UTC days, today included; 404 if unknown."""
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=back) for back in range(count - 1, -1, -1)]

    async def produce() -> Produced:
        source, found, position = await side.daily(item_id, days)
        if found is None:
            return source, NOTHING, position
        return source, _encoder.encode(ItemDailyAt(item_id, found.days, position)), position

    response = await side.respond(("series", item_id, count, today), produce, ask)
    if response is None:
        raise unknown_item(item_id)
    return response


@router.get(
    "/api/v1/items/{item_id}/daily",
    summary="One item's net votes per UTC day, oldest first, ending today",
    **_DAILY_DOC,
)
async def item_daily(
    *,
    side: Side,
    item_id: ItemId,
    days: Annotated[
        int, Query(ge=1, le=MAX_SERIES_DAYS, description="How many days, today included")
    ] = 30,
    ask: Asked,
) -> Response:
    return await answer_daily(side, item_id, days, ask)


def _hub(connection: HTTPConnection) -> StreamHub:
    hub: StreamHub = connection.app.state.hub
    return hub


StreamItemType = Annotated[ItemType | None, Query()]


async def _listener(
    connection: HTTPConnection, item_type: StreamItemType = None
) -> AsyncIterator[Listener]:
    """A place among the process's live clients, released when the response ends (503 when
    there is none)."""
    async with _hub(connection).listen(item_type) as listener:
        yield listener


@router.get(
    "/api/v1/stream",
    response_class=EventSourceResponse,
    summary="Server-Sent Events of score changes; `id` is the ledger position",
    **_STREAM_DOC,
)
async def stream(
    side: Side,
    listener: Annotated[Listener, Depends(_listener)],
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_POSITION)
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    async for kind, position, data in change_events(side, listener, last_event_id):
        yield ServerSentEvent(event=kind, id=str(position), data=data, retry=2000)


@router.websocket("/api/v1/ws")
async def ws(
    websocket: WebSocket,
    side: Side,
    item_type: StreamItemType = None,
    last_event_id: Annotated[int | None, Query(ge=0, le=MAX_POSITION)] = None,
) -> None:
    await websocket.accept()
    try:
        async with _hub(websocket).listen(item_type) as listener:
            await _until_closed(websocket, change_events(side, listener, last_event_id))
    except StreamFull as full:
        await websocket.close(code=1013, reason=full.detail)  # 1013: try again later


async def _until_closed(websocket: WebSocket, changes: AsyncIterator[Any]) -> None:
    """Send changes until the client closes (noticed at once, not at the next change) or the
    changes end."""
    sender = asyncio.create_task(_send(websocket, changes))
    closed = asyncio.create_task(_closed(websocket))
    done, pending = await asyncio.wait({sender, closed}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await task
    for task in done:
        with contextlib.suppress(WebSocketDisconnect):
            task.result()


async def _send(websocket: WebSocket, changes: AsyncIterator[Any]) -> None:
    async for kind, position, data in changes:
        message = {"event": kind, "id": position, "data": data}
        await websocket.send_text(_encoder.encode(message).decode())
    await websocket.close()


async def _closed(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(side: Side) -> dict[str, Any]:
    return await side.readiness()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return metrics_response()
