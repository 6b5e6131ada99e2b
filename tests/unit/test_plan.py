from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from commands.decide import CastVote, Slot, UnknownItem
from commands.plan import (
    Found,
    KeyId,
    KeyReuseMismatch,
    Outcome,
    Reply,
    Revoked,
    SlotKey,
    Stored,
    VoteRequest,
    claims,
    plan_batch,
    request_hash,
)
from events.types import VoteCast

AGENTS = [uuid.UUID(int=n) for n in range(1, 4)]
ITEM_TYPES: dict[str, Any] = {"song-1": "song", "song-2": "song", "tool-1": "tool"}
ITEMS = [*ITEM_TYPES, "gone-1"]  # the last is not in the catalogue
FIRST_POSITION = 1000

commands = st.builds(
    CastVote,
    st.sampled_from(AGENTS),
    st.sampled_from(ITEMS),
    st.sampled_from(["up", "down", "none"]),
    st.sampled_from([None, None, "song", "tool"]),
)
requests = st.lists(
    st.builds(VoteRequest, commands, st.sampled_from([None, None, "k1", "k2", "k3"])), max_size=12
)
slots = st.dictionaries(
    st.tuples(st.sampled_from(AGENTS), st.sampled_from(ITEMS)),
    st.tuples(
        st.builds(
            Slot,
            st.sampled_from(["up", "down", "none"]),
            st.sampled_from([None, datetime(2026, 1, 1, tzinfo=UTC)]),
            st.integers(1, 5),
        ),
        st.none() | st.integers(1, 999),
    ),
)
# Keys used before the batch: the stored request is one the batch may repeat, or another.
stored_keys = st.dictionaries(
    st.tuples(st.sampled_from(AGENTS), st.sampled_from(["k1", "k2", "k3"])),
    st.builds(
        lambda command, status: Stored(request_hash(command), status, b"stored"),
        commands,
        st.sampled_from([200, 201]),
    ),
)


def found_for(
    batch: Sequence[VoteRequest],
    slots: dict[SlotKey, tuple[Slot, int | None]],
    revoked: frozenset[uuid.UUID],
    stored: dict[KeyId, Stored],
) -> Found:
    """What the transaction would read for `batch` from a database holding these rows."""
    keys = claims(batch)
    return Found(
        slots={r.slot: slots[r.slot] for r in batch if r.slot in slots},
        revoked=revoked & {r.command.agent_id for r in batch},
        item_types=ITEM_TYPES,
        claimed={k for k in keys if k not in stored},
        stored={k: stored[k] for k in keys if k in stored},
    )


def comparable(outcome: Outcome) -> object:
    """Outcomes compared by value: an exception by its type and message."""
    if isinstance(outcome, Exception):
        return type(outcome), outcome.args
    return outcome


class OneByOne:
    """The requests of a batch decided one at a time, each as a batch of one, with the rows each
    commit would write threaded through to the next: the reference a batch must equal.

    Two rules hold for a batch but not for separate transactions, and are applied here:
    - a refused request frees its key only when the batch ends, so a later request of the batch
      with that key but another body is refused as a reuse;
    - a no-change reply gives its slot's last position as the batch found it.
    A saved slot's cast time is its transaction's now(), which a plan never sees: None here."""

    def __init__(self, slots: dict[SlotKey, tuple[Slot, int | None]], stored: dict[KeyId, Stored]):
        self.slots = dict(slots)
        self.positions_before = {k: last for k, (_, last) in slots.items()}
        self.stored = dict(stored)
        self.first: dict[KeyId, tuple[bytes, Outcome]] = {}  # each key's first request
        self.outcomes: list[Outcome] = []
        self.events: list[tuple[int, VoteCast]] = []
        self.saved: dict[SlotKey, tuple[str, int, int]] = {}

    def run(self, batch: Sequence[VoteRequest], revoked: frozenset[uuid.UUID]) -> None:
        for n, request in enumerate(batch):
            first_hash, first = (
                self.first.get(request.key, (b"", None)) if request.key else (b"", None)
            )
            if isinstance(first, Exception) and first_hash != request_hash(request.command):
                self.outcomes.append(KeyReuseMismatch(str(request.command.agent_id)))
                continue
            self.outcomes.append(self.one(n, request, revoked))
            if request.key:
                self.first.setdefault(
                    request.key, (request_hash(request.command), self.outcomes[-1])
                )

    def one(self, n: int, request: VoteRequest, revoked: frozenset[uuid.UUID]) -> Outcome:
        plan = plan_batch([request], found_for([request], self.slots, revoked, self.stored))
        position = FIRST_POSITION + len(self.events)
        answer = plan.answer(range(position, position + len(plan.events)))
        self.events += [(n, event) for _, event in plan.events]
        for agent, item, direction, version, last in answer.slots:
            slot = Slot(direction, None, version)
            self.slots[agent, item] = (slot, self.positions_before.get((agent, item)))
            self.saved[agent, item] = (direction, version, last)
        for agent, key, status, body in answer.stored:
            self.stored[agent, key] = Stored(request_hash(request.command), status, body)
        [outcome] = answer.outcomes
        return outcome


