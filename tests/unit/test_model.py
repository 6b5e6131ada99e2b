"""Properties of the pure read-model folds in projections/model.py.

Expected values are computed here from the generated stream (its vote slots, its times), never
from the module under test.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from events.types import (
    AgentRegistered,
    Direction,
    Event,
    ItemListed,
    ItemType,
    Recorded,
    VoteCast,
)
from projections.model import (
    LEAD,
    REBASE_AFTER,
    Changes,
    OwnerTotals,
    choose_epoch,
    day_reference,
    decayed,
    fold,
    fold_all,
    merge,
    rescale_factor,
    settle,
    standing_change,
    wilson_lower_bound,
)

H = 6 * 3600.0  # half-life used throughout, as in production
VALUE = {"up": 1, "down": -1, "none": 0}  # written out here, not taken from events.types
DIRECTIONS: tuple[Direction, ...] = ("up", "down", "none")
ITEM_TYPES: tuple[ItemType, ...] = ("song", "tool")
MAX_SPAN = timedelta(days=60)
BASE = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH_DAY = date(1970, 1, 1)

micros = st.integers(0, 999_999)
SETTINGS = settings(max_examples=150, deadline=None)


@dataclass
class Stream:
    """A generated event stream and the generator's own view of the vote slots."""

    events: list[Recorded]
    slots: dict[tuple[uuid.UUID, str], Direction]  # (agent, item) -> current direction
    item_types: dict[str, ItemType]
    owners: dict[uuid.UUID, str | None] = dataclasses.field(default_factory=dict)

    def owner_of(self, agent: uuid.UUID) -> str:
        """Whose vote an agent's is on the independent chart (itself when it has no owner)."""
        return self.owners.get(agent) or str(agent)


@st.composite
def streams(
    draw: st.DrawFn, max_events: int = 40, zones: st.SearchStrategy[tzinfo] = st.just(UTC)
) -> Stream:
    """A realistic stream: agents register, items get listed, agents change their votes."""
    agents = [uuid.UUID(int=draw(st.integers(1, 2**64))) for _ in range(draw(st.integers(1, 4)))]
    agents = list(dict.fromkeys(agents))
    # A few owners, each with several agents; some agents have none (their own owner).
    owners = {a: draw(st.sampled_from([None, "owner-a", "owner-b"])) for a in agents}
    item_types: dict[str, ItemType] = {}
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(ITEM_TYPES))
        item_types[f"{kind}-{i}"] = kind
    # Votes on an unlisted item never pass the command side, but the fold must not care.
    votes_need_listing = draw(st.booleans())
    # How long the stream runs: a burst, an hour, two days, or 60 days (several rebases).
    n_events = draw(st.integers(0, max_events))
    spans = [timedelta(0), timedelta(hours=1), timedelta(days=2), MAX_SPAN, MAX_SPAN, MAX_SPAN]
    span = draw(st.sampled_from(spans))
    pace = span / max(1, n_events)
    clock = BASE + timedelta(seconds=draw(st.integers(0, 365 * 86400)))
    start = clock

    events: list[Recorded] = []
    slots: dict[tuple[uuid.UUID, str], Direction] = {}
    cast_at: dict[tuple[uuid.UUID, str], datetime] = {}
    listed: set[str] = set()
    tx_id = 1000

    def record(event: Event, at: datetime) -> None:
        zone = draw(zones)
        events.append(Recorded(len(events) + 1, tx_id, at.astimezone(zone), event))

    for agent in agents:
        record(AgentRegistered(agent, "agent"), clock)
    for _ in range(n_events):
        # Mostly forward in time, sometimes a little back: recorded_at is the transaction's start,
        # and transactions commit (and are read) out of start order.
        if draw(st.integers(0, 9)) == 0:
            clock -= timedelta(microseconds=draw(st.integers(0, 120_000_000)))
        else:
            clock += pace * draw(st.sampled_from([0, 1, 1, 2])) + timedelta(
                microseconds=draw(micros)
            )
        clock = min(clock, start + MAX_SPAN)
        tx_id += draw(st.integers(0, 2))
        votable = sorted(listed) if votes_need_listing else list(item_types)
        if not votable or draw(st.integers(0, 5)) == 0:
            item_id = draw(st.sampled_from(list(item_types)))
            title = f"{item_id} take {draw(st.integers(0, 3))}"
            record(ItemListed(item_id, item_types[item_id], title), clock)
            listed.add(item_id)
            continue
        agent = draw(st.sampled_from(agents))
        item_id = draw(st.sampled_from(votable))
        key = (agent, item_id)
        previous = slots.get(key, "none")
        direction = draw(st.sampled_from([d for d in DIRECTIONS if d != previous]))
        owner = owners[agent]
        event = VoteCast(
            agent, item_id, item_types[item_id], direction, previous, cast_at.get(key), owner
        )
        record(event, clock)
        slots[key] = direction
        cast_at[key] = clock
    return Stream(events, slots, item_types, owners)


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[Stream, list[list[Recorded]]]:
    """A stream and a split of it into consecutive non-empty batches."""
    stream = draw(streams())
    n = len(stream.events)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1)))) if n > 1 else []
    bounds = [0, *cuts, n]
    chunks = [stream.events[a:b] for a, b in itertools.pairwise(bounds)]
    return stream, [c for c in chunks if c]


