"""Daily chart snapshots: days closed by the projector, as-of charts, rank history, digests and the
hash chain that verify checks.

The ledger is written directly with recording times over five UTC days (the third has no event),
then projected into PostgreSQL in small batches (so that days close inside batches), as the worker
applies them. The expected charts are computed here from the events alone."""

from __future__ import annotations

import contextlib
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest

from events import store
from events.types import AgentRegistered, Event, ItemListed, VoteCast
from infra.settings import Settings
from projections import snapshots, verify
from projections.model import wilson_lower_bound
from projections.postgres_store import PostgresStore
from projections.readmodel import step_for
from projections.rebuild import rebuild
from projections.watermark import Watermark
from queries.app import create_app
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings

pytestmark = pytest.mark.timeout(60)
DAY0 = date(2026, 3, 2)
CLOSED = [DAY0 + timedelta(days=n) for n in range(4)]  # the fifth day is still open
HALF_LIFE = 6 * 3600.0


def _at(day: int, hour: float) -> datetime:
    return datetime(DAY0.year, DAY0.month, DAY0.day, tzinfo=UTC) + timedelta(days=day, hours=hour)


def _ledger() -> list[tuple[Event, datetime]]:
    """Four agents of three owners (the fourth its own), four songs and three tools; votes on days
    0, 1, 3 and 4 (none on day 2), some changed later."""
    agents = [uuid.uuid4() for _ in range(4)]
    owners = ["label-a", "label-a", "label-b", None]
    items = [(f"song-{n}", "song") for n in range(4)] + [(f"tool-{n}", "tool") for n in range(3)]
    ledger: list[tuple[Event, datetime]] = [
        (AgentRegistered(agent_id=a, owner=o), _at(0, 0))
        for a, o in zip(agents, owners, strict=True)
    ]
    ledger += [(ItemListed(item_id=i, item_type=t, title=i.upper()), _at(0, 0.5)) for i, t in items]
    plan = [  # (day, hour, agent, item, direction)
        (0, 1, 0, 0, "up"),
        (0, 2, 1, 0, "up"),
        (0, 3, 2, 1, "up"),
        (0, 4, 3, 2, "down"),
        (0, 5, 0, 4, "up"),
        (0, 23.5, 2, 5, "up"),
        (1, 1, 1, 1, "up"),
        (1, 2, 3, 1, "up"),
        (1, 6, 0, 0, "down"),
        (1, 9, 2, 4, "down"),
        (1, 12, 3, 6, "up"),
        (3, 3, 2, 2, "up"),
        (3, 4, 1, 0, "none"),
        (3, 20, 0, 3, "up"),
        (4, 1, 3, 3, "down"),
    ]
    current: dict[tuple[int, int], str] = {}
    for day, hour, agent, item, direction in plan:
        previous = current.get((agent, item), "none")
        current[(agent, item)] = direction
        item_id, item_type = items[item]
        vote = VoteCast(agents[agent], item_id, item_type, direction, previous, owner=owners[agent])  # type: ignore[arg-type]
        ledger.append((vote, _at(day, hour)))
    return ledger


def expected_chart(ledger: list[tuple[Event, datetime]], day: date, chart: str, item_type: str):
    """(item_id, score) in rank order, from the events recorded before `day` ended."""
    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    listed = [
        e.item_id for e, _ in ledger if isinstance(e, ItemListed) and e.item_type == item_type
    ]
    up = dict.fromkeys(listed, 0)
    down = dict.fromkeys(listed, 0)
    trend = dict.fromkeys(listed, 0.0)
    by_owner: dict[tuple[str, str], int] = {}
    value = {"up": 1, "down": -1, "none": 0}
    for event, at in ledger:
        if not isinstance(event, VoteCast) or at >= end or event.item_type != item_type:
            continue
        i = event.item_id
        up[i] += (event.direction == "up") - (event.previous == "up")
        down[i] += (event.direction == "down") - (event.previous == "down")
        delta = value[event.direction] - value[event.previous]
        trend[i] += delta * 2 ** -((end - at).total_seconds() / HALF_LIFE)
        key = (i, event.owned_by)
        by_owner[key] = by_owner.get(key, 0) + delta
    independent = dict.fromkeys(listed, 0)
    for (i, _), v in by_owner.items():
        independent[i] += (v > 0) - (v < 0)
    score = {
        "net": {i: up[i] - down[i] for i in listed},
        "confidence": {i: wilson_lower_bound(up[i], down[i]) for i in listed},
        "independent": independent,
        "trending": trend,
    }[chart]
    return sorted(((i, score[i]) for i in listed), key=lambda p: (p[1], p[0]), reverse=True)


