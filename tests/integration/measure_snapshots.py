"""Storage of one day's chart snapshots for 10,000 items (both item types, every chart).

Run: .venv/bin/python -m devtools.devstack exec --fast -- .venv/bin/python -m \
tests.integration.measure_snapshots

Lists 10,000 items (a third tools), casts votes from 500 agents of 100 owners on day 0, then one
vote on day 1 closes day 0; prints the size (rows and indexes) of the snapshot tables per day.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from events import store
from events.types import AgentRegistered, Event, ItemListed, VoteCast
from tests.conftest import fresh_database, make_settings
from tests.integration.test_snapshots import project

ITEMS = 10_000
DAY0 = datetime(2026, 3, 2, tzinfo=UTC)


def _ledger() -> list[tuple[Event, datetime]]:
    rng = random.Random(7)
    agents = [(uuid.uuid4(), f"owner-{n % 100}") for n in range(500)]
    items = [(f"{t}-{n}", t) for n in range(ITEMS) for t in ["tool" if n % 3 == 0 else "song"]]
    ledger: list[tuple[Event, datetime]] = [
        (AgentRegistered(agent_id=a, owner=o), DAY0) for a, o in agents
    ]
    ledger += [(ItemListed(item_id=i, item_type=t, title=i), DAY0) for i, t in items]  # type: ignore[arg-type]
    for n in range(20_000):
        (agent, owner), (item_id, item_type) = rng.choice(agents), rng.choice(items)
        vote = VoteCast(agent, item_id, item_type, "up", "none", owner=owner)  # type: ignore[arg-type]
        ledger.append((vote, DAY0 + timedelta(seconds=n * 4)))
    return ledger


async def main() -> None:
    with fresh_database() as url:
        ledger = _ledger()
        seen: set[tuple[uuid.UUID, str]] = set()
        ledger = [
            (e, at)
            for e, at in ledger
            if not isinstance(e, VoteCast)
            or ((e.agent_id, e.item_id) not in seen and not seen.add((e.agent_id, e.item_id)))
        ]
        (agent, owner), item = (ledger[0][0].agent_id, "owner-0"), ledger[600][0]  # type: ignore[union-attr]
        close = VoteCast(agent, item.item_id, item.item_type, "down", "none", owner=owner)  # type: ignore[union-attr,arg-type]
        ledger.append((close, DAY0 + timedelta(days=1, hours=1)))
        with psycopg.connect(url) as conn, conn.transaction():
            store.append_many_sync(conn, ledger)
        settings = make_settings(url, "redis://127.0.0.1:1/0", "measure")
        started = time.perf_counter()
        await project(settings, batch=5_000)
        seconds = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            rows, days, size, table = conn.execute(
                "SELECT (SELECT count(*) FROM rm_g1.snapshot_rows),"
                " (SELECT count(*) FROM rm_g1.snapshot_days),"
                " pg_total_relation_size('rm_g1.snapshot_rows')"
                " + pg_total_relation_size('rm_g1.snapshot_days'),"
                " pg_relation_size('rm_g1.snapshot_rows')"
            ).fetchone()  # type: ignore[misc]
    print(f"{len(ledger):,} events projected in {seconds:.1f} s; {days} day(s) closed")
    print(
        f"{rows:,} snapshot rows; total {size / 2**20:.2f} MiB per day "
        f"(heap {table / 2**20:.2f} MiB, indexes and the rest {(size - table) / 2**20:.2f} MiB); "
        f"{size / max(rows, 1):.0f} bytes per row"
    )


if __name__ == "__main__":
    asyncio.run(main())
