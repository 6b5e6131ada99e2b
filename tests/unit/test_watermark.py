"""The projection watermark: positions at or below it are applied or were rolled back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.store import Batch, Checkpoint
from events.types import ItemListed, Recorded
from projections.watermark import Watermark

AT = datetime(2026, 1, 1, tzinfo=UTC)
LISTED = ItemListed("song-1", "song", "a song")


def rec(position: int, tx_id: int) -> Recorded:
    return Recorded(position, tx_id, AT, LISTED)


def test_running_transactions_hold_the_watermark_back() -> None:
    """A complete batch whose xmin is below an earlier batch's xmax does not release that batch."""
    wm = Watermark()
    first = Batch([], snapshot_xmin=10, bound=15, allocated=100, complete=True)
    assert wm.observe(first) == 0
    assert wm.observe(Batch([rec(101, 11)], 12, 16, 105, complete=True)) == 0
    assert wm.observe(Batch([], 14, 18, 110, complete=True)) == 0
    assert wm.observe(Batch([], 15, 18, 110, complete=True)) == 100  # not yet 105: xmax 16 > 15
    assert wm.observe(Batch([], 16, 18, 110, complete=True)) == 105
    assert wm.observe(Batch([], 18, 18, 110, complete=True)) == 110
    assert wm.value == 110


def test_a_quiet_ledger_releases_what_was_allocated_at_once() -> None:
    """With nothing running (xmin == xmax) a complete batch releases its own allocated position."""
    assert Watermark().observe(Batch([rec(41, 6), rec(42, 6)], 7, 7, 42, complete=True)) == 42


def test_a_cut_batch_only_vouches_for_transactions_before_its_last() -> None:
    """A batch cut by its limit counts as consumed only below its last event's transaction."""
    wm = Watermark()
    assert wm.observe(Batch([], 10, 15, 100, complete=True)) == 0
    # xmin 20 >= 15, but tx 14 may have more events after this cut: nothing is released.
    assert wm.observe(Batch([rec(7, 12), rec(9, 14)], 20, 22, 120, complete=False)) == 0
    # The reader has moved on to tx 15, so every event of a transaction below 15 is consumed.
    assert wm.observe(Batch([rec(11, 14), rec(3, 15)], 20, 22, 120, complete=False)) == 100
    assert wm.observe(Batch([rec(12, 15)], 22, 22, 120, complete=True)) == 120


def test_the_watermark_never_decreases() -> None:
    """A restored watermark is kept when later batches release lower positions."""
    wm = Watermark(500)
    assert wm.observe(Batch([], 9, 9, 100, complete=True)) == 500
    assert wm.observe(Batch([], 12, 12, 600, complete=True)) == 600
    assert wm.observe(Batch([], 13, 13, 550, complete=True)) == 600
    assert wm.observe(Batch([rec(1, 13)], 14, 15, 700, complete=False)) == 600


