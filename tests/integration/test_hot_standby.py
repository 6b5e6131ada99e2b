"""The query API answers from a PostgreSQL hot standby, as in production.

There the query API's PostgreSQL fallback reads a read-only replica (VOTELEDGER_QUERY_DATABASE_URL,
CloudNativePG's `-ro` service) while the command API and the projector use the primary. A standby
refuses writes and LISTEN, so nothing on the query side may write or wait for a NOTIFY. Here: a
throwaway primary cluster, migrated; a streaming standby of it (pg_basebackup -R) logging every
statement; the command API and a projector of the PostgreSQL read models on the primary; the
query API on the standby with a Redis that refuses connections, so every read is the fallback's.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from devtools import devstack
from tests.conftest import fresh_redis_prefix, make_settings
from tests.integration.conftest import Agent, new_agent, new_item
from tests.integration.replica_servers import NO_REDIS, entry, position_of, projector, vote
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(120)

# Every statement on the standby is logged with its user, so the log shows all the query API did.
STANDBY_SETTINGS = ("log_statement=all", "log_line_prefix=%m [%p] %u@%d ", "fsync=off")
# What a standby refuses, as PostgreSQL words it (and what the query side must never send).
REFUSALS = ("cannot execute", "read-only transaction", "during recovery", "recovery is in progress")
WRITES = re.compile(
    r"\b(LISTEN|NOTIFY|pg_notify|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE)\b", re.I
)
QUERY_ROLE = "voteledger_query"
# A record's first line starts with the prefix: time, [pid], user@database.
PREFIX = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S* \S+ \[\d+\] (\S*)@")
STATEMENT = re.compile(r"LOG:\s+(?:statement|execute [^:]*): (.*)", re.S)


@dataclass(frozen=True)
class Clusters:
    primary: str  # the superuser's URL of the primary's database
    standby: str  # the same on the standby
    standby_log: Path


@pytest.fixture(scope="module")
def clusters() -> Iterator[Clusters]:
    """A migrated primary and a hot standby streaming from it; both stopped by PID at the end."""
    with ExitStack() as stack:
        primary = devstack.start_postgres(stack, fast=True)
        env = {**os.environ, "DATABASE_URL": primary, "VOTELEDGER_ENV": "test"}
        migrate = [sys.executable, "-m", "cli", "migrate"]
        subprocess.run(migrate, env=env, check=True, timeout=60, capture_output=True)
        standby, log = devstack.start_pg_standby(stack, primary, STANDBY_SETTINGS)
        yield Clusters(primary, standby, log)


@dataclass(frozen=True)
class Apps:
    command: str
    query: str


@contextlib.contextmanager
def apps(clusters: Clusters, redis_url: str, logs: Path) -> Iterator[Apps]:
    """The command API and a projector (PostgreSQL read models) on the primary; the query API
    on the standby, as voteledger_query, with no Redis. Started in the test itself, so that
    `capfd` holds the query API's output."""
    with fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(
            clusters.primary, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2"
        )
        standby = make_conninfo(clusters.standby, user=QUERY_ROLE)
        with (
            projector(settings, logs / "projector.log", "postgres"),
            uvicorn_server("commands.app:create_app", settings) as command,
            uvicorn_server(
                "queries.app:create_app",
                settings,
                VOTELEDGER_QUERY_DATABASE_URL=standby,
                REDIS_URL=NO_REDIS,
            ) as query,
        ):
            yield Apps(command, query)


# (agent, item, direction): song 0 ends with 3 up, song 1 with 1 up and 1 down, the tool 1 up.
VOTES = [(0, 0, "up"), (1, 0, "up"), (2, 0, "up"), (0, 1, "up"), (1, 1, "down"), (2, 2, "up")]


async def _cast(command: httpx.AsyncClient) -> tuple[list[Agent], list[str], int]:
    """The agents, the items (two songs, a tool) and the position of the last vote."""
    agents = [await new_agent(command) for _ in range(3)]
    items = [await new_item(command, "song"), await new_item(command, "song")]
    items.append(await new_item(command, "tool"))
    last = 0
    for agent, item, direction in VOTES:
        response = await vote(command, agents[agent], items[item], direction)
        assert response.status_code in (200, 201), response.text
        last = max(last, int(response.json()["position"]))
    return agents, items, last


async def _reaching(query: httpx.AsyncClient, path: str, at: int) -> httpx.Response:
    """The answer at `path` once it reflects position `at`: one wait is at most 5 s, which a
    busy machine (projector, then WAL to the standby, then a poll) can exceed; a few are not."""
    params = {"min_position": at, "wait_ms": 5000}
    for _ in range(5):
        response = await query.get(path, params=params)
        if response.status_code == 200 and position_of(response) >= at:
            break
    return response


