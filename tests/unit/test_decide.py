from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.decide import CastVote, ItemTypeMismatch, Slot, UnknownItem, decide, evolve
from events.types import DIRECTION_VALUE

AGENT = uuid.UUID(int=1)
directions = st.sampled_from(["up", "down", "none"])


@given(st.lists(directions, max_size=60))
def test_slot_follows_the_last_vote_and_deltas_sum_to_it(votes: list[str]) -> None:
    """Over any vote sequence the slot equals the last vote and the event deltas sum to it."""
    slot = Slot()
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    total = 0
    for i, vote in enumerate(votes):
        before = slot
        events = decide(CastVote(AGENT, "song-1", vote), "song", slot)  # type: ignore[arg-type]
        if vote == before.direction:
            assert events == []
        else:
            assert len(events) == 1
            assert events[0].previous == before.direction
            assert events[0].previous_cast_at == before.cast_at
            assert events[0].direction != events[0].previous
        for event in events:
            total += event.delta
            slot = evolve(slot, event, clock + timedelta(seconds=i))
            assert slot.version == before.version + 1
    assert slot.direction == (votes[-1] if votes else "none")
    assert total == DIRECTION_VALUE[slot.direction]


def test_unknown_item_is_refused() -> None:
    """An item missing from the catalogue cannot be voted on."""
    with pytest.raises(UnknownItem):
        decide(CastVote(AGENT, "nope", "up"), None, Slot())


def test_claimed_item_type_must_match() -> None:
    """A command naming the wrong item type is refused, even when it would change nothing."""
    with pytest.raises(ItemTypeMismatch):
        decide(CastVote(AGENT, "song-1", "none", "tool"), "song", Slot())
    assert decide(CastVote(AGENT, "song-1", "up", "song"), "song", Slot())[0].item_type == "song"
