"""What the replica proofs share (a PostgreSQL hot standby, Redis through Sentinel): the projector
as a child process with the environment a proof gives it, waiting, and the HTTP steps of voting
and reading. Servers come from devtools.devstack, the APIs from tests.servers, agents and items
from tests.integration.conftest."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from infra.settings import Settings
from tests.integration.conftest import Agent
from tests.servers import settings_env, stop

T = TypeVar("T")
# Nothing listens on port 1 of the loopback: a Redis there refuses every connection at once.
NO_REDIS = "redis://127.0.0.1:1/0"


@contextlib.contextmanager
def projector(
    settings: Settings, log: Path, *projections: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`voteledger project [projections]` in a child process, with the settings' environment
    and `env`, its output in `log`; stopped by its PID however the test ends."""
    argv = [sys.executable, "-m", "cli", "project", *projections, "--metrics-port", "0"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env=settings_env(settings) | env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        stop(proc)


def wait_until(what: str, check: Callable[[], T | None], within: float = 20.0) -> T:
    """The first value of `check` that is not None (or False), polled until `within` seconds
    have passed; exceptions count as not yet, and the last one is told on failure."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s (last: {last!r})")
        time.sleep(0.1)


async def vote(
    client: httpx.AsyncClient, agent: Agent, item_id: str, direction: str
) -> httpx.Response:
    """A vote through the command API (`client`'s base URL)."""
    body = {"item_id": item_id, "vote": direction}
    return await client.post("/api/v1/vote", json=body, headers=agent.headers)


def position_of(response: httpx.Response) -> int:
    """The ledger position a read answered with."""
    return int(response.headers["X-Ledger-Position"])


def entry(page: httpx.Response, item_id: str) -> dict[str, Any]:
    """The entry of `item_id` in a page of a ranking."""
    found = [e for e in page.json()["items"] if e["item_id"] == item_id]
    assert found, f"{item_id} is not in {page.json()}"
    return dict(found[0])


def ledger_votes(database_url: str, item_ids: list[str]) -> set[int]:
    """The positions of every vote on these items in the ledger."""
    query = "SELECT position FROM events WHERE event_type = 'VoteCast' AND item_id = ANY(%s)"
    with psycopg.connect(database_url, autocommit=True) as conn:
        return {int(position) for (position,) in conn.execute(query, (item_ids,))}
