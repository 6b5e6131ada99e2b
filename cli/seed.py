"""`voteledger seed`: realistic demo and benchmark data, written as real ledger events.

Agents and items are registered and listed as events; each vote is decided by the command side's
`decide` on its (agent, item) slot, so every `VoteCast` carries the right previous direction and
time, and vote_slots ends up holding the final state, so the command API carries on from the seeded
data. The agents, items and vote_slots rows are written by the commands modules that own them.
Item popularity follows a Zipf-like law and vote times are spread over the last D days, so daily
and trending lists mean something. Agents belong to owners as they would in a store: a few owners
run fleets of many agents, most run one; both events of an agent carry its owner.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
import typer

from cli import names
from cli.common import console, settings
from cli.progress import counting
from commands.agents import copy_agents
from commands.catalogue import copy_items
from commands.decide import CastVote, Slot, decide, evolve
from commands.record import copy_slots
from events import partitions, store
from events.types import AgentRegistered, Direction, Event, ItemListed, ItemType

_DIRECTIONS: tuple[Direction, ...] = ("up", "down", "none")
# Agents mostly vote up, sometimes down, and now and then change their mind or retract.
_FIRST_VOTE: tuple[Direction, ...] = ("up",) * 7 + ("down",) * 3
_EMPTY = Slot()  # a slot with no vote yet (one object: a million votes are seeded in seconds)


@dataclass(frozen=True, slots=True)
class SeedPlan:
    agents: int
    items: int
    votes: int
    days: float
    seed: int = 0


SlotKey = tuple[uuid.UUID, str]
Item = tuple[str, ItemType, str]


def _items(plan: SeedPlan, run: str) -> list[Item]:
    """Three songs to one tool, with plausible titles."""
    rng = random.Random(plan.seed)
    songs, tools = names.song_titles(rng), names.tool_titles(rng)
    return [
        (f"song-{run}-{i}", "song", next(songs))
        if i % 4
        else (f"tool-{run}-{i}", "tool", next(tools))
        for i in range(plan.items)
    ]


def _owners(rng: random.Random, agents: list[uuid.UUID], run: str) -> dict[uuid.UUID, str]:
    """Each agent's owner: about 40% of the agents in fleets (one fleet per 50 agents, sized by
    a Zipf-like law, so the first is the largest), the others each with an owner of its own."""
    fleets = max(1, len(agents) // 50)
    weights = [1.0 / (k + 1) for k in range(fleets)]
    owners = {}
    for n, agent in enumerate(agents):
        if rng.random() < 0.4:
            owners[agent] = f"fleet-{run}-{rng.choices(range(fleets), weights)[0]}"
        else:
            owners[agent] = f"owner-{run}-{n}"
    return owners


@dataclass(frozen=True, slots=True)
class Generated:
    """The agents and their owners, the items, a stream of (event, recorded_at) in time order,
    and the slots the stream leaves behind (filled while the stream is consumed)."""

    agents: list[uuid.UUID]
    owners: dict[uuid.UUID, str]
    items: list[Item]
    events: Iterator[tuple[Event, datetime]]
    slots: dict[SlotKey, Slot]


def generate(plan: SeedPlan, now: datetime, run: str) -> Generated:
    rng = random.Random(plan.seed)
    agents = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(plan.agents)]
    # A generator of their own: the rest of a seed's data stays what it was before owners.
    owners = _owners(random.Random(plan.seed + 1), agents, run)
    items = _items(plan, run)
    start = now - timedelta(days=plan.days)
    slots: dict[SlotKey, Slot] = {}

    def stream() -> Iterator[tuple[Event, datetime]]:
        for agent in agents:
            yield AgentRegistered(agent_id=agent, name="seed", owner=owners[agent]), start
        for item_id, item_type, title in items:
            yield ItemListed(item_id=item_id, item_type=item_type, title=title), start
        for at, agent, (item_id, item_type, _) in _votes(rng, plan, agents, items, start, now):
            slot = slots.get((agent, item_id), _EMPTY)
            command = CastVote(agent, item_id, _direction(rng, slot.direction))
            for event in decide(command, item_type, slot, owners[agent]):
                slot = evolve(slot, event, at)
                yield event, at
            slots[agent, item_id] = slot

    return Generated(agents, owners, items, stream(), slots)


def _votes(
    rng: random.Random,
    plan: SeedPlan,
    agents: list[uuid.UUID],
    items: list[Item],
    start: datetime,
    now: datetime,
) -> Iterator[tuple[datetime, uuid.UUID, Item]]:
    """When, who and on what each vote is, in time order: vote times spread evenly over the
    span; item k is chosen with weight 1/(k+1) (Zipf-like popularity)."""
    span = (now - start).total_seconds()
    weights = [1.0 / (k + 1) for k in range(plan.items)]
    times = sorted(rng.random() * span for _ in range(plan.votes))
    chosen = rng.choices(range(plan.items), weights=weights, k=plan.votes)
    for offset, k in zip(times, chosen, strict=True):
        at = start + timedelta(seconds=offset)
        yield at, agents[rng.randrange(plan.agents)], items[k]


def _direction(rng: random.Random, previous: Direction) -> Direction:
    """A new vote, never the slot's current one: so every vote changes its slot."""
    if previous == "none":
        return rng.choice(_FIRST_VOTE)
    return rng.choice([d for d in _DIRECTIONS if d != previous])