def fold_in_batches(chunks: list[list[Recorded]]) -> Changes:
    model = Changes()
    for chunk in chunks:
        model = merge(model, fold(chunk, model.epoch, H), H)
    return model


def votes(stream: Stream) -> list[tuple[Recorded, VoteCast]]:
    return [(r, r.event) for r in stream.events if isinstance(r.event, VoteCast)]


def newest(stream: Stream) -> float:
    return max(r.recorded_at.timestamp() for r in stream.events)


def utc_day(at: datetime) -> date:
    """The UTC calendar day of an instant, from the POSIX timestamp (not via astimezone)."""
    return EPOCH_DAY + timedelta(days=math.floor(at.timestamp() / 86400))


def direct_trending(stream: Stream, at: float) -> dict[str, float]:
    """Decayed net votes at `at`, summed vote by vote with no epoch at all."""
    out: dict[str, float] = {}
    for r, v in votes(stream):
        gained = VALUE[v.direction] - VALUE[v.previous]
        weight = 0.5 ** ((at - r.recorded_at.timestamp()) / H)
        out[v.item_id] = out.get(v.item_id, 0.0) + gained * weight
    return out


EXACT_FIELDS = ("item_type", "title", "listed_at", "up", "down", "first_vote_at", "last_vote_at")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@SETTINGS
@given(split_streams())
def test_any_split_into_batches_gives_the_one_fold_model(
    case: tuple[Stream, list[list[Recorded]]],
) -> None:
    """Folding a stream batch by batch (with rebases) gives the same model as one fold."""
    stream, chunks = case
    whole = fold_all(stream.events, H, batch=max(1, len(stream.events)))
    batched = fold_in_batches(chunks)
    assert batched.items.keys() == whole.items.keys()
    at = newest(stream)
    expected_trend = direct_trending(stream, at)
    for item_id, one in whole.items.items():
        other = batched.items[item_id]
        for name in EXACT_FIELDS:
            assert getattr(other, name) == getattr(one, name), (item_id, name)
        assert whole.epoch is not None and batched.epoch is not None
        one_now = decayed(one.trend, whole.epoch, at, H)
        other_now = decayed(other.trend, batched.epoch, at, H)
        assert close(other_now, one_now), (item_id, other_now, one_now)
        assert close(one_now, expected_trend.get(item_id, 0.0)), (item_id, one_now)
    assert {k: (d.item_type, d.up, d.down) for k, d in batched.days.items()} == {
        k: (d.item_type, d.up, d.down) for k, d in whole.days.items()
    }
    # Per-day trending sums: the same whatever the split, and decayed from the end of each day
    # they add up to the item's trending score.
    by_item: dict[str, float] = {}
    for key, day in whole.days.items():
        assert close(batched.days[key].trend, day.trend), key
        part = decayed(day.trend, day_reference(key[0]), at, H)
        by_item[key[1]] = by_item.get(key[1], 0.0) + part
    for item_id, one in whole.items.items():
        assert whole.epoch is not None
        assert close(by_item.get(item_id, 0.0), decayed(one.trend, whole.epoch, at, H)), item_id
    assert nonzero(batched.owners) == nonzero(whole.owners)
    assert applied_standings(chunks) == direct_standings(stream)
    settled = settle(whole).items
    assert {i: (t.independent, t.owners) for i, t in settled.items() if t.owners} == (
        direct_standings(stream)
    )


