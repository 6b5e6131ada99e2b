"""Many and slow clients against a real query API process (started with `python -m infra.serve`):
live-stream clients share one Redis reader, are capped, release everything when they close;
a resume beyond the head is reset; a request head that stalls is closed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from infra.settings import Settings
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(180)
CLIENTS = 200
HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def query_url(redis_url: str) -> Iterator[tuple[str, Settings]]:
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2")
        env = {
            "VOTELEDGER_STREAM_CLIENTS_MAX": str(CLIENTS),
            "VOTELEDGER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "VOTELEDGER_BODY_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        }
        query_api = uvicorn_server("queries.app:create_app", settings, **env)
        with worker_process(settings), query_api as query:
            yield query, settings


def connections(settings: Settings, command: str | None = None) -> int:
    """The query API's Redis connections (named "<prefix>:query"), optionally only those
    running `command` now."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(
            1
            for c in client.client_list()
            if c["name"] == f"{settings.redis_prefix}:query"
            and (command is None or c["cmd"] == command)
        )
    finally:
        client.close()


async def first_line(response: httpx.Response, prefix: str) -> str:
    async for line in response.aiter_lines():
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line")


@contextlib.asynccontextmanager
async def sse_clients(url: str, count: int) -> AsyncIterator[list[httpx.Response]]:
    """`count` open SSE responses, each having received its headers."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=30, limits=limits) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        responses = await asyncio.gather(
            *[
                stack.enter_async_context(http.stream("GET", f"{url}/api/v1/stream"))
                for _ in range(count)
            ]
        )
        yield list(responses)


async def test_stream_clients_share_one_reader_are_capped_and_release_it(
    query_url: tuple[str, Settings],
) -> None:
    """200 SSE clients hold a bounded number of Redis connections (one XREAD); the 201st gets
    503 with Retry-After; once all close, no XREAD is left."""
    url, settings = query_url
    async with sse_clients(url, CLIENTS) as responses:
        assert {r.status_code for r in responses} == {200}
        # The one reader starts with the first client; on a busy machine that takes a moment.
        for _ in range(50):
            if connections(settings, "xread") == 1:
                break
            await asyncio.sleep(0.1)
        assert connections(settings, "xread") == 1
        assert connections(settings) <= 6
        async with httpx.AsyncClient(timeout=10) as http:
            over = await http.get(f"{url}/api/v1/stream")
        assert over.status_code == 503 and over.headers["Retry-After"]
        assert over.json()["type"] == "/problems/too-many-clients"
    deadline = time.monotonic() + 5
    while connections(settings, "xread"):
        assert time.monotonic() < deadline, "an XREAD outlived every client"
        await asyncio.sleep(0.1)


async def test_a_resume_beyond_the_head_gets_a_reset(query_url: tuple[str, Settings]) -> None:
    """Last-Event-ID far beyond anything served: an explicit reset, not silence."""
    url, _ = query_url
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "GET", f"{url}/api/v1/stream", headers={"Last-Event-ID": str(2**40)}
        ) as response,
    ):
        assert await asyncio.wait_for(first_line(response, "event:"), 5) == "event: reset"


def test_a_request_head_that_stalls_is_closed_within_the_timeout(
    query_url: tuple[str, Settings],
) -> None:
    """Half a request head, then nothing: the server closes the connection within the header
    timeout (plus scheduling slack); a complete request on another connection is answered."""
    url, _ = query_url
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        started = time.monotonic()
        assert idle.recv(1024) == b""  # nothing sent at all: closed too
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_body_that_stalls_is_closed_within_the_timeout(query_url: tuple[str, Settings]) -> None:
    """A request announcing 100 bytes of body that sends 10: closed within the body timeout."""
    url, _ = query_url
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(
            b"POST /api/v1/top HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n0123456789"
        )
        started = time.monotonic()
        data = slow.recv(1024)
        while data:  # whatever was answered, the connection ends
            data = slow.recv(1024)
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5
