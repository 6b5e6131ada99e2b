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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from events.store import Checkpoint
from events.types import Recorded
from projections.model import (
    Changes,
    OwnerTotals,
    decayed,
    fold,
    merge,
    standing_change,
    wilson_lower_bound,
)
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


# One chart of one item type on one day: (chart, item_type, [(score, item_id) by rank]).
Ranking = tuple[str, str, list[tuple[float | int, str]]]


@dataclass(frozen=True, slots=True)
class Closed:
    """A closed day: its charts (in digest order), its digest, the previous day's digest, and
    the read-order checkpoint of the last event applied before it closed."""

    day: date
    rankings: list[Ranking]
    digest: str
    previous: str
    checkpoint: Checkpoint

    @property
    def rows(self) -> list[Row]:
        return [
            Row(self.day, chart, item_type, rank, item_id, score)
            for chart, item_type, ranked in self.rankings
            for rank, (score, item_id) in enumerate(ranked, start=1)
        ]

    def copy_text(self) -> str:
        """The rows as COPY text for `snapshot_rows` (day, chart, item_type, rank, item_id,
        score): one string for one write, not a call per row."""
        text = "".join(_copy_lines(self.day, *ranking) for ranking in self.rankings)
        rows = sum(len(scored) for _, _, scored in self.rankings)
        if text.count("\t") == 5 * rows and text.count("\n") == rows and "\\" not in text:
            return text  # no id needs escaping (none the command API accepts does)
        return "".join(_copy_lines(self.day, *ranking, escape=True) for ranking in self.rankings)


def _copy_lines(
    day: date,
    chart: str,
    item_type: str,
    scored: list[tuple[float | int, str]],
    escape: bool = False,
) -> str:
    prefix = f"{day.isoformat()}\t{chart}\t{item_type}\t"
    if escape:
        scored = [(score, item_id.translate(_COPY_ESCAPES)) for score, item_id in scored]
    return "".join(
        f"{prefix}{rank}\t{item_id}\t{score!r}\n" for rank, (score, item_id) in enumerate(scored, 1)
    )


# COPY text's special characters (an id the command API accepts has none; a row written
# around it might).
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


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


def _trending(s: Standing, epoch: float | None, at: float, half_life: float) -> float:
    value = decayed(s.trend, epoch if epoch is not None else at, at, half_life)
    return float(f"{value:.{_DIGITS}g}")


def rankings(
    day: date, standings: Iterable[Standing], epoch: float | None, half_life: float
) -> list[Ranking]:
    """Every chart of every item type as of the end of `day`, in digest order: score
    descending, ties by item id descending."""
    at = day_end(day)
    by_type: dict[str, list[Standing]] = {item_type: [] for item_type in ITEM_TYPES}
    for s in standings:
        if s.item_type in by_type:
            by_type[s.item_type].append(s)
    found: list[Ranking] = []
    for chart in CHARTS:
        for item_type in ITEM_TYPES:
            listed = by_type[item_type]
            scored: list[tuple[float | int, str]]
            # One comprehension per chart: ten thousand items a day, four charts, every day.
            if chart == "net":
                scored = [(s.up - s.down, s.item_id) for s in listed]
            elif chart == "independent":
                scored = [(s.independent, s.item_id) for s in listed]
            elif chart == "confidence":
                scored = [(wilson_lower_bound(s.up, s.down), s.item_id) for s in listed]
            else:
                scored = [(_trending(s, epoch, at, half_life), s.item_id) for s in listed]
            scored.sort(reverse=True)
            found.append((chart, item_type, scored))
    return found


def score_text(chart: str, score: float | int) -> str:
    """A score exactly, in one canonical spelling."""
    if chart in INTEGER_CHARTS and float(score).is_integer():
        return str(int(score))
    return float(score).hex()


