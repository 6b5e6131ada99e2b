"""Catch-up throughput of the projections over the ledger already in DATABASE_URL.

Resets generation 1's read models (PostgreSQL tables, Redis keys under a fresh prefix), runs the
worker until both watermarks reach the ledger head, and prints events/s per projection.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import psycopg

from infra.settings import Settings
from projections.redis_store import meta_key
from projections.runner import run_worker

RESET = """
TRUNCATE rm_g1.items, rm_g1.daily, rm_g1.item_owners, rm_g1.snapshot_rows, rm_g1.snapshot_days;
UPDATE rm_g1.snapshot_clock SET open_day = NULL;
UPDATE rm_g1.checkpoint SET tx_id = '0', position = 0, watermark = 0, fence = 0,
    trend_epoch = NULL, events_applied = 0, last_event_at = NULL, ledger_head = 0,
    independent_ready = true;
DELETE FROM projection_leases;
"""


async def measure(settings: Settings, projections: tuple[str, ...]) -> float:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(RESET)
        head = conn.execute("SELECT count(*), max(position) FROM events").fetchone()
    assert head is not None
    count, last = head
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run_worker(settings, stop, projections))
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.redis_url)
        while True:
            done = True
            if "postgres" in projections:
                row = await (
                    await conn.execute("SELECT watermark FROM rm_g1.checkpoint")
                ).fetchone()
                await conn.rollback()
                done &= row is not None and row[0] >= last
            if "redis" in projections:
                raw = await client.hget(meta_key(settings.redis_prefix, 1), "watermark")
                done &= raw is not None and int(raw) >= last
            if done:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        await client.aclose()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    rate = count / elapsed
    print(
        f"{'+'.join(projections):16s} {count:>10,} events in {elapsed:6.2f} s "
        f"= {rate:>10,.0f} events/s",
        flush=True,
    )
    return count / elapsed


def main() -> None:
    env = dict(os.environ)
    which = sys.argv[1:] or ["postgres", "redis", "postgres,redis"]
    for names in which:
        env["VOTELEDGER_REDIS_PREFIX"] = f"bench{uuid.uuid4().hex[:6]}"
        settings = Settings.from_env(env)
        asyncio.run(measure(settings, tuple(names.split(","))))


if __name__ == "__main__":
    main()