def nonzero(owners: dict[tuple[str, str], OwnerTotals]) -> dict[tuple[str, str], OwnerTotals]:
    return {key: t for key, t in owners.items() if t.value or t.active}


def direct_standings(stream: Stream) -> dict[str, tuple[int, int]]:
    """(independent, owners) per item with a vote, from the final slots alone."""
    sums: dict[str, dict[str, int]] = {}
    voting: dict[str, set[str]] = {}
    for (agent, item_id), direction in stream.slots.items():
        owner = stream.owner_of(agent)
        sums.setdefault(item_id, {}).setdefault(owner, 0)
        sums[item_id][owner] += VALUE[direction]
        if direction != "none":
            voting.setdefault(item_id, set()).add(owner)
    out = {}
    for item_id, per_owner in sums.items():
        score = sum((v > 0) - (v < 0) for v in per_owner.values())
        count = len(voting.get(item_id, set()))
        if count:
            out[item_id] = (score, count)
    return out


def applied_standings(chunks: list[list[Recorded]]) -> dict[str, tuple[int, int]]:
    """What a store holds after applying each batch's owner totals as the stores do: the totals
    added up, the item's standing moved by `standing_change` of each touched (item, owner)."""
    totals: dict[tuple[str, str], OwnerTotals] = {}
    held: dict[str, tuple[int, int]] = {}
    for chunk in chunks:
        for key, delta in fold(chunk, None, H).owners.items():
            old = totals.get(key, OwnerTotals())
            d_score, d_count = standing_change(old, delta)
            score, count = held.get(key[0], (0, 0))
            held[key[0]] = (score + d_score, count + d_count)
            totals[key] = OwnerTotals(old.value + delta.value, old.active + delta.active)
    return {item_id: s for item_id, s in held.items() if s[1]}


@SETTINGS
@given(streams(), st.integers(1, 50))
def test_up_and_down_count_the_slots_as_they_stand(stream: Stream, batch: int) -> None:
    """Every item's up and down equal the number of agents whose vote on it is now up / down."""
    model = fold_all(stream.events, H, batch=batch)
    for item_id, item_type in stream.item_types.items():
        up = sum(1 for (_, i), d in stream.slots.items() if i == item_id and d == "up")
        down = sum(1 for (_, i), d in stream.slots.items() if i == item_id and d == "down")
        totals = model.items.get(item_id)
        if totals is None:
            assert up == down == 0
            assert not any(getattr(r.event, "item_id", None) == item_id for r in stream.events)
            continue
        assert (totals.up, totals.down, totals.net) == (up, down, up - down), item_id
        assert totals.item_type == item_type
        cast = [r.recorded_at for r, v in votes(stream) if v.item_id == item_id]
        assert totals.first_vote_at == (min(cast) if cast else None)
        assert totals.last_vote_at == (max(cast) if cast else None)


def expected_days(stream: Stream) -> dict[tuple[date, str], tuple[int, int, int]]:
    """(UTC day, item) -> (up gained, down gained, net gained), vote by vote."""
    out: dict[tuple[date, str], tuple[int, int, int]] = {}
    for r, v in votes(stream):
        key = (utc_day(r.recorded_at), v.item_id)
        up, down, net = out.get(key, (0, 0, 0))
        up += (v.direction == "up") - (v.previous == "up")
        down += (v.direction == "down") - (v.previous == "down")
        net += VALUE[v.direction] - VALUE[v.previous]
        out[key] = (up, down, net)
    return out


@SETTINGS
@given(streams(), st.integers(1, 50))
def test_days_hold_what_each_item_gained_each_utc_day(stream: Stream, batch: int) -> None:
    """Per (UTC day, item), the day totals sum the votes recorded on that item that day."""
    model = fold_all(stream.events, H, batch=batch)
    got = {k: (d.up, d.down, d.net) for k, d in model.days.items()}
    assert got == expected_days(stream)
    for (_, item_id), d in model.days.items():
        assert d.item_type == stream.item_types[item_id]


OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=30))]
)


@settings(max_examples=75, deadline=None)
@given(streams(zones=OFFSETS), st.integers(1, 50))
def test_days_use_the_utc_date_whatever_offset_times_carry(stream: Stream, batch: int) -> None:
    """Times read back in another UTC offset still land on their UTC day."""
    model = fold_all(stream.events, H, batch=batch)
    assert {k: (d.up, d.down, d.net) for k, d in model.days.items()} == expected_days(stream)


