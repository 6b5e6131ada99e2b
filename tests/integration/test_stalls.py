"""A projection that meets an event it cannot fold stalls at it, visibly, and resumes after the fix;
the worker, and the other projection when it can, go on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ResponseError

from cli.readmodels import serve_metrics
from commands.catalogue import list_item
from events import codec
from infra.settings import Settings
from projections.health import HEALTH
from projections.readmodel import State, Step
from projections.redis_store import RedisStore
from projections.runner import run_worker
from projections.status import status
from tests.integration.projection_support import (
    assert_read_models_match_ledger,
    command_pool,
    ledger_head,
    populate,
    vote_load,
    wait_caught_up,
    watermarks,
)
from tests.integration.stall_support import eventually, insert_as_owner
from tests.integration.test_rebuild import cli

pytestmark = pytest.mark.timeout(240)


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """Both projections in this process, retrying a stall every 0.3 s."""
    HEALTH.projections.clear()
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop, stall_retry=0.3))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def upcasting(fixed: dict[str, Any]) -> Iterator[None]:
    """The operator's fix, as a new release would ship it: `{}` reads as `fixed`."""
    remove = codec.add_upcaster(lambda raw: raw or fixed)
    try:
        yield
    finally:
        remove()


async def _load(settings: Settings, seconds: float) -> list[str]:
    """Votes of agents on items of their own (registered and listed first), for `seconds`."""
    async with command_pool(settings) as pool:
        agents, items = await populate(pool, agents=4, items=0)
        items = [f"song-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        for item_id in items:
            await list_item(pool, item_id, "song", item_id)
        await vote_load(pool, agents, items, seconds=seconds, writers=3, seed=11)
    return items


def _gauge(name: str, projection: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"projection": projection})


async def _stalled_at(settings: Settings, names: set[str]) -> dict[str, Any]:
    report = await status(settings)
    rows = {r.projection: r.stalled for r in report.projections if r.stalled}
    return rows if set(rows) == names else {}


async def test_an_undecodable_event_stalls_both_visibly_and_resumes_after_the_fix(
    isolated: Settings,
) -> None:
    """A VoteCast with payload {} stops both projections just before it, reported in status (exit
    1), metrics and /healthz, and verify exits 4; the worker stays up, and with an upcaster both
    resume from there and verify passes."""
    async with worker(isolated) as task:
        items = await _load(isolated, seconds=1)
        await wait_caught_up(isolated, worker=task)
        before = await ledger_head(isolated.database_url)
        bad = insert_as_owner(isolated.database_url, "VoteCast", "{}", item_id=items[0])
        await _load(isolated, seconds=1)  # events after the bad one wait behind it
        stalls = await eventually(lambda: _stalled_at(isolated, {"postgres", "redis"}))
        assert {s["position"] for s in stalls.values()} == {bad}
        assert all("payload does not decode" in str(s["reason"]) for s in stalls.values())
        # Everything before the bad event is applied (a refused first insert may have drawn a
        # position in between, which the watermark need not have passed yet).
        assert await watermarks(isolated) == (before, before)
        assert not task.done()
        for name in ("postgres", "redis"):
            assert _gauge("voteledger_projection_stalled", name) == 1
            assert _gauge("voteledger_projection_stalled_position", name) == bad
        await _assert_health(503, f"stalled at position {bad}")
        shown = await asyncio.to_thread(cli, isolated, "status")
        assert shown.returncode == 1 and f"at position {bad}" in shown.stdout, shown.stdout
        checked = await asyncio.to_thread(cli, isolated, "verify")
        assert checked.returncode == 4 and f"position {bad}" in checked.stderr, checked.stderr
        fixed = {"type": "VoteCast", "agent_id": str(uuid.uuid4()), "item_id": items[0]}
        with upcasting(fixed | {"item_type": "song", "direction": "up", "previous": "none"}):
            await wait_caught_up(isolated, worker=task)
            await eventually(lambda: _no_stall(isolated))
            await assert_read_models_match_ledger(isolated)
        assert _gauge("voteledger_projection_stalled", "postgres") == 0
        await _assert_health(200, '"ok": true')


async def _no_stall(settings: Settings) -> bool:
    return not HEALTH.problems() and not (await status(settings)).stalled


async def _assert_health(code: int, text: str) -> None:
    server = serve_metrics("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        async with httpx.AsyncClient(base_url=base) as client:
            health = await client.get("/healthz")
            assert health.status_code == code and text in health.text, health.text
            metrics = await client.get("/metrics")
            assert "voteledger_projection_stalled{" in metrics.text
    finally:
        server.shutdown()
        server.server_close()


async def test_a_value_one_store_refuses_stalls_only_that_store(
    isolated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Redis refuses one event's values, Redis stalls at that event (everything before it
    applied) while PostgreSQL catches up with the head; once Redis accepts it, Redis resumes."""
    poison = {"on": True}
    original = RedisStore.apply

    async def refusing(
        self: RedisStore, generation: int, state: State, step: Step, fence: int, half_life: float
    ) -> State:
        if poison["on"] and "song-poison" in step.changes.items:
            raise ResponseError("ERR simulated script error for a value")
        return await original(self, generation, state, step, fence, half_life)

    monkeypatch.setattr(RedisStore, "apply", refusing)
    async with worker(isolated) as task:
        await _load(isolated, seconds=0.5)
        payload = json.dumps({"type": "ItemListed", "item_id": "song-poison"} | _SONG)
        bad = insert_as_owner(isolated.database_url, "ItemListed", payload, item_id="song-poison")
        await _load(isolated, seconds=0.5)
        stalls = await eventually(lambda: _stalled_at(isolated, {"redis"}))
        assert stalls["redis"]["position"] == bad
        assert "simulated script error" in str(stalls["redis"]["reason"])
        head = await ledger_head(isolated.database_url)
        assert await eventually(lambda: _postgres_at(isolated, head))
        assert (await watermarks(isolated))[1] < bad
        poison["on"] = False
        await wait_caught_up(isolated, worker=task)
        await eventually(lambda: _no_stall(isolated))
        await assert_read_models_match_ledger(isolated)


_SONG = {"item_type": "song", "title": "Poison"}


async def _postgres_at(settings: Settings, head: int) -> bool:
    return (await watermarks(settings))[0] >= head


async def test_status_tells_a_pipeline_that_stopped_moving_by_its_progress(
    isolated: Settings,
) -> None:
    """With no worker left to measure the lag, status still reports a projection stalled once
    the head has moved past its watermark and its last progress is older than the threshold."""
    async with worker(isolated) as task:
        await _load(isolated, seconds=0.5)
        await wait_caught_up(isolated, worker=task)
        await asyncio.sleep(5.5)  # the worker writes its progress every 5 s
    assert not (await status(isolated)).stalled
    await _load(isolated, seconds=0.3)  # the head moves; nobody projects it
    assert not (await status(isolated)).stalled  # the last progress is recent
    with psycopg.connect(isolated.database_url, autocommit=True) as conn:
        conn.execute("UPDATE projection_health SET progress_at = now() - interval '5 minutes'")
    report = await status(isolated)
    assert {r.projection for r in report.projections if r.stalled} == {"postgres", "redis"}
    row = report.projections[0]
    assert row.stalled is not None and "no progress for" in str(row.stalled["reason"])
    assert row.progress_age_seconds is not None and row.progress_age_seconds >= 300
