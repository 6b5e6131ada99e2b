"""The command API's HTTP edge: pydantic models, converted once into commands."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN

ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ITEM_ID_MAX_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="Catalogue id: letters, digits and . _ : ~ -",
        examples=["song-42"],
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VoteIn(Strict):
    item_id: ItemId
    vote: Literal["up", "down", "none"] = Field(description="`none` retracts the vote")
    agent_id: uuid.UUID | None = Field(
        default=None, description="Optional; must be the agent the API key belongs to"
    )
    item_type: Literal["song", "tool"] | None = Field(
        default=None, description="Optional; must be the item's type"
    )


class VoteOut(BaseModel):
    position: int | None = Field(description="Ledger position of the slot's latest event")
    item_id: str
    vote: Literal["up", "down", "none"]
    previous: Literal["up", "down", "none"]
    changed: bool


class ItemIn(Strict):
    item_id: ItemId
    item_type: Literal["song", "tool"]
    title: Annotated[str, Field(min_length=1, max_length=300)]


class ItemOut(BaseModel):
    item_id: str
    item_type: Literal["song", "tool"]
    title: str
    position: int


class AgentIn(Strict):
    name: Annotated[str, Field(max_length=100)] = ""


class AgentOut(BaseModel):
    agent_id: uuid.UUID
    api_key: str = Field(description="Shown only once; only its digest is stored")
    position: int


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
