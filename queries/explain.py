"""Why an item has its score: `GET /api/v1/items/{item_id}/explain?sort=…`.

The components of an item's score on one chart at one ledger position, from the same stored numbers
the chart ranks by, read in one atomic call (Redis) or one snapshot (PostgreSQL) like every read.
`explain` is pure: stored numbers in, the explanation out. Every component is exact (integers, or
the very function the chart uses) except trending's per-day split, whose floating-point sum may
differ from the chart's one running sum in the last bits: that difference is a component of its
own (`rounding`), so the components always add up to the score.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from infra.openapi import json_response
from infra.problems import Problem
from projections.model import WILSON_Z, day_reference, decayed, sign, wilson_lower_bound
from queries.answers import unknown_item
from queries.explain_shapes import OwnerRow, Stored
from queries.params import ItemId, Side
from queries.routes import POSITION_ERRORS, Asked
from queries.side import NOTHING, Produced, ReadSide

Sort = Literal["net", "independent", "confidence", "trending"]
MAX_OWNERS = 1000
_MAX = 1.7976931348623157e308

FORMULAS = {
    "net": "up - down",
    "independent": "sum over owners voting on the item of sign(sum of its agents' votes)",
    "confidence": "(p + z^2/(2n) - z*sqrt((p*(1 - p) + z^2/(4n))/n)) / (1 + z^2/n), "
    "n = up + down, p = up/n; 0 when up = 0 (Wilson lower bound, 95%)",
    "trending": "sum over days of weight * factor, factor = 2^((end of day - at)/half-life); "
    "weight: the day's votes, each 2^((time - end of day)/half-life)",
}


class Component(msgspec.Struct, frozen=True, omit_defaults=True):
    """One part of a score; which fields it has depends on the chart (see the route)."""

    label: str | None = None
    value: int | float | None = None
    owner: str | None = None
    agents: int | None = None
    sum: int | None = None
    sign: int | None = None
    owners: int | None = None
    day: date | None = msgspec.field(default=None, name="date")
    net: int | None = None
    weight: float | None = None
    factor: float | None = None
    contribution: float | None = None


class Explanation(msgspec.Struct, frozen=True, omit_defaults=True):
    item_id: str
    sort: str
    position: int
    score: int | float  # the chart's own score of the item
    total: int | float  # what the components give (trending: without `rounding`)
    formula: str
    components: list[Component]
    components_truncated: bool = False  # independent: owners past `limit` are in `rest`
    at: float | None = None  # trending: the instant (Unix seconds) it is decayed to
    half_life: float | None = None  # trending: seconds


def explain(
    item_id: str, sort: str, stored: Stored, position: int, limit: int, at: float, half_life: float
) -> Explanation:
    """The explanation of an item's stored numbers on one chart (pure)."""
    if sort == "net":
        parts = [Component("up", stored.up), Component("down", -stored.down)]
        return Explanation(
            item_id,
            sort,
            position,
            int(stored.score),
            stored.up - stored.down,
            FORMULAS[sort],
            parts,
        )
    if sort == "confidence":
        parts = [
            Component("up", stored.up),
            Component("down", stored.down),
            Component("z", WILSON_Z),
        ]
        total = wilson_lower_bound(stored.up, stored.down)
        return Explanation(item_id, sort, position, stored.score, total, FORMULAS[sort], parts)
    if sort == "independent":
        return _independent(item_id, stored, position, limit)
    return _trending(item_id, stored, position, at, half_life)


def _independent(item_id: str, stored: Stored, position: int, limit: int) -> Explanation:
    """Largest |sum| first (ties by owner); those past `limit` are summed in one `rest`."""
    ranked = sorted(stored.owners, key=lambda o: (-abs(o.value), o.owner))
    shown, left = ranked[:limit], ranked[limit:]
    parts = [_owner(o) for o in shown]
    others = stored.others + len(left)
    if others:
        rest_sign = stored.others_sign + sum(sign(o.value) for o in left)
        parts.append(Component("rest", owners=others, sign=rest_sign))
    total = sum(p.sign or 0 for p in parts)
    return Explanation(
        item_id,
        "independent",
        position,
        int(stored.score),
        total,
        FORMULAS["independent"],
        parts,
        components_truncated=bool(others),
    )


def _owner(o: OwnerRow) -> Component:
    return Component(owner=o.owner, agents=o.active, sum=o.value, sign=sign(o.value))