def _from_postgres(response: httpx.Response, at: int) -> httpx.Response:
    assert response.status_code == 200, response.text
    assert response.headers["X-Read-Model"] == "postgres"
    assert position_of(response) >= at
    return response


async def _lists_and_detail(query: httpx.AsyncClient, items: list[str], at: int) -> None:
    """Every list and an item's detail answer from the standby, reflecting position `at`."""
    wait = {"min_position": at, "wait_ms": 5000}
    detail = _from_postgres(await _reaching(query, f"/api/v1/items/{items[0]}", at), at)
    assert (detail.json()["up"], detail.json()["down"], detail.json()["net"]) == (3, 0, 3)
    songs = wait | {"item_type": "song"}
    for path in ("/api/v1/top", "/api/v1/top/daily", "/api/v1/trending"):
        page = _from_postgres(await query.get(path, params=songs), at)
        ranked = [e["item_id"] for e in page.json()["items"]]
        assert ranked == items[:2], path
        assert (entry(page, items[0])["up"], entry(page, items[0])["down"]) == (3, 0), path
        assert (entry(page, items[1])["up"], entry(page, items[1])["down"]) == (1, 1), path
        assert entry(page, items[0])["score"] == pytest.approx(3, abs=1e-3), path
    tools = _from_postgres(await query.get("/api/v1/top", params=wait | {"item_type": "tool"}), at)
    assert (entry(tools, items[2])["up"], entry(tools, items[2])["score"]) == (1, 1)


async def test_the_query_api_reads_a_hot_standby(
    clusters: Clusters, redis_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Lists, detail, read-your-writes (min_position, polled) and readiness, all answered from
    the standby's read models; the standby was never asked to write or LISTEN."""
    with apps(clusters, redis_url, tmp_path) as started:
        await _read_from_the_standby(started)
        _assert_sessions_only_on_the_standby(clusters)
    _assert_only_reads_on_the_standby(clusters)
    output = capfd.readouterr()
    said = output.out + output.err
    assert "serving from PostgreSQL" in said  # the query API's output is here, Redis refused
    assert not [r for r in REFUSALS if r in said], said[-3000:]


async def _read_from_the_standby(started: Apps) -> None:
    async with (
        httpx.AsyncClient(base_url=started.command, timeout=10) as command,
        httpx.AsyncClient(base_url=started.query, timeout=10) as query,
    ):
        agents, items, last = await _cast(command)
        await _lists_and_detail(query, items, last)
        # Read at once at a fresh vote's position: the standby lags the projector, which lags
        # the vote, so the answer waits for the fallback's position, read by polling.
        voted = await vote(command, agents[2], items[1], "down")
        fresh = int(voted.json()["position"])
        read = _from_postgres(await _reaching(query, f"/api/v1/items/{items[1]}", fresh), fresh)
        assert (read.json()["up"], read.json()["down"]) == (1, 2)
        ready = await query.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["read_model"] == "postgres"


def _log_records(log: Path) -> list[str]:
    """The standby's log, one record (a line and its continuation lines) each."""
    records: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        if PREFIX.match(line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def _of_the_query_role(records: list[str]) -> list[str]:
    return [r for r in records if (m := PREFIX.match(r)) and m.group(1) == QUERY_ROLE]


def _statements(records: list[str]) -> list[str]:
    """The statements logged (simple or extended protocol)."""
    return [m.group(1) for r in records if (m := STATEMENT.search(r))]


def _assert_sessions_only_on_the_standby(clusters: Clusters) -> None:
    """While the query API runs, the query role has sessions on the standby, none on the
    primary."""
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
    with psycopg.connect(clusters.standby, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        on_standby = conn.execute(sessions, (QUERY_ROLE,)).fetchone()
    with psycopg.connect(clusters.primary, autocommit=True) as conn:
        on_primary = conn.execute(sessions, (QUERY_ROLE,)).fetchone()
    assert on_standby is not None and on_standby[0] > 0
    assert on_primary == (0,)


def _assert_only_reads_on_the_standby(clusters: Clusters) -> None:
    """The query role sent the standby no statement that writes or LISTENs, and the standby
    refused nothing."""
    records = _log_records(clusters.standby_log)
    refused = [r for r in records if any(refusal in r for refusal in REFUSALS)]
    assert refused == [], "\n".join(refused)
    mine = _of_the_query_role(records)
    errors = [r for r in mine if "ERROR:" in r or "FATAL:" in r]
    assert errors == [], "\n".join(errors)
    statements = _statements(mine)
    assert any("checkpoint" in s for s in statements), "the query API never read the standby"
    assert [s for s in statements if WRITES.search(s)] == []