@dataclass
class Stack:
    settings: Settings
    ledger: list[tuple[Event, datetime]]
    api: httpx.AsyncClient


async def project(settings: Settings, batch: int = 4) -> None:
    """Apply the whole ledger to the PostgreSQL read models in batches of `batch`, as the worker
    does (a step with its events)."""
    url = settings.url_for("projector")
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as reader,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
    ):
        await store.configure_reader(reader)
        target = PostgresStore(conn)
        generation = await target.live()
        state = await target.start(generation)
        tracker = Watermark(state.watermark)
        while True:
            read = await store.read_batch(reader, state.checkpoint, batch)
            watermark = tracker.observe(read)
            if read.events or watermark != state.watermark:
                step = step_for(read, state, watermark, HALF_LIFE)
                step = snapshots.with_events(step, read.events)
                state = await target.apply(generation, state, step, 0, HALF_LIFE)
            if read.complete:
                return


@contextlib.contextmanager
def _ledger_db(redis_url: str) -> Iterator[tuple[Settings, list[tuple[Event, datetime]]]]:
    ledger = _ledger()
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        with psycopg.connect(url) as conn, conn.transaction():
            store.append_many_sync(conn, ledger)
        yield make_settings(url, redis_url, prefix), ledger


@pytest.fixture(scope="module")
async def stack(redis_url: str) -> AsyncIterator[Stack]:
    with _ledger_db(redis_url) as (settings, ledger):
        await project(settings)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://query") as api:
                yield Stack(settings, ledger, api)


async def _sorts(api: httpx.AsyncClient) -> list[str]:
    document = (await api.get("/openapi.json")).json()
    [sort] = [
        p for p in document["paths"]["/api/v1/top"]["get"]["parameters"] if p["name"] == "sort"
    ]
    return list(sort["schema"]["enum"])


