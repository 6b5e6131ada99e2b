"""Running the APIs as operators do: worker processes with merged metrics, JSON logs that name
requests and agents but never keys, and error reports to Sentry without credentials."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import Settings
from tests.integration.conftest import Agent, command_api, new_agent, new_item
from tests.integration.projection_support import worker_process
from tests.integration.stall_support import eventually
from tests.servers import free_port, settings_env, uvicorn_server

VOTE_ROUTE = "/api/v1/vote"


def _vote_count(url: str) -> float:
    """voteledger_http_requests_total of 2xx votes, as /metrics reports it."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "voteledger_http_requests_total"
        and sample.labels.get("route") == VOTE_ROUTE
        and sample.labels.get("status", "").startswith("2")
    )


async def _cast(url: str, n: int, item_type: str = "song") -> None:
    """n votes by one agent on n new items, each on a new connection (so every worker gets some)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        agent = await new_agent(client)
        items = [await new_item(client, item_type) for _ in range(n)]
    for item in items:
        async with httpx.AsyncClient(base_url=url, timeout=10) as fresh:
            response = await fresh.post(
                VOTE_ROUTE, json={"item_id": item, "vote": "up"}, headers=agent.headers
            )
            assert response.status_code == 201, response.text


def _worker_pids(metrics_parent: Path) -> set[int]:
    """The worker processes that wrote metric files (counter_<pid>.db)."""
    return {
        int(path.stem.rsplit("_", 1)[1])
        for path in metrics_parent.glob("voteledger-metrics-*/counter_*.db")
    }


async def test_worker_processes_share_one_socket_and_their_metrics_add_up(
    settings: Settings, tmp_path: Path
) -> None:
    with uvicorn_server(
        "commands.app:create_app",
        settings,
        args=("--workers", "2", "--log-level", "warning"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    ) as url:
        before = _vote_count(url)
        await _cast(url, 24)
        assert len(_worker_pids(tmp_path)) == 2, "both workers should have answered requests"
        # Whichever worker answers the scrape, it reports every worker's requests.
        assert {_vote_count(url) - before for _ in range(6)} == {24}

        # A worker that dies is replaced, and what it counted still counts.
        victim = min(_worker_pids(tmp_path))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(_worker_pids(tmp_path) - {victim}) < 2 and time.monotonic() < deadline:
            await _cast(url, 2)
        assert len(_worker_pids(tmp_path) - {victim}) == 2, "the dead worker was not replaced"
        served = _vote_count(url) - before
        await _cast(url, 3)
        assert _vote_count(url) - before == served + 3
    assert not _worker_pids(tmp_path), "metric files left behind"


async def test_json_access_log_names_request_agent_and_position_never_the_key(
    settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "command.log"
    with (
        log_path.open("wb") as log,
        uvicorn_server(
            "commands.app:create_app",
            settings,
            args=("--log-level", "info"),
            stderr=log,
            VOTELEDGER_LOG_FORMAT="json",
            VOTELEDGER_ACCESS_LOG="true",
        ) as url,
    ):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            agent = await new_agent(client)
            item = await new_item(client)
            response = await client.post(
                VOTE_ROUTE,
                json={"item_id": item, "vote": "up"},
                headers={**agent.headers, "X-Request-ID": "req-42.a"},
            )
            assert response.status_code == 201
            assert response.headers["x-request-id"] == "req-42.a"
            position = response.json()["position"]
            unnamed = await client.get("/healthz", headers={"X-Request-ID": "not a token!"})
            generated = unnamed.headers["x-request-id"]
            assert generated != "not a token!" and len(generated) == 16
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(text.splitlines()), "every line is one JSON object"
    (vote,) = [line for line in lines if line.get("request_id") == "req-42.a"]
    assert vote["logger"] == "voteledger.access"
    assert vote["route"] == VOTE_ROUTE and vote["status"] == 201
    assert vote["agent_id"] == agent.agent_id and vote["position"] == position
    assert vote["duration_ms"] > 0 and vote["ts"].endswith("Z")
    assert any(line.get("request_id") == generated for line in lines)
    assert agent.api_key not in text


class _Sentry(BaseHTTPRequestHandler):
    """A stand-in for Sentry's ingest endpoint on loopback: keeps every envelope it receives."""

    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sentry_ingest() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Handler", (_Sentry,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://public@127.0.0.1:{server.server_address[1]}/1", received
    finally:
        server.shutdown()
        server.server_close()
        import sentry_sdk

        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


