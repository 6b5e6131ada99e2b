"""The independent chart (each owner counts once per item) in both read-model stores and the
query API: a property over random agents, owners and votes against both stores in-process; a
sybil owner through the query API; and the one-time upgrade of generations made before it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from events import store
from events.store import Checkpoint
from events.types import AgentRegistered, Direction, Event, ItemListed, Recorded, VoteCast
from infra.settings import Settings
from projections import redis_keys, verify
from projections.model import Changes, fold, fold_all
from projections.readmodel import State, Step
from projections.runner import run_worker
from projections.stores import NAMES, open_store
from queries.app import create_app
from queries.postgres_reader import PostgresReader
from queries.shapes import ListQuery
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import assert_read_models_match_ledger, wait_caught_up

H = 3600.0
VALUE = {"up": 1, "down": -1, "none": 0}
BASE = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def shared(redis_url: str) -> Iterator[Settings]:
    """One database and Redis prefix for the module: each example writes its own generation."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        yield make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.05")


# --- the property: both stores hold what the final vote slots give -------------------------------


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Recorded], list[int], dict[str, tuple[int, int]]]:
    """Events of random agents (some sharing an owner, some their own) voting on a few items,
    cut points for batches, and each voted item's (independent, owners) from the final slots."""
    n_agents = draw(st.integers(1, 7))
    owners = [draw(st.sampled_from([None, "o1", "o2", "o3"])) for _ in range(n_agents)]
    agents = [uuid.UUID(int=i + 1) for i in range(n_agents)]
    items = [f"song-{i}" for i in range(draw(st.integers(1, 3)))]
    events: list[Event] = [AgentRegistered(a, "a", o) for a, o in zip(agents, owners, strict=True)]
    events += [ItemListed(item, "song", item) for item in items]
    slots: dict[tuple[int, str], Direction] = {}
    for _ in range(draw(st.integers(0, 40))):
        agent, item = draw(st.integers(0, n_agents - 1)), draw(st.sampled_from(items))
        previous = slots.get((agent, item), "none")
        direction = draw(st.sampled_from([d for d in VALUE if d != previous]))
        slots[(agent, item)] = direction
        events.append(
            VoteCast(agents[agent], item, "song", direction, previous, None, owners[agent])
        )
    recorded = [
        Recorded(n + 1, 1000 + n // 3, BASE + timedelta(seconds=n), e) for n, e in enumerate(events)
    ]
    cuts = sorted(draw(st.sets(st.integers(1, len(recorded) - 1), max_size=5)))
    sums: dict[str, dict[str, int]] = {}
    voting: dict[str, set[str]] = {}
    for (agent, item), direction in slots.items():
        owner = owners[agent] or str(agents[agent])
        sums.setdefault(item, {})[owner] = sums.get(item, {}).get(owner, 0) + VALUE[direction]
        if direction != "none":
            voting.setdefault(item, set()).add(owner)
    expected = {
        item: (sum((v > 0) - (v < 0) for v in per.values()), len(voting.get(item, ())))
        for item, per in sums.items()
    }
    return recorded, cuts, expected


def _step(events: list[Recorded], state: State) -> Step:
    last = events[-1]
    changes = fold(events, state.epoch, H)
    checkpoint = Checkpoint(last.tx_id, last.position)
    return Step(changes, checkpoint, last.position, len(events), last.recorded_at)


_generations = iter(range(100, 10_000))


async def _stores_after(
    config: Settings, events: list[Recorded], cuts: list[int]
) -> dict[str, dict[str, tuple[int, int]]]:
    """Apply `events` in the batches `cuts` give to a new generation of each store; returns each
    store's (independent, owners) per item, after checking its dump against a fold."""
    generation = next(_generations)
    found = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in NAMES:
            target = await open_store(name, config, stack, config.database_url)
            state = State()
            await target.write(generation, Changes(), state)  # an empty new generation
            for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True):
                state = await target.apply(generation, state, _step(events[a:b], state), 1, H)
            dump = await target.dump(generation)
            expected = fold_all(events, H)
            assert verify.differences(name, dump, expected, H) == []
            found[name] = {i: (t.independent, t.owners) for i, t in dump.model.items.items()}
            await target.drop(generation)
    return found


@settings(max_examples=25, deadline=None)
@given(cases())
def test_both_stores_hold_the_independent_scores_the_vote_slots_give(
    shared: Settings, case: tuple[list[Recorded], list[int], dict[str, tuple[int, int]]]
) -> None:
    """For random agents, owners and vote sequences, split into random batches, each store's
    independent score and owner count per item equal a direct count over the final slots, and
    PostgreSQL and Redis agree."""
    events, cuts, expected = case
    found = asyncio.run(_stores_after(shared, events, cuts))
    for name in NAMES:
        held = {item: s for item, s in found[name].items() if s != (0, 0)}
        assert held == {item: s for item, s in expected.items() if s != (0, 0)}, name
    assert found["postgres"] == found["redis"]


# --- a sybil owner through the query API ----------------------------------------------------------


async def _append(config: Settings, events: list[Event]) -> None:
    async with await psycopg.AsyncConnection.connect(config.database_url) as conn:
        for event in events:
            await store.append(conn, event)


