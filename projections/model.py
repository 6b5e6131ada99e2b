"""The read models as pure folds: no I/O, no clock, no logging.

`fold(events, since, half_life)` turns a batch of recorded events into `Changes`: per item and per
(UTC day, item), additive amounts. Merging the changes of consecutive batches gives the same read
model as folding all their events at once, whatever the split (tests/unit/test_model.py proves it).
Both stores apply `Changes` as increments, with their checkpoint, atomically.

The independent chart counts each owner once per item, with the sign of the sum of its agents'
current votes there. That is not additive, so `Changes.owners` holds the additive per-(item,
owner) totals; the stores keep them and move an item's independent score and owner count by what
each touched (item, owner) changed (`standing_change`); `settle` derives both for a whole model.

Trending uses the log/epoch trick: an exponentially decayed sum  sum(delta_i * 2^-((now - t_i)/h))
equals  2^-((now - E)/h) * sum(delta_i * 2^((t_i - E)/h))  for any epoch E. The second sum does not
depend on `now`, so it is updated once per vote and ranks items the same at every instant; it is
decayed only when shown. It grows as 2^((t - E)/h), so E moves forward ("rebase") once an event
is REBASE_AFTER half-lives past it, and stored sums are rescaled by the same factor.

Any time a row can hold (years 1 to 9999) keeps every value finite, by three rules:
- The trending clock runs in read order, event by event: an event counts for trending at its own
  time, but at most LEAD half-lives after the epoch in force before it; the epoch then moves to
  the hour of that (capped) time when it is more than REBASE_AFTER half-lives ahead. So one event
  dated in the far future moves the epoch by about LEAD half-lives, scaling every other item by
  2^-LEAD (still a normal double, ranks kept, decayed values exact), and ranks itself as if
  recorded LEAD half-lives after the clock; later events at their true times need no rebase, and
  the epoch never moves back. The price: the first events after a real pause longer than LEAD
  half-lives count as if recorded earlier, until the clock has caught up (one rebase per event).
  The clock is a function of the events in read order alone, so any split of a stream into
  batches gets the same epoch and the same trending times as one fold.
- An amount smaller than 2^-FLOOR relative to the epoch is 0: a vote FLOOR half-lives older than
  the epoch, and a stored sum a rebase would scale below that. No value is ever subnormal, and no
  rescale underflows (PostgreSQL raises on a float8 product that underflows; Lua and Python
  apply the same rule, with the same threshold from `keep_above`).
- `decayed` saturates at the largest double instead of overflowing, and 0 stays 0.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from events.types import DIRECTION_VALUE, ItemListed, Recorded, VoteCast

REBASE_AFTER = 32  # half-lives: 2^32 leaves a double ~20 significant digits of headroom below 2^53
LEAD = 256  # half-lives an event may count ahead of the epoch in force (see the module docstring)
FLOOR = 1000  # amounts below 2^-FLOOR relative to the epoch are 0: never subnormal (2^-1022)
_MAX = sys.float_info.max
WILSON_Z = 1.959963984540054  # 95% two-sided


def wilson_lower_bound(up: int, down: int, z: float = WILSON_Z) -> float:
    """Lower bound of the Wilson score interval for the share of up votes (0 with no votes)."""
    n = up + down
    if up <= 0 or down < 0:
        return 0.0  # no up votes: exactly 0 (rounding would leave ~1e-17, ranking 0/3 above 0/1)
    p = up / n
    z2 = z * z
    # Same operations in the same order as the SQL and Lua versions: bit-identical results.
    return max(
        0.0, (p + z2 / (2 * n) - z * math.sqrt((p * (1 - p) + z2 / (4 * n)) / n)) / (1 + z2 / n)
    )


def decayed(trend: float, epoch: float, at: float, half_life: float) -> float:
    """A stored trending sum (relative to `epoch`) as decayed net votes at time `at`; finite for
    any epoch and instant (saturating at the largest double), and exactly 0 for 0."""
    if not trend:
        return 0.0
    x = (epoch - at) / half_life
    mantissa, exponent = math.frexp(trend)  # |mantissa| in [0.5, 1)
    if exponent + x >= 1024:
        return math.copysign(_MAX, trend)
    if exponent + x < -1080:
        return 0.0
    # Scaling by a power of two is exact: only 2^frac rounds, and mantissa * 2^frac < 2.
    whole = math.floor(x)
    return math.ldexp(mantissa * 2.0 ** (x - whole), exponent + whole)


@dataclass(slots=True)
class ItemTotals:
    item_type: str
    title: str | None = None
    listed_at: datetime | None = None
    up: int = 0
    down: int = 0
    first_vote_at: datetime | None = None
    last_vote_at: datetime | None = None
    trend: float = 0.0
    # Not additive: only a whole read model's are meaningful (`settle`, or a store's dump).
    independent: int = 0
    owners: int = 0

    @property
    def net(self) -> int:
        return self.up - self.down

    @property
    def wilson(self) -> float:
        return wilson_lower_bound(self.up, self.down)


@dataclass(slots=True)
class DayTotals:
    """What one item gained on one UTC day (negative when votes were withdrawn that day), and
    `trend`, the sum of that day's trending weights relative to the end of the day
    (`day_reference`): a fixed reference, so it is never rescaled, and each vote's weight is at
    most 1 (it counts at or before its recording time), so no half-life overflows it."""

    item_type: str
    up: int = 0
    down: int = 0
    trend: float = 0.0

    @property
    def net(self) -> int:
        return self.up - self.down


@dataclass(slots=True)
class OwnerTotals:
    """One owner's agents on one item: the sum of their current vote values, and how many of
    them have an up or down vote there. Additive, unlike the item's independent score."""

    value: int = 0
    active: int = 0


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def standing_change(old: OwnerTotals, delta: OwnerTotals) -> tuple[int, int]:
    """What adding `delta` to an (item, owner)'s `old` totals changes in the item's independent
    score and owner count: each owner counts with the sign of its value, once if it votes."""
    value, active = old.value + delta.value, old.active + delta.active
    return sign(value) - sign(old.value), (active > 0) - (old.active > 0)


