"""The ledger's event types.

Frozen, tagged msgspec Structs: the tag names the type in the stored payload, and a new field is
only ever added with a default so that every event ever recorded still decodes. `gc=False`: they
hold no reference cycles, and replays create millions of them, which would otherwise keep the
cyclic garbage collector busy scanning them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec

Direction = Literal["up", "down", "none"]
ItemType = Literal["song", "tool"]

# What a catalogue id looks like: both APIs validate ids with this pattern.
ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:~-]*$"
ITEM_ID_MAX_LENGTH = 128

# The value each direction contributes to an item's net score.
DIRECTION_VALUE: dict[str, int] = {"up": 1, "down": -1, "none": 0}


class AgentRegistered(
    msgspec.Struct, frozen=True, gc=False, tag="AgentRegistered", tag_field="type"
):
    """An agent may now vote. Its credentials stay out of the ledger."""

    agent_id: uuid.UUID
    name: str = ""


class AgentRevoked(msgspec.Struct, frozen=True, gc=False, tag="AgentRevoked", tag_field="type"):
    """An agent's key no longer works; its past votes stand."""

    agent_id: uuid.UUID


class ItemListed(msgspec.Struct, frozen=True, gc=False, tag="ItemListed", tag_field="type"):
    """A song or tool entered the catalogue."""

    item_id: str
    item_type: ItemType
    title: str


class VoteCast(msgspec.Struct, frozen=True, gc=False, tag="VoteCast", tag_field="type"):
    """An agent's vote on an item changed.

    It carries the previous direction and when that was cast, so every fold can apply it alone:
    the net change is value(direction) - value(previous), with no lookup of earlier events.
    """

    agent_id: uuid.UUID
    item_id: str
    item_type: ItemType
    direction: Direction
    previous: Direction
    previous_cast_at: datetime | None = None

    @property
    def delta(self) -> int:
        return DIRECTION_VALUE[self.direction] - DIRECTION_VALUE[self.previous]


Event = AgentRegistered | AgentRevoked | ItemListed | VoteCast


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """An event as the ledger holds it: where it stands and when it was recorded."""

    position: int
    tx_id: int
    recorded_at: datetime
    event: Event
