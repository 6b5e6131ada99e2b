"""The independent chart in the Redis read models.

One generation's keys for it (beside those projections.redis_store lists):

  {p}:gN:item:<item_id>        hash fields `independent` (the sum of the owners' signs) and
                               `owners` (how many owners have an agent's vote on the item)
  {p}:gN:indep:<type>          zset: independent score
  {p}:gN:own:<item_id>         hash: per owner `v:<owner>` (the sum of its agents' vote values)
                               and `a:<owner>` (how many of them vote up or down)
  {p}:gN:meta                  field `independent`: the generation holds all of the above

apply.lua adds a batch's per-(item, owner) totals and moves the item's two values by what each
touched owner changed, in the same script as the rest. A generation made before the independent
chart has no `independent` field in its meta: the script refuses it, and the worker starting on
it drops it and projects it again from the start of the ledger (readers use PostgreSQL until it
has caught up), as for a generation Redis lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from projections.model import Changes, ItemTotals, OwnerTotals, standings
from projections.readmodel import Difference

MARKER = "independent"


class OwnerChange(msgspec.Struct, frozen=True, array_like=True):
    """What a batch adds to one (item, owner): [owner, value, active] in apply.lua's input."""

    owner: str
    value: int
    active: int


def owner_changes(changes: Changes) -> dict[str, list[OwnerChange]]:
    """A batch's per-(item, owner) totals, by item."""
    by_item: dict[str, list[OwnerChange]] = {}
    for (item_id, owner), t in changes.owners.items():
        by_item.setdefault(item_id, []).append(OwnerChange(owner, t.value, t.active))
    return by_item


async def outdated(client: aioredis.Redis, meta_key: str) -> bool:
    """Whether a generation was made before the independent chart (it has a checkpoint, but not
    the marker)."""
    tx_id, marker = await client.hmget(meta_key, ["tx_id", MARKER])
    return tx_id is not None and marker is None


def queue_writes(pipe: Pipeline, ns: str, model: Changes) -> Iterator[object]:
    """Queue a whole model's independent data on `pipe` (a rebuild's bulk write), one command a
    step, the same keys and values apply.lua gives: each item's owners in one HSET, the sorted
    sets in commands of many members."""
    scores = standings(model.owners)
    charts: dict[str, dict[str, float]] = {}
    for item_id, t in model.items.items():
        independent, count = scores.get(item_id, (0, 0))
        fields = {"independent": independent, "owners": count}
        yield pipe.hset(f"{ns}:item:{item_id}", mapping=fields)  # type: ignore[arg-type]
        charts.setdefault(f"{ns}:indep:{t.item_type}", {})[item_id] = independent
    for key, members in charts.items():
        yield from queue_zadd(pipe, key, members)
    owned: dict[str, dict[str, int]] = {}
    for (item_id, owner), o in model.owners.items():
        mine = owned.setdefault(item_id, {})
        mine[f"v:{owner}"], mine[f"a:{owner}"] = o.value, o.active
    for item_id, mine in owned.items():
        yield pipe.hset(f"{ns}:own:{item_id}", mapping=mine)  # type: ignore[arg-type]


_ZADD_CHUNK = 1000  # members per ZADD of a bulk write


def queue_zadd(pipe: Pipeline, key: str, members: dict[str, float]) -> Iterator[object]:
    """ZADD `members` to `key` in commands of at most _ZADD_CHUNK members, one a step."""
    chunk: dict[str, float] = {}
    for member, score in members.items():
        chunk[member] = score
        if len(chunk) >= _ZADD_CHUNK:
            yield pipe.zadd(key, chunk)
            chunk = {}
    if chunk:
        yield pipe.zadd(key, chunk)


def read_item(
    model: Changes,
    item_id: str,
    totals: ItemTotals,
    stored: tuple[str, str, str | None],
    own: list[str],
) -> list[Difference]:
    """Add one dumped item's independent data to `model`: `stored` is its hash's independent
    and owners and its independent score, `own` its per-owner hash (field, value, ...). Returns
    what disagrees with its own per-owner totals."""
    mine: dict[tuple[str, str], OwnerTotals] = {}
    for field, value in zip(own[::2], own[1::2], strict=True):
        kind, _, owner = field.partition(":")
        owner_totals = mine.setdefault((item_id, owner), OwnerTotals())
        if kind == "v":
            owner_totals.value = int(value)
        else:
            owner_totals.active = int(value)
    model.owners.update(mine)
    independent, count = standings(mine).get(item_id, (0, 0))
    totals.independent, totals.owners = int(stored[0]), int(stored[1])
    key, broken = f"item {item_id}", []
    if totals.independent != independent:
        broken.append(Difference("redis", key, "independent", independent, totals.independent))
    if totals.owners != count:
        broken.append(Difference("redis", key, "owners", count, totals.owners))
    if stored[2] is None or float(stored[2]) != totals.independent:
        broken.append(Difference("redis", key, "independent score", independent, stored[2]))
    return broken
