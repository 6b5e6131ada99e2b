"""The pure snapshot rules: when days close, whatever the split into batches; the digest."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from events.store import Checkpoint
from events.types import ItemListed, Recorded, VoteCast
from projections import snapshots
from projections.model import Changes
from projections.snapshots import Closed, Row

START = datetime(2026, 1, 1, tzinfo=UTC)
AGENT = uuid.UUID(int=1)


def _ledger(offsets: list[int]) -> list[Recorded]:
    """A vote per offset (hours after START, read in the order given: late commits included)."""
    events = [Recorded(1, 1, START, ItemListed("song-a", "song", "A"))]
    previous = "none"
    for n, hours in enumerate(offsets, start=2):
        direction = "up" if previous != "up" else "down"
        vote = VoteCast(AGENT, "song-a", "song", direction, previous)  # type: ignore[arg-type]
        events.append(Recorded(n, n, START + timedelta(hours=hours), vote))
        previous = direction
    return events


def _days(events: list[Recorded], cuts: list[int]) -> list[Closed]:
    closed: list[Closed] = []
    fold = snapshots.DayFold(3600.0, closed.append, Changes())
    start = 0
    for cut in [*sorted(cuts), len(events)]:
        fold.add(events[start:cut])
        start = cut
    return closed


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 24 * 6), min_size=1, max_size=25),
    st.lists(st.integers(0, 26), max_size=4),
)
def test_days_close_the_same_whatever_the_split(offsets: list[int], cuts: list[int]) -> None:
    """Folding in any batches closes the same days with the same rows and digests; every day
    from the first event's to the day before the latest is closed, chained in order."""
    events = _ledger(offsets)
    whole = _days(events, [])
    split = _days(events, [min(c, len(events)) for c in cuts])
    assert [(c.day, c.digest, c.checkpoint) for c in split] == [
        (c.day, c.digest, c.checkpoint) for c in whole
    ]
    latest = max(snapshots.day_of(r) for r in events)
    assert [c.day for c in whole] == snapshots.days_between(START.date(), latest)[:-1]
    for before, after in itertools.pairwise(whole):
        assert after.previous == before.digest


def test_a_fold_without_snapshots_ranks_no_day_and_folds_the_same() -> None:
    """A rebuild of Redis alone folds without closing days: the same model, no day ranked."""
    events = _ledger([1, 30, 20, 50, 75])
    closed: list[Closed] = []
    ranked, alone = (
        snapshots.DayFold(3600.0, on_close, Changes()) for on_close in (closed.append, None)
    )
    ranked.add(events)
    alone.add(events)
    assert closed and alone.previous == ""
    assert alone.model == ranked.model and alone.open_day == ranked.open_day


def test_an_event_read_late_counts_in_the_open_day() -> None:
    """An event recorded on day 1 but read after one of day 2 counts in day 2's charts."""
    events = _ledger([1, 30, 20, 50])  # hours: day 0, day 1, day 0 (late), day 2
    closed = _days(events, [])
    assert [c.day for c in closed] == [date(2026, 1, 1), date(2026, 1, 2)]
    net = {c.day: [r.score for r in c.rows if r.chart == "net"] for c in closed}
    assert net == {date(2026, 1, 1): [1], date(2026, 1, 2): [1]}  # up, down, up (late)


def test_the_digest_covers_every_field_and_the_previous_link() -> None:
    day = date(2026, 1, 1)
    rows = [Row(day, "net", "song", 1, "song-a", 2), Row(day, "trending", "song", 1, "a", 0.5)]
    digest = snapshots.digest(day, rows, "")
    assert digest == snapshots.digest(day, list(reversed(rows)), "")
    changed = [
        [Row(day, "net", "song", 1, "song-a", 3), rows[1]],
        [Row(day, "net", "song", 2, "song-a", 2), rows[1]],
        [Row(day, "net", "song", 1, "song-b", 2), rows[1]],
        [Row(day, "net", "song", 1, "song-a", 2.5), rows[1]],
        [rows[0], Row(day, "trending", "song", 1, "a", 0.5000000001)],
        rows[:1],
    ]
    assert all(snapshots.digest(day, other, "") != digest for other in changed)
    assert snapshots.digest(day, rows, "x") != digest
    assert snapshots.digest(day + timedelta(days=1), rows, "") != digest
    assert (
        snapshots.score_text("net", 2.0) == "2"
        and snapshots.score_text("net", 2.5) == "0x1.4000000000000p+1"
    )
    assert Checkpoint() == Checkpoint(0, 0)


def test_a_closed_days_digest_and_copy_text_are_those_of_its_rows() -> None:
    """A close hashes its rankings in place (no sort): the same digest as its rows in any
    order; its COPY text is its rows, an id with COPY's special characters escaped."""
    day = date(2026, 1, 1)
    listed = [
        snapshots.Standing(f"song-{n}", "song", n % 7, n % 3, n * 1e3 - 2e4, n % 5 - 2)
        for n in range(40)
    ] + [snapshots.Standing("tool-\\x\ty", "tool", 2, 1, 0.5, 1)]
    closed = snapshots.close(day, listed, 0.0, 3600.0, "before", Checkpoint(3, 9))
    assert closed.digest == snapshots.digest(day, list(reversed(closed.rows)), "before")
    lines = closed.copy_text().splitlines()
    assert len(lines) == len(closed.rows) == 4 * len(listed)
    assert "2026-01-01\tnet\ttool\t1\ttool-\\\\x\\ty\t1" in lines


def test_a_clock_jump_closes_at_most_a_month_of_days() -> None:
    """An event years after the open day closes the open day and the days just before its own;
    an event on or before the open day closes none (also at the ends of the calendar)."""
    open_day, later = date(2026, 1, 1), date(2100, 1, 1)
    closes = snapshots.closing(open_day, later)
    assert len(closes) == snapshots.MAX_CLOSES
    assert closes[0] == open_day and closes[-1] == later - timedelta(days=1)
    assert closes[1:] == tuple(snapshots.days_between(closes[1], closes[-1]))
    assert snapshots.closing(open_day, date(1, 1, 1)) == ()
    assert snapshots.closing(open_day, date(2026, 1, 3)) == (open_day, date(2026, 1, 2))
