"""The live stream: score changes from the projector's capped change stream in Redis, for the SSE
and WebSocket routes, and where a resuming client carries on (or is told to reload).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from projections.model import decayed
from projections.redis_store import changes_key, decode_changes
from queries.shapes import raise_unless_unavailable
from queries.side import ReadSide

Change = tuple[str, int, Any]  # ("scores" | "reset", position, data)

_UNAVAILABLE = "live changes are unavailable"


async def change_events(
    side: ReadSide, item_type: str | None, last_event_id: int | None
) -> AsyncIterator[Change]:
    """("scores" | "reset", position, data) from the projector's capped change stream.

    A client that resumes from a position the stream no longer covers (trimmed, another
    generation, Redis emptied) gets a "reset": reload, then carry on from its id. Each notice has
    its own position (the projector coalesces changes until the watermark moves) and carries
    absolute values; one missed never goes unannounced.
    """
    client, generation = side.blocking, side.redis_generation
    try:
        start = await _resume_from(client, _key(side, generation), last_event_id)
    except Exception as exc:
        raise_unless_unavailable(exc)
        yield _reset(side, _UNAVAILABLE)
        return
    if start is None:
        yield _reset(side, "missed changes; reload")
        start = "$"
    while True:
        if side.redis_generation != generation:
            yield _reset(side, "the rankings were rebuilt; reload")
            generation, start = side.redis_generation, "$"
        try:
            replies: Any = await client.xread(
                {_key(side, generation): start}, count=100, block=5000
            )
        except Exception as exc:
            raise_unless_unavailable(exc)
            yield _reset(side, _UNAVAILABLE)
            return
        for _, entries in replies:
            for entry_id, fields in entries:
                start = entry_id
                change = _scores(fields, item_type, side.settings.trending_half_life_seconds)
                if change is not None:
                    yield change


def _key(side: ReadSide, generation: int) -> str:
    return changes_key(side.settings.redis_prefix, generation)


def _reset(side: ReadSide, reason: str) -> Change:
    """Tell the client to reload."""
    return "reset", side.redis_position, {"reason": reason}


def _scores(fields: dict[bytes, bytes], item_type: str | None, half_life: float) -> Change | None:
    """A notice's changes of `item_type` (all when None), trending decayed to now; None if none."""
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
        if item_type is None or c.item_type == item_type
    ]
    if not items:
        return None
    return "scores", position, {"position": position, "items": items}


async def _resume_from(client: aioredis.Redis, key: str, last_event_id: int | None) -> str | None:
    """The stream id to read after, or None when the client has missed trimmed notices."""
    if last_event_id is None:
        return "$"
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
