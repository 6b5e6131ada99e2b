"""Daily chart snapshots and their hash chain, as pure functions: no I/O, no clock.

At the close of each UTC day every chart (top by net, by confidence, by independent votes, and
trending) of each item type is kept with each listed item's rank and score as of the end of that
day. When a day closes is a function of the ledger in read order alone, so the live projector, a
rebuild and verify close the same days at the same events:

- the *open day* is the UTC day of the first event applied; an event recorded on a later UTC day
  than the open day closes every day from the open day up to the day before its own, BEFORE it is
  applied, and its day becomes the open day. A day with no events is closed too (same charts,
  trending decayed further, the next link of the chain), up to MAX_CLOSES days per event: a gap
  longer than that (a clock that jumped) keeps the open day and the days just before the event.
- an event recorded on or before the open day counts in the open day: an event recorded before
  midnight whose transaction committed after a later event was read counts in the next day.

Ranks: score descending, ties by item id descending (bytewise), as the live charts. Trending is the
stored sum decayed to the day's end instant (`projections.model.decayed`, what the query API
shows), rounded to 12 significant digits: a stored sum is a float total whose last bits depend on
how batches were added up, and the rounding keeps the rows (and so the digest) of a rebuild equal
to the live projector's.

digest(day) = SHA-256 of the previous day's digest (hex; "" before the first day), the day, and the
day's rows in (chart, item_type, rank) order, each as `chart|item_type|rank|item_id|score` with the
score as an integer when the chart counts votes and the value is integral, else `float.hex()`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from events.store import Checkpoint
from events.types import Recorded
from projections.model import Changes, decayed, fold, merge, wilson_lower_bound
from projections.model import standings as owner_standings
from projections.readmodel import Step

CHARTS = ("net", "confidence", "independent", "trending")
INTEGER_CHARTS = frozenset({"net", "independent"})
ITEM_TYPES = ("song", "tool")
MAX_CLOSES = 32  # days one event may close (see `closing`)
_DIGITS = 12  # significant digits of a trending score in a snapshot (see the docstring)


@dataclass(frozen=True, slots=True)
class Standing:
    """What the charts need of one item at a day's close."""

    item_id: str
    item_type: str
    up: int
    down: int
    trend: float  # the stored trending sum, relative to the epoch in force
    independent: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One item's place on one chart of one day."""

    day: date
    chart: str
    item_type: str
    rank: int
    item_id: str
    score: float | int


@dataclass(frozen=True, slots=True)
class Closed:
    """A closed day: its rows, its digest, the previous day's digest, and the read-order
    checkpoint of the last event applied before it closed."""

    day: date
    rows: list[Row]
    digest: str
    previous: str
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class DatedStep(Step):
    """A step with the events it folds, so that the PostgreSQL store can close days in it."""

    recorded: tuple[Recorded, ...] = ()


def with_events(step: Step, events: Iterable[Recorded]) -> DatedStep:
    fields = {name: getattr(step, name) for name in Step.__dataclass_fields__}
    return DatedStep(**fields, recorded=tuple(events))


def day_of(recorded: Recorded) -> date:
    return recorded.recorded_at.astimezone(UTC).date()


def day_end(day: date) -> float:
    """The instant a UTC day ends (the next day's midnight), as a timestamp."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86400.0


def days_between(first: date, last: date) -> list[date]:
    """first..last inclusive (none when last < first)."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def closing(open_day: date, day: date) -> tuple[date, ...]:
    """The days an event recorded on `day` closes when `open_day` is open: every day from the open
    day to the day before its own, but at most MAX_CLOSES (the open day and the days just before
    its own), so that a clock jumping years ahead closes a month of days, not years of them."""
    gap = (day - open_day).days
    if gap <= 0:
        return ()
    if gap <= MAX_CLOSES:
        return tuple(days_between(open_day, day - timedelta(days=1)))
    return (open_day, *days_between(day - timedelta(days=MAX_CLOSES - 1), day - timedelta(days=1)))


@dataclass(frozen=True, slots=True)
class Segment:
    """Events to apply after closing `closes` (oldest first)."""

    closes: tuple[date, ...]
    events: list[Recorded]


