"""The Redis reader: one Lua call per page (`page.lua`), item (`item.lua`), item's daily series
(`series.lua`) or score explanation (`explain.lua`), each returning the watermark the data
reflects, and the contracts of those calls.

Each script takes one JSON map and returns one, both msgspec Structs here, so either side can change
without counting positions. Scores cross as the strings Redis stores (exact doubles), converted
here; the scripts leave absent values and empty lists out (cjson has no null, and encodes an empty
table as a map), so those fields have defaults.
"""

from __future__ import annotations

from datetime import date
from typing import cast

import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from events.types import ItemType
from infra import scripts
from projections.redis_store import meta_key, namespace
from queries.explain_shapes import DayRow, OwnerRow, Stored
from queries.shapes import (
    Cursor,
    Detail,
    Entry,
    ItemDaily,
    ListQuery,
    NotReady,
    Page,
    daily_series,
    display,
)


class PageArgs(msgspec.Struct, frozen=True, omit_defaults=True):
    list_key: str  # the key suffix: 'top:song', 'daily:tool:2026-11-25'
    limit: int
    min_votes: int  # 0: no filter
    after_score: str | None = None  # repr() of the cursor's score: exact, unlike a JSON number
    after_id: str | None = None


class PageRow(msgspec.Struct, frozen=True):
    item_id: str
    score: str
    item_type: str
    title: str
    up: int
    down: int


class Member(msgspec.Struct, frozen=True):
    item_id: str
    score: str


class PageReply(msgspec.Struct, frozen=True):
    watermark: str
    live: bool
    more: bool
    epoch: str | None = None
    head: str | None = None
    rows: list[PageRow] = []
    # The last member looked at, shown or not: the next page starts after it.
    last: Member | None = None


class ItemArgs(msgspec.Struct, frozen=True):
    item_id: str
    day: date


class FoundItem(msgspec.Struct, frozen=True):
    item_type: str
    title: str
    up: int
    down: int
    confidence: str
    trend: str
    rank_top: int | None = None
    rank_trending: int | None = None
    rank_daily: int | None = None
    daily_net: str | None = None
    independent: int = 0
    owners: int = 0
    rank_independent: int | None = None


class ItemReply(msgspec.Struct, frozen=True):
    watermark: str
    live: bool
    epoch: str | None = None
    head: str | None = None
    item: FoundItem | None = None


class SeriesArgs(msgspec.Struct, frozen=True):
    item_id: str
    days: list[date]


class SeriesReply(msgspec.Struct, frozen=True):
    watermark: str
    live: bool
    head: str | None = None
    nets: list[str] | None = None  # one per day asked; absent for an unknown item


class ExplainArgs(msgspec.Struct, frozen=True):
    item_id: str
    sort: str
    days: list[date] = []  # trending: the days Redis keeps, oldest first


class StoredDay(msgspec.Struct, frozen=True):
    day: date
    net: str
    trend: str


class ExplainedItem(msgspec.Struct, frozen=True):
    item_type: str
    up: int
    down: int
    score: str
    own: list[str] = []  # independent: the item's owner hash (field, value, ...)
    days: list[StoredDay] = []
    complete: bool = True


class ExplainReply(msgspec.Struct, frozen=True):
    watermark: str
    live: bool
    epoch: str | None = None
    head: str | None = None
    item: ExplainedItem | None = None


_encoder = msgspec.json.Encoder()
_explain_reply = msgspec.json.Decoder(ExplainReply)
_series_reply = msgspec.json.Decoder(SeriesReply)
_page_reply = msgspec.json.Decoder(PageReply)
_item_reply = msgspec.json.Decoder(ItemReply)


def _epoch(raw: str | None) -> float | None:
    return float(raw) if raw else None


