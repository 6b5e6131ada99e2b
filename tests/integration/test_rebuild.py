"""Operator commands against a live stack: rebuild under load, interrupted rebuilds, verify,
and archive followed by rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis

from commands.decide import CastVote
from commands.record import cast_vote
from events import store
from events.types import ItemListed, VoteCast
from infra.settings import Settings
from projections import redis_keys, verify
from projections.postgres_store import PostgresStore
from projections.redis_store import namespace
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    generations,
    populate,
    vote_load,
    wait_caught_up,
    worker_process,
)
from tests.integration.test_query_api import query_api
from tests.servers import settings_env

pytestmark = pytest.mark.timeout(300)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=240,
    )


async def test_rebuild_under_load(isolated: Settings) -> None:
    """Votes and queries run throughout a rebuild: no request fails, the position the query API
    reports never goes backwards, and afterwards both read models equal the ledger."""
    with worker_process(isolated):
        async with command_pool(isolated) as pool:
            agents, items = await populate(pool, agents=20, items=60)
            await vote_load(pool, agents, items, seconds=2, writers=6, seed=1)
            await wait_caught_up(isolated)
            stop = asyncio.Event()
            failures: list[str] = []
            positions: list[int] = []

            async def voter(n: int) -> int:
                count = 0
                while not stop.is_set():
                    command = CastVote(
                        agents[(n + count) % len(agents)],
                        items[count % len(items)],
                        ["up", "down", "none"][count % 3],
                    )  # type: ignore[arg-type]
                    try:
                        await cast_vote(pool, command)
                    except Exception as exc:
                        failures.append(f"vote: {exc!r}")
                    count += 1
                return count

            async def reader(client: httpx.AsyncClient, path: str) -> None:
                while not stop.is_set():
                    response = await client.get(path)
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code} {response.text}")
                    else:
                        positions.append(int(response.headers["X-Ledger-Position"]))
                    await asyncio.sleep(0.005)

            async with query_api(isolated) as client:
                tasks = [asyncio.create_task(voter(n)) for n in range(4)]
                tasks += [
                    asyncio.create_task(reader(client, "/api/v1/top?item_type=song&limit=20")),
                    asyncio.create_task(reader(client, f"/api/v1/items/{items[1]}")),
                ]
                rebuild = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "cli",
                    "rebuild",
                    "--json",
                    env=settings_env(isolated),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await rebuild.communicate()
                await asyncio.sleep(1.5)  # reads and votes go on across the switch
                stop.set()
                votes = await asyncio.gather(*tasks)
        assert rebuild.returncode == 0, err.decode()
        reports = json.loads(out)
        assert {(r["projection"], r["new_generation"]) for r in reports} == {
            ("postgres", 2),
            ("redis", 2),
        }
        assert failures == []
        assert sum(v or 0 for v in votes) > 50 and len(positions) > 50
        assert all(a <= b for a, b in itertools.pairwise(positions)), "position went backwards"
        await wait_caught_up(isolated)
        assert await generations(isolated) == (2, 2)
        await assert_read_models_match_ledger(isolated)
        verified = cli(isolated, "verify", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr


async def _leftover_generations(settings: Settings) -> tuple[set[int], set[int]]:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        cur = await conn.execute(
            "SELECT substr(nspname, 5)::int FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$'"
        )
        schemas = {g for (g,) in await cur.fetchall()}
    client = aioredis.Redis.from_url(settings.redis_url)
    pattern, exact = redis_keys.metas(settings.redis_prefix)
    try:
        metas = {
            int(meta[1])
            async for key in client.scan_iter(match=pattern)
            if (meta := exact.fullmatch(key.decode()))
        }
    finally:
        await client.aclose()
    return schemas, metas


async def test_interrupted_rebuilds_leave_the_live_generation_serving(isolated: Settings) -> None:
    """kill -9 of a rebuild at several points: the live read models keep serving and stay equal
    to the ledger; a later rebuild cleans up and finishes."""
    with worker_process(isolated):
        async with command_pool(isolated) as pool:
            agents, items = await populate(pool, agents=30, items=80)
            await vote_load(pool, agents, items, seconds=3, writers=6, seed=2)
            async with query_api(isolated) as client:
                for delay in (0.2, 0.6, 1.2, 2.0):
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "cli",
                        "rebuild",
                        env=settings_env(isolated),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    await vote_load(pool, agents, items, seconds=delay, writers=3, seed=3)
                    # A small ledger rebuilds in about two seconds: the kills land in start-up,
                    # fold, bulk write, switch and handover (or after it finished: also fine).
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    await asyncio.wait_for(proc.wait(), 10)
                    response = await client.get("/api/v1/top", params={"item_type": "song"})
                    assert response.status_code == 200
                    await wait_caught_up(isolated)
                    await assert_read_models_match_ledger(isolated)
        finished = cli(isolated, "rebuild", "--json")
        assert finished.returncode == 0, finished.stderr
        await wait_caught_up(isolated)
        await assert_read_models_match_ledger(isolated)
        pg_live, redis_live = await generations(isolated)
        assert await _leftover_generations(isolated) == ({pg_live}, {redis_live})


async def test_verify_detects_corruption(isolated: Settings) -> None:
    """verify passes on healthy read models and fails, naming the item, on a corrupted
    PostgreSQL row and on a changed Redis score."""
    async with command_pool(isolated) as pool:
        agents, items = await populate(pool, agents=5, items=12)
        await vote_load(pool, agents, items, seconds=1, writers=2, seed=4)
    with worker_process(isolated):
        await wait_caught_up(isolated)
    healthy = cli(isolated, "verify", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    outcomes = json.loads(healthy.stdout)
    assert outcomes and all(o["equal"] for o in outcomes)

    song = next(i for i in items if i.startswith("song"))
    with psycopg.connect(isolated.database_url, autocommit=True) as conn:
        conn.execute("UPDATE rm_g1.items SET up = up + 1 WHERE item_id = %s", (song,))
    broken = cli(isolated, "verify", "postgres", "--json")
    assert broken.returncode == 1
    [outcome] = json.loads(broken.stdout)
    assert outcome["projection"] == "postgres" and not outcome["equal"]
    assert any(song in d["key"] for d in outcome["differences"])

    tool = next(i for i in items if i.startswith("tool"))
    client = aioredis.Redis.from_url(isolated.redis_url)
    try:
        await client.zincrby(f"{namespace(isolated.redis_prefix, 1)}:top:tool", 5, tool)
    finally:
        await client.aclose()
    broken = cli(isolated, "verify", "redis")
    assert broken.returncode == 1
    assert tool in broken.stdout and "differs" in broken.stdout


async def test_archive_then_rebuild_and_verify(isolated: Settings) -> None:
    """After archiving an old month, rebuild and verify give the same read models as before."""
    old = datetime.now(UTC) - timedelta(days=420)
    agent = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(isolated.database_url) as conn:
        await conn.execute("SELECT ensure_event_partitions(%s, 2)", (old,))
        events = [(ItemListed(f"song-old-{i}", "song", f"Old {i}"), old) for i in range(5)]
        events += [
            (VoteCast(agent, f"song-old-{i}", "song", "up", "none"), old + timedelta(hours=i))
            for i in range(5)
        ]
        events += [(VoteCast(agent, "song-old-1", "song", "down", "up"), None)]
        await store.append_many(conn, events)
        await conn.commit()
    with worker_process(isolated):
        await wait_caught_up(isolated)
    half_life = isolated.trending_half_life_seconds
    async with await psycopg.AsyncConnection.connect(
        isolated.database_url, autocommit=True
    ) as conn:
        before = (await PostgresStore(conn).dump(1)).model

    archived = cli(isolated, "partitions", "archive", "--older-than-months", "12", "--json")
    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout), "an old month was archived"
    rebuilt = cli(isolated, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    verified = cli(isolated, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    async with await psycopg.AsyncConnection.connect(
        isolated.database_url, autocommit=True
    ) as conn:
        after = (await PostgresStore(conn).dump(2)).model
    assert verify.compare("postgres", before, after, half_life, at=time.time()) == []
    assert after.items["song-old-1"].down == 1 and after.items["song-old-3"].up == 1
