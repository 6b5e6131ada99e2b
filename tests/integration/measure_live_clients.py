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
import subprocess
import sys
import time

import httpx
import redis

from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import free_port, settings_env


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def named_connections(url: str, name: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for c in client.client_list() if c["name"] == name)
    finally:
        client.close()


async def run(query: str, pid: int, redis_url: str, name: str, clients: int) -> None:
    print(f"idle: {rss_mib(pid):.1f} MiB, {named_connections(redis_url, name)} Redis connections")
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
            f"with {clients} clients: {rss_mib(pid):.1f} MiB resident, "
            f"{named_connections(redis_url, name)} Redis connections"
        )
    await asyncio.sleep(1)
    print(f"after they closed: {named_connections(redis_url, name)} Redis connections")


def main() -> None:
    clients = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    redis_url = os.environ["REDIS_URL"]
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix)
        port = free_port()
        env = settings_env(settings) | {"VOTELEDGER_STREAM_CLIENTS_MAX": str(clients)}
        command = [sys.executable, "-m", "infra.serve", "queries", "--port", str(port)]
        with worker_process(settings):
            proc = subprocess.Popen([*command, "--log-level", "warning"], env=env)
            try:
                query = f"http://127.0.0.1:{port}"
                for _ in range(200):
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(f"{query}/readyz", timeout=1).status_code == 200:
                            break
                    time.sleep(0.1)
                asyncio.run(run(query, proc.pid, redis_url, f"{prefix}:query", clients))
            finally:
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
