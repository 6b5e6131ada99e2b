"""Shared pieces of the projector proofs: load generators, workers, and the final comparison."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import psycopg
from psycopg_pool import AsyncConnectionPool

from commands.agents import register_agent
from commands.catalogue import list_item
from commands.decide import CastVote
from commands.record import cast_vote
from events import store
from events.store import Checkpoint
from events.types import Direction, ItemListed, VoteCast
from infra.db import pool_for
from infra.settings import Settings
from projections import verify
from projections.readmodel import ReadModelStore
from projections.stores import NAMES, open_store
from tests.servers import settings_env

DIRECTIONS: list[Direction] = ["up", "down", "none"]


async def populate(
    pool: AsyncConnectionPool, agents: int, items: int
) -> tuple[list[uuid.UUID], list[str]]:
    """Register agents and list items through the command handlers."""
    agent_ids = [(await register_agent(pool, f"a{i}")).agent_id for i in range(agents)]
    item_ids = []
    for i in range(items):
        item_type = "song" if i % 3 else "tool"
        item_id = f"{item_type}-{i}"
        await list_item(pool, item_id, item_type, f"Title {i}")
        item_ids.append(item_id)
    return agent_ids, item_ids


async def vote_load(
    pool: AsyncConnectionPool,
    agents: list[uuid.UUID],
    items: list[str],
    *,
    seconds: float,
    writers: int,
    seed: int,
) -> int:
    """Concurrent writers casting random votes through the real command path; returns how many."""
    deadline = time.monotonic() + seconds
    count = 0

    async def writer(n: int) -> None:
        nonlocal count
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < deadline:
            command = CastVote(rng.choice(agents), rng.choice(items), rng.choice(DIRECTIONS))
            await cast_vote(pool, command)
            count += 1

    await asyncio.gather(*(writer(n) for n in range(writers)))
    return count


async def held_writer(url: str, *, seconds: float, seed: int) -> int:
    """Transactions held open for a while, so that later transactions commit before them.

    Each appends a listing and a vote of an agent only this writer uses (its slot state is kept
    here, so its events stay consistent), then sleeps before committing; one in five rolls back.
    """
    rng = random.Random(seed)
    agent = uuid.uuid4()
    slots: dict[str, Direction] = {}
    deadline = time.monotonic() + seconds
    held = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        while time.monotonic() < deadline:
            item_id = f"held-{seed}-{held}"
            await store.append(conn, ItemListed(item_id=item_id, item_type="song", title=item_id))
            target = rng.choice(list(slots) or [item_id]) if rng.random() < 0.5 else item_id
            previous = slots.get(target, "none")
            direction = rng.choice([d for d in DIRECTIONS if d != previous])
            event = VoteCast(
                agent_id=agent,
                item_id=target,
                item_type="song",
                direction=direction,
                previous=previous,
            )
            await store.append(conn, event)
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            if rng.random() < 0.2:
                await conn.rollback()
            else:
                await conn.commit()
                slots[target] = direction
            held += 1
    return held


async def ledger_head(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT coalesce(pg_sequence_last_value('events_position_seq'), 0)"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


@contextlib.asynccontextmanager
async def read_model_stores(settings: Settings) -> AsyncIterator[dict[str, ReadModelStore]]:
    """Both read-model stores, through the owner's connections."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url
        yield {name: await open_store(name, settings, stack, url) for name in NAMES}


async def generations(settings: Settings) -> tuple[int, int]:
    """The generations readers use now: (PostgreSQL, Redis)."""
    async with read_model_stores(settings) as stores:
        return await stores["postgres"].live(), await stores["redis"].live()


async def watermarks(settings: Settings) -> tuple[int, int]:
    async with read_model_stores(settings) as stores:
        found = []
        for name in NAMES:
            state = await stores[name].checkpoint(await stores[name].live())
            found.append(state.watermark if state else 0)
    return found[0], found[1]


async def wait_caught_up(
    settings: Settings, within: float = 90.0, worker: asyncio.Task[None] | None = None
) -> None:
    """Until both projections' watermarks reach the last position drawn."""
    head = await ledger_head(settings.database_url)
    deadline = time.monotonic() + within
    while True:
        if worker is not None and worker.done():
            worker.result()  # raises what stopped it
            raise AssertionError("the worker stopped")
        pg, rd = await watermarks(settings)
        if pg >= head and rd >= head:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"projections not caught up: head {head}, pg {pg}, redis {rd}")
        await asyncio.sleep(0.1)


async def assert_read_models_match_ledger(settings: Settings) -> None:
    """Both read models equal an independent fold of the ledger up to their checkpoints, and each
    applied exactly as many events as the ledger holds there."""
    half_life = settings.trending_half_life_seconds
    now = datetime.now(UTC)
    async with (
        read_model_stores(settings) as stores,
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn,
    ):
        for name, target in stores.items():
            dump = await target.dump(await target.live())
            checkpoint = dump.state.checkpoint
            expected = await verify.ledger_fold(conn, checkpoint, half_life)
            assert dump.broken == []
            differences = verify.compare(
                name, expected, dump.model, half_life, at=now.timestamp(), coverage=dump.coverage
            )
            assert differences == [], "\n".join(map(str, differences))
            assert dump.state.events_applied == await _events_upto(conn, checkpoint)


async def _events_upto(conn: psycopg.AsyncConnection, checkpoint: Checkpoint) -> int:
    row = await (
        await conn.execute(
            "SELECT count(*) FROM events WHERE (tx_id, position) <= (%s::text::xid8, %s)",
            (str(checkpoint.tx_id), checkpoint.position),
        )
    ).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """`voteledger project` in a child process; stopped (by PID) however the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "project", "--metrics-port", "0"],
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def command_pool(settings: Settings) -> AsyncConnectionPool:
    return pool_for(settings, "command")
