"""Compare read models with an independent fold of the ledger.

The fold here streams the ledger up to a store's checkpoint with one COPY (not the runner's
gap-safe batches) and folds it in chunks, in read order (the trending clock follows it), so it
shares no batching or checkpointing with the runner. Trending sums are compared as decayed
values at one instant, since their stored form depends on the epoch each store chose. Each
store says what it keeps (`Coverage`) and gives a consistent snapshot of itself
(`ReadModelStore.dump`); everything else here is store-agnostic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import psycopg

from events import store
from events.store import Checkpoint
from events.types import Recorded
from projections import snapshot_verify
from projections.ledger_feed import Reader, feed
from projections.model import Changes, DayTotals, decayed, fold, merge, settle
from projections.readmodel import Coverage, Difference, Dump, ReadModelStore


class _Fold:
    """The read model of the events it is fed, chunk by chunk."""

    def __init__(self, half_life: float) -> None:
        self.model, self.half_life = Changes(), half_life

    async def add(self, chunk: list[Recorded]) -> None:
        merge(self.model, fold(chunk, self.model.epoch, self.half_life), self.half_life)

    finish = add


async def ledger_fold(conn: psycopg.AsyncConnection, upto: Checkpoint, half_life: float) -> Changes:
    """The read model an independent fold of the ledger up to `upto` gives.

    Streams the ledger in read order (the order the trending clock is defined in) and folds it
    in chunks of its own size, none of the runner's batching. Raises events.store.Undecodable at
    an event it cannot fold."""
    folded = _Fold(half_life)
    await feed(conn, [(upto, folded)])
    return folded.model


def compare(
    store: str,
    expected: Changes,
    actual: Changes,
    half_life: float,
    *,
    at: float,
    coverage: Coverage = Coverage(),
    limit: int = 20,
) -> list[Difference]:
    """The first `limit` differences between an expected and an actual read model, on what the
    store keeps (`coverage`)."""
    settle(expected)  # a fold's items get their independent scores (idempotent)
    found = _item_differences(store, expected, actual, half_life, at, coverage)
    found = _chain(found, _day_differences(store, expected, actual, coverage))
    found = _chain(found, _owner_differences(store, expected, actual))
    return [d for _, d in zip(range(limit), found, strict=False)]


def _chain(*parts: Iterator[Difference]) -> Iterator[Difference]:
    for part in parts:
        yield from part


def _item_differences(
    store: str, expected: Changes, actual: Changes, half_life: float, at: float, cov: Coverage
) -> Iterator[Difference]:
    fields = ["item_type", "title", "up", "down", "independent", "owners"]
    if cov.item_times:
        fields += ["first_vote_at", "last_vote_at"]
    # Equal entries are skipped first (most are), so only differing keys are sorted and labelled.
    # Equal stored trends mean equal trending only when both are relative to one epoch.
    same_epoch = expected.epoch == actual.epoch
    ids = expected.items.keys() | actual.items.keys()
    for item_id in sorted(
        i for i in ids if not same_epoch or expected.items.get(i) != actual.items.get(i)
    ):
        want, got, key = expected.items.get(item_id), actual.items.get(item_id), f"item {item_id}"
        if want is None or got is None:
            yield Difference(store, key, "presence", want is not None, got is not None)
            continue
        for name in fields:
            if getattr(want, name) != getattr(got, name):
                yield Difference(store, key, name, getattr(want, name), getattr(got, name))
        want_trend = decayed(want.trend, expected.epoch or 0.0, at, half_life)
        got_trend = decayed(got.trend, actual.epoch or 0.0, at, half_life)
        if not math.isclose(want_trend, got_trend, rel_tol=1e-7, abs_tol=1e-9):
            yield Difference(store, key, "trending", want_trend, got_trend)


def _day_pairs(want: DayTotals, got: DayTotals, net_only: bool) -> list[tuple[str, float, float]]:
    """What must be equal; the trending weights are a float sum whose last bits depend on the
    batches it was added in, so a close one counts as equal."""
    trend = want.trend if _close(want.trend, got.trend) else got.trend
    pairs: list[tuple[str, float, float]] = [("trend", want.trend, trend)]
    if net_only:  # such a store keeps only the net, in `up`
        return [("net", want.net, got.up), *pairs]
    return [("up", want.up, got.up), ("down", want.down, got.down), *pairs]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _day_differences(
    store: str, expected: Changes, actual: Changes, cov: Coverage
) -> Iterator[Difference]:
    def differs(key: tuple[date, str]) -> bool:
        want, got = expected.days.get(key), actual.days.get(key)
        if want is None or got is None:
            return True
        return any(w != g for _, w, g in _day_pairs(want, got, cov.daily_net_only))

    keys = expected.days.keys() | actual.days.keys()
    if cov.days_from is not None:
        keys = {k for k in keys if k[0] >= cov.days_from}
    if cov.days_until is not None:
        keys = {k for k in keys if k[0] <= cov.days_until}
    for key in sorted(k for k in keys if differs(k)):
        want, got, label = expected.days.get(key), actual.days.get(key), f"daily {key[0]} {key[1]}"
        if want is None or got is None:
            yield Difference(store, label, "presence", want is not None, got is not None)
            continue
        for name, want_value, got_value in _day_pairs(want, got, cov.daily_net_only):
            if want_value != got_value:
                yield Difference(store, label, name, want_value, got_value)


def _owner_differences(store: str, expected: Changes, actual: Changes) -> Iterator[Difference]:
    """The per-(item, owner) totals; an (item, owner) with none left is the same as none."""
    # As tuples: hundreds of thousands of (item, owner) pairs, compared without a call each.
    want = {k: (t.value, t.active) for k, t in expected.owners.items() if t.value or t.active}
    got = {k: (t.value, t.active) for k, t in actual.owners.items() if t.value or t.active}
    if want == got:
        return
    for key in sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k)):
        label = f"owner {key[1]} of item {key[0]}"
        yield Difference(store, label, "totals", want.get(key, (0, 0)), got.get(key, (0, 0)))


def to_json(differences: list[Difference]) -> list[dict[str, str]]:
    return [
        {"store": d.store, "key": d.key, "field": d.field, "expected": str(d.expected)}
        | {"actual": str(d.actual)}
        for d in differences
    ]


@dataclass(frozen=True, slots=True)
class Outcome:
    store: str
    generation: int
    checkpoint: Checkpoint
    items: int
    differences: list[Difference]


async def check(
    store: ReadModelStore,
    generation: int,
    ledger: psycopg.AsyncConnection,
    half_life: float,
    limit: int = 20,
    folds: dict[Checkpoint, Changes] | None = None,
) -> Outcome:
    """Compare one generation of a store with the ledger folded up to the checkpoint it was
    read at. Stores read at the same checkpoint share one fold through `folds`."""
    dump = await store.dump(generation)
    checkpoint = dump.state.checkpoint
    folds = {} if folds is None else folds
    # The snapshot rows are checked against a fold of their own (days close on the way); both
    # folds are fed from one read of the ledger.
    snapshot_found, snapshot_check = await snapshot_verify.start(
        store, generation, half_life, limit
    )
    readers: list[tuple[Checkpoint, Reader]] = []
    folded = None
    if checkpoint not in folds:
        folded = _Fold(half_life)
        readers.append((checkpoint, folded))
    if snapshot_check is not None:
        readers.append((snapshot_check.upto, snapshot_check))
    if readers:
        await feed(ledger, readers)
    if folded is not None:
        folds[checkpoint] = folded.model
    found = differences(store.name, dump, folds[checkpoint], half_life, limit)
    if snapshot_check is not None:
        snapshot_found = (snapshot_found + snapshot_check.found)[:limit]
    found += snapshot_found
    await foldable_after(ledger, checkpoint)
    return Outcome(store.name, generation, checkpoint, len(dump.model.items), found)


async def foldable_after(conn: psycopg.AsyncConnection, checkpoint: Checkpoint) -> None:
    """Raise events.store.Undecodable if the event after `checkpoint` cannot be folded: a store
    stands still before such an event (its worker stalls there), which verify must report."""
    await store.read_batch(conn, checkpoint, 1)


def differences(
    store: str, dump: Dump, expected: Changes, half_life: float, limit: int = 20
) -> list[Difference]:
    """How a dumped generation differs from the read model it should hold (first `limit`)."""
    at, coverage = time.time(), dump.coverage
    found = compare(store, expected, dump.model, half_life, at=at, coverage=coverage, limit=limit)
    return (dump.broken + found)[:limit]
