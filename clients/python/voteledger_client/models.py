"""What the APIs answer, as msgspec Structs.

Fields named in a struct's `FROM_HEADERS` come from response headers, not the JSON body; every
other field is a body field of the API's response (tests/unit/test_client_models.py checks them
against both OpenAPI documents). Unknown body fields are ignored, so a server that adds a field
does not break an older client.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import ClassVar, Literal

import msgspec

ItemType = Literal["song", "tool"]
Direction = Literal["up", "down", "none"]
Sort = Literal["net", "confidence", "independent"]
# The charts an item's score can be explained on: the sorts of `top`, and trending.
ExplainSort = Literal["net", "confidence", "independent", "trending"]


class RateLimit(msgspec.Struct, frozen=True):
    """The agent's vote budget, from the `RateLimit` and `RateLimit-Policy` headers (IETF
    draft): `remaining` votes now, full again in `reset` seconds; `quota` votes per `window`
    seconds. A field the server did not send is None."""

    policy: str | None = None
    remaining: int | None = None
    reset: int | None = None
    quota: int | None = None
    window: int | None = None


class VoteResult(msgspec.Struct, frozen=True):
    """A vote as recorded: `changed` is False when the vote already had that state (nothing new
    was recorded); `replayed` when the answer is a replay of an earlier request with the same
    Idempotency-Key. `position` is the ledger position of the slot's latest event (None when the
    slot never had one): read with `min_position=position` to see the vote."""

    FROM_HEADERS: ClassVar[frozenset[str]] = frozenset({"replayed", "rate_limit"})

    position: int | None
    item_id: str
    vote: Direction
    previous: Direction
    changed: bool
    replayed: bool = False
    rate_limit: RateLimit | None = None


class Entry(msgspec.Struct, frozen=True):
    """One place in a ranking; `score` is the list's measure, `up`/`down` all-time counts."""

    rank: int
    item_id: str
    item_type: ItemType
    title: str
    score: float
    up: int
    down: int


class Page(msgspec.Struct, frozen=True):
    """A page of a ranking as of ledger `position`; pass `next_cursor` for the next page (None:
    this is the last). `read_model` is the store that answered (redis, or postgres)."""

    FROM_HEADERS: ClassVar[frozenset[str]] = frozenset({"read_model"})

    items: list[Entry]
    next_cursor: str | None
    position: int
    read_model: str | None = None


class Detail(msgspec.Struct, frozen=True):
    """One item's counts, scores and ranks (None: not in that list) as of ledger `position`."""

    FROM_HEADERS: ClassVar[frozenset[str]] = frozenset({"read_model"})

    item_id: str
    item_type: ItemType
    title: str
    up: int
    down: int
    net: int
    confidence: float
    trending: float
    rank_top: int | None
    rank_trending: int | None
    rank_daily: int | None
    daily_net: int | None
    position: int
    read_model: str | None = None
    # The independent chart (each owner counts once); 0 and None from a server without it.
    independent: int = 0
    owners: int = 0
    rank_independent: int | None = None


class VoteAndRead(msgspec.Struct, frozen=True):
    """A vote and the item read at the vote's position: `item` reflects `vote`."""

    vote: VoteResult
    item: Detail


class Agent(msgspec.Struct, frozen=True):
    """A registered agent; `api_key` is shown only this once."""

    agent_id: uuid.UUID
    api_key: str
    position: int
    # Whose agent it is: the owner it was registered for, or its own agent_id as text. None
    # only from a server that predates owners.
    owner: str | None = None


class Item(msgspec.Struct, frozen=True):
    """A catalogue listing and the ledger position of its event."""

    item_id: str
    item_type: ItemType
    title: str
    position: int


class DayNet(msgspec.Struct, frozen=True):
    """Net votes an item gained on one UTC day."""

    day: date = msgspec.field(name="date")
    net: int


class DailySeries(msgspec.Struct, frozen=True):
    """An item's net votes on each of its last days, oldest first, ending today (UTC); every
    day is listed, 0 when it had none."""

    FROM_HEADERS: ClassVar[frozenset[str]] = frozenset({"read_model"})

    item_id: str
    days: list[DayNet]
    position: int
    read_model: str | None = None


class Placing(msgspec.Struct, frozen=True):
    """An item's rank and score on one chart as a day closed."""

    rank: int
    score: float


class HistoryDay(msgspec.Struct, frozen=True):
    """An item's place on each chart of its type as `day` closed; None: not on that chart."""

    day: date = msgspec.field(name="date")
    net: Placing | None = None
    confidence: Placing | None = None
    independent: Placing | None = None
    trending: Placing | None = None


class ItemHistory(msgspec.Struct, frozen=True):
    """An item's places from `start` to `end` (both included), one entry per closed day that
    placed it, oldest first. `position` is that of the latest closed day of the range (0: none)."""

    item_id: str
    start: date = msgspec.field(name="from")
    end: date = msgspec.field(name="to")
    days: list[HistoryDay]
    position: int


class ChartDigest(msgspec.Struct, frozen=True):
    """One link of the daily snapshots' hash chain: `digest` is the SHA-256 (hex) of `previous`
    (the day before's digest, "" for the first day) and the day's rows; `position` the last
    ledger event applied before the day closed."""

    day: date = msgspec.field(name="date")
    digest: str
    previous: str
    position: int


class Component(msgspec.Struct, frozen=True):
    """One part of an explained score; which fields are set depends on the chart:

    - net: `label` up or down, `value` (down negative); confidence: `label` up, down or z and
      its `value`.
    - independent: one per owner (`owner`, `agents` voting, their `sum`, its `sign`), and
      possibly `label` rest with the `owners` left out and the `sign` they add.
    - trending: one per UTC day (`day`, `net`, `weight`, decay `factor`, `contribution`), and
      possibly `label` rounding with the `contribution` that closes the gap to the score."""

    label: str | None = None
    value: int | float | None = None
    owner: str | None = None
    agents: int | None = None
    sum: int | None = None
    sign: int | None = None
    owners: int | None = None
    day: date | None = msgspec.field(default=None, name="date")
    net: int | None = None
    weight: float | None = None
    factor: float | None = None
    contribution: float | None = None


class Explanation(msgspec.Struct, frozen=True):
    """Why an item has its `score` on the chart `sort` as of ledger `position`: `components`
    that add up to it (see `Component`), `total` what they give (trending: without rounding).
    `components_truncated`: independent owners past the limit are summed in one `rest`;
    trending's scores are decayed to `at` (Unix seconds) with `half_life` (seconds)."""

    FROM_HEADERS: ClassVar[frozenset[str]] = frozenset({"read_model"})

    item_id: str
    sort: str
    position: int
    score: int | float
    total: int | float
    formula: str
    components: list[Component]
    components_truncated: bool = False
    at: float | None = None
    half_life: float | None = None
    read_model: str | None = None


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details: the members every problem has (extensions are in
    `ProblemError.extra`)."""

    type: str = "about:blank"
    title: str = ""
    status: int = 0
    detail: str = ""
    instance: str | None = None
