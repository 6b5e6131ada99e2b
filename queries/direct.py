"""One item's detail answered before routing: the read-your-writes path of every voter.

An agent that voted reads its item with `min_position` until its vote shows, so at a thousand
votes a second the query API answers a thousand such reads a second, each for another item (no
cached URL). Routing, dependency injection and parameter validation cost more than the read
itself. `ItemEndpoint` answers a request it can fully parse itself (GET, a valid item id, no
query parameters but well-formed `min_position` and `wait_ms` within their bounds) with exactly
what the route would answer (`routes.answer_item`); anything else, an error included, takes the
route, so the route stays the one definition of the endpoint, its validation and its document.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN
from infra.problems import response_for
from queries.routes import MAX_POSITION, MAX_WAIT_MS, answer_item
from queries.side import Ask, ReadSide

PREFIX = "/api/v1/items/"
_ITEM_ID = re.compile(ITEM_ID_PATTERN)
_NUMBER = re.compile(r"[0-9]{1,19}")
_BOUNDS = {"min_position": MAX_POSITION, "wait_ms": MAX_WAIT_MS}


class _ItemRoute:
    path = "/api/v1/items/{item_id}"  # the metrics label, as when the route answers


def parse(scope: Scope) -> tuple[str, Ask] | None:
    """The item id and what the request asks, or None when the route should answer it."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return None
    path: str = scope["path"]
    item_id = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
    if not item_id or len(item_id) > ITEM_ID_MAX_LENGTH or not _ITEM_ID.fullmatch(item_id):
        return None
    params: dict[str, int] = {}
    query: bytes = scope["query_string"]
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        bound = _BOUNDS.get(name)
        if bound is None or name in params or not _NUMBER.fullmatch(value):
            return None
        if int(value) > bound:
            return None
        params[name] = int(value)
    if_none_match = None
    for header, value in scope["headers"]:
        if header == b"if-none-match" and if_none_match is None:
            if_none_match = value.decode("latin-1")
    ask = Ask(params.get("min_position"), params.get("wait_ms", 1000), if_none_match, (path, query))
    return item_id, ask


class ItemEndpoint:
    """ASGI middleware: answers the requests `parse` understands, passes on everything else."""

    def __init__(self, app: ASGIApp, side: ReadSide) -> None:
        self.app = app
        self.side = side

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parsed = parse(scope)
        if parsed is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = _ItemRoute
        try:
            response = await answer_item(self.side, *parsed)
        except Exception as exc:
            response = response_for(exc, scope["path"])
        await response(scope, receive, send)
