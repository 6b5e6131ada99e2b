"""Whether each projection is going on: stalls at an event it cannot fold, and progress against the
ledger head.

A projection that meets an event it cannot fold (it does not decode, or its store refuses the
values) stops just before it and says so, instead of crashing and restarting into the same event:
in the worker's memory (its /healthz and metrics), and in `projection_health`, where `voteledger
status` (another process) reads it. The worker also records the head it saw and when its
watermark last moved: a pipeline whose head has moved past a watermark that has not moved for a
while is stalled too, whatever the reason, even when the worker that measures the lag has died.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from infra import metrics as m

log = logging.getLogger("voteledger.projector")

NO_PROGRESS_SECONDS = 60.0  # the head moved past the watermark and it has not moved for this long
_WRITE_EVERY = 5.0  # how often progress is written (a stall is written at once)


@dataclass(frozen=True, slots=True)
class Stall:
    """Why a projection stands still: the event (position) it cannot go past, and why."""

    position: int
    reason: str
    since: datetime

    def __str__(self) -> str:
        return f"stalled at position {self.position}: {self.reason}"


@dataclass(slots=True)
class Progress:
    """One projection's health as its worker knows it."""

    stall: Stall | None = None
    head: int = 0
    watermark: int = 0
    moved_at: float = field(default_factory=time.time)  # when the watermark last moved

    def problem(self, now: float, threshold: float = NO_PROGRESS_SECONDS) -> str | None:
        """What is wrong, or None."""
        if self.stall is not None:
            return str(self.stall)
        idle = now - self.moved_at
        if self.head > self.watermark and idle > threshold:
            return (
                f"stalled at watermark {self.watermark}: no progress for {idle:.0f} s "
                f"while the head is at {self.head}"
            )
        return None


class Health:
    """The health of the projections this process runs (read by its /healthz)."""

    def __init__(self) -> None:
        self.projections: dict[str, Progress] = {}

    def of(self, name: str) -> Progress:
        return self.projections.setdefault(name, Progress())

    def problems(self, now: float | None = None) -> dict[str, str]:
        at = time.time() if now is None else now
        found = {name: p.problem(at) for name, p in self.projections.items()}
        return {name: why for name, why in found.items() if why}


HEALTH = Health()  # the worker process's own

_SAVE = """
INSERT INTO projection_health AS h (projection, stalled_position, reason, since, head_seen,
                                    watermark, progress_at, updated_at)
VALUES (%(name)s, %(position)s, %(reason)s, %(since)s, %(head)s, %(watermark)s, %(moved_at)s,
        now())
ON CONFLICT (projection) DO UPDATE SET
    stalled_position = excluded.stalled_position, reason = excluded.reason,
    since = excluded.since, head_seen = excluded.head_seen, watermark = excluded.watermark,
    progress_at = excluded.progress_at, updated_at = now()
"""


class Reporter:
    """What one projection's runner reports: in memory, in metrics and in `projection_health`."""

    def __init__(self, name: str, health: Health = HEALTH) -> None:
        self.name = name
        self.progress = health.of(name)
        self._written = 0.0

    async def stalled(self, conn: psycopg.AsyncConnection, position: int, reason: str) -> None:
        stall = self.progress.stall
        if stall is None or (stall.position, stall.reason) != (position, reason):
            log.error("%s: stalled at position %d: %s", self.name, position, reason)
            self.progress.stall = Stall(position, reason, datetime.now(UTC))
            await self._save(conn)
        m.PROJECTION_STALLED.labels(self.name).set(1)
        m.PROJECTION_STALLED_POSITION.labels(self.name).set(position)

    async def observed(self, conn: psycopg.AsyncConnection, head: int, watermark: int) -> None:
        """Take note of a read: the head it saw and the watermark after applying it."""
        progress, stall = self.progress, self.progress.stall
        if watermark != progress.watermark:
            progress.moved_at = time.time()
            m.PROJECTION_PROGRESS_AT.labels(self.name).set(progress.moved_at)
        progress.head, progress.watermark = max(progress.head, head), watermark
        if stall is not None:
            log.warning("%s: resumed past position %d", self.name, stall.position)
            progress.stall = None
            m.PROJECTION_STALLED.labels(self.name).set(0)
            m.PROJECTION_STALLED_POSITION.labels(self.name).set(0)
        if stall is not None or time.monotonic() - self._written >= _WRITE_EVERY:
            await self._save(conn)

    def stepped_down(self) -> None:
        """This worker no longer runs the projection (a standby again): what it last saw is not
        its health any more; the holder of the lease reports the projection's."""
        progress = self.progress
        progress.stall, progress.head, progress.watermark = None, 0, 0
        progress.moved_at = time.time()
        m.PROJECTION_STALLED.labels(self.name).set(0)
        m.PROJECTION_STALLED_POSITION.labels(self.name).set(0)

    async def _save(self, conn: psycopg.AsyncConnection) -> None:
        p, stall = self.progress, self.progress.stall
        moved_at = datetime.fromtimestamp(p.moved_at, UTC)
        params = {"name": self.name, "head": p.head, "watermark": p.watermark}
        params |= {"moved_at": moved_at, "position": stall.position if stall else None}
        params |= {"reason": stall.reason if stall else None}
        params |= {"since": stall.since if stall else None}
        await conn.execute(_SAVE, params)
        self._written = time.monotonic()


@dataclass(frozen=True, slots=True)
class Reported:
    """A projection's row of `projection_health`, as `voteledger status` reads it."""

    stall: Stall | None
    head_seen: int
    progress_at: datetime | None


_READ = """
SELECT projection, stalled_position, reason, since, head_seen, progress_at FROM projection_health
"""


async def reported(conn: psycopg.AsyncConnection) -> dict[str, Reported]:
    """What every projection's worker last reported."""
    found = {}
    for name, position, reason, since, head_seen, progress_at in await (
        await conn.execute(_READ)
    ).fetchall():
        stall = Stall(position, reason or "", since) if position is not None else None
        found[name] = Reported(stall, head_seen, progress_at)
    return found