def split(events: Iterable[Recorded], open_day: date | None) -> tuple[list[Segment], date | None]:
    """The events in segments, each closing the days before it; and the open day after them."""
    segments: list[Segment] = []
    current: list[Recorded] = []
    closes: tuple[date, ...] = ()
    for recorded in events:
        day = day_of(recorded)
        if open_day is not None and day > open_day:
            if current or closes:
                segments.append(Segment(closes, current))
            closes, current = closing(open_day, day), []
        if open_day is None or day > open_day:
            open_day = day
        current.append(recorded)
    if current or closes:
        segments.append(Segment(closes, current))
    return segments, open_day


def _chart_score(
    chart: str, s: Standing, epoch: float | None, at: float, half_life: float
) -> float | int:
    if chart == "net":
        return s.up - s.down
    if chart == "independent":
        return s.independent
    if chart == "confidence":
        return wilson_lower_bound(s.up, s.down)
    value = decayed(s.trend, epoch if epoch is not None else at, at, half_life)
    return float(f"{value:.{_DIGITS}g}")


def chart_rows(
    day: date, standings: Iterable[Standing], epoch: float | None, half_life: float
) -> list[Row]:
    """Every chart of every item type as of the end of `day`, in digest order."""
    at, listed = day_end(day), list(standings)
    rows: list[Row] = []
    for chart in CHARTS:
        for item_type in ITEM_TYPES:
            scored = [
                (_chart_score(chart, s, epoch, at, half_life), s.item_id)
                for s in listed
                if s.item_type == item_type
            ]
            scored.sort(reverse=True)  # score descending, ties by item id descending
            for rank, (score, item_id) in enumerate(scored, start=1):
                rows.append(Row(day, chart, item_type, rank, item_id, score))
    return rows


def score_text(chart: str, score: float | int) -> str:
    """A score exactly, in one canonical spelling."""
    if chart in INTEGER_CHARTS and float(score).is_integer():
        return str(int(score))
    return float(score).hex()


def digest(day: date, rows: Iterable[Row], previous: str) -> str:
    """The day's link of the chain (see the module docstring); rows in any order."""
    h = hashlib.sha256(f"{previous}\n{day.isoformat()}\n".encode())
    order = {chart: n for n, chart in enumerate(CHARTS)}
    for r in sorted(
        rows, key=lambda r: (order.get(r.chart, len(order)), r.chart, r.item_type, r.rank)
    ):
        score = score_text(r.chart, r.score)
        h.update(f"{r.chart}|{r.item_type}|{r.rank}|{r.item_id}|{score}\n".encode())
    return h.hexdigest()


def close(
    day: date,
    standings: Iterable[Standing],
    epoch: float | None,
    half_life: float,
    previous: str,
    checkpoint: Checkpoint,
) -> Closed:
    rows = chart_rows(day, standings, epoch, half_life)
    return Closed(day, rows, digest(day, rows, previous), previous, checkpoint)


def standings(model: Changes) -> Iterator[Standing]:
    """The standings a folded read model holds (its independent scores from its owners')."""
    independent = owner_standings(model.owners)
    for item_id, t in model.items.items():
        score = independent.get(item_id, (0, 0))[0]
        yield Standing(item_id, t.item_type, t.up, t.down, t.trend, score)


@dataclass(slots=True)
class DayFold:
    """A fold of the ledger in read order that closes days on the way: what a rebuild and verify
    run. `on_close` gets each closed day."""

    half_life: float
    on_close: Callable[[Closed], None]
    model: Changes
    open_day: date | None = None
    previous: str = ""
    checkpoint: Checkpoint = field(default_factory=Checkpoint)

    def close_through(self, last: date) -> None:
        """Close the days from the open day through `last`, as the next event would."""
        if self.open_day is not None:
            self._close(closing(self.open_day, last + timedelta(days=1)))
            self.open_day = max(self.open_day, last + timedelta(days=1))

    def _close(self, days: Iterable[date]) -> None:
        for day in days:
            found = close(
                day,
                standings(self.model),
                self.model.epoch,
                self.half_life,
                self.previous,
                self.checkpoint,
            )
            self.previous = found.digest
            self.on_close(found)

    def add(self, events: list[Recorded]) -> None:
        segments, self.open_day = split(events, self.open_day)
        for segment in segments:
            self._close(segment.closes)
            if segment.events:
                more = fold(segment.events, self.model.epoch, self.half_life)
                merge(self.model, more, self.half_life)
                last = segment.events[-1]
                self.checkpoint = Checkpoint(last.tx_id, last.position)
