"""The ledger's event types.

Frozen, tagged msgspec Structs: the tag names the type in the stored payload and `v` its schema
version. A field added with a default needs no new version; any other change of shape or meaning
bumps the type's version, and `events.codec.UPCASTERS` gains the step that turns a payload of the
previous version into the new one, so every event ever recorded still reads as the current shape.
`gc=False`: they hold no reference cycles, and replays create millions of them, which would
otherwise keep the cyclic garbage collector busy scanning them.
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
    """An agent may now vote, on behalf of its owner (the operator account or organisation that
    runs it). Its credentials stay out of the ledger.

    v2 added `owner`; a v1 agent is its own owner (the upcaster writes its id as text), and so
    is one registered without an owner."""

    agent_id: uuid.UUID
    name: str = ""
    owner: str | None = None
    v: int = 2

    @property
    def owned_by(self) -> str:
        return self.owner or str(self.agent_id)


class AgentRevoked(msgspec.Struct, frozen=True, gc=False, tag="AgentRevoked", tag_field="type"):
    """An agent's key no longer works; its past votes stand."""

    agent_id: uuid.UUID
    v: int = 1


class ItemListed(msgspec.Struct, frozen=True, gc=False, tag="ItemListed", tag_field="type"):
    """A song or tool entered the catalogue."""

    item_id: str
    item_type: ItemType
    title: str
    v: int = 1


class VoteCast(msgspec.Struct, frozen=True, gc=False, tag="VoteCast", tag_field="type"):
    """An agent's vote on an item changed.

    It carries the previous direction and when that was cast, and the agent's owner, so every
    fold can apply it alone: the net change is value(direction) - value(previous), and an owner's
    agents on an item are summed, with no lookup of earlier events.

    v2 added `owner`; a v1 vote's agent is its own owner (the upcaster writes its id as text),
    and so is one cast without an owner.
    """

    agent_id: uuid.UUID
    item_id: str
    item_type: ItemType
    direction: Direction
    previous: Direction
    previous_cast_at: datetime | None = None
    owner: str | None = None
    v: int = 2

    @property
    def owned_by(self) -> str:
        """Whose vote this is on the independent chart: the agent's owner."""
        return self.owner or str(self.agent_id)

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
