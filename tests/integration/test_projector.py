"""Proofs that the projections equal the ledger: under concurrency, crashes and failover."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from events import store
from events.store import Checkpoint
from events.types import ItemListed, Recorded, VoteCast
from infra.settings import Settings
from projections import redis_keys
from projections.model import Changes, fold
from projections.postgres_store import PostgresStore
from projections.readmodel import Broken, Fenced, State, Step
from projections.redis_store import RedisStore
from projections.redis_store import namespace as redis_namespace
from projections.runner import run_worker
from projections.shared import SharedReads
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    held_writer,
    populate,
    vote_load,
    wait_caught_up,
    worker_process,
)
from tests.integration.stall_support import eventually

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_gap_proof(isolated: Settings, seed: int) -> None:
    """Concurrent writers with transactions held open while later ones commit: both read models
    end equal to an independent fold of the ledger, every event applied exactly once."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(isolated, stop))
    try:
        async with command_pool(isolated) as pool:
            agents, items = await populate(pool, agents=12, items=30)
            votes, *held = await asyncio.gather(
                vote_load(pool, agents, items, seconds=4, writers=12, seed=seed),
                *(
                    held_writer(isolated.database_url, seconds=4, seed=seed * 10 + n)
                    for n in range(4)
                ),
            )
        assert votes > 100 and sum(held) > 10
        await wait_caught_up(isolated, worker=worker)
        await assert_read_models_match_ledger(isolated)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


async def test_both_projections_share_one_read_while_catching_up(isolated: Settings) -> None:
    """Catching up from the start, the two projections of one worker read and fold each batch
    once between them, and both end equal to an independent fold of the ledger."""
    async with command_pool(isolated) as pool:
        _, items = await populate(pool, agents=2, items=40)
    await _bulk_votes(isolated.database_url, items, agents=50, count=30_000, seed=7)
    reads = SharedReads(share=True)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(isolated, stop, reads=reads))
    try:
        await wait_caught_up(isolated, worker=worker)
        await assert_read_models_match_ledger(isolated)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert reads.shared >= 3


async def _bulk_votes(url: str, items: list[str], agents: int, count: int, seed: int) -> None:
    """Many consistent votes written at once (through the store's COPY), for long catch-ups."""
    rng = random.Random(seed)
    slots: dict[tuple[int, str], str] = {}
    events = []
    agent_ids = [uuid.UUID(int=seed * 100_000 + a) for a in range(agents)]
    for _ in range(count):
        a, item = rng.randrange(agents), rng.choice(items)
        previous = slots.get((a, item), "none")
        direction = rng.choice([d for d in ("up", "down", "none") if d != previous])
        slots[(a, item)] = direction
        item_type = "song" if item.startswith("song") else "tool"
        events.append(
            (VoteCast(agent_ids[a], item, item_type, direction, previous), None)  # type: ignore[arg-type]
        )
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await store.append_many(conn, events)
        await conn.commit()


