"""Where each projection stands: generation, checkpoint, lag against the ledger head, lease."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.exceptions import RedisError

from events import store
from infra.settings import Settings
from projections import lease
from projections.readmodel import State
from projections.stores import NAMES, connect, open_store


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    projection: str
    generation: int | None
    checkpoint_tx_id: str | None
    checkpoint_position: int | None
    watermark: int | None
    ledger_head: int
    lag_events: int | None
    events_applied: int | None
    lag_seconds: float
    lease_holder: str | None
    lease_fence: int
    lease_since: str | None


@dataclass(frozen=True, slots=True)
class Status:
    projections: list[ProjectionStatus]
    oldest_open_transaction_seconds: float
    unreachable: dict[str, str]  # store name -> why it could not be read


def _row(
    name: str, generation: int | None, state: State | None, head: int, held: lease.Holder
) -> ProjectionStatus:
    lag = None if state is None else max(0, head - state.watermark)
    last = state.last_event_at if state else None
    since = held.since.isoformat() if held.since else None
    return ProjectionStatus(
        name,
        generation,
        str(state.checkpoint.tx_id) if state else None,
        state.checkpoint.position if state else None,
        state.watermark if state else None,
        head,
        lag,
        state.events_applied if state else None,
        (datetime.now(UTC) - last).total_seconds() if lag and last else 0,
        held.holder,
        held.fence,
        since,
    )


async def status(settings: Settings) -> Status:
    """Read every projection's state (a store that cannot be reached is listed as such)."""
    async with contextlib.AsyncExitStack() as stack:
        conn = await connect(stack, settings.database_url)
        head, holders = await store.head(conn), await lease.holders(conn)
        rows, unreachable = [], {}
        for name in NAMES:
            generation, state = None, None
            try:
                url = settings.database_url
                target = await open_store(name, settings, stack, url, redis_timeout=3)
                generation = await target.live()
                state = await target.checkpoint(generation) or State()
            except (RedisError, OSError) as exc:
                unreachable[name] = str(exc)
            rows.append(_row(name, generation, state, head, holders.get(name, lease.Holder())))
        return Status(rows, await store.oldest_open_transaction(conn), unreachable)
