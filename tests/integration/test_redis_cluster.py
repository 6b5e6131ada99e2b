"""Every Redis script against a real Redis server in cluster mode.

One node serving all 16384 slots answers like a cluster: any command or script whose declared
keys span more than one slot is refused (CROSSSLOT), and so is a script touching a key outside
the slot of its declared keys. The projector, a rebuild (switch.lua), the rate limiter and the
query scripts run against it here, so a key scheme that would not survive a move to Redis
Cluster fails this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from commands.ratelimit import RateLimiter
from infra.settings import Settings
from projections import generations as pointers
from projections import redis_keys, verify
from projections.model import Changes
from projections.rebuild import rebuild
from projections.redis_store import RedisStore
from projections.runner import run_worker
from queries.redis_reader import RedisReader
from queries.shapes import ListQuery
from tests.conftest import fresh_database, make_settings
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    generations,
    populate,
    read_model_stores,
    vote_load,
    wait_caught_up,
)
from tests.servers import stop

pytestmark = pytest.mark.timeout(240)

REDIS_SERVER = "/usr/bin/redis-server"
PREFIX = "vl"


def _free_ports() -> tuple[int, int]:
    """Two free loopback ports: for clients and for the cluster bus (by default the client port
    plus 10000, which need not be free, nor exist). A small race, as in devtools.devstack."""
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        return int(one.getsockname()[1]), int(two.getsockname()[1])


def _wait_for(
    what: str, probe: Callable[[], object], proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if probe():
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}; log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def cluster_node() -> Iterator[str]:
    """A throwaway redis-server in cluster mode on a loopback port, serving every slot alone;
    stopped by its PID however the test ends."""
    tmp = Path(tempfile.mkdtemp(prefix="vl-cluster-"))
    (port, bus), log = _free_ports(), tmp / "redis.log"
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp / "nodes.conf")]
    argv += ["--cluster-port", str(bus)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp), "--logfile", str(log)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            _wait_for("redis-server did not start", client.ping, proc, log)
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]

            def ok() -> bool:
                info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                text = info.decode() if isinstance(info, bytes) else str(info)
                return "cluster_state:ok" in text

            _wait_for("the cluster did not reach state ok", ok, proc, log)
        finally:
            client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def strict_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every script registered from now on starts with a shebang (`#!lua`, no flags): Redis then
    also refuses a script that touches a key outside the slot of its declared keys, which it lets
    through for a script without one."""
    register = aioredis.Redis.register_script

    def strict(self: aioredis.Redis, script: str) -> AsyncScript:
        return register(self, "#!lua\n" + script)

    monkeypatch.setattr(aioredis.Redis, "register_script", strict)


@pytest.fixture
def cluster_settings(strict_scripts: None) -> Iterator[Settings]:
    """A database of this test's own and a cluster-mode Redis of its own."""
    with cluster_node() as url, fresh_database() as database:
        yield make_settings(database, url, PREFIX, VOTELEDGER_POLL_INTERVAL="0.2")


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class _Quiet:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


async def _ledger_model(settings: Settings) -> tuple[Changes, int]:
    """The ledger folded up to the Redis checkpoint, and the Redis generation readers use."""
    async with read_model_stores(settings) as stores:
        target = stores["redis"]
        live = await target.live()
        state = await target.checkpoint(live)
    assert state is not None
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        half_life = settings.trending_half_life_seconds
        return await verify.ledger_fold(conn, state.checkpoint, half_life), live


async def _check_query_scripts(settings: Settings, client: aioredis.Redis) -> None:
    """page.lua and item.lua answer what the ledger says."""
    model, live = await _ledger_model(settings)
    reader = RedisReader(client, settings.redis_prefix, settings.trending_half_life_seconds)
    now = datetime.now(UTC)
    songs = [(t.net, item_id, t) for item_id, t in model.items.items() if t.item_type == "song"]
    expected = sorted(songs, key=lambda s: (s[0], s[1]), reverse=True)[:10]
    page = await reader.page(live, ListQuery("top", "song", 10), now.timestamp())
    assert [(e.item_id, e.score, e.up, e.down) for e in page.items] == [
        (item_id, float(net), t.up, t.down) for net, item_id, t in expected
    ]
    assert page.next_cursor is not None
    rest = await reader.page(live, ListQuery("top", "song", 10, page.next_cursor), now.timestamp())
    assert rest.items and rest.items[0].rank == 11
    net, item_id, totals = expected[0]
    detail, _ = await reader.detail(live, item_id, now.date(), now.timestamp())
    assert detail is not None
    assert (detail.up, detail.down, detail.net, detail.rank_top) == (
        totals.up,
        totals.down,
        net,
        1,
    )


async def _check_rate_limiter(client: aioredis.Redis) -> None:
    """ratelimit.lua keeps its state in Redis: a second limiter (no local state) sees it."""
    limiter = RateLimiter(client, PREFIX, rate=0.01, burst=2)
    decisions = await limiter.check_many(["agent-a", "agent-b", "agent-a", "agent-a"])
    assert [d.allowed for d in decisions] == [True, True, True, False]
    fresh = RateLimiter(client, PREFIX, rate=0.01, burst=2)
    again = await fresh.check_many(["agent-a", "agent-b"])
    assert [d.allowed for d in again] == [False, True]