def digest(day: date, rows: Iterable[Row], previous: str) -> str:
    """The day's link of the chain (see the module docstring); rows in any order."""
    order = {chart: n for n, chart in enumerate(CHARTS)}
    text = "".join(
        f"{r.chart}|{r.item_type}|{r.rank}|{r.item_id}|{score_text(r.chart, r.score)}\n"
        for r in sorted(
            rows, key=lambda r: (order.get(r.chart, len(order)), r.chart, r.item_type, r.rank)
        )
    )
    return _sha256(day, previous, text)


def ranked_digest(day: date, ranked: list[Ranking], previous: str) -> str:
    """`digest` of the rows of `ranked`, which are in digest order already."""
    text = "".join(_digest_lines(*ranking) for ranking in ranked)
    return _sha256(day, previous, text)


def _digest_lines(chart: str, item_type: str, scored: list[tuple[float | int, str]]) -> str:
    """`chart|item_type|rank|item_id|score` lines, scores as `score_text` spells them."""
    prefix = f"{chart}|{item_type}|"
    if chart in INTEGER_CHARTS and all(type(score) is int for score, _ in scored):
        lines = (
            f"{prefix}{rank}|{item_id}|{score}\n" for rank, (score, item_id) in enumerate(scored, 1)
        )
    else:
        lines = (
            f"{prefix}{rank}|{item_id}|{score_text(chart, score)}\n"
            for rank, (score, item_id) in enumerate(scored, 1)
        )
    return "".join(lines)


def _sha256(day: date, previous: str, text: str) -> str:
    return hashlib.sha256(f"{previous}\n{day.isoformat()}\n{text}".encode()).hexdigest()


def close(
    day: date,
    standings: Iterable[Standing],
    epoch: float | None,
    half_life: float,
    previous: str,
    checkpoint: Checkpoint,
) -> Closed:
    ranked = rankings(day, standings, epoch, half_life)
    return Closed(day, ranked, ranked_digest(day, ranked, previous), previous, checkpoint)


_NO_VOTES = OwnerTotals()


@dataclass(slots=True)
class DayFold:
    """A fold of the ledger in read order that closes days on the way: what a rebuild and verify
    run. `on_close` gets each closed day; without it no day is ranked (a rebuild of Redis alone,
    which keeps no snapshots)."""

    half_life: float
    on_close: Callable[[Closed], None] | None
    model: Changes
    open_day: date | None = None
    previous: str = ""
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    # Each item's independent score, moved as its owners' totals are (`standing_change`): every
    # close ranks every item, and settling all the owners at each close would cost a fold.
    independent: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        found = owner_standings(self.model.owners)
        self.independent = {item_id: score for item_id, (score, _) in found.items()}

    def close_through(self, last: date) -> None:
        """Close the days from the open day through `last`, as the next event would."""
        if self.open_day is not None:
            self._close(closing(self.open_day, last + timedelta(days=1)))
            self.open_day = max(self.open_day, last + timedelta(days=1))

    def _close(self, days: Iterable[date]) -> None:
        if self.on_close is None:
            return
        for day in days:
            found = close(
                day,
                self._standings(),
                self.model.epoch,
                self.half_life,
                self.previous,
                self.checkpoint,
            )
            self.previous = found.digest
            self.on_close(found)

    def _standings(self) -> list[Standing]:
        scores = self.independent
        return [
            Standing(item_id, t.item_type, t.up, t.down, t.trend, scores.get(item_id, 0))
            for item_id, t in self.model.items.items()
        ]

    def add(self, events: list[Recorded]) -> None:
        segments, self.open_day = split(events, self.open_day)
        for segment in segments:
            self._close(segment.closes)
            if segment.events:
                more = fold(segment.events, self.model.epoch, self.half_life)
                self._move_independent(more)
                merge(self.model, more, self.half_life)
                last = segment.events[-1]
                self.checkpoint = Checkpoint(last.tx_id, last.position)

    def _move_independent(self, more: Changes) -> None:
        """Move the items' independent scores by what `more` (not merged yet) changes."""
        owners, scores = self.model.owners, self.independent
        for key, delta in more.owners.items():
            moved, _ = standing_change(owners.get(key, _NO_VOTES), delta)
            if moved:
                scores[key[0]] = scores.get(key[0], 0) + moved
