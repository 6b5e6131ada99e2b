"""Owners on the command side: registering an agent for an owner (validated, capped per owner even
under concurrent registrations), every event of an agent carrying its owner, and the operator's
vote audit over HTTP and in `voteledger audit`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from infra.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import OPERATOR, Agent, command_api, new_item
from tests.servers import settings_env

CAP = 3


@pytest.fixture(scope="module")
async def capped(
    database_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The command API on the session database, with at most CAP agents per owner."""
    settings = make_settings(
        database_url, redis_url, redis_prefix, VOTELEDGER_MAX_AGENTS_PER_OWNER=str(CAP)
    )
    async with command_api(settings) as client:
        yield client


def _owner() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"


async def _register(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/agents", json={"name": "owned", **body}, headers=OPERATOR)


async def _agent(client: httpx.AsyncClient, owner: str | None = None) -> Agent:
    response = await _register(client, **({} if owner is None else {"owner": owner}))
    assert response.status_code == 201, response.text
    return Agent(response.json()["agent_id"], response.json()["api_key"])


async def _payloads(database_url: str, agent_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The agent's events in the ledger, as stored: (type, payload)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT event_type, payload FROM events WHERE agent_id = %s ORDER BY position",
            (agent_id,),
        )
        return list(await cursor.fetchall())


async def test_an_owner_is_named_or_the_agent_is_its_own(
    capped: httpx.AsyncClient, database_url: str
) -> None:
    owner = _owner()
    named = await _register(capped, owner=owner)
    assert named.status_code == 201, named.text
    assert named.json()["owner"] == owner
    alone = await _register(capped)
    assert alone.json()["owner"] == alone.json()["agent_id"]
    for response, expected in ((named, owner), (alone, alone.json()["agent_id"])):
        key = {"Authorization": f"Bearer {response.json()['api_key']}"}
        me = await capped.get("/api/v1/agents/me", headers=key)
        assert me.status_code == 200 and me.json()["owner"] == expected
        # The event names the owner explicitly, also when it is the agent itself.
        [(kind, payload)] = await _payloads(database_url, response.json()["agent_id"])
        assert kind == "AgentRegistered" and payload["owner"] == expected and payload["v"] == 2
    schema = (await capped.get("/openapi.json")).json()["components"]["schemas"]["AgentIn"]
    assert "its own owner" in schema["properties"]["owner"]["anyOf"][0]["description"]


@pytest.mark.parametrize(
    "owner", ["", "two words", "x" * 129, "line\n", "-leading", "naïve", "nul\x00", 5, ["a"]]
)
async def test_an_invalid_owner_is_refused(capped: httpx.AsyncClient, owner: object) -> None:
    response = await _register(capped, owner=owner)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["location"][-1] == "owner"


async def test_the_cap_holds_under_concurrent_registrations(capped: httpx.AsyncClient) -> None:
    """Six at once for an owner with no agent: exactly CAP win. At the cap less one, two at once:
    exactly one wins. A revoked agent no longer counts."""
    owner = _owner()
    first = await asyncio.gather(*(_register(capped, owner=owner) for _ in range(6)))
    assert sorted(r.status_code for r in first) == [201] * CAP + [409] * (6 - CAP)
    refusal = next(r for r in first if r.status_code == 409)
    assert refusal.headers["content-type"] == "application/problem+json"
    assert refusal.json()["type"] == "/problems/owner-limit"
    assert f"{CAP} agents" in refusal.json()["detail"] and refusal.json()["cap"] == CAP
    winner = next(r for r in first if r.status_code == 201).json()["agent_id"]
    revoked = await capped.delete(f"/api/v1/agents/{winner}", headers=OPERATOR)
    assert revoked.status_code == 204
    again = await asyncio.gather(*(_register(capped, owner=owner) for _ in range(2)))
    assert sorted(r.status_code for r in again) == [201, 409]
    # Other owners, and agents that are their own owner, are not held back by this one.
    assert (await _register(capped, owner=_owner())).status_code == 201
    assert (await _register(capped)).status_code == 201


async def test_every_vote_carries_the_agents_owner(
    capped: httpx.AsyncClient, database_url: str
) -> None:
    owner = _owner()
    agents = [await _agent(capped, owner), await _agent(capped)]
    item = await new_item(capped)
    for agent in agents:
        for vote in ("up", "down", "none"):
            body = {"item_id": item, "vote": vote}
            answer = await capped.post("/api/v1/vote", json=body, headers=agent.headers)
            assert answer.status_code == 201, answer.text
    for agent, expected in zip(agents, (owner, agents[1].agent_id), strict=True):
        events = await _payloads(database_url, agent.agent_id)
        assert [kind for kind, _ in events] == ["AgentRegistered"] + ["VoteCast"] * 3
        assert {payload["owner"] for _, payload in events} == {expected}
        assert {payload["v"] for _, payload in events} == {2}


# --- the vote audit ---------------------------------------------------------------------------


async def _vote(client: httpx.AsyncClient, agent: Agent, item: str, vote: str) -> None:
    answer = await client.post(
        "/api/v1/vote", json={"item_id": item, "vote": vote}, headers=agent.headers
    )
    assert answer.status_code in (200, 201), answer.text


@pytest.fixture(scope="module")
async def audited(command_client: httpx.AsyncClient) -> dict[str, Any]:
    """An item voted on by four agents of one owner (up, up, down, and up by one revoked since),
    two of another (down, down) and one that retracted, and one agent of its own (up)."""
    capped = command_client  # no cap: one owner has four agents
    big, small = _owner(), _owner()
    item = await new_item(capped)
    votes: dict[str, tuple[str, str]] = {}  # agent -> (owner, vote) of the current votes
    for owner, directions in ((big, ["up", "up", "down"]), (small, ["down", "down"])):
        for direction in directions:
            agent = await _agent(capped, owner)
            await _vote(capped, agent, item, direction)
            votes[agent.agent_id] = (owner, direction)
    alone = await _agent(capped)
    await _vote(capped, alone, item, "up")
    votes[alone.agent_id] = (alone.agent_id, "up")
    retracted = await _agent(capped, small)
    await _vote(capped, retracted, item, "up")
    await _vote(capped, retracted, item, "none")
    gone = await _agent(capped, big)
    await _vote(capped, gone, item, "up")
    assert (await capped.delete(f"/api/v1/agents/{gone.agent_id}", headers=OPERATOR)).is_success
    votes[gone.agent_id] = (big, "up")
    return {
        "item": item,
        "votes": votes,
        "big": big,
        "small": small,
        "alone": alone.agent_id,
        "revoked": gone.agent_id,
    }


async def test_the_audit_pages_through_every_current_vote(
    command_client: httpx.AsyncClient, audited: dict[str, Any]
) -> None:
    capped = command_client
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await capped.get(
            f"/api/v1/items/{audited['item']}/votes", params=params, headers=OPERATOR
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["item_id"] == audited["item"] and len(body["votes"]) <= 3
        seen += body["votes"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3  # 7 votes in pages of 3
    assert [v["agent_id"] for v in seen] == sorted(audited["votes"])  # agent order, no repeats
    assert {v["agent_id"]: (v["owner"], v["vote"]) for v in seen} == audited["votes"]
    assert [v["agent_id"] for v in seen if v["revoked"]] == [audited["revoked"]]
    assert all(v["cast_at"] for v in seen)


async def test_the_audit_is_the_operators(
    capped: httpx.AsyncClient, audited: dict[str, Any]
) -> None:
    path = f"/api/v1/items/{audited['item']}/votes"
    agent = await _agent(capped)
    for headers in ({}, agent.headers, {"Authorization": "Bearer not-the-operator-token"}):
        refusal = await capped.get(path, headers=headers)
        assert refusal.status_code == 401 and refusal.json()["type"] == "/problems/unauthorized"
    unknown = await capped.get("/api/v1/items/song-nowhere-0/votes", headers=OPERATOR)
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/unknown-item"
    for params in ({"cursor": "nope"}, {"limit": 0}, {"limit": 1001}):
        bad = await capped.get(path, params=params, headers=OPERATOR)
        assert bad.status_code == 422, bad.text
    nul = await capped.get("/api/v1/items/song%00x/votes", headers=OPERATOR)
    assert nul.status_code == 422, nul.text
    document = (await capped.get("/openapi.json")).json()
    operation = document["paths"]["/api/v1/items/{item_id}/votes"]["get"]
    assert {"200", "401", "404", "422"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"item_id", "limit", "cursor"}


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**settings_env(settings), "COLUMNS": "200"},  # no table cell cut short
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_voteledger_audit(settings: Settings, audited: dict[str, Any]) -> None:
    """The same votes, and per owner: agents, ups, downs and its sign, largest owners first."""
    found = _cli(settings, "audit", audited["item"], "--json")
    assert found.returncode == 0, found.stderr
    body = json.loads(found.stdout)
    assert {v["agent_id"]: (v["owner"], v["vote"]) for v in body["votes"]} == audited["votes"]
    assert body["owners"] == [
        {"owner": audited["big"], "agents": 4, "up": 3, "down": 1, "sign": 1},
        {"owner": audited["small"], "agents": 2, "up": 0, "down": 2, "sign": -1},
        {"owner": audited["alone"], "agents": 1, "up": 1, "down": 0, "sign": 1},
    ]
    table = _cli(settings, "audit", audited["item"])
    assert table.returncode == 0, table.stderr
    assert audited["big"] in table.stdout and "7 votes (4 up, 3 down) from 3 owners" in table.stdout
    missing = _cli(settings, "audit", "song-nowhere-0")
    assert missing.returncode == 1 and "no item" in missing.stderr