def _sybil_events() -> list[Event]:
    """One owner's 50 agents upvote `song-sybil`; three owners' agents upvote `song-liked`."""
    events: list[Event] = [ItemListed(i, "song", i) for i in ("song-sybil", "song-liked")]
    for n in range(50):
        agent = uuid.uuid4()
        events.append(AgentRegistered(agent, f"bot {n}", "farm"))
        events.append(VoteCast(agent, "song-sybil", "song", "up", "none", None, "farm"))
    for owner in ("alice", "bob", "carol"):
        agent = uuid.uuid4()
        events.append(AgentRegistered(agent, owner, owner))
        events.append(VoteCast(agent, "song-liked", "song", "up", "none", None, owner))
    return events


@contextlib.asynccontextmanager
async def _projected(config: Settings) -> AsyncIterator[None]:
    """A projector worker in this process until the block ends, caught up when it starts."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(config, stop))
    try:
        await wait_caught_up(config, within=30, worker=worker)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)


async def test_a_sybil_owner_cannot_lift_a_song_on_the_independent_chart(shared: Settings) -> None:
    """50 agents of one owner upvoting a song give it 50 net votes but one independent vote:
    a song upvoted by 3 owners ranks above it on the independent chart, below it by net, from
    Redis (the query API) and from PostgreSQL (its reader) alike, with the item detail."""
    await _append(shared, _sybil_events())
    async with _projected(shared):
        app = create_app(shared)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://q") as client:
                net = await client.get("/api/v1/top", params={"item_type": "song"})
                indep = await client.get(
                    "/api/v1/top", params={"item_type": "song", "sort": "independent", "limit": 1}
                )
                rest = await client.get(
                    "/api/v1/top",
                    params={"item_type": "song", "sort": "independent"}
                    | {"cursor": indep.json()["next_cursor"]},
                )
                detail = await client.get("/api/v1/items/song-sybil")
    assert indep.headers["X-Read-Model"] == "redis"
    assert [(e["item_id"], e["score"]) for e in net.json()["items"]] == [
        ("song-sybil", 50),
        ("song-liked", 3),
    ]
    assert [(e["item_id"], e["score"]) for e in indep.json()["items"] + rest.json()["items"]] == [
        ("song-liked", 3),
        ("song-sybil", 1),
    ]
    body = detail.json()
    assert (body["independent"], body["owners"], body["rank_independent"]) == (1, 1, 2)
    assert (body["net"], body["rank_top"]) == (50, 1)
    async with AsyncConnectionPool(shared.database_url, min_size=1, max_size=1) as pool:
        reader = PostgresReader(pool, H)
        page = await reader.page(ListQuery("independent", "song", 5), 0.0)
        found, _ = await reader.detail("song-sybil", datetime.now(UTC).date(), 0.0)
    assert [(e.item_id, e.score) for e in page.items] == [("song-liked", 3), ("song-sybil", 1)]
    assert found is not None
    assert (found.independent, found.owners, found.rank_independent) == (1, 1, 2)


# --- the upgrade: a generation made before the independent chart is filled once ------------------

_FORGET_PG = """
UPDATE rm_g{g}.checkpoint SET independent_ready = false;
UPDATE rm_g{g}.items SET independent = 0, owners = 0;
DELETE FROM rm_g{g}.item_owners;
"""


async def _forget_independent(config: Settings) -> None:
    """Make the live generations look as a release before the independent chart left them."""
    async with await psycopg.AsyncConnection.connect(config.database_url, autocommit=True) as c:
        row = await (await c.execute("SELECT generation FROM read_model_generation")).fetchone()
        assert row is not None
        for statement in _FORGET_PG.format(g=row[0]).strip().splitlines():
            await c.execute(statement.encode())
    client = aioredis.Redis.from_url(config.redis_url)
    try:
        ns = redis_keys.namespace(config.redis_prefix, int(row[0]))
        await client.hdel(f"{ns}:meta", "independent")
        async for key in client.scan_iter(match=f"{redis_keys.glob(ns)}:*"):
            name = key.decode()
            if ":own:" in name or ":indep:" in name:
                await client.unlink(key)
            elif ":item:" in name:
                await client.hdel(key, "independent", "owners")
    finally:
        await client.aclose()


async def test_a_generation_from_before_is_filled_once(
    isolated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Live generations without the independent data (as migrated from the release before) are
    given it by the projector once: PostgreSQL in place, Redis projected again; the next start
    does nothing more, and both match a fold of the ledger."""
    await _append(isolated, _sybil_events()[:20])
    async with _projected(isolated):
        pass
    await _forget_independent(isolated)
    await _append(isolated, _sybil_events()[20:])
    caplog.set_level(logging.INFO)
    caplog.clear()
    async with _projected(isolated):
        pass
    assert any(
        "without the independent chart: rebuilding" in r.getMessage() for r in caplog.records
    )
    assert any("filled the independent chart" in r.getMessage() for r in caplog.records)
    await assert_read_models_match_ledger(isolated)
    async with await psycopg.AsyncConnection.connect(isolated.database_url) as conn:
        cur = await conn.execute(
            "SELECT independent, owners FROM rm_g1.items WHERE item_id = %s", ("song-sybil",)
        )
        row = await cur.fetchone()
    assert row == (1, 1)
    caplog.clear()
    async with _projected(isolated):
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert not any("rebuilding" in m or "filled" in m for m in messages)
