"""The live stream: score changes from the projector's capped change stream in Redis, for the SSE
and WebSocket routes, and where a resuming client carries on (or is told to reload).

One task per process reads the stream (`StreamHub`, XREAD BLOCK on one connection) and fans each
notice out to every client through a bounded queue of its own, so clients cost no Redis
connection each; their number is capped (`VOTELEDGER_STREAM_CLIENTS_MAX`). A client that goes
away only leaves the hub's set; the last one to leave stops the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from infra.metrics import STREAM_CLIENTS
from infra.problems import Problem
from projections.model import decayed
from projections.redis_store import changes_key, decode_changes
from queries.shapes import is_unavailable, raise_unless_unavailable
from queries.side import ReadSide

log = logging.getLogger("voteledger.queries")

Change = tuple[str, int, Any]  # ("scores" | "reset", position, data)

_UNAVAILABLE = "live changes are unavailable"
_END: Change = ("end", 0, None)  # the hub can no longer read: the client's stream ends
_QUEUE = 256  # notices a client may fall behind by before it is told to reload
_CHUNK = 200  # notices read per XRANGE when a client resumes
_BLOCK_MS = 5000
_RETRY_AFTER = "5"


class StreamFull(Problem):
    """This process already serves as many live clients as it may."""

    def __init__(self, cap: int) -> None:
        super().__init__(
            503,
            f"this server already streams to {cap} clients; retry later",
            slug="too-many-clients",
            headers={"Retry-After": _RETRY_AFTER},
        )


class Listener:
    """One client's bounded queue of notices, and the item type it wants (None: all)."""

    def __init__(self, item_type: str | None) -> None:
        self.item_type = item_type
        self.queue: asyncio.Queue[Change] = asyncio.Queue(_QUEUE)

    def offer(self, change: Change) -> None:
        """Queue a notice; a client too slow to keep up is told to reload instead: the hub
        never waits for one client."""
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("reset", change[1], {"reason": "missed changes; reload"}))


class StreamHub:
    """One reader of the change stream per process, fanning out to every listener."""

    def __init__(self, side: ReadSide, max_clients: int) -> None:
        self.side = side
        self.max_clients = max_clients
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self, item_type: str | None) -> AsyncIterator[Listener]:
        """A listener for one client, for as long as it is connected; StreamFull past the cap."""
        if len(self.listeners) >= self.max_clients:
            raise StreamFull(self.max_clients)
        listener = Listener(item_type)
        self.listeners.add(listener)
        STREAM_CLIENTS.inc()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            yield listener
        finally:
            self.listeners.discard(listener)
            STREAM_CLIENTS.dec()
            if not self.listeners and self._task is not None:
                self._task.cancel()  # no XREAD is left waiting for nobody

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._broadcast(_END)  # every client's stream ends, instead of waiting for ever

    async def _run(self) -> None:
        side = self.side
        generation, start = side.redis_generation, "$"
        try:
            while self.listeners:
                if side.redis_generation != generation:
                    self._broadcast(_reset(side, "the rankings were rebuilt; reload"))
                    generation, start = side.redis_generation, "$"
                key = _key(side, generation)
                replies: Any = await side.blocking.xread({key: start}, count=100, block=_BLOCK_MS)
                for _, entries in replies or []:
                    for entry_id, fields in entries:
                        start = entry_id
                        change = _scores(fields, side.settings.trending_half_life_seconds)
                        side.moved(change[1])  # so a client resuming from it is not "ahead"
                        self._broadcast(change)
        except Exception as exc:
            if not is_unavailable(exc):
                log.exception("reading the change stream failed")
            self._broadcast(_reset(side, _UNAVAILABLE))
            self._broadcast(_END)

    def _broadcast(self, change: Change) -> None:
        for listener in list(self.listeners):
            listener.offer(change)


