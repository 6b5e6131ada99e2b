"""The Redis read models: their keys, their scripts, and every operation on them.

Every key under a prefix shares one hash tag, `{<prefix>}` (projections.redis_keys), so any
script may touch any of them and Redis Cluster keeps them in one slot. One generation's keys:

  {p}:gN:meta                  hash: checkpoint, watermark, fence, trending epoch, live, and
                               `head`: the ledger head (last position drawn) the worker last saw
  {p}:gN:item:<item_id>        hash: item_type, title, up, down, net
  {p}:gN:top:<type>            zset: net score
  {p}:gN:conf:<type>           zset: Wilson lower bound
  {p}:gN:trend:<type>          zset: trending sum relative to the epoch
  {p}:gN:daily:<type>:<date>   zset: net gained that UTC day (expires after the kept days)
  {p}:gN:daily:<type>:<date>:trend  zset: the day's trending weights relative to the end of
                               the day (projections.model.day_reference; expires with the day);
                               the item hash's `first_day` is its first vote's UTC day, and the
                               meta field `day_trend` says the generation kept them from the start
  {p}:gN:changes               stream (capped) and pub/sub channel of change notices
  {p}:gN:pending               hash: changed items waiting for the watermark to move
  (and the independent chart's keys: projections.independent_redis)

The pointer `{<prefix>}:generation` and the owner `{<prefix>}:ledger` (the id of the ledger these
read models are of: another ledger's are cleared, never projected onto) belong to
projections.generations.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import get_args

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from events.store import Checkpoint
from events.types import ItemType
from infra import scripts
from projections import generations, independent_redis, redis_dump, redis_keys
from projections.independent_redis import OwnerChange
from projections.model import Changes, DayTotals, keep_above, rescale_factor
from projections.readmodel import Broken, Coverage, Dump, Fenced, State, Step, advanced
from projections.redis_dump import DumpArgs

log = logging.getLogger("voteledger.projections")


def namespace(prefix: str, generation: int) -> str:
    """What every key of one generation starts with (the prefix's hash tag first)."""
    return redis_keys.namespace(prefix, generation)


def meta_key(prefix: str, generation: int) -> str:
    return f"{namespace(prefix, generation)}:meta"


def changes_key(prefix: str, generation: int) -> str:
    """The capped stream of change notices, and the pub/sub channel of the watermark."""
    return f"{namespace(prefix, generation)}:changes"


class ChangedItem(msgspec.Struct, frozen=True):
    """One item in a change notice: its absolute values after the change."""

    item_id: str
    item_type: str
    up: int
    down: int
    net: int
    trend: str  # the stored trending sum, relative to the notice's epoch


_changes_decoder = msgspec.json.Decoder(list[ChangedItem])


def decode_changes(raw: bytes) -> list[ChangedItem]:
    """The `items` field of a change notice."""
    return _changes_decoder.decode(raw)


# --- the scripts' contracts ----------------------------------------------------------------------


class ItemChange(msgspec.Struct, frozen=True, omit_defaults=True):
    item_id: str
    item_type: str
    up: int
    down: int
    trend: str  # repr of a double: Lua would print it with 14 digits
    title: str | None = None  # only when the batch listed the item
    owners: list[OwnerChange] = []  # what the batch adds per owner of the item's voters
    first_day: str | None = None  # the UTC day of the batch's first vote on the item


class DayChange(msgspec.Struct, frozen=True):
    day: str
    item_type: str
    item_id: str
    net: int
    expire_at: int
    trend: str = "0.0"  # repr of the day's trending weights (projections.model.DayTotals)


class ApplyArgs(msgspec.Struct, frozen=True):
    """apply.lua's input. Positions and transaction ids are strings: Lua's numbers are doubles."""

    from_tx: str
    from_pos: str
    to_tx: str
    to_pos: str
    watermark: str
    fence: int
    epoch: str
    factor: str
    keep: str  # stored sums below this become 0 when rescaled (projections.model.keep_above)
    head: str
    events: int
    last_event_at: str
    stream_max: int
    live: bool
    item_types: list[str]
    items: list[ItemChange]
    days: list[DayChange]


class ApplyResult(msgspec.Struct, frozen=True):
    applied: bool
    reason: str = ""
    broken: bool = False  # an earlier batch failed halfway: nothing applies until a rebuild


_apply_result = msgspec.json.Decoder(ApplyResult)
_ITEM_TYPES: list[str] = list(get_args(ItemType))
_DAY_TREND = "day_trend"  # meta: the generation has kept per-day trending sums from its start


def _daily_expiry(day: date, retention_days: int) -> int:
    """When a daily list expires: the kept days after the end of its day (in seconds, so that a
    day near the end of year 9999 cannot overflow a datetime)."""
    start = datetime.combine(day, datetime.min.time(), UTC)
    return int(start.timestamp()) + (retention_days + 1) * 86400


class RedisStore:
    """The Redis read models of one key prefix, every generation of them."""

    name = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        retention_days: int,
        stream_max: int,
        fallback: Callable[[], Awaitable[int]],
        ledger: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention_days = retention_days
        self.stream_max = stream_max
        self.fallback = fallback  # the generation to use while Redis has no pointer
        self.ledger = ledger  # the id of the ledger projected here (None: not checked)
        self._apply = scripts.load(client, "projections", "apply.lua")
        self._dump = scripts.load(client, "projections", "dump.lua")
        self._switch = scripts.load(client, "projections", "switch.lua")

    async def live(self) -> int:
        return await generations.redis(self.client, self.prefix, self.fallback)

    async def generations(self) -> list[int]:
        pattern, exact = redis_keys.metas(self.prefix)
        found = set()
        async for key in self.client.scan_iter(match=pattern, count=1000):
            if meta := exact.fullmatch(key.decode(errors="replace")):
                found.add(int(meta[1]))
        return sorted(found)

    async def checkpoint(self, generation: int) -> State | None:
        meta = await self.client.hgetall(meta_key(self.prefix, generation))
        if not meta:
            return None
        epoch, last = meta.get(b"epoch"), meta.get(b"last_event_at")
        return State(
            Checkpoint(int(meta[b"tx_id"]), int(meta[b"position"])),
            int(meta[b"watermark"]),
            float(epoch) if epoch else None,
            int(meta.get(b"events_applied", 0)),
            _when(last),
            int(meta.get(b"head", 0)),
        )

    async def _adopt(self) -> None:
        """Make the read models under the prefix this ledger's, clearing another ledger's."""
        if self.ledger is not None:
            other = await generations.adopt_redis(self.client, self.prefix, await self.ledger())
            if other:
                log.warning("redis %r held ledger %s: cleared, rebuilding", self.prefix, other)

    async def start(self, generation: int) -> State:
        await self._adopt()
        # First start (or a flushed Redis): readers learn the generation from the pointer.
        await generations.claim_redis(self.client, self.prefix, generation)
        state = await self.checkpoint(generation)
        meta = meta_key(self.prefix, generation)
        why = "missing"
        if state is not None:
            if await independent_redis.outdated(self.client, meta):
                why = "without the independent chart"
            elif not await self.client.hexists(meta, _DAY_TREND):
                why = "without per-day trending sums"
            else:
                return state
        # No checkpoint means Redis lost this generation (flushed, or restarted without
        # persistence): rebuild it from the start of the ledger, never from "now". So is one
        # made before the independent chart (projections.independent_redis) or the per-day
        # trending sums, once.
        await self.drop(generation)
        log.warning("redis read models of generation %d %s: rebuilding", generation, why)
        return State()

    async def apply(
        self, generation: int, state: State, step: Step, fence: int, half_life: float
    ) -> State:
        args = self._apply_args(state, step, fence, half_life)
        raw = await self._apply(keys=[namespace(self.prefix, generation)], args=[_encode(args)])
        result = _apply_result.decode(raw)
        if result.broken:
            raise Broken(result.reason)
        if not result.applied:
            raise Fenced(f"redis refused the batch: {result.reason}")
        return advanced(state, step)

    def _apply_args(self, state: State, step: Step, fence: int, half_life: float) -> ApplyArgs:
        changes = step.changes
        epoch = changes.epoch if changes.epoch is not None else state.epoch
        factor = 1.0
        if state.epoch is not None and epoch is not None and epoch != state.epoch:
            factor = rescale_factor(state.epoch, epoch, half_life)
        keep, head = repr(keep_above(factor)), str(max(state.head, step.head))
        owners = independent_redis.owner_changes(changes)
        return ApplyArgs(
            from_tx=str(state.checkpoint.tx_id),
            from_pos=str(state.checkpoint.position),
            to_tx=str(step.checkpoint.tx_id),
            to_pos=str(step.checkpoint.position),
            watermark=str(step.watermark),
            fence=fence,
            epoch=repr(epoch) if epoch is not None else "",
            factor=repr(factor),
            keep=keep,
            head=head,
            events=step.events,
            last_event_at=step.last_event_at.isoformat() if step.last_event_at else "",
            stream_max=self.stream_max,
            live=step.caught_up,
            item_types=_ITEM_TYPES,
            items=[
                ItemChange(
                    i,
                    t.item_type,
                    t.up,
                    t.down,
                    repr(t.trend),
                    t.title,
                    owners.get(i, []),
                    first_day=_first_day(t.first_vote_at),
                )
                for i, t in changes.items.items()
            ],
            days=self._day_changes(changes),
        )

    def _day_changes(self, changes: Changes) -> list[DayChange]:
        today = datetime.now(UTC).date()
        oldest_kept = today - timedelta(days=self.retention_days)
        newest_kept = today + timedelta(days=1)
        return [
            DayChange(
                day.isoformat(), t.item_type, item_id, t.net, self._expiry(day), repr(t.trend)
            )
            for (day, item_id), t in changes.days.items()
            # Redis keeps only the recent days (not a day of an event dated in the future, which
            # no reader asks for); PostgreSQL keeps them all.
            if oldest_kept <= day <= newest_kept
        ]

    def _expiry(self, day: date) -> int:
        return _daily_expiry(day, self.retention_days)

    async def write(self, generation: int, model: Changes, state: State) -> None:
        """The same keys and values the incremental script produces, in pipelined chunks."""
        await self._adopt()
        await self.drop(generation)
        pipe = self.client.pipeline(transaction=False)
        queued = self._queue_writes(pipe, namespace(self.prefix, generation), model, state)
        for n, _ in enumerate(queued, start=1):
            if n % 4000 == 0:
                await pipe.execute()
        await pipe.execute()

    def _queue_writes(
        self, pipe: Pipeline, ns: str, model: Changes, state: State
    ) -> Iterator[object]:
        """Queue the writes on `pipe`, one command a step (many members per ZADD)."""
        zsets: dict[str, dict[str, float]] = {}
        expiry: dict[str, int] = {}
        for item_id, t in model.items.items():
            fields: dict[str, str | int] = {"item_type": t.item_type, "up": t.up, "down": t.down}
            fields["net"] = t.net
            if t.title is not None:
                fields["title"] = t.title
            if t.first_vote_at is not None:
                fields["first_day"] = t.first_vote_at.astimezone(UTC).date().isoformat()
            yield pipe.hset(f"{ns}:item:{item_id}", mapping=fields)  # type: ignore[arg-type]
            zsets.setdefault(f"{ns}:top:{t.item_type}", {})[item_id] = t.net
            zsets.setdefault(f"{ns}:conf:{t.item_type}", {})[item_id] = t.wilson
            zsets.setdefault(f"{ns}:trend:{t.item_type}", {})[item_id] = t.trend
        for day in self._day_changes(model):
            key = f"{ns}:daily:{day.item_type}:{day.day}"
            zsets.setdefault(key, {})[day.item_id] = day.net
            zsets.setdefault(f"{key}:trend", {})[day.item_id] = float(day.trend)
            expiry[key] = expiry[f"{key}:trend"] = day.expire_at
        for key, members in zsets.items():
            yield from independent_redis.queue_zadd(pipe, key, members)
            if key in expiry:
                yield pipe.expireat(key, expiry[key])
        yield from independent_redis.queue_writes(pipe, ns, model)
        yield pipe.hset(f"{ns}:meta", mapping=_meta(state))  # type: ignore[arg-type]

    async def dump(self, generation: int) -> Dump:
        """One atomic script, so the projector cannot move in between. Daily lists hold the net
        only (in `up`) and only for the kept days; items keep no vote times."""
        today = datetime.now(UTC).date()
        days = range(-1, self.retention_days + 1)
        args = DumpArgs(_ITEM_TYPES, [(today - timedelta(days=n)).isoformat() for n in days])
        ns = namespace(self.prefix, generation)
        reply = redis_dump.decode(await self._dump(keys=[ns], args=[_encode(args)]))
        model = Changes(epoch=float(reply.meta["epoch"]) if reply.meta.get("epoch") else None)
        broken = [d for item in reply.items for d in redis_dump.read_item(model, item)]
        for day in reply.days:
            for member, score in zip(day.scores[::2], day.scores[1::2], strict=True):
                totals = DayTotals(day.item_type, int(float(score)), 0)
                model.days[(date.fromisoformat(day.day), member)] = totals
            for member, trend in zip(day.trends[::2], day.trends[1::2], strict=True):
                key = (date.fromisoformat(day.day), member)
                model.days.setdefault(key, DayTotals(day.item_type)).trend = float(trend)
        oldest = today - timedelta(days=self.retention_days)
        tomorrow = today + timedelta(days=1)
        coverage = Coverage(oldest, tomorrow, daily_net_only=True, item_times=False)
        return Dump(model, broken, _meta_state(reply.meta, model.epoch), coverage)

    async def switch(self, old: int, new: int) -> bool:
        keys = [generations.redis_key(self.prefix)]
        keys += [meta_key(self.prefix, old), meta_key(self.prefix, new)]
        return bool(await self._switch(keys=keys, args=[new]))

    async def drop(self, generation: int) -> None:
        batch: list[bytes] = []
        pattern = redis_keys.generation_keys(self.prefix, generation)
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.client.unlink(*batch)
                batch = []
        if batch:
            await self.client.unlink(*batch)


def _when(raw: bytes | str | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else raw)


def _encode(value: object) -> bytes:
    return msgspec.json.encode(value)


def _meta(state: State) -> dict[str, str | int]:
    c = state.checkpoint
    meta: dict[str, str | int] = {"tx_id": c.tx_id, "position": c.position, "fence": 0}
    meta["watermark"] = state.watermark
    meta["epoch"] = repr(state.epoch) if state.epoch is not None else ""
    meta["events_applied"] = state.events_applied
    meta["head"], meta[independent_redis.MARKER] = state.head, 1
    meta[_DAY_TREND] = 1
    return meta


def _first_day(at: datetime | None) -> str | None:
    return at.astimezone(UTC).date().isoformat() if at is not None else None


def _meta_state(meta: dict[str, str], epoch: float | None) -> State:
    checkpoint = Checkpoint(int(meta.get("tx_id", 0)), int(meta.get("position", 0)))
    applied, head = int(meta.get("events_applied", 0)), int(meta.get("head", 0))
    return State(checkpoint, int(meta.get("watermark", 0)), epoch, applied, head=head)