def write(
    conn: psycopg.Connection,
    plan: SeedPlan,
    *,
    progress: Callable[[int], None] = lambda n: None,
    now: datetime | None = None,
) -> int:
    """Write the plan in one transaction; returns the number of events appended."""
    now = now or datetime.now(UTC)
    run = secrets.token_hex(3)  # item ids of separate seed runs never collide
    seeded = generate(plan, now, run)
    with conn.transaction():
        partitions.ensure(conn, (now - timedelta(days=plan.days)).isoformat(), 2)
        copy_agents(conn, seeded.owners.items(), "seed")
        copy_items(conn, seeded.items)
        count = store.append_many_sync(conn, _counting(seeded.events, progress))
        copy_slots(conn, ((a, i, slot) for (a, i), slot in seeded.slots.items()))
    return count


def _counting(
    events: Iterator[tuple[Event, datetime]], progress: Callable[[int], None], every: int = 10_000
) -> Iterator[tuple[Event, datetime]]:
    n = 0
    for pair in events:
        yield pair
        n += 1
        if n % every == 0:
            progress(every)
    progress(n % every)


# `--demo`: enough for the chart page to mean something, seeded in about a second.
DEMO = SeedPlan(agents=500, items=120, votes=4_000, days=14)


def seed_command(
    agents: Annotated[int, typer.Option(min=1, help="Agents to register")] = 100,
    items: Annotated[int, typer.Option(min=1, help="Items to list (3 songs to 1 tool)")] = 1000,
    votes: Annotated[int, typer.Option(min=0, help="Vote events to record")] = 10_000,
    days: Annotated[float, typer.Option(min=0.0, help="Spread vote times over this many days")] = 7,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data)")] = 0,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help=f"A small catalogue for the chart page ({DEMO.agents} agents, {DEMO.items} "
            f"items, {DEMO.votes:,} votes over {DEMO.days:g} days); overrides the sizes",
        ),
    ] = False,
    if_empty: Annotated[
        bool, typer.Option("--if-empty", help="Seed only a ledger that holds no event yet")
    ] = False,
) -> None:
    """Write demo/benchmark data as real ledger events (bulk, in one transaction)."""
    plan = SeedPlan(agents=agents, items=items, votes=votes, days=days, seed=seed)
    if demo:
        plan = replace(DEMO, seed=seed)
    started = time.perf_counter()
    with psycopg.connect(settings().database_url) as conn:
        if if_empty and not store.is_empty(conn):
            console.print("the ledger already holds events: not seeding")
            return
        total = plan.agents + plan.items + plan.votes
        with counting("seeding", "events", total) as bar:
            count = write(conn, plan, progress=bar.advance)
    elapsed = time.perf_counter() - started
    console.print(
        f"seeded {count:,} events ({plan.agents:,} agents, {plan.items:,} items, "
        f"{plan.votes:,} votes over {plan.days:g} days) in {elapsed:.1f} s, "
        f"{count / max(elapsed, 1e-9):,.0f} events/s"
    )
