"""Measure the query API with many live-stream clients: its Redis connections and resident memory.

    .venv/bin/python -m devtools.devstack exec --fast -- \
        .venv/bin/python -m tests.integration.measure_live_clients [CLIENTS]

Starts a fresh ledger, a projector and the query API (`python -m infra.serve queries`) on
loopback, opens CLIENTS (default 1,000) SSE connections and prints the figures; bounded in time
(well under a minute), and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import httpx

from infra.settings import Settings
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.integration.test_live_clients import connections
from tests.servers import uvicorn_server


def rss_mib(query: str) -> float:
    """The query API's resident memory, as its own /metrics reports it."""
    for line in httpx.get(f"{query}/metrics", timeout=5).text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return 0.0


async def run(query: str, settings: Settings, clients: int) -> None:
    print(f"idle: {rss_mib(query):.1f} MiB, {connections(settings)} Redis connections")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=60, limits=limits) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        started = time.monotonic()
        responses = await asyncio.gather(
            *[
                stack.enter_async_context(http.stream("GET", f"{query}/api/v1/stream"))
                for _ in range(clients)
            ]
        )
        statuses = {r.status_code for r in responses}
        print(f"{clients} SSE clients connected in {time.monotonic() - started:.1f} s: {statuses}")
        await asyncio.sleep(2)
        print(
            f"with {clients} clients: {rss_mib(query):.1f} MiB resident, "
            f"{connections(settings)} Redis connections"
        )
    await asyncio.sleep(1)
    print(f"after they closed: {connections(settings)} Redis connections")


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    redis_url = os.environ["REDIS_URL"]
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix)
        cap = {"VOTELEDGER_STREAM_CLIENTS_MAX": str(clients)}
        query_api = uvicorn_server("queries.app:create_app", settings, **cap)
        with worker_process(settings), query_api as query:
            asyncio.run(run(query, settings, clients))


if __name__ == "__main__":
    main()
