"""One suite of tests run against every read-model store (projections.readmodel.ReadModelStore):
what the runner, the rebuild and verify rely on holds for PostgreSQL and Redis alike."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from events.store import Checkpoint
from events.types import AgentRegistered, ItemListed, Recorded, VoteCast
from infra.settings import Settings
from projections import verify
from projections.model import Changes, fold, fold_all
from projections.postgres_store import PostgresStore
from projections.readmodel import Fenced, ReadModelStore, State, Step
from projections.redis_store import RedisStore, namespace
from projections.stores import NAMES, open_store

HALF_LIFE = 3600.0


@pytest.fixture(params=NAMES)
async def target(
    request: pytest.FixtureRequest, isolated: Settings
) -> AsyncIterator[ReadModelStore]:
    """A store of a fresh database and Redis prefix, reached as the schema owner."""
    async with contextlib.AsyncExitStack() as stack:
        yield await open_store(request.param, isolated, stack, isolated.database_url)


def _events(start: int, tx_id: int, at: datetime) -> list[Recorded]:
    """Two songs listed and voted on by one agent, one vote changed: positions from `start`."""
    agent = uuid.uuid4()
    events = [
        AgentRegistered(agent, "a"),
        ItemListed(f"song-{start}", "song", "One"),
        ItemListed(f"song-{start + 1}", "song", "Two"),
        VoteCast(agent, f"song-{start}", "song", "up", "none"),
        VoteCast(agent, f"song-{start + 1}", "song", "down", "none"),
        VoteCast(agent, f"song-{start + 1}", "song", "up", "down", at),
    ]
    return [Recorded(start + n, tx_id, at, e) for n, e in enumerate(events)]


def _step(events: list[Recorded], epoch: float) -> Step:
    last = events[-1]
    changes = fold(events, epoch, HALF_LIFE)
    return Step(
        changes, Checkpoint(last.tx_id, last.position), last.position, len(events), last.recorded_at
    )


async def _started(target: ReadModelStore) -> tuple[int, State]:
    generation = await target.live()
    return generation, await target.start(generation)


async def test_a_fresh_generation_starts_at_the_beginning(target: ReadModelStore) -> None:
    """A worker on a fresh store starts from the start of the ledger, with nothing applied."""
    generation, state = await _started(target)
    assert generation == 1
    assert state.checkpoint == Checkpoint() and state.watermark == 0 and state.events_applied == 0


async def test_applied_batches_are_what_checkpoint_and_dump_report(target: ReadModelStore) -> None:
    """After two batches the stored state is the one apply returned, and the dump equals a fold
    of the same events."""
    generation, state = await _started(target)
    at = datetime.now(UTC).replace(microsecond=0)
    first, second = _events(1, 100, at), _events(7, 101, at + timedelta(minutes=5))
    epoch = at.timestamp()
    state = await target.apply(generation, state, _step(first, epoch), 1, HALF_LIFE)
    state = await target.apply(generation, state, _step(second, epoch), 1, HALF_LIFE)
    assert await target.checkpoint(generation) == state
    stored = await target.checkpoint(generation)
    assert stored is not None and stored.checkpoint == Checkpoint(101, 12)
    assert stored.watermark == 12 and stored.events_applied == 12
    dump = await target.dump(generation)
    expected = fold_all(first + second, HALF_LIFE)
    assert verify.differences(target.name, dump, expected, HALF_LIFE) == []


async def test_replays_and_zombies_are_refused_and_change_nothing(target: ReadModelStore) -> None:
    """The same batch again, a batch from the wrong checkpoint and one with an older fence are
    refused (Fenced) and leave the store as it was."""
    generation, state = await _started(target)
    at = datetime.now(UTC)
    step = _step(_events(1, 100, at), at.timestamp())
    state = await target.apply(generation, state, step, 2, HALF_LIFE)
    before = await target.dump(generation)
    with pytest.raises(Fenced):
        await target.apply(generation, State(), step, 2, HALF_LIFE)
    with pytest.raises(Fenced):
        await target.apply(
            generation, state, _step(_events(7, 101, at), at.timestamp()), 1, HALF_LIFE
        )
    after = await target.dump(generation)
    assert after.model == before.model and after.state == before.state


async def test_an_empty_step_moves_only_the_watermark(target: ReadModelStore) -> None:
    """A batch with no events but a higher watermark advances the watermark alone."""
    generation, state = await _started(target)
    state = await target.apply(
        generation, state, Step(Changes(), state.checkpoint, 7, 0, None), 1, HALF_LIFE
    )
    stored = await target.checkpoint(generation)
    assert stored is not None and stored.watermark == 7 and stored.checkpoint == Checkpoint()
    assert (await target.dump(generation)).model.items == {}


async def test_a_bulk_written_generation_dumps_as_written(target: ReadModelStore) -> None:
    """What `write` puts into a new generation is exactly what its dump gives back, with the
    state it was written at; the live generation is untouched."""
    at = datetime.now(UTC)
    model = fold_all(_events(1, 100, at), HALF_LIFE)
    state = State(Checkpoint(100, 6), 6, model.epoch, 6)
    generation, live = await _started(target)
    await target.apply(generation, live, Step(Changes(), live.checkpoint, 1, 0, None), 1, HALF_LIFE)
    await target.write(2, model, state)
    dump = await target.dump(2)
    assert verify.differences(target.name, dump, model, HALF_LIFE) == []
    assert dump.state.checkpoint == state.checkpoint and dump.state.watermark == 6
    assert await target.live() == 1 and sorted(await target.generations()) == [1, 2]


async def test_switch_refuses_a_generation_behind_the_live_one(target: ReadModelStore) -> None:
    """Readers move to a new generation only once it is at least as far as the live one; the
    old one can then be dropped."""
    generation, state = await _started(target)
    at = datetime.now(UTC)
    state = await target.apply(
        generation, state, _step(_events(1, 100, at), at.timestamp()), 1, HALF_LIFE
    )
    model = fold_all(_events(1, 100, at)[:3], HALF_LIFE)
    await target.write(2, model, State(Checkpoint(100, 3), 3, model.epoch, 3))
    assert await target.switch(1, 2) is False and await target.live() == 1
    await target.write(2, model, State(Checkpoint(100, 6), 6, model.epoch, 6))
    assert await target.switch(1, 2) is True and await target.live() == 2
    await target.drop(1)
    assert await target.generations() == [2]
    await target.drop(1)  # dropping what is gone is harmless


def _step_after(state: State, events: list[Recorded], head: int = 0) -> Step:
    """The step applying `events` after `state`, as the worker folds it."""
    last = events[-1]
    changes = fold(events, state.epoch, HALF_LIFE)
    at = max(r.recorded_at for r in events)
    checkpoint = Checkpoint(last.tx_id, last.position)
    return Step(changes, checkpoint, last.position, len(events), at, head=head)


async def test_the_ledger_head_is_stored_with_the_checkpoint(target: ReadModelStore) -> None:
    """The head a step saw is stored with the checkpoint (`head` in the Redis meta hash,
    `ledger_head` in the PostgreSQL checkpoint row) and never goes back."""
    generation, state = await _started(target)
    at = datetime.now(UTC)
    state = await target.apply(
        generation, state, _step_after(state, _events(1, 100, at), 42), 1, HALF_LIFE
    )
    state = await target.apply(
        generation, state, Step(Changes(), state.checkpoint, 6, 0, None, head=40), 1, HALF_LIFE
    )
    stored = await target.checkpoint(generation)
    assert stored is not None and stored.head == 42 and state.head == 42
    assert await _raw_head(target, generation) == 42


async def _raw_head(target: ReadModelStore, generation: int) -> int:
    if isinstance(target, RedisStore):
        raw = await target.client.hget(f"{namespace(target.prefix, generation)}:meta", "head")
        return int(raw or -1)
    assert isinstance(target, PostgresStore)
    cur = await target.conn.execute(f"SELECT ledger_head FROM rm_g{generation}.checkpoint")
    row = await cur.fetchone()
    return int(row[0]) if row else -1


EXTREMES = [
    datetime(2100, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 30, tzinfo=UTC),
]


async def test_far_future_and_past_times_stay_finite_and_equal_one_fold(
    target: ReadModelStore,
) -> None:
    """Batches dated now, in 2100, in year 1 and in 9999 (each a rebase) leave every stored
    trending sum finite, and the store equal to one fold of the same events."""
    generation, state = await _started(target)
    batches = [_events(1, 100, datetime.now(UTC))]
    for n, at in enumerate(EXTREMES):
        batches.append(_events(7 + 6 * n, 101 + n, at))
    for batch in batches:
        state = await target.apply(generation, state, _step_after(state, batch), 1, HALF_LIFE)
    dump = await target.dump(generation)
    assert all(math.isfinite(t.trend) for t in dump.model.items.values())
    expected = fold_all([e for batch in batches for e in batch], HALF_LIFE, batch=6)
    assert dump.model.epoch == expected.epoch
    assert verify.differences(target.name, dump, expected, HALF_LIFE) == []