@dataclass(slots=True)
class Changes:
    """Additive read-model amounts. Also the whole read model: the changes since the beginning."""

    epoch: float | None = None
    items: dict[str, ItemTotals] = field(default_factory=dict)
    days: dict[tuple[date, str], DayTotals] = field(default_factory=dict)
    owners: dict[tuple[str, str], OwnerTotals] = field(default_factory=dict)  # (item_id, owner)


def trending_times(
    since: float | None, events: Iterable[Recorded], half_life: float
) -> tuple[float | None, list[float]]:
    """The trending clock over a batch (see the module docstring): the epoch after it, and the
    time each event counts at for trending, given the epoch `since` in force before it."""
    epoch, times = since, []
    lead, rebase = LEAD * half_life, REBASE_AFTER * half_life
    for recorded in events:
        t = recorded.recorded_at.timestamp()
        if epoch is not None:
            t = min(t, epoch + lead)
        if epoch is None or t - epoch > rebase:
            epoch = math.floor(t / 3600) * 3600.0
        times.append(t)
    return epoch, times


def choose_epoch(current: float | None, events: list[Recorded], half_life: float) -> float | None:
    """The trending epoch after a batch: the current one unless an event is too far past it.
    Moving it to that event's hour keeps every contribution below about 2^REBASE_AFTER."""
    return trending_times(current, events, half_life)[0]


_UNIX_DAY_ZERO = date(1970, 1, 1).toordinal()


def day_reference(day: date) -> float:
    """The end of a UTC day (Unix seconds): what its per-day trending sum is relative to."""
    return (day.toordinal() - _UNIX_DAY_ZERO + 1) * 86400.0


def weight(at: float, epoch: float, half_life: float) -> float:
    """2^((at - epoch)/h): what a vote at `at` adds relative to `epoch`; 0 below 2^-FLOOR."""
    x = (at - epoch) / half_life
    return 0.0 if x < -FLOOR else float(2.0**x)


def fold(events: Iterable[Recorded], since: float | None, half_life: float) -> Changes:
    """The changes a batch of events makes after the trending epoch `since` (None: none yet);
    their trending is relative to the epoch after the batch, `Changes.epoch`."""
    events = list(events)
    epoch, times = trending_times(since, events, half_life)
    changes = Changes(epoch=epoch)
    items, days, owners = changes.items, changes.days, changes.owners
    for recorded, trend_at in zip(events, times, strict=True):
        event = recorded.event
        if isinstance(event, VoteCast):
            at = recorded.recorded_at
            up = (event.direction == "up") - (event.previous == "up")
            down = (event.direction == "down") - (event.previous == "down")
            item = items.get(event.item_id)
            if item is None:
                item = items[event.item_id] = ItemTotals(event.item_type)
            item.up += up
            item.down += down
            if item.first_vote_at is None or at < item.first_vote_at:
                item.first_vote_at = at
            if item.last_vote_at is None or at > item.last_vote_at:
                item.last_vote_at = at
            delta = DIRECTION_VALUE[event.direction] - DIRECTION_VALUE[event.previous]
            assert epoch is not None  # there is one once an event was seen
            item.trend += delta * weight(trend_at, epoch, half_life)
            key = (at.astimezone(UTC).date(), event.item_id)
            day = days.get(key)
            if day is None:
                day = days[key] = DayTotals(event.item_type)
            day.up += up
            day.down += down
            day.trend += delta * weight(trend_at, day_reference(key[0]), half_life)
            key_owner = (event.item_id, event.owned_by)
            owner = owners.get(key_owner)
            if owner is None:
                owner = owners[key_owner] = OwnerTotals()
            owner.value += delta
            owner.active += (event.direction != "none") - (event.previous != "none")
        elif isinstance(event, ItemListed):
            listed = items.get(event.item_id)
            if listed is None:
                listed = items[event.item_id] = ItemTotals(event.item_type)
            listed.item_type = event.item_type
            listed.title = event.title
            listed.listed_at = recorded.recorded_at
    return changes


