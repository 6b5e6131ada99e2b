"""Redis through Sentinel, as in production, including a failover.

A primary, a replica of it and one sentinel monitoring them (redis-server processes of the
test's own). infra.redis_client.connect finds the primary through the sentinel; the command API,
the projector and the query API are given only the sentinel (REDIS_URL names a port where
nothing listens). Then the sentinel fails the primary over to the replica while votes are cast
and read back: the apps must follow to the new primary, and no vote may be lost.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from devtools import devstack
from infra import redis_client
from tests.conftest import fresh_database, make_settings
from tests.integration.conftest import Agent, new_agent, new_item
from tests.integration.replica_servers import (
    NO_REDIS,
    ledger_votes,
    position_of,
    projector,
    vote,
    wait_until,
)
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(150)

MASTER = "voteledger"
SENTINEL_CONF = f"""\
sentinel monitor {MASTER} 127.0.0.1 {{port}} 1
sentinel down-after-milliseconds {MASTER} 1000
sentinel failover-timeout {MASTER} 5000
"""
PREFIX = "vlsentinel"
# After the sentinel names the new primary, the apps' connections are there within this long:
# the pools ask the sentinels once a second (infra/redis_client.py FOLLOW_SECONDS), the test
# samples connections once a second, and a busy machine adds to both. Without following, 10 s.
MOVE_SECONDS = 3.0
# After the sentinel makes the old primary a replica, everything answers again within this long,
RECOVERY_SECONDS = 5.0
SETTLED_SECONDS = 3.0  # and keeps answering, from Redis, for this long.


@dataclass(frozen=True)
class Redises:
    primary: int
    replica: int
    sentinel: int

    @property
    def sentinels(self) -> str:
        return f"127.0.0.1:{self.sentinel}"

    def ask(self, *command: str) -> object:
        """A command to the sentinel (or ROLE to a server, with port=)."""
        with redis.Redis(port=self.sentinel, decode_responses=True, socket_timeout=2) as client:
            return client.execute_command(*command)

    def master(self) -> int:
        """The port of the primary the sentinel names."""
        reply = self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        assert isinstance(reply, list)
        return int(reply[1])

    def replica_in_sync(self) -> bool:
        """The sentinel knows the replica, and its link to the primary is up."""
        replicas = self.ask("SENTINEL", "REPLICAS", MASTER)
        assert isinstance(replicas, list)
        return any(
            r["flags"] == "slave" and r["master-link-status"] == "ok" and int(r["port"]) == port
            for r in replicas
            for port in (self.replica, self.primary)
        )


def role(port: int) -> str:
    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
        return str(client.execute_command("ROLE")[0])


def client_names(port: int) -> list[str]:
    """The names of the clients connected to the Redis at `port`."""
    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
        return [c["name"] for c in client.client_list() if c["name"]]


@pytest.fixture(scope="module")
def redises() -> Iterator[Redises]:
    """A primary, its replica and a sentinel monitoring them; stopped by PID at the end."""
    with ExitStack() as stack:
        primary = devstack.start_redis_server(stack)
        replica = devstack.start_redis_server(stack, "--replicaof", "127.0.0.1", str(primary))
        conf = SENTINEL_CONF.format(port=primary)
        sentinel = devstack.start_redis_server(stack, "--sentinel", config=conf)
        yield Redises(primary, replica, sentinel)


INCREMENT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_connect_reaches_the_primary_through_sentinel(
    redises: Redises, database_url: str
) -> None:
    """Both kinds of client (plain, and the bounded pool that waits its turn) write, read and
    run a script on the primary the sentinel names, though REDIS_URL names no server."""
    sentinels = redises.sentinels
    settings = make_settings(database_url, NO_REDIS, PREFIX, VOTELEDGER_REDIS_SENTINELS=sentinels)
    primary = redises.master()
    plain = redis_client.connect(settings, socket_timeout=2)
    bounded = redis_client.connect(settings, max_connections=2, timeout=5, socket_timeout=2)
    assert isinstance(bounded.connection_pool, redis_client._BlockingFollowingPool)
    for name, client in (("plain", plain), ("bounded", bounded)):
        key = f"{{{PREFIX}}}:{name}"
        try:
            await client.set(key, 40)
            assert await client.eval(INCREMENT, 1, key, 2) == 42
            # More at once than the bounded pool has connections: they wait, none fails.
            assert await asyncio.gather(*(client.get(key) for _ in range(10))) == [b"42"] * 10
            assert (await client.execute_command("ROLE"))[0] == b"master"
            assert client.connection_pool.master_address == ("127.0.0.1", primary)
        finally:
            await client.aclose()  # its connections to the sentinels too
        with redis.Redis(port=primary) as direct:
            assert direct.get(key) == b"42"
            direct.delete(key)


@dataclass(frozen=True)
class Apps:
    command: str
    query: str
    database_url: str


@pytest.fixture(scope="module")
def apps(redises: Redises, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    """The command API, a projector and the query API, told of the sentinel only."""
    sentinels = redises.sentinels
    log = tmp_path_factory.mktemp("sentinel") / "projector.log"
    with fresh_database() as url:
        settings = make_settings(url, NO_REDIS, PREFIX, VOTELEDGER_POLL_INTERVAL="0.2")
        with (
            projector(settings, log, VOTELEDGER_REDIS_SENTINELS=sentinels),
            uvicorn_server(
                "commands.app:create_app", settings, VOTELEDGER_REDIS_SENTINELS=sentinels
            ) as command,
            uvicorn_server(
                "queries.app:create_app", settings, VOTELEDGER_REDIS_SENTINELS=sentinels
            ) as query,
        ):
            yield Apps(command, query, url)


async def _read_from_redis(query: httpx.AsyncClient, item_id: str, at: int) -> httpx.Response:
    """The item read at position `at`, once the query API answers it from Redis (the projector
    catches up with Redis first)."""
    deadline = time.monotonic() + 20
    params = {"min_position": at, "wait_ms": 2000}
    while True:
        read = await query.get(f"/api/v1/items/{item_id}", params=params)
        if read.status_code == 200 and read.headers["X-Read-Model"] == "redis":
            assert position_of(read) >= at
            return read
        assert time.monotonic() < deadline, f"not answered from Redis: {read.headers} {read.text}"
        await asyncio.sleep(0.2)


async def test_the_apps_work_through_sentinel(apps: Apps, redises: Redises) -> None:
    """A vote cast through the command API is read back from Redis through the query API."""
    async with (
        httpx.AsyncClient(base_url=apps.command, timeout=10) as command,
        httpx.AsyncClient(base_url=apps.query, timeout=10) as query,
    ):
        agent, item = await new_agent(command), await new_item(command, "song")
        voted = await vote(command, agent, item, "up")
        assert voted.status_code in (200, 201), voted.text
        read = await _read_from_redis(query, item, int(voted.json()["position"]))
        assert (read.json()["up"], read.json()["down"]) == (1, 0)
    assert f"{PREFIX}:query" in client_names(redises.master())


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    what: str  # vote, read, or where the apps' Redis connections are
    outcome: str  # the status code, the transport error, or how many connections
    model: str = ""  # the read model that answered a read


@dataclass
class Traffic:
    """Votes, each changing its agent's vote, each read back at its position; what each got."""

    command: httpx.AsyncClient
    query: httpx.AsyncClient
    agents: list[Agent]
    items: list[str]
    votes: dict[tuple[int, int], str] = field(default_factory=dict)  # as answered 2xx
    accepted: set[int] = field(default_factory=set)  # the positions of votes answered 2xx
    samples: list[Sample] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            await self.step(n % len(self.agents), n // len(self.agents) % len(self.items))
            n += 1
            await asyncio.sleep(0.02)

    async def step(self, agent: int, item: int) -> None:
        direction = "down" if self.votes.get((agent, item)) == "up" else "up"
        try:
            voted = await vote(self.command, self.agents[agent], self.items[item], direction)
        except httpx.HTTPError as exc:
            self.samples.append(Sample(time.monotonic(), "vote", type(exc).__name__))
            return
        self.samples.append(Sample(time.monotonic(), "vote", str(voted.status_code)))
        if not voted.is_success:
            return
        self.votes[agent, item] = direction
        position = int(voted.json()["position"])
        self.accepted.add(position)
        params = {"min_position": position, "wait_ms": 2000}
        try:
            read = await self.query.get(f"/api/v1/items/{self.items[item]}", params=params)
        except httpx.HTTPError as exc:
            self.samples.append(Sample(time.monotonic(), "read", type(exc).__name__))
            return
        model = read.headers.get("X-Read-Model", "")
        self.samples.append(Sample(time.monotonic(), "read", str(read.status_code), model))

    def expected(self, item: int) -> tuple[int, int]:
        """Up and down votes of an item, as the votes answered 2xx left them."""
        cast = [d for (_, i), d in self.votes.items() if i == item]
        return cast.count("up"), cast.count("down")

    def summary(self, since: float) -> str:
        """What the requests got, by second since `since`."""
        lines: dict[int, dict[str, int]] = {}
        for s in self.samples:
            counts = lines.setdefault(math.floor(s.at - since), {})
            label = f"{s.what} {s.outcome}{' ' + s.model if s.model else ''}"
            counts[label] = counts.get(label, 0) + 1
        return "\n".join(f"{second:+3d}s {counts}" for second, counts in sorted(lines.items()))


def _bad(sample: Sample) -> bool:
    """A request that failed, or a read that did not come from Redis."""
    if sample.what not in ("vote", "read"):
        return False
    failed = not sample.outcome.startswith("2")
    return failed or (sample.what == "read" and sample.model != "redis")


def _app_connections(port: int) -> int:
    """The clients of the Redis at `port` but replicas, sentinels and this one: the apps'."""
    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
        me = client.client_id()
        return sum(
            int(c["id"]) != me
            and not set(c["flags"]) & {"S", "M"}
            and not c["name"].startswith("sentinel-")
            for c in client.client_list()
        )


@dataclass(frozen=True)
class Failover:
    """What happened around a failover; times in seconds after the sentinel named the new
    primary."""

    old: int
    new: int
    switched: float  # time.monotonic() when the sentinel named the new primary
    demoted: float  # when the old primary was found a replica of the new one
    traffic: Traffic

    def last_bad(self) -> float:
        """When the last request failed or the last read did not come from Redis (0: none)."""
        bad = [s.at - self.switched for s in self.traffic.samples if _bad(s)]
        return max([0.0, *bad])

    def moved(self) -> float | None:
        """When none of the apps' connections were at the old primary and some at the new."""
        places: dict[float, dict[str, int]] = {}
        for s in self.traffic.samples:
            if s.what.startswith("apps@"):
                places.setdefault(s.at, {})[s.what] = int(s.outcome)
        for at, counts in sorted(places.items()):
            if counts["apps@old"] == 0 and counts["apps@new"] > 0:
                return at - self.switched
        return None


async def _fail_over(redises: Redises) -> tuple[int, int, float]:
    """The sentinel fails the primary over; the old and new primary's ports and when the
    sentinel named the new one."""
    old = redises.master()
    await asyncio.to_thread(wait_until, "the replica in sync", redises.replica_in_sync)
    assert redises.ask("SENTINEL", "FAILOVER", MASTER) == "OK"
    new = await asyncio.to_thread(
        wait_until, "a new primary", lambda: redises.master() if redises.master() != old else None
    )
    return old, new, time.monotonic()


async def _until_settled(traffic: Traffic, old: int, new: int) -> float:
    """Notes where the apps' connections are until the sentinel has made the old primary a
    replica and the traffic has then gone well for SETTLED_SECONDS (at most RECOVERY_SECONDS
    more); returns when the old primary was found a replica."""
    demoted: float | None = None
    give_up = time.monotonic() + 30
    while time.monotonic() < give_up:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        traffic.samples.append(Sample(now, "apps@old", str(_app_connections(old))))
        traffic.samples.append(Sample(now, "apps@new", str(_app_connections(new))))
        if demoted is None:
            demoted = time.monotonic() if role(old) == "slave" else None
            continue
        bad = [s.at for s in traffic.samples if _bad(s)]
        if time.monotonic() - max(bad, default=demoted) >= SETTLED_SECONDS:
            break
        give_up = min(give_up, demoted + RECOVERY_SECONDS + SETTLED_SECONDS)
    assert demoted is not None, "the sentinel never made the old primary a replica"
    return demoted


@pytest.fixture(scope="module")
async def failover(apps: Apps, redises: Redises) -> Failover:
    """Votes cast and read back, each, while the sentinel fails the primary over to the
    replica, until the old primary is a replica and the traffic has gone well for a while."""
    async with (
        httpx.AsyncClient(base_url=apps.command, timeout=10) as command,
        httpx.AsyncClient(base_url=apps.query, timeout=10) as query,
    ):
        agents = [await new_agent(command) for _ in range(4)]
        items = [await new_item(command, "song") for _ in range(3)]
        traffic, stop = Traffic(command, query, agents, items), asyncio.Event()
        running = asyncio.create_task(traffic.run(stop))
        try:
            await asyncio.sleep(1)
            old, new, switched = await _fail_over(redises)
            demoted = await _until_settled(traffic, old, new)
        finally:
            stop.set()
            await running
    return Failover(old, new, switched, demoted, traffic)


async def test_a_failover_loses_no_vote(failover: Failover, apps: Apps) -> None:
    """After a failover every request is answered again, reads from Redis, within
    RECOVERY_SECONDS of the sentinel demoting the old primary; the ledger holds exactly the
    votes answered 2xx, Redis counts them all, and the apps' connections are at the new
    primary only."""
    traffic, switched = failover.traffic, failover.switched
    print(f"failover {failover.old} -> {failover.new}; old primary a replica after ", end="")
    print(f"{failover.demoted - switched:.1f} s; requests by second since the switch:")
    print(traffic.summary(switched))
    assert failover.last_bad() <= failover.demoted - switched + RECOVERY_SECONDS
    assert ledger_votes(apps.database_url, traffic.items) == traffic.accepted
    last = max(traffic.accepted)
    async with httpx.AsyncClient(base_url=apps.query, timeout=10) as query:
        for n, item in enumerate(traffic.items):
            read = await _read_from_redis(query, item, last)
            assert (read.json()["up"], read.json()["down"]) == traffic.expected(n), item
    assert (role(failover.old), role(failover.new)) == ("slave", "master")
    assert f"{PREFIX}:query" in client_names(failover.new)
    assert _app_connections(failover.old) == 0


def test_the_apps_move_when_the_new_primary_is_named(failover: Failover) -> None:
    """Within MOVE_SECONDS of the sentinel naming the new primary, the apps' connections are
    there and none is left at the old one."""
    moved = failover.moved()
    assert moved is not None and moved <= MOVE_SECONDS, failover.traffic.summary(failover.switched)