@SETTINGS
@given(streams(), st.integers(1, 50))
def test_merging_empty_changes_changes_nothing(stream: Stream, batch: int) -> None:
    """Merging changes with no items and no days (same or no epoch) leaves the model as it was."""
    model = fold_all(stream.events, H, batch=batch)
    before = copy.deepcopy(model)
    assert merge(model, Changes(epoch=model.epoch), H) == before
    assert merge(model, Changes(), H) == before


@SETTINGS
@given(streams(), st.integers(1, 50), st.integers(1, 4 * REBASE_AFTER * 6))
def test_rescaled_trending_ranks_and_decays_the_same(
    stream: Stream, batch: int, hours: int
) -> None:
    """Rescaling the trending sums to a later epoch keeps every decayed score and the ranking."""
    model = fold_all(stream.events, H, batch=batch)
    if model.epoch is None:
        return
    at = newest(stream)
    new_epoch = model.epoch + hours * 3600.0
    factor = rescale_factor(model.epoch, new_epoch, H)
    old = {i: decayed(t.trend, model.epoch, at, H) for i, t in model.items.items()}
    new = {i: decayed(t.trend * factor, new_epoch, at, H) for i, t in model.items.items()}
    for item_id in old:
        assert math.isclose(new[item_id], old[item_id], rel_tol=1e-9), item_id
    old_order = sorted(old, key=old.__getitem__)
    new_order = sorted(new, key=new.__getitem__)
    rank = {item_id: n for n, item_id in enumerate(new_order)}
    for lower, higher in itertools.pairwise(old_order):
        tied = math.isclose(old[lower], old[higher], rel_tol=1e-12)
        assert tied or rank[lower] < rank[higher], (lower, higher, old, new)


# --- Wilson lower bound -------------------------------------------------------------------------

Z = 1.959963984540054


def wilson_by_quadratic(up: int, down: int) -> float:
    """The lower root of (1 + z²/n) p² - (2p̂ + z²/n) p + p̂² = 0, i.e. (p̂ - p)² = z² p(1-p)/n."""
    n = up + down
    if n == 0:
        return 0.0
    p_hat = up / n
    a = 1 + Z * Z / n
    b = -(2 * p_hat + Z * Z / n)
    c = p_hat * p_hat
    return (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)


def test_wilson_hand_picked_cases() -> None:
    """The Wilson lower bound matches the quadratic's lower root on hand-picked tallies."""
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 1) == 0.0
    for up, down in [(1, 0), (10, 0), (5, 5), (600, 400), (1, 1000), (0, 7)]:
        expected = wilson_by_quadratic(up, down)
        assert math.isclose(wilson_lower_bound(up, down), expected, rel_tol=1e-9, abs_tol=1e-15)
    assert 0.5 < wilson_lower_bound(600, 400) < 0.6 < wilson_lower_bound(10, 0)


def test_wilson_published_value_for_one_up_vote() -> None:
    """One up vote and no down vote has a 95% Wilson lower bound of about 0.2065."""
    assert math.isclose(wilson_lower_bound(1, 0), 0.2065, abs_tol=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_wilson_matches_the_quadratic_everywhere(up: int, down: int) -> None:
    """Over 0..10 000 up and down votes the bound equals the quadratic's lower root."""
    got = wilson_lower_bound(up, down)
    assert math.isclose(got, wilson_by_quadratic(up, down), rel_tol=1e-9, abs_tol=1e-15)
    assert -1e-15 <= got <= (up / (up + down) if up + down else 0.0) + 1e-15


def test_no_up_votes_score_exactly_zero() -> None:
    """With no up votes the lower bound is exactly 0, so such items tie whatever their downs."""
    assert [n for n in range(1, 10_001) if wilson_lower_bound(0, n) != 0.0] == []


# --- Decay --------------------------------------------------------------------------------------

deltas = st.sampled_from([-2, -1, 1, 2])
offsets = st.floats(-20 * H, 20 * H, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(deltas, offsets), min_size=1, max_size=30),
    st.floats(-10 * H, 10 * H),
    st.floats(-10 * H, 10 * H),
    st.floats(-10 * H, 30 * H),
)
def test_epoch_sums_decay_to_the_direct_sum(
    votes_: list[tuple[int, float]], e1: float, e2: float, now_offset: float
) -> None:
    """An epoch-relative sum, decayed, equals the vote-by-vote decayed sum for any epoch."""
    origin = 1_780_000_000.0
    now = origin + now_offset
    terms = [d * 0.5 ** ((now - (origin + t)) / H) for d, t in votes_]
    direct = sum(terms)
    scale = sum(abs(x) for x in terms)
    for epoch in (origin + e1, origin + e2):
        stored = sum(d * 2 ** ((origin + t - epoch) / H) for d, t in votes_)
        got = decayed(stored, epoch, now, H)
        assert math.isclose(got, direct, rel_tol=1e-9, abs_tol=1e-12 * scale), epoch


