"""Where each projection stands: generation, checkpoint, lag against the ledger head, lease, and
whether it is stalled (projections.health): at an event it cannot fold, as its worker reported,
or because the head moved past its watermark and the watermark has not moved for a while (which
needs no live worker to tell)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from redis.exceptions import RedisError

from events import store
from infra.settings import Settings
from projections import health, lease
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
    stalled: dict[str, object] | None = None  # position, reason (and since) when stalled
    progress_age_seconds: float | None = None  # since the watermark last moved, as reported


@dataclass(frozen=True, slots=True)
class Status:
    projections: list[ProjectionStatus]
    oldest_open_transaction_seconds: float
    unreachable: dict[str, str]  # store name -> why it could not be read

    @property
    def stalled(self) -> bool:
        return any(p.stalled for p in self.projections)


def _stalled(
    reported: health.Reported | None, watermark: int | None, head: int
) -> tuple[dict[str, object] | None, float | None]:
    """Whether a projection is stalled, and the age of its last progress (None: unknown)."""
    if reported is None:
        return None, None
    age = None
    if reported.progress_at is not None:
        age = max(0.0, (datetime.now(UTC) - reported.progress_at).total_seconds())
    if reported.stall is not None:
        s = reported.stall
        since = s.since.isoformat() if s.since else None
        return {"position": s.position, "reason": s.reason, "since": since}, age
    if watermark is not None and head > watermark and age and age > health.NO_PROGRESS_SECONDS:
        reason = f"no progress for {age:.0f} s while the head is at {head}"
        return {"position": watermark, "reason": reason, "since": None}, age
    return None, age


def _row(
    name: str,
    generation: int | None,
    state: State | None,
    head: int,
    held: lease.Holder,
    reported: health.Reported | None,
) -> ProjectionStatus:
    lag = None if state is None else max(0, head - state.watermark)
    last = state.last_event_at if state else None
    since = held.since.isoformat() if held.since else None
    stalled, age = _stalled(reported, state.watermark if state else None, head)
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
        stalled,
        age,
    )


async def status(settings: Settings) -> Status:
    """Read every projection's state (a store that cannot be reached is listed as such)."""
    async with contextlib.AsyncExitStack() as stack:
        conn = await connect(stack, settings.database_url)
        head, holders = await store.head(conn), await lease.holders(conn)
        reported = await health.reported(conn)
        rows, unreachable = [], {}
        for name in NAMES:
            generation, state = None, None
            try:
                url = settings.database_url
                target = await open_store(name, settings, stack, url, redis_timeout=3)
                generation = await target.live()
                state = await target.checkpoint(generation) or State()
            except (RedisError, OSError, psycopg.OperationalError) as exc:
                unreachable[name] = str(exc)
            held = holders.get(name, lease.Holder())
            rows.append(_row(name, generation, state, head, held, reported.get(name)))
        return Status(rows, await store.oldest_open_transaction(conn), unreachable)
