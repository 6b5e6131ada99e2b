"""How the read side's answers look: the body with its validators and position, or the problem
that says a position cannot be answered (yet)."""

from __future__ import annotations

from starlette.responses import Response

from infra.metrics import QUERY_READS
from infra.problems import Problem
from queries.cache import Cached

_READS = {source: QUERY_READS.labels(source) for source in ("redis", "postgres")}

NOT_YET_STATUS = 425  # Too Early: retry later; a 4xx, as the client asked for the future


def unknown_item(item_id: str) -> Problem:
    return Problem(404, f"no item {item_id!r}", slug="unknown-item")


def not_issued(wanted: int, head: int) -> Problem:
    return Problem(
        422,
        f"position {wanted} has not been issued yet; the ledger head is {head}",
        slug="not-issued",
        headers={"X-Ledger-Head": str(head)},
    )


def not_yet(position: int, wanted: int) -> Problem:
    return Problem(
        NOT_YET_STATUS,
        f"the read models reflect position {position}, not yet {wanted}",
        slug="not-yet",
        headers={"Retry-After": "1", "X-Ledger-Position": str(position)},
    )


def response(entry: Cached, source: str, if_none_match: str | None) -> Response:
    _READS[source].inc()
    headers = {
        "ETag": entry.etag,
        "X-Ledger-Position": str(entry.position),
        "X-Read-Model": source,
        "Cache-Control": "public, no-cache",
    }
    if if_none_match == entry.etag:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, headers=headers, media_type="application/json")