# What an old release left: the pointer, the owner and generation 1 under the old names (each
# in a slot of its own), the last with a checkpoint far ahead that must not be believed.
OLD_KEYS = {
    f"{PREFIX}:generation": "1",
    f"{PREFIX}:ledger": "00000000-0000-0000-0000-000000000000",
    f"{{{PREFIX}:g1}}:top:song": "song-1",
}
OLD_META = {"tx_id": 10**9, "position": 10**9, "watermark": 10**9, "live": 1, "fence": 0}
# Another deployment's keys, old names and new: never touched.
OTHER = "vl2"
OTHER_KEYS = [f"{OTHER}:generation", f"{{{OTHER}:g1}}:meta", redis_keys.pointer(OTHER)]


async def _seed_old_release(client: aioredis.Redis) -> None:
    for key, value in OLD_KEYS.items():
        if ":top:" in key:
            await client.zadd(key, {value: 5})
        else:
            await client.set(key, value)
    await client.hset(f"{{{PREFIX}:g1}}:meta", mapping=OLD_META)  # type: ignore[arg-type]
    for key in OTHER_KEYS:
        await client.set(key, "1")


async def test_every_script_runs_on_a_cluster_node(cluster_settings: Settings) -> None:
    """The projector, a rebuild of the Redis read models, the rate limiter and the query
    scripts all work against one cluster-mode node: no script spans hash slots. The projector
    also deletes what an old release left under the old key names, and nothing else."""
    settings = cluster_settings
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await _seed_old_release(client)
        async with command_pool(settings) as pool, worker(settings) as task:
            agents, items = await populate(pool, agents=10, items=40)
            await vote_load(pool, agents, items, seconds=1.5, writers=4, seed=7)
            await wait_caught_up(settings, worker=task)
            await assert_read_models_match_ledger(settings)
            # One key a command: these keys are in different slots.
            assert [k for k in [*OLD_KEYS, f"{{{PREFIX}:g1}}:meta"] if await client.exists(k)] == []
            assert [k for k in OTHER_KEYS if await client.exists(k)] == OTHER_KEYS

            reports = await rebuild(settings, ("redis",), _Quiet())
            assert [(r.projection, r.old_generation, r.new_generation) for r in reports] == [
                ("redis", 1, 2)
            ]
            await vote_load(pool, agents, items, seconds=0.5, writers=2, seed=8)
            await wait_caught_up(settings, worker=task)
            assert await generations(settings) == (1, 2)
            await assert_read_models_match_ledger(settings)
            await _check_query_scripts(settings, client)
        await _check_rate_limiter(client)
    finally:
        await client.aclose()


def _keys_of(prefix: str) -> list[str]:
    """Keys of every kind under `prefix`, current names and old ones."""
    ns1, ns12 = redis_keys.namespace(prefix, 1), redis_keys.namespace(prefix, 12)
    current = [redis_keys.pointer(prefix), redis_keys.owner(prefix), f"{ns1}:meta"]
    current += [f"{ns1}:item:song-1", f"{ns1}:item:x:meta", f"{ns1}:top:song", f"{ns12}:meta"]
    old = [f"{prefix}:generation", f"{prefix}:ledger", f"{{{prefix}:g1}}:meta"]
    old += [f"{{{prefix}:g1}}:item:song-1", f"{{{prefix}:g3}}:changes"]
    return current + old


async def test_a_script_touching_another_slot_is_refused(
    strict_scripts: None, cluster_node_url: str
) -> None:
    """What the test above relies on: the node refuses keys of two slots, declared or not."""
    client = aioredis.Redis.from_url(cluster_node_url)
    try:
        touch = client.register_script(
            "redis.call('SET', KEYS[1], 1) return redis.call('GET', ARGV[1])"
        )
        with pytest.raises(redis.ResponseError, match="same slot"):
            await touch(keys=["{a}:x"], args=["{b}:y"])
        with pytest.raises(redis.ResponseError, match="slot"):
            await touch(keys=["{a}:x", "{b}:y"], args=["{a}:z"])
        assert await touch(keys=["{a}:x"], args=["{a}:x"]) == b"1"
    finally:
        await client.aclose()


async def test_scans_find_exactly_their_own_keys(cluster_node_url: str) -> None:
    """The SCAN patterns of one prefix match none of a similar prefix's keys (`vl2`, glob
    characters, one ending like a generation), and an item id ending in `:meta` is no
    generation."""
    prefixes = ["vl", "vl2", "v?", "vx", "v*l", "v[l]", "vl:g1", "vl-test:x"]
    client = aioredis.Redis.from_url(cluster_node_url)
    try:
        for prefix in prefixes:
            for key in _keys_of(prefix):
                await client.set(key, "1")
        for prefix in prefixes:
            store = RedisStore(client, prefix, retention_days=1, stream_max=10, fallback=_one)
            assert await store.generations() == [1, 12]
            await store.drop(12)
            assert await store.generations() == [1]
        left = {key for prefix in prefixes for key in _keys_of(prefix) if ":g12:" not in key}
        assert await _all_keys(client) == left
        for prefix in prefixes:  # each clears its own keys, current and old, and only those
            assert await pointers.adopt_redis(client, prefix, "ledger-a") == "1"  # its owner
            left = (left - set(_keys_of(prefix))) | {redis_keys.owner(prefix)}
            assert await _all_keys(client) == left
    finally:
        await client.aclose()


async def _all_keys(client: aioredis.Redis) -> set[str]:
    return {key.decode() async for key in client.scan_iter()}


async def _one() -> int:
    return 1


@pytest.fixture
def cluster_node_url() -> Iterator[str]:
    with cluster_node() as url:
        yield url
