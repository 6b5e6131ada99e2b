"""The vote decision: pure, no I/O, no clock.

`decide` turns a command and the current state into the events to record (none when the vote
already has that state); `evolve` is the slot's fold over those events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from events.types import Direction, ItemType, VoteCast


@dataclass(frozen=True, slots=True)
class CastVote:
    agent_id: uuid.UUID
    item_id: str
    direction: Direction
    claimed_item_type: ItemType | None = None


@dataclass(frozen=True, slots=True)
class Slot:
    """An agent's current vote on an item; version counts the changes."""

    direction: Direction = "none"
    cast_at: datetime | None = None
    version: int = 0


class UnknownItem(Exception):
    """The item is not in the catalogue."""


class ItemTypeMismatch(Exception):
    """The command names an item type other than the item's."""

    def __init__(self, item_type: str, claimed: str) -> None:
        super().__init__(f"item is a {item_type}, not a {claimed}")
        self.item_type = item_type
        self.claimed = claimed


def decide(
    command: CastVote, item_type: ItemType | None, slot: Slot, owner: str | None = None
) -> list[VoteCast]:
    """The events a vote command records, given the item's type, the agent's slot and the
    agent's owner (which the event carries)."""
    if item_type is None:
        raise UnknownItem(command.item_id)
    if command.claimed_item_type is not None and command.claimed_item_type != item_type:
        raise ItemTypeMismatch(item_type, command.claimed_item_type)
    if command.direction == slot.direction:
        return []
    return [
        VoteCast(
            agent_id=command.agent_id,
            item_id=command.item_id,
            item_type=item_type,
            direction=command.direction,
            previous=slot.direction,
            previous_cast_at=slot.cast_at,
            owner=owner,
        )
    ]


def evolve(slot: Slot, event: VoteCast, recorded_at: datetime | None) -> Slot:
    """The slot after one of its events was recorded at `recorded_at` (None: not known here,
    the database assigns it)."""
    return Slot(direction=event.direction, cast_at=recorded_at, version=slot.version + 1)