# --- Simulation ---------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Writers that draw positions inside transactions, and the reader's view of them.

    `postgres_xmax` picks what a snapshot's xmax is: PostgreSQL's (one past the highest *completed*
    xid, so running transactions may have ids at or above it) or the Batch contract's (above every
    xid assigned so far).
    """

    postgres_xmax: bool = False
    next_xid: int = 100
    last_position: int = 0
    latest_completed: int = 99
    running: list[int] = field(default_factory=list)
    owner: dict[int, int] = field(default_factory=dict)  # position -> xid
    committed: set[int] = field(default_factory=set)
    aborted: set[int] = field(default_factory=set)

    def begin(self) -> None:
        self.running.append(self.next_xid)
        self.next_xid += 1

    def draw(self, pick: int) -> None:
        if not self.running:
            self.begin()
        self.last_position += 1
        self.owner[self.last_position] = self.running[pick % len(self.running)]

    def finish(self, pick: int, commit: bool) -> None:
        if self.running:
            xid = self.running.pop(pick % len(self.running))
            (self.committed if commit else self.aborted).add(xid)
            self.latest_completed = max(self.latest_completed, xid)

    def snapshot(self) -> tuple[int, int]:
        xmax = self.latest_completed + 1 if self.postgres_xmax else self.next_xid
        xmin = min([x for x in self.running if x < xmax], default=xmax)
        return xmin, xmax

    def read(self, after: Checkpoint, limit: int, allocated: int) -> Batch:
        """What read_batch returns: committed events below xmin, after `after`, in read order."""
        xmin, xmax = self.snapshot()
        rows = sorted(
            (xid, position)
            for position, xid in self.owner.items()
            if xid in self.committed and xid < xmin and (xid, position) > astuple(after)
        )[:limit]
        events = [rec(position, xid) for xid, position in rows]
        return Batch(events, xmin, xmax, allocated, complete=len(events) < limit)


def astuple(checkpoint: Checkpoint) -> tuple[int, int]:
    return checkpoint.tx_id, checkpoint.position


WRITES = ("begin", "draw", "draw", "commit", "commit", "abort")
ops = st.lists(
    st.tuples(st.sampled_from([*WRITES, "read", "read"]), st.integers(0, 7), st.integers(1, 4)),
    max_size=60,
)


def simulate(steps: list[tuple[str, int, int]], postgres_xmax: bool) -> None:
    """Run writers and one reader; check the watermark after every step and at the end."""
    ledger = Ledger(postgres_xmax)
    wm = Watermark()
    applied: list[Recorded] = []
    checkpoint = Checkpoint()

    def write(op: str, pick: int) -> None:
        if op == "begin":
            ledger.begin()
        elif op == "draw":
            ledger.draw(pick)
        else:
            ledger.finish(pick, commit=op == "commit")

    def check() -> None:
        assert wm.value <= ledger.last_position
        done = {r.position for r in applied}
        for position in range(1, wm.value + 1):
            xid = ledger.owner[position]
            assert position in done or xid in ledger.aborted, (
                f"watermark {wm.value} covers position {position} of transaction {xid}, which is "
                f"{'running' if xid in ledger.running else 'committed'} and not applied"
            )

    def read(limit: int, writes_between: list[tuple[str, int, int]]) -> Batch:
        nonlocal checkpoint
        allocated = ledger.last_position  # read before the snapshot is taken
        for op, pick, _ in writes_between:
            write(op, pick)
        batch = ledger.read(checkpoint, limit, allocated)
        wm.observe(batch)
        applied.extend(batch.events)
        checkpoint = batch.checkpoint or checkpoint
        return batch

    i = 0
    while i < len(steps):
        op, pick, limit = steps[i]
        i += 1
        if op == "read":
            # Writers may act between reading `allocated` and taking the snapshot.
            between = [s for s in steps[i : i + pick % 3] if s[0] != "read"]
            i += len(between)
            read(limit, between)
        else:
            write(op, pick)
        check()

    # Once every writer is done and the reader has drained, the watermark reaches the last position.
    while ledger.running:
        ledger.finish(0, commit=True)
        check()
    while not read(3, []).complete:
        check()
    check()
    assert wm.value == ledger.last_position
    keys = [(r.tx_id, r.position) for r in applied]
    assert keys == sorted((x, p) for p, x in ledger.owner.items() if x in ledger.committed)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_simulated_ledger_watermark_only_covers_applied_or_aborted_positions(
    steps: list[tuple[str, int, int]],
) -> None:
    """With snapshots honouring Batch's xmax contract the watermark never covers a pending event."""
    simulate(steps, postgres_xmax=False)


def test_postgres_snapshot_xmax_would_not_be_a_safe_bound() -> None:
    """Why read_batch draws a transaction id for its bound: PostgreSQL's snapshot xmax is one past
    the latest completed id, so with it a lone running writer's position would be released."""
    # tx 100 draws position 1 and commits; tx 101 draws position 2 and is still running when the
    # reader reads: allocated = 2, snapshot xmin = xmax = 101 (latest completed xid 100, plus 1).
    with pytest.raises(AssertionError, match="running and not applied"):
        simulate(
            [("draw", 0, 1), ("commit", 0, 1), ("draw", 0, 1), ("read", 0, 5)], postgres_xmax=True
        )