class RedisReader:
    def __init__(self, client: aioredis.Redis, prefix: str, half_life: float) -> None:
        self.client = client
        self.prefix = prefix
        self.half_life = half_life
        self.head = 0  # the highest ledger head the projector has written with its checkpoint
        self._page = scripts.load(client, "queries", "page.lua")
        self._item = scripts.load(client, "queries", "item.lua")
        self._series = scripts.load(client, "queries", "series.lua")
        self._explain = scripts.load(client, "queries", "explain.lua")

    async def page(self, generation: int, query: ListQuery, now: float) -> Page:
        cursor = query.after(generation)
        after = (repr(cursor.score), cursor.item_id) if cursor else (None, None)
        args = PageArgs(query.list_key, query.limit, query.min_votes, *after)
        reply = _page_reply.decode(await self._call(self._page, generation, args))
        self._saw_head(reply.head)
        _check_live(reply.live)
        epoch, rank = _epoch(reply.epoch), cursor.rank if cursor else 0
        entries = []
        for row in reply.rows:
            rank += 1
            score = display(query.name, float(row.score), epoch, now, self.half_life)
            item_type = cast(ItemType, row.item_type)
            entries.append(Entry(rank, row.item_id, item_type, row.title, score, row.up, row.down))
        next_cursor = None
        if reply.more and reply.last is not None:
            last = reply.last
            next_cursor = Cursor(
                generation, query.list_key, float(last.score), last.item_id, rank
            ).encode()
        return Page(entries, next_cursor, int(reply.watermark))

    async def detail(
        self, generation: int, item_id: str, today: date, now: float
    ) -> tuple[Detail | None, int]:
        raw = await self._call(self._item, generation, ItemArgs(item_id, today))
        reply = _item_reply.decode(raw)
        self._saw_head(reply.head)
        _check_live(reply.live)
        if reply.item is None:
            return None, int(reply.watermark)
        return self._detail(item_id, reply.item, _epoch(reply.epoch), now), int(reply.watermark)

    async def daily(
        self, generation: int, item_id: str, days: list[date]
    ) -> tuple[ItemDaily | None, int]:
        """An item's net votes on each of `days` (all kept in Redis), or None if unknown."""
        raw = await self._call(self._series, generation, SeriesArgs(item_id, days))
        reply = _series_reply.decode(raw)
        self._saw_head(reply.head)
        _check_live(reply.live)
        if reply.nets is None:
            return None, int(reply.watermark)
        nets = {day: int(float(net)) for day, net in zip(days, reply.nets, strict=True)}
        return daily_series(item_id, days, nets), int(reply.watermark)

    async def explain(
        self, generation: int, item_id: str, sort: str, days: list[date]
    ) -> tuple[Stored | None, int]:
        """An item's stored numbers on one chart (trending: on `days`), or None if unknown."""
        args = ExplainArgs(item_id, sort, days if sort == "trending" else [])
        reply = _explain_reply.decode(await self._call(self._explain, generation, args))
        self._saw_head(reply.head)
        _check_live(reply.live)
        found, watermark = reply.item, int(reply.watermark)
        if found is None:
            return None, watermark
        return Stored(
            found.item_type,
            found.up,
            found.down,
            float(found.score),
            _epoch(reply.epoch),
            owners=_owners(found.own),
            days=[DayRow(d.day, int(float(d.net)), float(d.trend)) for d in found.days],
            complete=found.complete,
        ), watermark

    def _detail(self, item_id: str, found: FoundItem, epoch: float | None, now: float) -> Detail:
        daily = int(float(found.daily_net)) if found.daily_net is not None else None
        trending = display("trending", float(found.trend), epoch, now, self.half_life)
        item_type = cast(ItemType, found.item_type)
        return Detail(
            item_id=item_id,
            item_type=item_type,
            title=found.title,
            up=found.up,
            down=found.down,
            net=found.up - found.down,
            confidence=float(found.confidence),
            trending=trending,
            rank_top=found.rank_top,
            rank_trending=found.rank_trending,
            rank_daily=found.rank_daily,
            daily_net=daily,
            independent=found.independent,
            owners=found.owners,
            rank_independent=found.rank_independent,
        )

    async def _call(self, script: AsyncScript, generation: int, args: msgspec.Struct) -> bytes:
        keys = [namespace(self.prefix, generation)]
        return cast(bytes, await script(keys=keys, args=[_encoder.encode(args)]))

    async def position(self, generation: int) -> tuple[int, bool]:
        """The watermark of a generation and whether it is live (caught up at least once)."""
        key = meta_key(self.prefix, generation)
        watermark, live, head = await self.client.hmget(key, ["watermark", "live", "head"])
        self._saw_head(head)
        return int(watermark or 0), live == b"1"

    def _saw_head(self, head: str | bytes | None) -> None:
        """A missing head (a projector that does not write one yet) leaves it unknown."""
        if head:
            self.head = max(self.head, int(head))


def _owners(own: list[str]) -> list[OwnerRow]:
    """The owners voting on an item from its owner hash (`v:<owner>` value, `a:<owner>` agents
    voting; projections.independent_redis), those with no agent voting left out."""
    values: dict[str, int] = {}
    active: dict[str, int] = {}
    for name, raw in zip(own[::2], own[1::2], strict=True):
        kind, _, owner = name.partition(":")
        (values if kind == "v" else active)[owner] = int(raw)
    return [OwnerRow(o, values.get(o, 0), n) for o, n in active.items() if n > 0]


def _check_live(live: bool) -> None:
    if not live:
        raise NotReady("the Redis read models are not caught up")
