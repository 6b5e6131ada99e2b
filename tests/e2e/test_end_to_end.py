"""End to end over HTTP: both APIs and the projector as separate processes, with a Redis server
of the test's own so that it can be stopped and started again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN, fresh_database, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import free_port, uvicorn_server

pytestmark = pytest.mark.timeout(300)
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


class RedisServer:
    """A redis-server of this test's own, on a fixed port, that can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="vl-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
            ).stdout.strip()
            != b"PONG"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Stack:
    settings: Settings
    redis: RedisServer
    command: str
    query: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    redis = RedisServer()
    redis.start()
    try:
        with fresh_database() as url:
            settings = make_settings(
                url,
                redis.url,
                "e2e",
                VOTELEDGER_POLL_INTERVAL="0.2",
                VOTELEDGER_CHANGES_STREAM_MAX="10",
            )
            with (
                worker_process(settings),
                uvicorn_server("commands.app:create_app", settings) as command,
                uvicorn_server("queries.app:create_app", settings) as query,
            ):
                yield Stack(settings, redis, command, query)
    finally:
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_key(stack: Stack) -> str:
    response = httpx.post(f"{stack.command}/api/v1/agents", json={}, headers=OPERATOR)
    return str(response.json()["api_key"])


def list_items(stack: Stack, item_type: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        item_id = f"{item_type}-{random.randrange(10**12)}"
        response = httpx.post(
            f"{stack.command}/api/v1/items",
            json={"item_id": item_id, "item_type": item_type, "title": item_id},
            headers=OPERATOR,
        )
        assert response.status_code == 201
        ids.append(item_id)
    return ids


VALUE = {"up": 1, "down": -1, "none": 0}


def test_every_vote_is_visible_when_read_at_its_position(stack: Stack, agent_key: str) -> None:
    """Vote, then read with min_position from the vote: the vote shows in top, daily, trending
    and item detail, every time."""
    items = list_items(stack, "song", 4) + list_items(stack, "tool", 2)
    state = {item: "none" for item in items}
    today_net = dict.fromkeys(items, 0)
    rng = random.Random(11)
    auth = {"Authorization": f"Bearer {agent_key}"}
    with httpx.Client(timeout=10) as http:
        for _ in range(30):
            item = rng.choice(items)
            direction = rng.choice([d for d in VALUE if d != state[item]])
            voted = http.post(
                f"{stack.command}/api/v1/vote",
                json={"item_id": item, "vote": direction},
                headers=auth,
            )
            assert voted.status_code == 201
            today_net[item] += VALUE[direction] - VALUE[state[item]]
            state[item] = direction
            item_type = item.split("-")[0]
            at = {"min_position": voted.json()["position"], "wait_ms": 5000}
            up, down = int(direction == "up"), int(direction == "down")

            detail = http.get(f"{stack.query}/api/v1/items/{item}", params=at)
            assert detail.status_code == 200, detail.text
            assert (detail.json()["up"], detail.json()["down"]) == (up, down)
            for path, score in (
                ("/api/v1/top", up - down),
                ("/api/v1/top/daily", today_net[item]),
                ("/api/v1/trending", None),
            ):
                page = http.get(
                    f"{stack.query}{path}", params=at | {"item_type": item_type, "limit": 200}
                )
                assert page.status_code == 200, page.text
                entry = next(e for e in page.json()["items"] if e["item_id"] == item)
                assert (entry["up"], entry["down"]) == (up, down), path
                if score is not None:
                    assert entry["score"] == score, path
                else:  # seconds-old votes have hardly decayed: trending ~ net votes
                    assert entry["score"] == pytest.approx(up - down, abs=1e-3)


async def _sse(
    url: str, last_event_id: str | None, want: int, seconds: float = 10
) -> list[tuple[str, str, dict[str, object]]]:
    """Up to `want` (event, id, data) from the stream, within `seconds`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[tuple[str, str, dict[str, object]]] = []
    with contextlib.suppress(TimeoutError):
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        events.append(
                            (
                                fields.get("event", "message"),
                                fields.get("id", ""),
                                json.loads(fields["data"]),
                            )
                        )
                        if len(events) >= want:
                            break
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
    return events


async def test_stream_ids_increase_and_resume_or_reset(stack: Stack, agent_key: str) -> None:
    """A client sees score changes with increasing ids; reconnecting from an id still covered
    gets what it missed; from one trimmed away it gets an explicit reset."""
    items = list_items(stack, "tool", 3)
    auth = {"Authorization": f"Bearer {agent_key}"}
    url = f"{stack.query}/api/v1/stream?item_type=tool"

    async def cast(n: int) -> list[int]:
        positions = []
        async with httpx.AsyncClient() as http:
            for i in range(n):
                item = items[i % len(items)]
                response = await http.post(
                    f"{stack.command}/api/v1/vote",
                    json={"item_id": item, "vote": ["up", "down"][(i // len(items)) % 2]},
                    headers=auth,
                )
                positions.append(response.json()["position"])
                await asyncio.sleep(0.05)
        return positions

    listener = asyncio.create_task(_sse(url, None, want=5))
    await asyncio.sleep(0.5)
    positions = await cast(5)
    events = await listener
    assert len(events) >= 3 and all(kind == "scores" for kind, _, _ in events)
    ids = [int(i) for _, i, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["item_type"] == "tool" for _, _, d in events for e in d["items"])  # type: ignore[attr-defined]
    assert max(ids) <= max(positions)

    resumed = await _sse(url, str(ids[0]), want=2, seconds=5)
    assert resumed and resumed[0][0] == "scores" and int(resumed[0][1]) >= ids[0]

    await cast(150)  # far more notices than the stream keeps (VOTELEDGER_CHANGES_STREAM_MAX=10)
    reset = await _sse(url, str(ids[0]), want=1, seconds=5)
    assert reset and reset[0][0] == "reset"


def test_redis_down_then_back(stack: Stack, agent_key: str) -> None:
    """With Redis stopped the same answers come from PostgreSQL; once Redis is back (empty) the
    projector rebuilds it and reads return to Redis."""
    item = list_items(stack, "song", 1)[0]
    auth = {"Authorization": f"Bearer {agent_key}"}
    with httpx.Client(timeout=10) as http:
        voted = http.post(
            f"{stack.command}/api/v1/vote", json={"item_id": item, "vote": "up"}, headers=auth
        )
        at = {"item_type": "song", "limit": 200, "min_position": voted.json()["position"]}
        before = http.get(f"{stack.query}/api/v1/top", params=at)
        assert before.headers["X-Read-Model"] == "redis"

        stack.redis.stop()
        try:
            # A page cached just before may still be served for up to a second.
            deadline = time.monotonic() + 5
            while True:
                during = http.get(f"{stack.query}/api/v1/top", params=at)
                assert during.status_code == 200
                if during.headers["X-Read-Model"] == "postgres":
                    break
                assert time.monotonic() < deadline, "reads never fell back to PostgreSQL"
                time.sleep(0.1)
            assert during.json()["items"] == before.json()["items"]
            # The write path does not depend on Redis.
            other = list_items(stack, "song", 1)[0]
            assert (
                http.post(
                    f"{stack.command}/api/v1/vote",
                    json={"item_id": other, "vote": "up"},
                    headers=auth,
                ).status_code
                == 201
            )
        finally:
            stack.redis.start()

        deadline = time.monotonic() + 60
        while True:
            after = http.get(f"{stack.query}/api/v1/top", params=at)
            if after.headers.get("X-Read-Model") == "redis":
                break
            assert time.monotonic() < deadline, "reads never returned to Redis"
            time.sleep(0.2)
        rebuilt = {e["item_id"]: (e["up"], e["down"]) for e in after.json()["items"]}
        assert rebuilt[item] == (1, 0) and rebuilt[other] == (1, 0)


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_query_api_fuzz(stack: Stack, mode: schemathesis.GenerationMode) -> None:
    """Whatever the query API's schema admits (and, negatively, what it does not): no 5xx."""
    schema = schemathesis.openapi.from_url(f"{stack.query}/openapi.json").exclude(
        path_regex="/stream"  # an endless response; covered above
    )

    @given(case=schema.as_strategy(mode))
    @hsettings(
        max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=stack.query, timeout=10)
        case.validate_response(response, checks=[not_a_server_error])

    check()