async def _flush_redis(settings: Settings) -> None:
    """FLUSHALL when Redis is the test run's own throwaway server; else drop this test's keys."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        if os.environ.get("VOTELEDGER_REDIS_DISPOSABLE") == "1":
            await client.flushall()
        else:
            keys = [k async for k in client.scan_iter(match=f"*{settings.redis_prefix}*")]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


async def test_crash_proof(isolated: Settings) -> None:
    """kill -9 at random points of a long catch-up and of live load, and a Redis flush: after
    restarts both read models equal the ledger, nothing lost or doubled."""
    rng = random.Random(42)
    async with command_pool(isolated) as pool:
        agents, items = await populate(pool, agents=10, items=40)
        await _bulk_votes(isolated.database_url, items, agents=300, count=60_000, seed=7)
        load = asyncio.create_task(vote_load(pool, agents, items, seconds=8, writers=6, seed=3))
        kills = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with worker_process(isolated) as proc:
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            if kills == 4:
                await _flush_redis(isolated)
        assert await load > 100
    assert kills >= 5
    with worker_process(isolated):
        await wait_caught_up(isolated)
        await assert_read_models_match_ledger(isolated)


async def _lease_holders(settings: Settings) -> dict[str, tuple[int, str]]:
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        rows = await (
            await conn.execute("SELECT projection, fence, holder FROM projection_leases")
        ).fetchall()
    return {name: (fence, holder) for name, fence, holder in rows}


async def test_failover(isolated: Settings) -> None:
    """Two workers; the active one is killed under load; the standby takes over within seconds
    and the read models still equal the ledger."""
    async with command_pool(isolated) as pool:
        agents, items = await populate(pool, agents=10, items=20)
        with worker_process(isolated) as first, worker_process(isolated) as second:
            load = asyncio.create_task(vote_load(pool, agents, items, seconds=6, writers=6, seed=5))

            async def both_held() -> dict[str, tuple[int, str]] | None:
                holders = await _lease_holders(isolated)
                return holders if len(holders) == 2 else None

            before = await eventually(both_held, within=15)
            await asyncio.sleep(1.5)
            by_pid = {first.pid: first, second.pid: second}
            active = {int(holder.rsplit(":", 1)[1]) for _, holder in before.values()}
            for pid in active:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            survivor = (
                next(p for pid, p in by_pid.items() if pid not in active)
                if len(active) == 1
                else None
            )

            async def taken_over() -> bool:
                now = await _lease_holders(isolated)
                return all(now[name][0] > before[name][0] for name in before)

            await eventually(taken_over, within=10)
            takeover = time.monotonic() - killed_at
            assert takeover < 5, f"standby took {takeover:.1f} s"
            assert await load > 100
            if survivor is None:  # one process held both leases and died: restart a standby
                with worker_process(isolated):
                    await wait_caught_up(isolated)
            else:
                await wait_caught_up(isolated)
            await assert_read_models_match_ledger(isolated)


# --- applying a batch: exactly once, fenced -------------------------------------------------


def _batch(item_id: str, tx_id: int, position: int) -> tuple[Step, list[Recorded]]:
    at = datetime.now(UTC)
    agent = uuid.uuid4()
    recorded = [
        Recorded(position - 1, tx_id, at, ItemListed(item_id, "song", "T")),
        Recorded(position, tx_id, at, VoteCast(agent, item_id, "song", "up", "none")),
    ]
    changes = fold(recorded, at.timestamp(), 3600.0)
    return Step(changes, Checkpoint(tx_id, position), position, 2, at), recorded


def redis_store(client: aioredis.Redis, prefix: str) -> RedisStore:
    """The Redis read models under `prefix`, generation 1 unless a pointer says otherwise."""

    async def first() -> int:
        return 1

    return RedisStore(client, prefix, retention_days=30, stream_max=100, fallback=first)


async def _redis_snapshot(client: aioredis.Redis, ns: str) -> dict[bytes, object]:
    snapshot: dict[bytes, object] = {}
    async for key in client.scan_iter(match=f"{redis_keys.glob(ns)}:*"):
        kind = await client.type(key)
        if kind == b"hash":
            snapshot[key] = await client.hgetall(key)
        elif kind == b"zset":
            snapshot[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            snapshot[key] = await client.xlen(key)
    return snapshot


async def test_redis_apply_is_exactly_once_and_fenced(isolated: Settings) -> None:
    """A replayed batch, an overlapping one and one with an older fence change nothing in Redis;
    the script is reloaded after SCRIPT FLUSH."""
    client = aioredis.Redis.from_url(isolated.redis_url)
    try:
        target = redis_store(client, isolated.redis_prefix)
        ns = redis_namespace(isolated.redis_prefix, 1)
        state = await target.start(1)
        step, _ = _batch("song-x", 100, 2)
        state = await target.apply(1, state, step, fence=2, half_life=3600.0)
        snapshot = await _redis_snapshot(client, ns)
        with pytest.raises(Fenced):  # the same batch again
            await target.apply(1, State(), step, fence=2, half_life=3600.0)
        with pytest.raises(Fenced):  # a zombie with an older fence, from the right checkpoint
            await target.apply(1, state, _batch("song-y", 101, 4)[0], fence=1, half_life=3600.0)
        assert await _redis_snapshot(client, ns) == snapshot
        await client.script_flush()
        state = await target.apply(1, state, _batch("song-y", 101, 4)[0], fence=3, half_life=3600.0)
        assert await client.hget(f"{ns}:item:song-y", "up") == b"1"
        assert await client.zscore(f"{ns}:top:song", "song-x") == 1
        entries = await client.xrange(f"{ns}:changes")
        assert [e[1][b"position"] for e in entries] == [b"2", b"4"]
    finally:
        await client.aclose()


async def test_a_redis_batch_that_fails_halfway_is_never_applied_again(
    isolated: Settings,
) -> None:
    """A script that fails after its first write leaves the generation marked: the same batch
    (or any other) is refused as broken instead of counting the written part twice."""
    client = aioredis.Redis.from_url(isolated.redis_url)
    try:
        target = redis_store(client, isolated.redis_prefix)
        ns = redis_namespace(isolated.redis_prefix, 1)
        state = await target.start(1)
        await client.set(f"{ns}:top:song", "not a sorted set")  # ZADD fails after HINCRBY
        step, _ = _batch("song-x", 100, 2)
        with pytest.raises(ResponseError):
            await target.apply(1, state, step, fence=1, half_life=3600.0)
        assert await client.hget(f"{ns}:item:song-x", "up") == b"1"  # written before it failed
        await client.delete(f"{ns}:top:song")
        with pytest.raises(Broken):
            await target.apply(1, state, step, fence=1, half_life=3600.0)
        assert await client.hget(f"{ns}:item:song-x", "up") == b"1"
    finally:
        await client.aclose()


async def test_postgres_apply_is_exactly_once_and_fenced(isolated: Settings) -> None:
    """A replayed batch and one with an older fence are refused and roll back entirely."""
    async with await psycopg.AsyncConnection.connect(
        isolated.url_for("projector"), autocommit=True
    ) as conn:
        target = PostgresStore(conn)
        state = await target.start(1)
        step, _ = _batch("song-x", 100, 2)
        state = await target.apply(1, state, step, fence=2, half_life=3600.0)
        with pytest.raises(Fenced):
            await target.apply(1, State(), step, fence=2, half_life=3600.0)
        with pytest.raises(Fenced):
            await target.apply(1, state, _batch("song-y", 101, 4)[0], fence=1, half_life=3600.0)
        rows = await (
            await conn.execute("SELECT item_id, up FROM rm_g1.items ORDER BY 1")
        ).fetchall()
        assert rows == [("song-x", 1)]
        assert await target.checkpoint(1) == state


async def test_empty_changes_only_move_the_watermark(isolated: Settings) -> None:
    """A batch with no events but a higher watermark advances only the watermark."""
    async with await psycopg.AsyncConnection.connect(
        isolated.url_for("projector"), autocommit=True
    ) as conn:
        target = PostgresStore(conn)
        state = await target.start(1)
        step = Step(Changes(epoch=None), state.checkpoint, 7, 0, None)
        state = await target.apply(1, state, step, fence=1, half_life=3600.0)
        assert (await target.start(1)).watermark == 7


# --- an upgrade from the old key names ------------------------------------------------------


async def _project_until_caught_up(settings: Settings) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        await wait_caught_up(settings, worker=worker)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


def _old_name(prefix: str, key: str) -> str:
    """The name an old release gave `key`: `<p>:generation`, `<p>:ledger`, `{<p>:gN}:...`."""
    tag = redis_keys.tag(prefix)
    rest = key.removeprefix(f"{tag}:")
    if rest in ("generation", "ledger"):
        return f"{prefix}:{rest}"
    generation, _, name = rest.partition(":")
    return f"{{{prefix}:{generation}}}:{name}"


async def _keys(client: aioredis.Redis, pattern: str) -> set[str]:
    return {key.decode() async for key in client.scan_iter(match=pattern)}


async def test_an_upgrade_from_the_old_key_names_rebuilds_redis_once(
    isolated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis whose read models are under the old key names (pointer `<p>:generation`, owner
    `<p>:ledger`, a tag per generation) is not read: the projector rebuilds the Redis read models
    from the start of the ledger under the new names, deletes the old keys, and the next start
    finds its own read models (no second rebuild). Another prefix's keys are left alone."""
    prefix = isolated.redis_prefix
    async with command_pool(isolated) as pool:
        agents, items = await populate(pool, agents=5, items=20)
        await vote_load(pool, agents, items, seconds=1, writers=3, seed=11)
    await _project_until_caught_up(isolated)
    client = aioredis.Redis.from_url(isolated.redis_url)
    other = f"{prefix}2"  # another deployment's prefix, which the old tag also started with
    others = {f"{other}:generation", f"{{{other}:g1}}:meta", redis_keys.pointer(other)}
    others.add(f"{redis_keys.namespace(other, 1)}:meta")
    try:
        new_keys = await _keys(client, f"{redis_keys.glob(redis_keys.tag(prefix))}:*")
        assert redis_keys.pointer(prefix) in new_keys and redis_keys.owner(prefix) in new_keys
        for key in new_keys:  # what an old release left in Redis
            await client.rename(key, _old_name(prefix, key))
        for key in others:
            await client.set(key, "1")
        async with command_pool(isolated) as pool:
            await vote_load(pool, agents, items, seconds=0.5, writers=2, seed=12)
        caplog.clear()
        await _project_until_caught_up(isolated)
        messages = [r.getMessage() for r in caplog.records]
        assert any(f"deleted {len(new_keys)} keys under the old key names" in m for m in messages)
        assert any("missing: rebuilding" in m for m in messages)
        await assert_read_models_match_ledger(isolated)  # events applied once, from the start
        everything = await _keys(client, f"*{prefix}*")
        assert {key for key in everything if not key.startswith("{" + prefix + "}")} == others
        assert await client.exists(*others) == len(others)

        caplog.clear()
        await _project_until_caught_up(isolated)
        assert not any("rebuilding" in r.getMessage() for r in caplog.records)
        assert not any("old key names" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()