@given(requests, slots, st.frozensets(st.sampled_from(AGENTS), max_size=1), stored_keys)
def test_a_planned_batch_equals_its_requests_decided_one_by_one(
    batch: list[VoteRequest],
    initial: dict[SlotKey, tuple[Slot, int | None]],
    revoked: frozenset[uuid.UUID],
    stored: dict[KeyId, Stored],
) -> None:
    """A batch plans the same events, outcomes, slots and key rows as its requests one by one."""
    found = found_for(batch, initial, revoked, stored)
    plan = plan_batch(batch, found)
    answer = plan.answer(range(FIRST_POSITION, FIRST_POSITION + len(plan.events)))
    expected = OneByOne(initial, stored)
    expected.run(batch, revoked)
    assert plan.events == expected.events
    assert [comparable(o) for o in answer.outcomes] == [comparable(o) for o in expected.outcomes]
    assert {(a, i): (d, v, p) for a, i, d, v, p in answer.slots} == expected.saved
    new_keys = {k: (s.status, s.body) for k, s in expected.stored.items() if k not in stored}
    assert {(a, k): (s, b) for a, k, s, b in answer.stored} == new_keys
    assert set(answer.released) == found.claimed - new_keys.keys()


@given(requests, slots, st.frozensets(st.sampled_from(AGENTS), max_size=1))
def test_events_follow_each_slot_and_replies_name_their_positions(
    batch: list[VoteRequest],
    initial: dict[SlotKey, tuple[Slot, int | None]],
    revoked: frozenset[uuid.UUID],
) -> None:
    """Each slot's events chain from its state; a 201 names its event's position; no key reuse."""
    plan = plan_batch(batch, found_for(batch, initial, revoked, {}))
    answer = plan.answer(range(FIRST_POSITION, FIRST_POSITION + len(plan.events)))
    state = {k: slot for k, (slot, _) in initial.items()}
    for offset, (n, event) in enumerate(plan.events):
        before = state.get(batch[n].slot, Slot())
        assert (event.previous, event.previous_cast_at) == (before.direction, before.cast_at)
        assert event.direction == batch[n].command.direction != before.direction
        assert batch[n].command.agent_id not in revoked
        state[batch[n].slot] = Slot(event.direction, None, before.version + 1)
        body = msgspec.json.decode(answer.outcomes[n].body)  # type: ignore[union-attr]
        assert body["position"] == FIRST_POSITION + offset
    saved = {(a, i): (d, v) for a, i, d, v, _ in answer.slots}
    assert saved == {k: (state[k].direction, state[k].version) for k in saved}
    for request, outcome in zip(batch, answer.outcomes, strict=True):
        if request.command.agent_id in revoked:
            assert isinstance(outcome, Revoked | KeyReuseMismatch)
        elif request.command.item_id not in ITEM_TYPES:
            assert isinstance(outcome, UnknownItem | KeyReuseMismatch)


AGENT = AGENTS[0]


def test_a_key_refused_in_a_batch_stays_taken_until_the_batch_ends() -> None:
    """A second request with the key of a refused one in the same batch is refused as a reuse."""
    batch = [
        VoteRequest(CastVote(AGENT, "gone-1", "up"), "k"),
        VoteRequest(CastVote(AGENT, "song-1", "up"), "k"),
    ]
    plan = plan_batch(batch, Found({}, item_types=ITEM_TYPES, claimed={(AGENT, "k")}))
    answer = plan.answer([])
    assert [type(o) for o in answer.outcomes] == [UnknownItem, KeyReuseMismatch]
    assert (plan.events, answer.released) == ([], [(AGENT, "k")])


def test_a_no_change_reply_names_the_position_the_batch_found() -> None:
    """Within a batch, a repeated vote's 200 names its slot's position from before the batch."""
    batch = [
        VoteRequest(CastVote(AGENT, "song-1", "up")),
        VoteRequest(CastVote(AGENT, "song-1", "up")),
    ]
    plan = plan_batch(batch, Found({(AGENT, "song-1"): (Slot(), 7)}, item_types=ITEM_TYPES))
    first, second = plan.answer([8]).outcomes
    assert isinstance(first, Reply) and isinstance(second, Reply)
    assert (first.status, msgspec.json.decode(first.body)["position"]) == (201, 8)
    assert (second.status, msgspec.json.decode(second.body)["position"]) == (200, 7)
