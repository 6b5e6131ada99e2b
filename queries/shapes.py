"""What both readers share: the query they answer, the shapes they return, the keyset cursor, and
the errors that say a read cannot be answered.

The response shapes are encoded with msgspec and are what the OpenAPI document shows
(infra.openapi); both readers compute them the same way, so a client cannot tell which one answered
except by the `X-Read-Model` header.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Literal

import msgspec
import psycopg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN, ItemType
from projections.model import decayed

ListName = Literal["top", "confidence", "independent", "trending", "daily"]
_ZSET = {"top": "top", "confidence": "conf", "independent": "indep", "trending": "trend"}


class BadCursor(ValueError):
    """The cursor cannot page this list: it is malformed, or was issued for another list."""


class StaleCursor(BadCursor):
    """The cursor was issued for an earlier generation: the rankings were rebuilt since."""


class NotReady(Exception):
    """This read model cannot answer now (it is rebuilding, or missing)."""


# Only failing to reach a store means "it cannot answer now". A script error (ResponseError) is a
# bug or bad input: read as "Redis is down", one request could move every reader to PostgreSQL.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    NotReady,
    psycopg.OperationalError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Errors that mean "this store cannot answer now", as opposed to bugs."""
    return isinstance(exc, _UNAVAILABLE)


def raise_unless_unavailable(exc: Exception) -> None:
    """Raise `exc` unless it means "this store cannot answer now": a bug is never hidden."""
    if not is_unavailable(exc):
        raise exc


# Clients hold cursors, so they can forge them: every field is checked before it reaches a store.
_RANK_MAX = 2**31
_CursorFields = tuple[
    Annotated[int, msgspec.Meta(ge=0, le=2**62)],
    Annotated[str, msgspec.Meta(max_length=64)],
    float,
    Annotated[str, msgspec.Meta(max_length=ITEM_ID_MAX_LENGTH, pattern=ITEM_ID_PATTERN)],
    Annotated[int, msgspec.Meta(ge=0, le=_RANK_MAX)],
]
_cursor_fields = msgspec.msgpack.Decoder(_CursorFields)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last item's stored score and id, and its rank."""

    generation: int
    list_key: str
    score: float
    item_id: str
    rank: int

    def encode(self) -> str:
        raw = msgspec.msgpack.encode(
            [self.generation, self.list_key, self.score, self.item_id, self.rank]
        )
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, generation: int, list_key: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            cursor = cls(*_cursor_fields.decode(raw))
        except (binascii.Error, msgspec.DecodeError, ValueError, TypeError) as exc:
            raise BadCursor("the cursor is malformed") from exc
        if not math.isfinite(cursor.score):
            raise BadCursor("the cursor is malformed: its score is not a finite number")
        if cursor.list_key != list_key:
            raise BadCursor("the cursor belongs to another list")
        if cursor.generation != generation:
            raise StaleCursor("the rankings were rebuilt since this cursor was issued; start over")
        return cursor


@dataclass(frozen=True, slots=True)
class ListQuery:
    name: ListName
    item_type: str
    limit: int
    cursor: str | None = None
    min_votes: int = 0
    day: date | None = None

    @property
    def list_key(self) -> str:
        if self.name == "daily":
            assert self.day is not None
            return f"daily:{self.item_type}:{self.day.isoformat()}"
        return f"{_ZSET[self.name]}:{self.item_type}"

    def after(self, generation: int) -> Cursor | None:
        """The cursor this page starts after, if any, checked against `generation`."""
        return Cursor.decode(self.cursor, generation, self.list_key) if self.cursor else None


class Entry(msgspec.Struct, frozen=True):
    rank: int
    item_id: str
    item_type: ItemType
    title: str
    score: float
    up: int
    down: int


class Page(msgspec.Struct, frozen=True):
    items: list[Entry]
    next_cursor: str | None
    position: int


class Detail(msgspec.Struct, frozen=True):
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
    # Each owner counts once: the sign of the sum of its agents' votes on the item.
    independent: int
    owners: int  # owners with at least one agent voting up or down on the item
    rank_independent: int | None


class DetailAt(Detail, frozen=True):
    """An item's detail with the ledger position it reflects: the item endpoint's body."""

    position: int


def display(name: str, stored: float, epoch: float | None, now: float, half_life: float) -> float:
    """Trending sums are stored relative to an epoch; clients see decayed net votes now."""
    if name == "trending":
        return decayed(stored, epoch or now, now, half_life)
    return stored


class DayNet(msgspec.Struct, frozen=True):
    day: date = msgspec.field(name="date")  # a UTC day
    net: int  # net votes gained that day


class ItemDaily(msgspec.Struct, frozen=True):
    """An item's net votes per UTC day, oldest first, every day listed (0 when none)."""

    item_id: str
    days: list[DayNet]


class ItemDailyAt(ItemDaily, frozen=True):
    """An item's daily series with the ledger position it reflects: the endpoint's body."""

    position: int


def daily_series(item_id: str, days: list[date], nets: dict[date, int]) -> ItemDaily:
    """The series of `days`, a day with no stored net counting 0."""
    return ItemDaily(item_id, [DayNet(day, nets.get(day, 0)) for day in days])
