"""Measure PostgreSQL transactions per second caused by 20 concurrent min_position waiters answered
from the PostgreSQL fallback (Redis unreachable), on a fresh ledger (head unknown, so each waits
its full wait_ms of 5 s).

    .venv/bin/python -m devtools.devstack exec --fast -- \
        .venv/bin/python -m tests.integration.measure_waiters
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg

from queries.app import create_app
from tests.conftest import fresh_database, make_settings


def transactions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def main() -> None:
    with fresh_database() as url:
        app = create_app(make_settings(url, "redis://127.0.0.1:1/0", "measure"))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://q", timeout=30) as c:
                await c.get("/api/v1/top", params={"item_type": "song"})
                await asyncio.sleep(1.5)
                before, started = transactions(url), time.monotonic()
                params = {"item_type": "song", "min_position": 1, "wait_ms": 5000}
                answers = await asyncio.gather(
                    *[c.get("/api/v1/top", params=params) for _ in range(20)]
                )
                seconds = time.monotonic() - started
                await asyncio.sleep(1.5)  # backends report their counts when idle
                spent = transactions(url) - before - 1  # less the reading of `before`
    print("statuses", sorted({a.status_code for a in answers}))
    print(f"transactions: {spent} in {seconds:.2f} s = {spent / seconds:.0f}/s")


if __name__ == "__main__":
    asyncio.run(main())