def test_one_up_vote_one_half_life_ago_counts_half() -> None:
    """A single up vote cast exactly one half-life ago decays to 0.5."""
    cast = datetime(2026, 3, 1, 12, tzinfo=UTC)
    vote = VoteCast(uuid.UUID(int=1), "song-1", "song", "up", "none")
    events = [Recorded(1, 1, cast, vote)]
    epoch = choose_epoch(None, events, H)
    assert epoch is not None
    model = fold(events, epoch, H)
    at = (cast + timedelta(seconds=H)).timestamp()
    assert math.isclose(decayed(model.items["song-1"].trend, epoch, at, H), 0.5, rel_tol=1e-12)
    assert math.isclose(decayed(1.0, at - H, at, H), 0.5, rel_tol=1e-15)


# --- choose_epoch -------------------------------------------------------------------------------


def listed_at(*times: float) -> list[Recorded]:
    item = ItemListed("song-1", "song", "t")
    return [Recorded(i + 1, 1, datetime.fromtimestamp(t, UTC), item) for i, t in enumerate(times)]


def assert_hour_of(epoch: float | None, newest_: float) -> None:
    assert epoch is not None
    assert epoch % 3600 == 0
    assert newest_ - 3600 < epoch <= newest_


def test_choose_epoch_without_events_keeps_the_current_one() -> None:
    """An empty batch leaves the epoch as it is, including no epoch at all."""
    assert choose_epoch(None, [], H) is None
    assert choose_epoch(1_780_000_000.0, [], H) == 1_780_000_000.0


def test_choose_epoch_rebases_only_past_the_limit() -> None:
    """The epoch stays up to REBASE_AFTER half-lives behind the newest event and moves beyond."""
    current = 1_780_000_000.0
    limit = current + REBASE_AFTER * H
    assert choose_epoch(current, listed_at(limit), H) == current
    assert choose_epoch(current, listed_at(current - 5 * H), H) == current
    moved = choose_epoch(current, listed_at(limit + 1), H)
    assert moved != current
    assert_hour_of(moved, limit + 1)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.integers(1_700_000_000, 1_800_000_000).map(float)),
    st.lists(st.integers(1_700_000_000, 1_800_000_000), min_size=1, max_size=5),
    st.integers(0, 999_999),
)
def test_choose_epoch_follows_the_events_within_bounds(
    current: float | None, seconds: list[int], micros: int
) -> None:
    """The epoch is kept while every event is close enough; else it moves forward to an hour, by
    at most LEAD half-lives an event, and ends within REBASE_AFTER half-lives of every event it
    did not cap."""
    batch = listed_at(*(s + micros / 1e6 for s in seconds))
    times = [r.recorded_at.timestamp() for r in batch]
    epoch = choose_epoch(current, batch, H)
    if current is not None and max(times) - current <= REBASE_AFTER * H:
        assert epoch == current
        return
    assert epoch is not None and epoch % 3600 == 0
    start = current if current is not None else math.floor(times[0] / 3600) * 3600.0
    assert start <= epoch <= start + len(batch) * LEAD * H
    assert epoch <= max(times)
    if epoch < max(times) - (REBASE_AFTER * H + 3600):  # the clock was capped on the way
        assert epoch > start + (LEAD - REBASE_AFTER) * H - 3600


# --- any time a row can hold --------------------------------------------------------------------

YEAR_1 = datetime(1, 1, 1, tzinfo=UTC)
YEAR_9999 = datetime(9999, 12, 30, tzinfo=UTC)
any_time = st.datetimes(
    min_value=YEAR_1.replace(tzinfo=None), max_value=YEAR_9999.replace(tzinfo=None)
).map(lambda at: at.replace(tzinfo=UTC))
near_base = st.integers(0, 30 * 86400).map(lambda s: BASE + timedelta(seconds=s))


