"""A worker told to stop (SIGTERM, as Kubernetes stops a pod) gives its leases up at once, and
the standby, queued for the lock rather than polling for it, holds them the moment it is free."""

from __future__ import annotations

import asyncio
import signal
import time

import psycopg

from infra.settings import Settings
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    populate,
    vote_load,
    wait_caught_up,
    worker_process,
)
from tests.integration.stall_support import eventually

_LEASES = "SELECT projection, fence, holder FROM projection_leases"
# Lease sessions queued for an advisory lock they do not hold yet.
_QUEUED = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name LIKE 'lease:%'
"""


async def _query(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        return await (await conn.execute(sql)).fetchall()


async def test_sigterm_hands_the_leases_to_the_queued_standby_at_once(isolated: Settings) -> None:
    async with command_pool(isolated) as pool:
        agents, items = await populate(pool, agents=10, items=20)
        with worker_process(isolated) as first, worker_process(isolated) as second:

            async def settled() -> dict[str, tuple[int, str]] | None:
                leases = {str(n): (int(f), str(h)) for n, f, h in await _query(isolated, _LEASES)}
                queued = (await _query(isolated, _QUEUED))[0][0]
                return leases if len(leases) == 2 and queued == 2 else None

            before = await eventually(settled, within=30)
            load = asyncio.create_task(vote_load(pool, agents, items, seconds=4, writers=4, seed=9))
            await asyncio.sleep(1.0)
            (holder,) = {int(h.rsplit(":", 1)[1]) for _, h in before.values()}
            active = first if first.pid == holder else second
            active.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            async def taken_over() -> bool:
                now = await _query(isolated, _LEASES)
                return all(int(fence) > before[str(name)][0] for name, fence, _ in now)  # type: ignore[call-overload]

            await eventually(taken_over, within=10)
            handover = time.monotonic() - signalled
            assert active.wait(timeout=10) == 0, "a stopped worker exits cleanly"
            # Before: up to a poll of the listener (1 s) plus a poll of the standby (0.5 s).
            assert handover < 1.0, f"the standby took {handover:.2f} s to hold the leases"
            assert await load > 50
            await wait_caught_up(isolated)
            await assert_read_models_match_ledger(isolated)