def _trending(
    item_id: str, stored: Stored, position: int, at: float, half_life: float
) -> Explanation:
    """Each day's stored weight times its decay to `at`; `rounding` closes the gap to the
    chart's own decayed sum, if there is one."""
    parts = []
    for row in stored.days:
        factor = _factor(day_reference(row.day), at, half_life)
        contribution = _finite(row.trend * factor)
        parts.append(
            Component(
                day=row.day, net=row.net, weight=row.trend, factor=factor, contribution=contribution
            )
        )
    score = decayed(stored.score, stored.epoch or at, at, half_life)
    total = math.fsum(p.contribution or 0.0 for p in parts)
    if score != total:
        parts.append(Component("rounding", contribution=score - total))
    return Explanation(
        item_id,
        "trending",
        position,
        score,
        total,
        FORMULAS["trending"],
        parts,
        at=at,
        half_life=half_life,
    )


def _factor(reference: float, at: float, half_life: float) -> float:
    """2^((reference - at)/h), at most the largest power of two a double holds."""
    return float(2.0 ** min(1023.0, (reference - at) / half_life))


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.copysign(_MAX, x)


async def read(
    side: ReadSide, item_id: str, sort: str, limit: int
) -> tuple[str, Stored | None, int]:
    """The stored numbers from Redis while it can give them all, else from PostgreSQL (trending:
    Redis keeps only the recent days; an item with older ones is read from PostgreSQL)."""
    today = datetime.now(UTC).date()
    oldest = today - timedelta(days=side.settings.daily_retention_days)
    days = [oldest + timedelta(days=n) for n in range((today - oldest).days + 2)]
    source, found, position = await side.read(
        lambda generation: side.redis.explain(generation, item_id, sort, days),
        lambda: side.postgres.explain(item_id, sort, limit),
    )
    if found is not None and not found.complete and source == "redis":
        found, position = await side.postgres.explain(item_id, sort, limit)
        side.postgres_progress.moved(position)
        source = "postgres"
    return source, found, position


def _not_kept(item_id: str) -> Problem:
    return Problem(
        409,
        f"the read models do not keep per-day trending sums of {item_id!r} yet: they were made "
        "before them; `voteledger rebuild` adds them",
        slug="explain-unavailable",
    )


_encoder = msgspec.json.Encoder()
_PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_SORT_DOC = (
    "net: components up and down (-down), total up - down. independent: one component per "
    "owner voting on the item {owner, agents, sum, sign}, largest |sum| first, at most `limit`; "
    "the others in one {label: rest, owners, sign} (components_truncated: true); total the sum "
    "of signs. confidence: up, down and z, total the Wilson lower bound computed by the chart's "
    "own function. trending: one component per UTC day {date, net, weight, factor, "
    "contribution}: weight is the day's stored sum of vote weights (relative to the end of the "
    "day), factor its decay to `at`, contribution = weight * factor; total is the exact sum "
    "(math.fsum) of the contributions, which can differ in the last bits from the chart's score "
    "(one sum accumulated vote by vote): the difference is then a last component {label: "
    "rounding, contribution}, so the components add up to score. Every other total equals score."
)
_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: json_response(
            Explanation,
            "The components of the item's score on the chart",
            headers={
                "X-Ledger-Position": {"description": "The ledger position the data reflects"},
                "X-Read-Model": {"description": "redis, or postgres when answering from it"},
                "ETag": {"description": "Revalidate with If-None-Match"},
            },
        ),
        304: {"description": "Not modified (If-None-Match)"},
        404: {"description": "No such item (/problems/unknown-item)", "content": _PROBLEM},
        409: {
            "description": "trending: the read models were made before they kept per-day "
            "sums (/problems/explain-unavailable)",
            "content": _PROBLEM,
        },
        **POSITION_ERRORS,
    },
}

router = APIRouter()


@router.get(
    "/api/v1/items/{item_id}/explain",
    summary="Why an item has its score on one chart: components that add up to it",
    description=_SORT_DOC,
    **_DOC,
)
async def explain_item(
    *,
    side: Side,
    item_id: ItemId,
    sort: Annotated[Sort, Query(description="The chart")] = "net",
    limit: Annotated[
        int, Query(ge=1, le=MAX_OWNERS, description="independent: the most owners listed")
    ] = 100,
    ask: Asked,
) -> Response:
    half_life = side.settings.trending_half_life_seconds

    async def produce() -> Produced:
        source, found, position = await read(side, item_id, sort, limit)
        if found is None:
            return source, NOTHING, position
        if not found.complete:
            raise _not_kept(item_id)
        body = explain(item_id, sort, found, position, limit, time.time(), half_life)
        return source, _encoder.encode(body), position

    response = await side.respond(("explain", item_id, sort, limit), produce, ask)
    if response is None:
        raise unknown_item(item_id)
    return response
