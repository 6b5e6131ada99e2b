"""What the readers give `queries.explain` for one item on one chart: the chart's own stored
numbers and the stored amounts its score is made of, the same from either store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

Sort = str  # net | independent | confidence | trending


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """One owner with a current vote on the item: its agents' summed votes and how many vote."""

    owner: str
    value: int
    active: int


@dataclass(frozen=True, slots=True)
class DayRow:
    """One UTC day of the item: net votes gained and the stored sum of its votes' trending
    weights, relative to the end of that day (`projections.model.day_reference`)."""

    day: date
    net: int
    trend: float


@dataclass(frozen=True, slots=True)
class Stored:
    """An item's stored numbers for one chart.

    `score` is the chart's stored score (trending: the sum relative to `epoch`). `owners` are
    owners voting on the item, largest |value| first (possibly more than are shown); `others` and
    `others_sign` count the owners and the sum of signs a reader left out of `owners`. `days`
    hold the per-day trending sums; `complete` is False when the store cannot give all of them
    (a generation made before it kept them)."""

    item_type: str
    up: int
    down: int
    score: float
    epoch: float | None = None
    owners: list[OwnerRow] = field(default_factory=list)
    others: int = 0
    others_sign: int = 0
    days: list[DayRow] = field(default_factory=list)
    complete: bool = True