async def change_events(
    side: ReadSide, listener: Listener, last_event_id: int | None
) -> AsyncIterator[Change]:
    """("scores" | "reset", position, data) for one client: what it missed, then live notices.

    A client that resumes from a position the stream no longer covers (trimmed, another
    generation, Redis emptied), or from one beyond any position served, gets a "reset": reload,
    then carry on from its id. Each notice has its own position (the projector coalesces changes
    until the watermark moves) and carries absolute values; one missed never goes unannounced.
    The listener is subscribed before the backlog is read, so nothing falls between the two.
    """
    sent = 0  # the position the client is known to have: live notices up to it are skipped
    if last_event_id is not None:
        sent = last_event_id
        try:
            async for change in _missed(side, last_event_id):
                # After a reset the client reloads what Redis reflects, whatever it had before.
                sent = change[1] if change[0] == "reset" else max(sent, change[1])
                if (shown := _only(change, listener.item_type)) is not None:
                    yield shown
        except Exception as exc:
            raise_unless_unavailable(exc)
            yield _reset(side, _UNAVAILABLE)
            return
    while (change := await listener.queue.get()) is not _END:
        if change[0] == "scores" and change[1] <= sent:
            continue  # already sent from the backlog
        if (shown := _only(change, listener.item_type)) is not None:
            yield shown


async def _missed(side: ReadSide, last_event_id: int) -> AsyncIterator[Change]:
    """The notices after `last_event_id`, or one reset when they cannot all be given."""
    key = _key(side, side.redis_generation)
    after = None
    if last_event_id <= max(side.redis_position, side.head):
        after = await _resume_from(side.client, key, last_event_id)
    if after is None:
        yield _reset(side, "missed changes; reload")
        return
    start = f"({after}"
    while True:
        chunk: Any = await side.client.xrange(key, min=start, max="+", count=_CHUNK)
        for entry_id, fields in chunk:
            start = f"({entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"
            yield _scores(fields, side.settings.trending_half_life_seconds)
        if len(chunk) < _CHUNK:
            return


def _key(side: ReadSide, generation: int) -> str:
    return changes_key(side.settings.redis_prefix, generation)


def _reset(side: ReadSide, reason: str) -> Change:
    """Tell the client to reload."""
    return "reset", side.redis_position, {"reason": reason}


def _only(change: Change, item_type: str | None) -> Change | None:
    """The change as a client of `item_type` sees it (all types when None); None if nothing."""
    kind, position, data = change
    if kind != "scores" or item_type is None:
        return change
    items = [item for item in data["items"] if item["item_type"] == item_type]
    return (kind, position, {"position": position, "items": items}) if items else None


def _scores(fields: dict[bytes, bytes], half_life: float) -> Change:
    """A notice's changes, trending decayed to now: decoded once, for every client."""
    position = int(fields[b"position"])
    epoch = float(fields[b"epoch"]) if fields.get(b"epoch") else None
    now = time.time()
    items = [
        {
            "item_id": c.item_id,
            "item_type": c.item_type,
            "up": c.up,
            "down": c.down,
            "net": c.net,
            "trending": decayed(float(c.trend), epoch or now, now, half_life),
        }
        for c in decode_changes(fields[b"items"])
    ]
    return "scores", position, {"position": position, "items": items}


async def _resume_from(client: aioredis.Redis, key: str, last_event_id: int) -> str | None:
    """The stream id to read after, or None when the client has missed trimmed notices."""
    after = f"{last_event_id}-0"  # one notice per position: carry on right after it
    try:
        info = await client.xinfo_stream(key)
    except aioredis.ResponseError:
        return None if last_event_id > 0 else after  # no stream (yet), or Redis was emptied
    if info["entries-added"] > info["length"]:  # the capped stream has dropped notices
        first = info.get("first-entry")
        oldest = _stream_id(first[0]) if first else _stream_id(info["last-generated-id"])
        # Everything after the client's position must still be there: (W, 0) onwards.
        if oldest > (last_event_id, 0):
            return None
    return after


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)