async def test_errors_reach_sentry_with_tags_and_without_credentials(
    settings: Settings, sentry_ingest: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentry_sdk

    from commands import vote

    dsn, received = sentry_ingest
    reporting = Settings.from_env(
        {**_env_of(settings), "SENTRY_DSN": dsn, "SENTRY_ENVIRONMENT": "staging"}
    )
    async with command_api(reporting) as client:
        agent = await new_agent(client)

        async def broken(pool: object, key: str, known: object) -> None:
            raise RuntimeError(f"lookup failed for {key}")  # a fault that carries the key

        monkeypatch.setattr(vote.agents, "agent_for_key", broken)
        response = await client.post(
            VOTE_ROUTE, json={"item_id": "song-x", "vote": "up"}, headers=agent.headers
        )
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        sentry_sdk.flush(timeout=5)
    envelopes = b"\n".join(received).decode()
    assert "lookup failed for" in envelopes, "the error was not reported"
    assert agent.api_key not in envelopes and "[Filtered]" in envelopes
    events = [
        json.loads(line)
        for line in envelopes.splitlines()
        if line.startswith("{") and '"exception"' in line
    ]
    assert events, envelopes[:2000]
    event = events[0]
    assert event["release"].startswith("voteledger@")
    assert event["environment"] == "staging"
    assert event["tags"]["component"] == "command-api"


def _env_of(settings: Settings) -> dict[str, str]:
    return {k: v for k, v in settings_env(settings).items() if not k.startswith("SENTRY_")}


async def test_ready_while_redis_serves_though_postgres_is_away(isolated: Settings) -> None:
    """In a cluster the fallback is a replica (PostgreSQL's read-only service), which may be away
    while Redis answers: the query API stays ready; with neither, it is not."""
    away = "postgresql://voteledger_query@127.0.0.1:1/voteledger?connect_timeout=1"
    async with command_api(isolated) as command:
        agent, item = await new_agent(command), await new_item(command)
        vote = await command.post(
            VOTE_ROUTE, json={"item_id": item, "vote": "up"}, headers=agent.headers
        )
        position = vote.json()["position"]
    with (
        worker_process(isolated),
        uvicorn_server(
            "queries.app:create_app", isolated, VOTELEDGER_QUERY_DATABASE_URL=away
        ) as url,
    ):
        async with httpx.AsyncClient(base_url=url, timeout=10) as query:
            top = await query.get(
                "/api/v1/top",
                params={"item_type": "song", "min_position": position, "wait_ms": 5000},
            )
            assert top.status_code == 200 and top.headers["X-Read-Model"] == "redis", top.text
            ready = await query.get("/readyz")
            assert ready.status_code == 200 and ready.json()["read_model"] == "redis", ready.text
    with uvicorn_server(
        "queries.app:create_app",
        isolated,
        VOTELEDGER_QUERY_DATABASE_URL=away,
        REDIS_URL="redis://127.0.0.1:1/0",
    ) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as query:
            unready = await query.get("/readyz")
        assert unready.status_code == 503
        assert unready.headers["content-type"] == "application/problem+json"


async def test_sigterm_drains_votes_in_flight(isolated: Settings) -> None:
    """A command API told to stop (as Kubernetes stops a pod) finishes the votes it has taken on
    before it exits: every one is answered 201 and recorded, none gets a 5xx."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "infra.serve", "commands", "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(*argv, env=settings_env(isolated))
    try:
        agent, items, clients = await _votes_ready(url, proc, 60)
        with psycopg.connect(isolated.database_url) as blocker:
            # Appends wait behind this lock: the votes are in flight, for certain, at the signal.
            blocker.execute("LOCK TABLE events IN SHARE MODE")
            votes = [
                asyncio.create_task(
                    c.post(VOTE_ROUTE, json={"item_id": i, "vote": "up"}, headers=agent.headers)
                )
                for c, i in zip(clients, items, strict=True)
            ]
            await eventually(lambda: _waiting_appends(isolated), within=20)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert proc.returncode is None, "it exited with votes in flight"
            blocker.commit()
        answers = await asyncio.gather(*votes)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert await asyncio.wait_for(proc.wait(), 30) in (0, -signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for client in clients:
            await client.aclose()
    assert [a.status_code for a in answers] == [201] * len(items)
    with psycopg.connect(isolated.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE event_type = 'VoteCast'").fetchone()
    assert row == (len(items),)


async def _votes_ready(
    url: str, proc: asyncio.subprocess.Process, n: int
) -> tuple[Agent, list[str], list[httpx.AsyncClient]]:
    """An agent, n items, and n open connections, so that n votes reach the server together."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while (await _status(client, "/healthz")) != 200:
            assert proc.returncode is None, "the command API did not start"
            await asyncio.sleep(0.1)
        agent = await new_agent(client)
        items = [await new_item(client) for _ in range(n)]
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in items]
    await asyncio.gather(*(c.get("/healthz") for c in clients))
    return agent, items, clients


async def _waiting_appends(settings: Settings) -> int:
    """Command-role sessions waiting for a lock (the appends held behind the test's)."""
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE usename = 'voteledger_command' AND wait_event_type = 'Lock'"
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def _status(client: httpx.AsyncClient, path: str) -> int:
    try:
        return (await client.get(path)).status_code
    except httpx.TransportError:
        return 0


async def test_a_new_item_read_at_its_position_waits_instead_of_answering_404(
    isolated: Settings,
) -> None:
    """Read your writes from the PostgreSQL fallback (as on a lagging replica): a vote on a
    just-listed item, read with min_position before the read model has the item, waits and
    answers the item, not 'no such item'; an item that does not exist still answers 404."""
    no_redis = "redis://127.0.0.1:1/0"
    with (
        worker_process(isolated),
        uvicorn_server("queries.app:create_app", isolated, REDIS_URL=no_redis) as url,
    ):
        async with command_api(isolated) as command, httpx.AsyncClient(base_url=url) as query:
            agent = await new_agent(command)
            with psycopg.connect(isolated.database_url) as blocker:
                # The projector's next commit waits behind this lock: the item is not there yet.
                blocker.execute("LOCK TABLE rm_g1.checkpoint IN SHARE MODE")
                item = await new_item(command)
                vote = await command.post(
                    VOTE_ROUTE, json={"item_id": item, "vote": "up"}, headers=agent.headers
                )
                params = {"min_position": vote.json()["position"], "wait_ms": 5000}
                read = asyncio.create_task(
                    query.get(f"/api/v1/items/{item}", params=params, timeout=10)
                )
                # Under a second: past it, a position beyond the head the projector last reported
                # is refused as never issued (queries/side.py _HEAD_GRACE).
                await asyncio.sleep(0.5)
                assert not read.done(), (await read).text
                blocker.commit()
            answer = await read
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Read-Model"] == "postgres" and answer.json()["up"] == 1
            missing = await query.get("/api/v1/items/song-none", params=params, timeout=10)
            assert missing.status_code == 404
            assert missing.json()["type"] == "/problems/unknown-item"
