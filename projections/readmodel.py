"""What every read-model store offers, and what the runner, rebuild and verify hand to it.

A store (projections.postgres_store, projections.redis_store) owns one kind of storage and every
operation on it; the runner, the rebuild and verify are orchestration over this interface, and
tests/integration/test_store_contract.py runs one suite of tests against every store.

Every store applies a batch's `Changes` as increments together with the new checkpoint,
atomically, and only if the stored checkpoint is exactly where the batch starts and no newer lease
holder (a higher fencing token) has written. A crash anywhere therefore neither loses nor doubles
a vote, and a paused or zombie worker that lost its lease cannot overwrite a newer worker's work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Protocol

from events.store import Batch, Checkpoint
from projections.model import Changes, fold


class Broken(Exception):
    """The store holds a batch applied only in part: it takes nothing more until rebuilt."""


class Fenced(Exception):
    """The store has moved past this worker: its checkpoint or fence is not what we expected."""


@dataclass(frozen=True, slots=True)
class State:
    """What a projection has applied so far, as stored with its read models."""

    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    watermark: int = 0
    epoch: float | None = None
    events_applied: int = 0
    last_event_at: datetime | None = None
    head: int = 0  # the ledger head (last position drawn) as the worker last saw it


@dataclass(frozen=True, slots=True)
class Step:
    """One batch to apply: its changes, where it ends, and what the reader learned."""

    changes: Changes
    checkpoint: Checkpoint
    watermark: int
    events: int
    last_event_at: datetime | None
    caught_up: bool = False  # the batch reached everything readable at the time
    head: int = 0  # the last position drawn when the batch was read (`Batch.allocated`)


def step_for(
    batch: Batch,
    state: State,
    watermark: int,
    half_life: float,
    fold_batch: Callable[[float | None], Changes] | None = None,
) -> Step:
    """The step that applies `batch` after `state`; `fold_batch(since)` folds its events after
    the epoch `since` (by default a fresh fold; a worker passes the fold its projections share)."""
    changes = Changes(state.epoch)
    if batch.events:
        changes = (fold_batch or (lambda e: fold(batch.events, e, half_life)))(state.epoch)
    return Step(
        changes,
        batch.checkpoint or state.checkpoint,
        watermark,
        len(batch.events),
        max((r.recorded_at for r in batch.events), default=None),
        caught_up=batch.complete,
        head=batch.allocated,
    )


def advanced(state: State, step: Step) -> State:
    """The state once `step` is applied."""
    return replace(
        state,
        checkpoint=step.checkpoint,
        watermark=step.watermark,
        epoch=step.changes.epoch if step.changes.epoch is not None else state.epoch,
        events_applied=state.events_applied + step.events,
        last_event_at=step.last_event_at or state.last_event_at,
        head=max(state.head, step.head),
    )


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a read model differs from what it should hold."""

    store: str
    key: str
    field: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return f"{self.store} {self.key} {self.field}: expected {self.expected!r}, " + (
            f"got {self.actual!r}"
        )


@dataclass(frozen=True, slots=True)
class Coverage:
    """What a store keeps of the read model, so that it is compared on that alone."""

    days_from: date | None = None  # daily totals before this day are not kept
    days_until: date | None = None  # nor after this one (a day in the future is no list yet)
    daily_net_only: bool = False  # daily totals hold the net only (in `up`)
    item_times: bool = True  # items keep their first and last vote times


@dataclass(slots=True)
class Dump:
    """A consistent snapshot of one generation: the read model it holds, the rows whose derived
    values disagree with their own counts, and the checkpoint it reflects."""

    model: Changes
    broken: list[Difference]
    state: State
    coverage: Coverage


class ReadModelStore(Protocol):
    """One kind of read-model storage, every generation of it."""

    name: str

    async def live(self) -> int:
        """The generation readers use now."""
        ...

    async def generations(self) -> list[int]:
        """Every generation the store holds, live or not."""
        ...

    async def checkpoint(self, generation: int) -> State | None:
        """What the generation has applied; None when the store has lost it."""
        ...

    async def start(self, generation: int) -> State:
        """The state a worker starts from: a generation the store lost starts over, empty,
        from the start of the ledger (never from "now")."""
        ...

    async def apply(
        self, generation: int, state: State, step: Step, fence: int, half_life: float
    ) -> State:
        """Apply `step` after `state`, fenced (raises Fenced); returns the new state."""
        ...

    async def write(self, generation: int, model: Changes, state: State) -> None:
        """Write a whole read model into a fresh generation, in bulk."""
        ...

    async def dump(self, generation: int) -> Dump:
        """A consistent snapshot of the generation, for verification."""
        ...

    async def switch(self, old: int, new: int) -> bool:
        """Point readers at `new` if it is at least as far as `old`; False otherwise."""
        ...

    async def drop(self, generation: int) -> None:
        """Remove a generation (nothing if it is not there)."""
        ...
