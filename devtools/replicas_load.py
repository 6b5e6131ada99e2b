"""The replicas drill's load: voters and readers over HTTP against pairs of replicas.

Votes go to the two command APIs in turn, reads to the two query APIs in turn. A request that
meets a connection error or a timeout (a replica that died under it) is sent again, the SAME
request with the SAME Idempotency-Key, to the other replica: at most ATTEMPTS tries in all. Such
errors are counted per replica apart from the answers, which are counted per replica and status.

Each voter is one agent voting one request at a time (the next only once the last is answered),
and it always asks for a direction other than the one it last got acknowledged on that item. So
every acknowledged vote must have recorded an event (201, `changed: true`), and the final state of
each (agent, item) slot must be the last acknowledged direction. A retry the server acted on a
second time, instead of replaying the first answer, would show as a 200 with `changed: false`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

ATTEMPTS = 4  # tries of one request in all, alternating between the two replicas
TIMEOUT = httpx.Timeout(5.0)
DIRECTIONS = ("up", "down", "none")
READERS = 8
DRAIN = 45.0  # seconds the last requests get to finish after the load's end (bounds the run)

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    api_key: str


@dataclass(frozen=True, slots=True)
class Ack:
    """A vote that a command API acknowledged with a 2xx."""

    agent_id: str
    item_id: str
    key: str
    direction: str
    status: int
    position: int | None
    changed: bool
    replayed: bool
    replica: str


@dataclass(frozen=True, slots=True)
class Oddity:
    """An answer other than the expected one (every 5xx is one): what, where and when."""

    what: str
    replica: str
    status: int
    body: str
    at: float  # seconds after the load started


@dataclass
class Tally:
    started: float
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    # replica -> error type -> count, of errors whose request was then sent to the other replica
    retried: dict[str, Counter[str]] = field(default_factory=dict)
    gave_up: Counter[str] = field(default_factory=Counter)  # "vote"/"read": no answer at all
    oddities: list[Oddity] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    unanswered_votes: list[str] = field(default_factory=list)  # their idempotency keys
    uncertain: set[tuple[str, str]] = field(default_factory=set)  # slots whose last vote failed
    votes_sent: int = 0
    reads_sent: int = 0
    reads_ok: int = 0
    vote_seconds: list[float] = field(default_factory=list)
    ended: float = 0.0
    client_cpu: float = 0.0  # seconds of CPU this process spent on the load

    @property
    def elapsed(self) -> float:
        return max(1e-9, (self.ended or time.monotonic()) - self.started)


class Pair:
    """One client's connections to two replicas of one API; its requests take turns. (A client
    of its own per voter and reader: httpx's pool costs CPU per request for every connection it
    holds, and the load's clients share the machine's CPUs with the servers.)"""

    def __init__(self, urls: dict[str, str], tally: Tally, turn: int) -> None:
        self.replicas = [
            (name, httpx.AsyncClient(base_url=url, timeout=TIMEOUT)) for name, url in urls.items()
        ]
        self.tally, self.turn = tally, turn

    async def request(self, send: Send) -> tuple[str, httpx.Response] | None:
        """The answer of the first replica that gives one, or None after ATTEMPTS tries."""
        first, self.turn = self.turn, self.turn + 1
        for attempt in range(ATTEMPTS):
            name, client = self.replicas[(first + attempt) % len(self.replicas)]
            try:
                response = await send(client)
            except httpx.TransportError as exc:
                if attempt + 1 < ATTEMPTS:
                    self.tally.retried[name][type(exc).__name__] += 1
                    await asyncio.sleep(0.05 * attempt)
                continue
            self.tally.statuses[name][response.status_code] += 1
            return name, response
        return None

    async def __aenter__(self) -> Pair:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, client in self.replicas:
            await client.aclose()


class Load:
    def __init__(self, commands: dict[str, str], queries: dict[str, str]) -> None:
        self.tally = Tally(started=time.monotonic())
        self.commands, self.queries = commands, queries
        for name in [*commands, *queries]:
            self.tally.statuses[name], self.tally.retried[name] = Counter(), Counter()

    def odd(self, what: str, replica: str, response: httpx.Response) -> None:
        at = round(time.monotonic() - self.tally.started, 3)
        body = response.text[:300]
        self.tally.oddities.append(Oddity(what, replica, response.status_code, body, at))

    async def vote(
        self, pair: Pair, agent: Agent, item: str, direction: str, key: str
    ) -> Ack | None:
        headers = {"Authorization": f"Bearer {agent.api_key}", "Idempotency-Key": key}
        body = {"item_id": item, "vote": direction}
        self.tally.votes_sent += 1
        sent = time.monotonic()
        got = await pair.request(lambda c: c.post("/api/v1/vote", json=body, headers=headers))
        if got is None:
            self.tally.gave_up["vote"] += 1
            self.tally.unanswered_votes.append(key)
            return None
        replica, response = got
        if not 200 <= response.status_code < 300:
            self.odd("vote", replica, response)
            return None
        self.tally.vote_seconds.append(time.monotonic() - sent)
        data = response.json()
        replayed = response.headers.get("idempotent-replayed") == "true"
        position = data.get("position")
        changed = bool(data.get("changed"))
        status = response.status_code
        args = (direction, status, position, changed, replayed, replica)
        return Ack(agent.agent_id, item, key, *args)

    async def voter(self, agent: Agent, items: list[str], plan: Plan, seed: int) -> None:
        rng = random.Random(seed)
        state: dict[str, str] = {}
        offset = rng.random() * plan.vote_interval
        async with Pair(self.commands, self.tally, seed) as pair:
            for n in range(plan.votes_each):
                if not await plan.pace(self.tally.started + offset + n * plan.vote_interval):
                    return
                item = rng.choice(items)
                direction = rng.choice([d for d in DIRECTIONS if d != state.get(item, "none")])
                key = f"drill-{n}-{uuid.uuid4().hex}"
                ack = await self.vote(pair, agent, item, direction, key)
                if ack is None:
                    self.tally.uncertain.add((agent.agent_id, item))
                    continue
                self.tally.acks.append(ack)
                state[item] = direction
                self.tally.uncertain.discard((agent.agent_id, item))

    async def reader(self, items: list[str], plan: Plan, seed: int) -> None:
        rng = random.Random(seed)
        offset = rng.random() * plan.read_interval
        async with Pair(self.queries, self.tally, seed) as pair:
            for n in range(plan.reads_each):
                if not await plan.pace(self.tally.started + offset + n * plan.read_interval):
                    return
                choice = rng.randrange(3)
                if choice < 2:
                    path = f"/api/v1/top?item_type={('song', 'tool')[choice]}&limit=20"
                else:
                    path = f"/api/v1/items/{rng.choice(items)}"
                await self.read(pair, path)

    async def read(self, pair: Pair, path: str) -> None:
        self.tally.reads_sent += 1
        got = await pair.request(lambda c: c.get(path))
        if got is None:
            self.tally.gave_up["read"] += 1
        elif got[1].status_code == 200:
            self.tally.reads_ok += 1
        else:
            self.odd("read", *got)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much load: counts per client and pacing, bounded by both count and time."""

    deadline: float
    votes_each: int
    vote_interval: float
    reads_each: int
    read_interval: float

    @classmethod
    def of(cls, duration: float, rate: float, read_rate: float, voters: int) -> Plan:
        deadline = time.monotonic() + duration
        votes_each = math.ceil(rate * duration / voters)
        reads_each = math.ceil(read_rate * duration / READERS)
        return cls(deadline, votes_each, voters / rate, reads_each, READERS / read_rate)

    async def pace(self, due: float) -> bool:
        """Wait until `due` (a client that fell behind goes on at once); False once the load's
        time is up."""
        now = time.monotonic()
        if now >= self.deadline or due >= self.deadline:
            return False
        if due > now:
            await asyncio.sleep(due - now)
        return True


async def run_load(
    commands: dict[str, str],
    queries: dict[str, str],
    agents: list[Agent],
    items: list[str],
    plan: Plan,
) -> Tally:
    """Run the voters and readers until the plan's end; every request is answered or given up
    on within ATTEMPTS timeouts, and DRAIN bounds the whole wait."""
    load = Load(commands, queries)
    load.tally.started, cpu = time.monotonic(), time.process_time()
    clients = [load.voter(a, items, plan, i) for i, a in enumerate(agents)]
    clients += [load.reader(items, plan, 1000 + i) for i in range(READERS)]
    tasks = [asyncio.create_task(c) for c in clients]
    try:
        left = plan.deadline - time.monotonic() + DRAIN
        _, late = await asyncio.wait(tasks, timeout=max(1.0, left))
        for task in late:
            task.cancel()
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        if late:
            load.tally.gave_up["still running at the drain's end"] += len(late)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each closes its connections
        load.tally.ended, load.tally.client_cpu = time.monotonic(), time.process_time() - cpu
    return load.tally
