"""Realistic demo and benchmark data, written as real ledger events through the same encoding.

Agents and items are registered and listed as events; votes follow each (agent, item) slot so that
every `VoteCast` carries the right previous direction and time, and vote_slots ends up holding the
final state, so the command API carries on from the seeded data. Item popularity follows a Zipf-like
law and vote times are spread over the last D days, so daily and trending lists mean something.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from events import store
from events.types import AgentRegistered, Direction, Event, ItemListed, VoteCast

_DIRECTIONS: tuple[Direction, ...] = ("up", "down", "none")
# Agents mostly vote up, sometimes down, and now and then change their mind or retract.
_FIRST_VOTE: tuple[Direction, ...] = ("up",) * 7 + ("down",) * 3


@dataclass(frozen=True, slots=True)
class SeedPlan:
    agents: int
    items: int
    votes: int
    days: float
    seed: int = 0


@dataclass(slots=True)
class Slot:
    direction: Direction
    cast_at: datetime
    version: int


def _items(plan: SeedPlan, run: str) -> list[tuple[str, str, str]]:
    return [
        (f"{'song' if i % 4 else 'tool'}-{run}-{i}", "song" if i % 4 else "tool", f"Item {i}")
        for i in range(plan.items)
    ]


def generate(
    plan: SeedPlan, now: datetime, run: str
) -> tuple[list[uuid.UUID], list[tuple[str, str, str]], Iterator[tuple[Event, datetime]],
           dict[tuple[uuid.UUID, str], Slot]]:  # fmt: skip
    """The agents, the items, a stream of (event, recorded_at) in time order, and the slots the
    stream leaves behind (filled while the stream is consumed)."""
    rng = random.Random(plan.seed)
    agents = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(plan.agents)]
    items = _items(plan, run)
    start = now - timedelta(days=plan.days)
    span = (now - start).total_seconds()
    # Zipf-like popularity: item k is chosen with weight 1/(k+1).
    weights = [1.0 / (k + 1) for k in range(plan.items)]
    slots: dict[tuple[uuid.UUID, str], Slot] = {}

    def stream() -> Iterator[tuple[Event, datetime]]:
        for agent in agents:
            yield AgentRegistered(agent_id=agent, name="seed"), start
        for item_id, item_type, title in items:
            yield ItemListed(item_id=item_id, item_type=item_type, title=title), start  # type: ignore[arg-type]
        times = sorted(rng.random() * span for _ in range(plan.votes))
        chosen = rng.choices(range(plan.items), weights=weights, k=plan.votes)
        for offset, k in zip(times, chosen, strict=True):
            at = start + timedelta(seconds=offset)
            agent = agents[rng.randrange(plan.agents)]
            item_id, item_type, _ = items[k]
            slot = slots.get((agent, item_id))
            previous: Direction = slot.direction if slot else "none"
            if previous == "none":
                direction = rng.choice(_FIRST_VOTE)
            else:
                direction = rng.choice([d for d in _DIRECTIONS if d != previous])
            yield VoteCast(
                agent_id=agent, item_id=item_id, item_type=item_type, direction=direction,  # type: ignore[arg-type]
                previous=previous, previous_cast_at=slot.cast_at if slot else None,
            ), at  # fmt: skip
            slots[(agent, item_id)] = Slot(direction, at, slot.version + 1 if slot else 1)

    return agents, items, stream(), slots


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
    agents, items, events, slots = generate(plan, now, run)
    with conn.transaction():
        conn.execute(
            "SELECT ensure_event_partitions(%s::timestamptz, 2)", (now - timedelta(days=plan.days),)
        )
        with conn.cursor().copy("COPY agents (agent_id, name, key_digest) FROM STDIN") as copy:
            for agent in agents:
                digest = hashlib.sha256(secrets.token_bytes(16)).digest()  # keys nobody holds
                copy.write_row((agent, "seed", digest))
        with conn.cursor().copy("COPY items (item_id, item_type, title) FROM STDIN") as copy:
            for item in items:
                copy.write_row(item)
        count = store.append_many_sync(conn, _counting(events, progress))
        with conn.cursor().copy(
            "COPY vote_slots (agent_id, item_id, direction, cast_at, version) FROM STDIN"
        ) as copy:
            for (agent, item_id), slot in slots.items():
                copy.write_row((agent, item_id, slot.direction, slot.cast_at, slot.version))
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