async def _whole_chart(api: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[dict]:
    """Every entry of an as-of chart, two per page."""
    entries, cursor = [], None
    while True:
        page = await api.get(
            path, params=params | {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        )
        assert page.status_code == 200, page.text
        entries += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return entries


async def test_as_of_charts_equal_a_fold_up_to_each_days_end(stack: Stack) -> None:
    """Every chart of every closed day, paged by cursor, equals the events recorded before that
    day ended, ranked by score then item id descending; the empty day has its charts too."""
    charts = [("net", "net"), ("confidence", "confidence"), ("trending", None)]
    assert "independent" in await _sorts(stack.api)  # the live route's sort=independent
    charts.append(("independent", "independent"))
    for day in CLOSED:
        for chart, sort in charts:
            path = "/api/v1/trending" if chart == "trending" else "/api/v1/top"
            for item_type in ("song", "tool"):
                params = {"item_type": item_type, "as_of": day.isoformat()}
                got = await _whole_chart(stack.api, path, params | ({"sort": sort} if sort else {}))
                want = expected_chart(stack.ledger, day, chart, item_type)
                assert [e["item_id"] for e in got] == [i for i, _ in want], (day, chart)
                assert [e["rank"] for e in got] == list(range(1, len(want) + 1))
                for entry, (_, score) in zip(got, want, strict=True):
                    assert math.isclose(entry["score"], score, rel_tol=1e-9), (day, chart, entry)


async def test_history_matches_the_charts(stack: Stack) -> None:
    """An item's history gives its rank and score on each chart of each closed day in range."""
    answer = await stack.api.get(
        "/api/v1/items/song-1/history", params={"from": "2026-03-01", "to": "2026-03-10"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [d["date"] for d in body["days"]] == [d.isoformat() for d in CLOSED]
    for entry in body["days"]:
        day = date.fromisoformat(entry["date"])
        for chart in ("net", "confidence", "independent", "trending"):
            want = expected_chart(stack.ledger, day, chart, "song")
            rank = next(n for n, (i, _) in enumerate(want, start=1) if i == "song-1")
            assert entry[chart]["rank"] == rank
            assert math.isclose(entry[chart]["score"], want[rank - 1][1], rel_tol=1e-9)
    digest = (await stack.api.get(f"/api/v1/charts/{CLOSED[-1]}/digest")).json()
    assert body["position"] == digest["position"]


async def test_digests_chain_the_days(stack: Stack) -> None:
    """Each day's digest is the chain's next link: the empty day's previous is the day before's,
    and the digest is recomputable from the rows and the previous digest."""
    links = [(await stack.api.get(f"/api/v1/charts/{day}/digest")).json() for day in CLOSED]
    assert links[0]["previous"] == ""
    for before, link in itertools.pairwise(links):
        assert link["previous"] == before["digest"] and link["digest"] != before["digest"]
    assert [link["date"] for link in links] == [d.isoformat() for d in CLOSED]
    answer = await stack.api.get(f"/api/v1/charts/{CLOSED[2]}/digest")
    again = await stack.api.get(
        f"/api/v1/charts/{CLOSED[2]}/digest", headers={"If-None-Match": answer.headers["ETag"]}
    )
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/top?item_type=song&as_of=2026-03-06",  # the open day
        "/api/v1/trending?item_type=tool&as_of=2026-03-01",  # before the first day
        "/api/v1/charts/2026-03-06/digest",
    ],
)
async def test_a_day_without_snapshot_is_404(stack: Stack, path: str) -> None:
    answer = await stack.api.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "/problems/no-snapshot"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/top?item_type=song&as_of=2026-13-01", 422),
        ("/api/v1/top?item_type=song&as_of=yesterday", 422),
        ("/api/v1/top?item_type=song&as_of=2026-03-02&cursor=bm9wZQ", 422),
        ("/api/v1/charts/2026-02-30/digest", 422),
        ("/api/v1/items/song-1/history?from=2026-03-05&to=2026-03-02", 422),
        ("/api/v1/items/song-1/history?from=2024-01-01&to=2026-03-02", 422),
        ("/api/v1/items/song-1/history?from=0001-01-01", 422),
        ("/api/v1/items/nope/history?from=2026-03-01&to=2026-03-05", 404),
    ],
)
async def test_bad_input_is_a_problem(stack: Stack, path: str, status: int) -> None:
    answer = await stack.api.get(path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"


class _Quiet:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


async def _verify(settings: Settings) -> list[verify.Difference]:
    async with (
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as ledger,
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn,
    ):
        await store.configure_reader(ledger)
        target = PostgresStore(conn)
        # As `voteledger verify` checks: its fold and the snapshot check share one read.
        outcome = await verify.check(target, await target.live(), ledger, HALF_LIFE)
        return outcome.differences


async def _digests(settings: Settings) -> list[tuple[date, str]]:
    with psycopg.connect(settings.database_url) as conn:
        [(generation,)] = conn.execute("SELECT generation FROM read_model_generation").fetchall()
        query = f"SELECT day, digest FROM rm_g{generation}.snapshot_days ORDER BY day"
        return [(day, digest) for day, digest in conn.execute(query).fetchall()]


async def test_verify_finds_an_edited_snapshot_row_by_its_day(redis_url: str, stack: Stack) -> None:
    """Another split into batches, and a rebuild, close the same days with the same digests;
    verify passes on them, and an edited row breaks the chain at its day (and differs from the
    ledger's fold there)."""
    with _ledger_db(redis_url) as (settings, _):
        await project(settings, batch=100)
        assert await _digests(settings) == await _digests(stack.settings)
        await rebuild(settings, ("postgres",), _Quiet())
        assert await _digests(settings) == await _digests(stack.settings)
        assert await _verify(settings) == []
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE rm_g2.snapshot_rows SET score = score + 1"
                " WHERE day = %s AND chart = 'net' AND rank = 1",
                (CLOSED[1],),
            )
        found = await _verify(settings)
    keys = {(d.key.split()[1], d.field) for d in found}
    assert (CLOSED[1].isoformat(), "digest") in keys
    assert (CLOSED[1].isoformat(), "score") in keys
    assert all(d.key.split()[1] == CLOSED[1].isoformat() for d in found)
