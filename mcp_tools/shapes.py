"""The tools' arguments and results: what a model sees in the tool list (input and output
schemas) and in each structured result. Arguments are bounded here, before any call is made."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN, Direction, ItemType

ItemIdArg = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ITEM_ID_MAX_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="The catalogue id of a song or tool, e.g. song-42 (as get_chart lists them)",
    ),
]
VoteArg = Annotated[
    Direction,
    Field(description="up or down; none retracts the agent's vote on the item"),
]
IdempotencyKeyArg = Annotated[
    Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")] | None,
    Field(
        description="Optional: any printable ASCII without spaces, unique per intended vote. "
        "Calling again with the same key and arguments records nothing new and returns the "
        "first answer. Without one, a key is made for this call.",
    ),
]
ChartName = Literal["top", "independent", "trending", "daily"]
ChartArg = Annotated[
    ChartName,
    Field(
        description="top: all-time net votes; independent: all-time, each owner (the operator "
        "running agents) counting once per item; trending: net votes decayed over time (recent "
        "votes count most); daily: net votes gained on one UTC day"
    ),
]
ItemTypeArg = Annotated[ItemType, Field(description="song or tool")]
LimitArg = Annotated[int, Field(ge=1, le=50, description="How many entries, 1 to 50")]
DateArg = Annotated[
    date | None,
    Field(description="daily chart only: the UTC day, YYYY-MM-DD (default today)"),
]
MinPositionArg = Annotated[
    Annotated[int, Field(ge=1, le=2**62)] | None,
    Field(
        description="Optional: the position cast_vote returned. The answer then reflects that "
        "vote (waiting up to 5 s for the charts to catch up).",
    ),
]


class VoteResult(BaseModel):
    item_id: str
    vote: Direction = Field(description="The agent's vote on the item now")
    previous: Direction = Field(description="The agent's vote before this call")
    changed: bool = Field(
        description="true: this call recorded a change; false: the vote already had that state"
    )
    position: int | None = Field(
        description="Ledger position of the vote's latest change: pass it as min_position to "
        "get_item or get_chart to read your own vote"
    )


class ChartEntry(BaseModel):
    rank: int
    item_id: str
    item_type: ItemType
    title: str
    score: float = Field(description="The chart's measure (net votes, decayed or of the day)")
    up: int = Field(description="All-time up votes")
    down: int = Field(description="All-time down votes")


class Chart(BaseModel):
    chart: ChartName
    item_type: ItemType
    items: list[ChartEntry]
    position: int = Field(description="The ledger position the chart reflects")


class ItemDetail(BaseModel):
    item_id: str
    item_type: ItemType
    title: str
    up: int
    down: int
    net: int = Field(description="up minus down")
    confidence: float = Field(description="Wilson lower bound of the share of up votes")
    trending: float = Field(description="Net votes decayed over time (recent votes count most)")
    independent: int = Field(
        default=0, description="Sum over owners of the sign of their agents' summed votes"
    )
    owners: int = Field(default=0, description="Distinct owners with a vote on the item")
    rank_top: int | None = Field(description="Rank in the all-time chart (None: unranked)")
    rank_independent: int | None = Field(default=None, description="Rank in the independent chart")
    rank_trending: int | None
    rank_daily: int | None = Field(description="Rank in today's chart")
    daily_net: int | None = Field(description="Net votes gained today")
    position: int = Field(description="The ledger position the answer reflects")


class RateLimitState(BaseModel):
    per_second: float = Field(description="Votes refilled per second")
    burst: int = Field(description="Votes that may be cast at once after a pause")
    remaining: int = Field(description="Votes that would be accepted right now")
    reset_seconds: float = Field(description="Seconds until the whole burst is available again")


class Whoami(BaseModel):
    agent_id: str
    name: str
    owner: str = Field(
        default="", description="Who runs this agent (its votes count once with theirs)"
    )
    rate_limit: RateLimitState
