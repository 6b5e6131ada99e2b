"""The agents' MCP tools through the SDK's own client: over streamable HTTP at the command API's
/mcp (real command and query API processes and a projector) and over stdio (`voteledger mcp`).

One stack for the module, with a low vote rate limit (burst 8, 1 per second, per agent): each test
uses agents of its own. Every vote that records an event is noted, and the last test checks that
the ledger holds exactly those."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(60)
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
BURST = 8


@dataclass
class Stack:
    settings: Settings
    command: str
    query: str
    recorded: set[int] = field(default_factory=set)  # positions of the VoteCast events made

    def agent(self, name: str = "mcp") -> str:
        response = httpx.post(
            f"{self.command}/api/v1/agents", json={"name": name}, headers=OPERATOR
        )
        assert response.status_code == 201, response.text
        return str(response.json()["api_key"])

    def item(self, item_type: str = "song") -> str:
        item_id = f"{item_type}-{uuid.uuid4().hex[:10]}"
        body = {"item_id": item_id, "item_type": item_type, "title": f"Title {item_id}"}
        response = httpx.post(f"{self.command}/api/v1/items", json=body, headers=OPERATOR)
        assert response.status_code == 201, response.text
        return item_id

    def note(self, vote: dict[str, Any]) -> dict[str, Any]:
        if vote["changed"]:
            self.recorded.add(vote["position"])
        return vote


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(
            url,
            redis_url,
            prefix,
            VOTELEDGER_POLL_INTERVAL="0.2",
            VOTELEDGER_RATE_LIMIT_PER_SECOND="1",
            VOTELEDGER_RATE_LIMIT_BURST=str(BURST),
        )
        with (
            worker_process(settings),
            uvicorn_server("queries.app:create_app", settings) as query,
            uvicorn_server(
                "commands.app:create_app", settings, VOTELEDGER_QUERY_URL=query
            ) as command,
        ):
            yield Stack(settings, command, query)


@contextlib.asynccontextmanager
async def over_http(stack: Stack, api_key: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{stack.command}/mcp", http_client=http)) as client,
    ):
        yield client


def over_stdio(stack: Stack, api_key: str) -> Client:
    env = {
        "VOTELEDGER_COMMAND_URL": stack.command,
        "VOTELEDGER_QUERY_URL": stack.query,
        "VOTELEDGER_API_KEY": api_key,
    }
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "cli", "mcp"], env=env))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; the call must succeed."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The text of a tool call that must come back as an error result."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return _text(result)


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_home_page_and_mcp_without_a_key(stack: Stack) -> None:
    home = httpx.get(f"{stack.command}/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in home.text and "/mcp" in home.text
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        refusal = httpx.post(f"{stack.command}/mcp", json={}, headers=headers)
        assert refusal.status_code == 401, refusal.text
        assert refusal.headers["content-type"] == "application/problem+json"
        assert refusal.headers["www-authenticate"] == "Bearer"


def test_agents_me_reads_the_rate_limit_without_charging_it(stack: Stack) -> None:
    key = stack.agent("me-agent")
    me = f"{stack.command}/api/v1/agents/me"
    auth = {"Authorization": f"Bearer {key}"}
    first, again = httpx.get(me, headers=auth), httpx.get(me, headers=auth)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["name"] == "me-agent" and uuid.UUID(body["agent_id"])
    assert body["rate_limit"] == {
        "per_second": 1.0,
        "burst": BURST,
        "remaining": BURST,
        "reset_seconds": 0.0,
    }
    assert again.json()["rate_limit"]["remaining"] == BURST  # reading it charged nothing
    assert again.headers["ratelimit-policy"] == f'"votes";q={BURST};w={BURST}'
    vote = {"item_id": stack.item(), "vote": "up"}
    stack.note(httpx.post(f"{stack.command}/api/v1/vote", json=vote, headers=auth).json())
    assert httpx.get(me, headers=auth).json()["rate_limit"]["remaining"] == BURST - 1
    for bad in ({}, {"Authorization": "Bearer vlk_unknown"}):
        refusal = httpx.get(me, headers=bad)
        assert refusal.status_code == 401 and refusal.json()["type"] == "/problems/unauthorized"
    agent_id = body["agent_id"]
    httpx.delete(f"{stack.command}/api/v1/agents/{agent_id}", headers=OPERATOR)
    revoked = httpx.get(me, headers=auth)
    assert revoked.status_code == 403 and revoked.json()["type"] == "/problems/revoked"
    document = httpx.get(f"{stack.command}/openapi.json").json()
    assert set(document["paths"]["/api/v1/agents/me"]["get"]["responses"]) >= {"200", "401", "403"}


async def test_tools_are_listed_with_annotations_and_schemas(stack: Stack) -> None:
    async with over_http(stack, stack.agent()) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"cast_vote", "get_chart", "get_item", "whoami"}
    for name, tool in tools.items():
        hints = tool.annotations
        assert hints is not None and tool.description and tool.output_schema, name
        assert hints.read_only_hint is (name != "cast_vote"), name
        assert hints.destructive_hint is False and hints.idempotent_hint is True, name
        assert hints.open_world_hint is False, name
    vote = tools["cast_vote"].input_schema
    assert vote["required"] == ["item_id", "vote"]
    assert vote["properties"]["vote"]["enum"] == ["up", "down", "none"]
    assert vote["properties"]["item_id"]["maxLength"] == 128
    chart = tools["get_chart"].input_schema
    assert chart["properties"]["chart"]["enum"] == ["top", "independent", "trending", "daily"]
    assert chart["properties"]["limit"]["maximum"] == 50
    assert set(tools["cast_vote"].output_schema["properties"]) == {  # type: ignore[index]
        "item_id",
        "vote",
        "previous",
        "changed",
        "position",
    }


async def test_cast_change_and_retract_a_vote_then_read_it(stack: Stack) -> None:
    item = stack.item()
    async with over_http(stack, stack.agent()) as client:
        up = stack.note(await call(client, "cast_vote", item_id=item, vote="up"))
        assert (up["previous"], up["vote"], up["changed"]) == ("none", "up", True)
        same = await call(client, "cast_vote", item_id=item, vote="up")
        assert same["changed"] is False and same["position"] == up["position"]
        down = stack.note(await call(client, "cast_vote", item_id=item, vote="down"))
        assert (down["previous"], down["changed"]) == ("up", True)
        assert down["position"] > up["position"]
        seen = await call(client, "get_item", item_id=item, min_position=down["position"])
        assert (seen["up"], seen["down"], seen["net"]) == (0, 1, -1)
        assert seen["position"] >= down["position"]
        gone = stack.note(await call(client, "cast_vote", item_id=item, vote="none"))
        assert (gone["previous"], gone["vote"], gone["changed"]) == ("down", "none", True)
        seen = await call(client, "get_item", item_id=item, min_position=gone["position"])
        assert (seen["up"], seen["down"]) == (0, 0)


async def test_an_idempotency_key_records_a_retried_call_once(stack: Stack) -> None:
    item = stack.item()
    async with over_http(stack, stack.agent()) as client:
        first = stack.note(
            await call(client, "cast_vote", item_id=item, vote="up", idempotency_key="k1")
        )
        retry = await call(client, "cast_vote", item_id=item, vote="up", idempotency_key="k1")
        assert first["changed"] is True and retry == first  # the first answer, replayed
        reused = await refused(client, "cast_vote", item_id=item, vote="down", idempotency_key="k1")
        assert "422" in reused and "different request" in reused


async def test_charts_show_the_votes(stack: Stack) -> None:
    song, tool = stack.item("song"), stack.item("tool")
    async with over_http(stack, stack.agent()) as client:
        stack.note(await call(client, "cast_vote", item_id=song, vote="up"))
        last = stack.note(await call(client, "cast_vote", item_id=tool, vote="up"))
        at = last["position"]
        for chart in ("top", "independent", "trending", "daily"):
            songs = await call(client, "get_chart", chart=chart, item_type="song", min_position=at)
            assert songs["chart"] == chart and songs["position"] >= at
            assert song in [entry["item_id"] for entry in songs["items"]], chart
        tools = await call(
            client, "get_chart", chart="top", item_type="tool", limit=1, min_position=at
        )
        assert len(tools["items"]) == 1 and tools["items"][0]["item_type"] == "tool"
        wrong = await refused(client, "get_chart", chart="top", item_type="song", date="2026-01-01")
        assert "daily chart only" in wrong
        too_many = await refused(client, "get_chart", chart="top", item_type="song", limit=51)
        assert "limit" in too_many


async def test_refusals_come_back_as_error_results_with_the_problem(stack: Stack) -> None:
    async with over_http(stack, stack.agent()) as client:
        unknown = await refused(client, "cast_vote", item_id="song-nowhere", vote="up")
        assert "404 Not Found" in unknown and "no item 'song-nowhere'" in unknown
        missing = await refused(client, "get_item", item_id="song-nowhere")
        assert "404" in missing
        invalid = await refused(client, "cast_vote", item_id="bad id", vote="sideways")
        assert "item_id" in invalid and "vote" in invalid
    async with over_http(stack, "vlk_not-a-key") as client:
        for tool, arguments in (
            ("cast_vote", {"item_id": stack.item(), "vote": "up"}),
            ("whoami", {}),
        ):
            text = await refused(client, tool, **arguments)
            assert "401 Unauthorized: unknown API key" in text, tool


async def test_rate_limit_applies_as_over_http(stack: Stack) -> None:
    key = stack.agent("busy")
    items = [stack.item() for _ in range(BURST + 3)]
    async with over_http(stack, key) as client:
        accepted, refusal = 0, ""
        for item in items:
            result = await client.call_tool("cast_vote", {"item_id": item, "vote": "up"})
            if result.is_error:
                refusal = _text(result)
                break
            assert result.structured_content is not None
            stack.note(result.structured_content)
            accepted += 1
        assert accepted >= BURST and refusal, f"{accepted} votes, then {refusal!r}"
        assert "429 Too Many Requests" in refusal and "Retry after 1 s" in refusal
        me = await call(client, "whoami")
        assert me["name"] == "busy" and me["rate_limit"]["burst"] == BURST
        assert me["rate_limit"]["remaining"] <= 1
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        vote = {"item_id": items[-1], "vote": "down"}
        direct = await http.post(f"{stack.command}/api/v1/vote", json=vote)
    if direct.status_code != 429:  # refilled meanwhile: then it recorded a vote
        stack.note(direct.json())
    assert direct.status_code in (429, 201)


async def test_the_same_tools_over_stdio(stack: Stack) -> None:
    key, item = stack.agent("stdio-agent"), stack.item()
    async with over_stdio(stack, key) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"cast_vote", "get_chart", "get_item", "whoami"}
        vote = stack.note(await call(client, "cast_vote", item_id=item, vote="up"))
        assert vote["changed"] is True
        seen = await call(client, "get_item", item_id=item, min_position=vote["position"])
        assert seen["up"] == 1 and seen["independent"] == 1 and seen["owners"] == 1
        me = await call(client, "whoami")
        assert me["name"] == "stdio-agent" and me["rate_limit"]["remaining"] == BURST - 1
        assert me["owner"] == me["agent_id"]  # registered without an owner: its own
        assert "404" in await refused(client, "cast_vote", item_id="song-nowhere", vote="up")


def test_the_ledger_holds_exactly_the_votes_cast(stack: Stack) -> None:
    """Run last: every test's recorded vote, none of the refused, replayed or unchanged ones."""
    with psycopg.connect(stack.settings.database_url) as conn:
        rows = conn.execute("SELECT position FROM events WHERE event_type = 'VoteCast'").fetchall()
    assert stack.recorded and {row[0] for row in rows} == stack.recorded
    assert len(rows) == len(stack.recorded)
