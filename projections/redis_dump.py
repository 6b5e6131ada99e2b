"""The Redis read models as verify sees them: dump.lua's input and reply, read back into a
read model with the scores that disagree with their own item's hash."""

from __future__ import annotations

import math

import msgspec

from projections import independent_redis
from projections.model import Changes, ItemTotals
from projections.readmodel import Difference


class DumpArgs(msgspec.Struct, frozen=True):
    item_types: list[str]
    dates: list[str]


class DumpedItem(msgspec.Struct, frozen=True):
    item_id: str
    top: str
    up: str = "0"
    down: str = "0"
    net: str = "0"
    item_type: str | None = None
    title: str | None = None
    conf: str | None = None
    trend: str | None = None
    independent: str = "0"
    owners: str = "0"
    indep: str | None = None
    own: list[str] = []


class DumpedDay(msgspec.Struct, frozen=True):
    day: str
    item_type: str
    scores: list[str] = []  # member, score, member, score, ...
    trends: list[str] = []  # the same for the day's trending weights


class DumpReply(msgspec.Struct, frozen=True):
    meta: dict[str, str]
    items: list[DumpedItem] = []
    days: list[DumpedDay] = []


_dump_reply = msgspec.json.Decoder(DumpReply)


def decode(raw: bytes) -> DumpReply:
    return _dump_reply.decode(raw)


def read_item(model: Changes, item: DumpedItem) -> list[Difference]:
    """Add one dumped item to `model`; its sorted-set scores that disagree with its hash."""
    totals = ItemTotals(item.item_type or "?", item.title, up=int(item.up), down=int(item.down))
    totals.trend = float(item.trend) if item.trend is not None else math.nan
    model.items[item.item_id] = totals
    key, net, broken = f"item {item.item_id}", totals.net, []
    if int(item.net) != net:
        broken.append(Difference("redis", key, "net", net, int(item.net)))
    if float(item.top) != net:
        broken.append(Difference("redis", key, "top score", net, float(item.top)))
    if item.conf is None or float(item.conf) != totals.wilson:
        broken.append(Difference("redis", key, "confidence score", totals.wilson, item.conf))
    stored = (item.independent, item.owners, item.indep)
    return broken + independent_redis.read_item(model, item.item_id, totals, stored, item.own)