@st.composite
def extreme_streams(draw: st.DrawFn) -> list[Recorded]:
    """Votes on a few items at times anywhere in years 1 to 9999, mixed with ordinary ones."""
    events = []
    for n in range(draw(st.integers(1, 30))):
        at = draw(st.one_of(any_time, near_base))
        direction, previous = draw(
            st.sampled_from([("up", "none"), ("down", "up"), ("none", "down")])
        )
        item = f"song-{draw(st.integers(0, 3))}"
        vote = VoteCast(uuid.UUID(int=n + 1), item, "song", direction, previous)  # type: ignore[arg-type]
        events.append(Recorded(n + 1, 1000 + n, at, vote))
    return events


def cuts_of(draw: Callable[..., Any], events: list[Recorded]) -> list[list[Recorded]]:
    """A split of `events` into consecutive non-empty batches."""
    n = len(events)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1)))) if n > 1 else []
    return [events[a:b] for a, b in itertools.pairwise([0, *cuts, n])]


@SETTINGS
@given(st.data())
def test_any_time_keeps_trending_finite_and_any_split_equal(data: st.DataObject) -> None:
    """For recorded times anywhere in years 1 to 9999, every stored and displayed trending value
    is finite, and folding any split gives the one fold's epoch and values."""
    events = data.draw(extreme_streams())
    whole = fold_all(events, H, batch=len(events))
    batched = fold_in_batches(cuts_of(data.draw, events))
    assert batched.epoch == whole.epoch and whole.epoch is not None
    at = data.draw(any_time).timestamp()
    for item_id, one in whole.items.items():
        other = batched.items[item_id]
        assert math.isfinite(one.trend) and math.isfinite(other.trend)
        shown = [decayed(t.trend, whole.epoch, at, H) for t in (one, other)]
        assert all(math.isfinite(v) for v in shown), shown
        # Compared a little past the epoch, where rounding of the two folds is far below 1e-9.
        later = whole.epoch + REBASE_AFTER * H
        a, b = (decayed(t.trend, whole.epoch, later, H) for t in (one, other))
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (item_id, a, b)


def test_a_far_future_vote_leaves_the_other_items_trending() -> None:
    """A vote dated 2100 (or 9999) moves the epoch by about LEAD half-lives: the other items keep
    their exact decayed values, and votes after it at ordinary times count in full."""
    ordinary = [
        Recorded(1, 1, BASE, VoteCast(uuid.UUID(int=1), "song-1", "song", "up", "none")),
        Recorded(2, 2, BASE, VoteCast(uuid.UUID(int=2), "song-2", "song", "down", "none")),
    ]
    for future in (datetime(2100, 1, 1, tzinfo=UTC), YEAR_9999):
        bad = Recorded(3, 3, future, VoteCast(uuid.UUID(int=3), "song-x", "song", "up", "none"))
        later = BASE + timedelta(hours=1)
        after = Recorded(4, 4, later, VoteCast(uuid.UUID(int=4), "song-3", "song", "up", "none"))
        model = fold_all([*ordinary, bad, after], H, batch=1)
        assert model.epoch is not None and model.epoch <= BASE.timestamp() + (LEAD + 1) * H
        now = later.timestamp()
        shown = {i: decayed(t.trend, model.epoch, now, H) for i, t in model.items.items()}
        assert math.isclose(shown["song-1"], 0.5 ** (3600 / H), rel_tol=1e-9)
        assert math.isclose(shown["song-2"], -(0.5 ** (3600 / H)), rel_tol=1e-9)
        assert math.isclose(shown["song-3"], 1.0, rel_tol=1e-9)
        assert math.isfinite(shown["song-x"]) and shown["song-x"] > shown["song-3"]


def test_decayed_saturates_instead_of_overflowing() -> None:
    """Decaying to an instant far before or after the epoch gives a finite value, 0 for 0."""
    for epoch, at in [(YEAR_9999.timestamp(), YEAR_1.timestamp()), (0.0, YEAR_9999.timestamp())]:
        for trend in (1.0, -2.0, 1e-300, 2.0**40):
            assert math.isfinite(decayed(trend, epoch, at, H))
        assert decayed(0.0, epoch, at, H) == 0.0
    assert decayed(1.0, YEAR_9999.timestamp(), YEAR_1.timestamp(), H) == sys.float_info.max
    assert decayed(-1.0, YEAR_9999.timestamp(), YEAR_1.timestamp(), H) == -sys.float_info.max