def merge(into: Changes, more: Changes, half_life: float) -> Changes:
    """Add `more` to `into` (in place), rescaling `into`'s trending sums to `more`'s epoch."""
    if more.epoch is not None and into.epoch != more.epoch:
        if into.epoch is not None:
            factor = rescale_factor(into.epoch, more.epoch, half_life)
            keep = keep_above(factor)
            for item in into.items.values():
                item.trend = item.trend * factor if abs(item.trend) >= keep else 0.0
        into.epoch = more.epoch
    for item_id, extra in more.items.items():
        current = into.items.get(item_id)
        if current is None:
            into.items[item_id] = ItemTotals(
                extra.item_type,
                extra.title,
                extra.listed_at,
                extra.up,
                extra.down,
                extra.first_vote_at,
                extra.last_vote_at,
                extra.trend,
            )
            continue
        current.item_type = extra.item_type
        if extra.title is not None:
            current.title, current.listed_at = extra.title, extra.listed_at
        current.up += extra.up
        current.down += extra.down
        current.first_vote_at = _earliest(current.first_vote_at, extra.first_vote_at)
        current.last_vote_at = _latest(current.last_vote_at, extra.last_vote_at)
        current.trend += extra.trend
    for key, extra_day in more.days.items():
        day = into.days.get(key)
        if day is None:
            into.days[key] = DayTotals(
                extra_day.item_type, extra_day.up, extra_day.down, extra_day.trend
            )
        else:
            day.up += extra_day.up
            day.down += extra_day.down
            day.trend += extra_day.trend
    for key_owner, extra_owner in more.owners.items():
        owner = into.owners.get(key_owner)
        if owner is None:
            into.owners[key_owner] = OwnerTotals(extra_owner.value, extra_owner.active)
        else:
            owner.value += extra_owner.value
            owner.active += extra_owner.active
    return into


def standings(owners: dict[tuple[str, str], OwnerTotals]) -> dict[str, tuple[int, int]]:
    """Each item's (independent score, owner count) from whole per-(item, owner) totals."""
    found: dict[str, tuple[int, int]] = {}
    for (item_id, _), totals in owners.items():
        independent, count = found.get(item_id, (0, 0))
        found[item_id] = (independent + sign(totals.value), count + (totals.active > 0))
    return found


def settle(model: Changes) -> Changes:
    """Set the items' independent scores and owner counts of a whole read model (in place)."""
    scores = standings(model.owners)
    for item_id, item in model.items.items():
        item.independent, item.owners = scores.get(item_id, (0, 0))
    return model


def rescale_factor(old_epoch: float, new_epoch: float, half_life: float) -> float:
    """What stored sums are multiplied by when the epoch moves (it only moves forward: <= 1)."""
    return float(2.0 ** min(0.0, (old_epoch - new_epoch) / half_life))


def keep_above(factor: float) -> float:
    """The smallest stored |sum| a rescale by `factor` keeps: smaller ones become 0, so that no
    product falls below 2^-FLOOR (never subnormal, never an underflow error in PostgreSQL)."""
    if factor <= 0.0:
        return _MAX
    return min(_MAX, 2.0**-FLOOR / factor)


def fold_all(events: Iterable[Recorded], half_life: float, batch: int = 10_000) -> Changes:
    """The whole read model from a stream of events, folded in batches as a runner would."""
    model = Changes()
    chunk: list[Recorded] = []
    for recorded in events:
        chunk.append(recorded)
        if len(chunk) >= batch:
            model = _fold_into(model, chunk, half_life)
            chunk = []
    return _fold_into(model, chunk, half_life) if chunk else model


def _fold_into(model: Changes, chunk: list[Recorded], half_life: float) -> Changes:
    return merge(model, fold(chunk, model.epoch, half_life), half_life)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)
