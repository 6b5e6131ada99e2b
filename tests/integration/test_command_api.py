from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from infra.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import OPERATOR, command_api, new_agent, new_item


def _events_of(conn: psycopg.Connection, agent_id: str, item_id: str) -> list[dict[str, str]]:
    rows = conn.execute(
        "SELECT payload FROM events WHERE event_type = 'VoteCast' AND agent_id = %s "
        "AND item_id = %s ORDER BY position",
        (agent_id, item_id),
    ).fetchall()
    return [row[0] for row in rows]


def _slot(conn: psycopg.Connection, agent_id: str, item_id: str) -> tuple[str, int, int]:
    row = conn.execute(
        "SELECT direction, version, last_position FROM vote_slots "
        "WHERE agent_id = %s AND item_id = %s",
        (agent_id, item_id),
    ).fetchone()
    assert row is not None
    return row


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["title"] and body["detail"]
    return body


async def test_the_newcomer_scenario(
    command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Register, list a song, vote up, down, retract, then retry with one Idempotency-Key."""
    agent = await new_agent(command_client)
    item = await new_item(command_client, "song")

    async def vote(direction: str, **headers: str) -> httpx.Response:
        return await command_client.post(
            "/api/v1/vote",
            json={"item_id": item, "vote": direction},
            headers={**agent.headers, **headers},
        )

    up = await vote("up")
    assert up.status_code == 201
    assert up.json() | {"position": 0} == {
        "position": 0,
        "item_id": item,
        "vote": "up",
        "previous": "none",
        "changed": True,
    }
    down = await vote("down")
    assert (down.status_code, down.json()["previous"]) == (201, "up")
    assert down.json()["position"] > up.json()["position"]
    retract = await vote("none")
    assert (retract.status_code, retract.json()["previous"]) == (201, "down")

    first = await vote("up", **{"Idempotency-Key": "retry-1"})
    again = await vote("up", **{"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert again.headers["Idempotent-Replayed"] == "true"

    events = _events_of(admin_conn, agent.agent_id, item)
    assert [(e["previous"], e["direction"]) for e in events] == [
        ("none", "up"),
        ("up", "down"),
        ("down", "none"),
        ("none", "up"),
    ]
    assert _slot(admin_conn, agent.agent_id, item) == ("up", 4, first.json()["position"])


async def test_repeating_the_current_vote_records_nothing(
    command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Voting the state a slot already has answers 200, changed false, and appends no event."""
    agent = await new_agent(command_client)
    item = await new_item(command_client, "tool")
    body = {"item_id": item, "vote": "down", "item_type": "tool", "agent_id": agent.agent_id}
    first = await command_client.post("/api/v1/vote", json=body, headers=agent.headers)
    second = await command_client.post("/api/v1/vote", json=body, headers=agent.headers)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json() == {
        "position": first.json()["position"],
        "item_id": item,
        "vote": "down",
        "previous": "down",
        "changed": False,
    }
    assert len(_events_of(admin_conn, agent.agent_id, item)) == 1


async def test_fifty_concurrent_votes_on_one_slot(
    command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Concurrent mixed votes serialise on the slot: one slot, a consistent chain of events."""
    agent = await new_agent(command_client)
    item = await new_item(command_client)
    rng = random.Random(7)
    directions = [rng.choice(["up", "down", "none"]) for _ in range(50)]
    responses = await asyncio.gather(
        *(
            command_client.post(
                "/api/v1/vote", json={"item_id": item, "vote": d}, headers=agent.headers
            )
            for d in directions
        )
    )
    assert {r.status_code for r in responses} <= {200, 201}
    events = _events_of(admin_conn, agent.agent_id, item)
    assert len(events) == sum(r.status_code == 201 for r in responses)
    previous = "none"
    for event in events:
        assert event["previous"] == previous  # each event starts where the last one ended
        assert event["direction"] != event["previous"]  # no repeated state transition
        previous = event["direction"]
    direction, version, last_position = _slot(admin_conn, agent.agent_id, item)
    assert (direction, version) == (previous, len(events))
    positions = sorted(r.json()["position"] for r in responses if r.status_code == 201)
    assert positions == sorted(set(positions)) and last_position == positions[-1]
    count = admin_conn.execute(
        "SELECT count(*) FROM vote_slots WHERE agent_id = %s AND item_id = %s",
        (agent.agent_id, item),
    ).fetchone()
    assert count == (1,)


async def test_concurrent_requests_with_one_key_record_one_event(
    command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Twenty simultaneous retries with one Idempotency-Key record exactly one event."""
    agent = await new_agent(command_client)
    item = await new_item(command_client)
    headers = {**agent.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    responses = await asyncio.gather(
        *(
            command_client.post(
                "/api/v1/vote", json={"item_id": item, "vote": "up"}, headers=headers
            )
            for _ in range(20)
        )
    )
    assert {(r.status_code, r.content) for r in responses} == {
        (responses[0].status_code, responses[0].content)
    }
    assert responses[0].status_code == 201
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    assert len(_events_of(admin_conn, agent.agent_id, item)) == 1


async def test_reused_key_with_another_body_is_refused(command_client: httpx.AsyncClient) -> None:
    """The same Idempotency-Key with a different body answers 422 and records nothing new."""
    agent = await new_agent(command_client)
    item = await new_item(command_client)
    headers = {**agent.headers, "Idempotency-Key": "same-key"}
    ok = await command_client.post(
        "/api/v1/vote", json={"item_id": item, "vote": "up"}, headers=headers
    )
    assert ok.status_code == 201
    other = await command_client.post(
        "/api/v1/vote", json={"item_id": item, "vote": "down"}, headers=headers
    )
    assert assert_problem(other, 422)["type"] == "/problems/idempotency-key-reused"


async def test_idempotency_keys_belong_to_one_agent(command_client: httpx.AsyncClient) -> None:
    """Two agents using the same key string do not see each other's responses."""
    item = await new_item(command_client)
    first, second = await new_agent(command_client), await new_agent(command_client)
    for agent, direction in ((first, "up"), (second, "down")):
        response = await command_client.post(
            "/api/v1/vote",
            json={"item_id": item, "vote": direction},
            headers={**agent.headers, "Idempotency-Key": "shared"},
        )
        assert (response.status_code, response.json()["vote"]) == (201, direction)


async def test_expired_idempotency_keys_are_purged(
    settings: Settings, command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Keys older than the TTL are deleted; younger ones stay."""
    from commands.record import purge_idempotency_keys
    from infra.db import pool_for

    agent = await new_agent(command_client)
    item = await new_item(command_client)
    for key in ("old", "young"):
        await command_client.post(
            "/api/v1/vote",
            json={"item_id": item, "vote": "up" if key == "old" else "down"},
            headers={**agent.headers, "Idempotency-Key": key},
        )
    admin_conn.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 days' "
        "WHERE agent_id = %s AND key = 'old'",
        (agent.agent_id,),
    )
    async with pool_for(settings, "command") as pool:
        purged, _ = await purge_idempotency_keys(pool, 86400)
    assert purged >= 1
    left = admin_conn.execute(
        "SELECT key FROM idempotency_keys WHERE agent_id = %s", (agent.agent_id,)
    ).fetchall()
    assert left == [("young",)]


# --- every error status -------------------------------------------------------------------


async def test_authentication_errors(command_client: httpx.AsyncClient) -> None:
    """Missing or unknown keys answer 401; a revoked key or another agent's id answer 403."""
    item = await new_item(command_client)
    body = {"item_id": item, "vote": "up"}
    missing = await command_client.post("/api/v1/vote", json=body)
    assert assert_problem(missing, 401) and missing.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(
        await command_client.post("/api/v1/vote", json=body, headers={"Authorization": "Bearer x"}),
        401,
    )
    agent, other = await new_agent(command_client), await new_agent(command_client)
    assert_problem(
        await command_client.post(
            "/api/v1/vote", json={**body, "agent_id": other.agent_id}, headers=agent.headers
        ),
        403,
    )
    revoked = await command_client.delete(f"/api/v1/agents/{agent.agent_id}", headers=OPERATOR)
    assert revoked.status_code == 204
    assert_problem(await command_client.post("/api/v1/vote", json=body, headers=agent.headers), 403)
    assert_problem(
        await command_client.delete(f"/api/v1/agents/{uuid.uuid4()}", headers=OPERATOR), 404
    )


async def test_operator_routes_need_the_operator_token(command_client: httpx.AsyncClient) -> None:
    """Agents and strangers cannot register agents or list items."""
    agent = await new_agent(command_client)
    for headers in ({}, agent.headers, {"Authorization": "Bearer wrong-operator-token"}):
        assert_problem(await command_client.post("/api/v1/agents", json={}, headers=headers), 401)
        assert_problem(
            await command_client.post(
                "/api/v1/items",
                json={"item_id": "x", "item_type": "song", "title": "t"},
                headers=headers,
            ),
            401,
        )


async def test_catalogue_errors(command_client: httpx.AsyncClient) -> None:
    """Duplicate items 409; unknown items 404; a wrong item_type or a NUL in a title 422."""
    item = await new_item(command_client, "song")
    duplicate = await command_client.post(
        "/api/v1/items", json={"item_id": item, "item_type": "tool", "title": "t"}, headers=OPERATOR
    )
    assert assert_problem(duplicate, 409)["type"] == "/problems/duplicate-item"
    agent = await new_agent(command_client)
    unknown = await command_client.post(
        "/api/v1/vote", json={"item_id": "no-such-item", "vote": "up"}, headers=agent.headers
    )
    assert assert_problem(unknown, 404)["type"] == "/problems/unknown-item"
    wrong = await command_client.post(
        "/api/v1/vote",
        json={"item_id": item, "vote": "up", "item_type": "tool"},
        headers=agent.headers,
    )
    assert assert_problem(wrong, 422)["type"] == "/problems/item-type-mismatch"
    # NUL cannot be stored in PostgreSQL text: a validation error, not a server error.
    nul = await command_client.post(
        "/api/v1/items",
        json={"item_id": "song-nul", "item_type": "song", "title": "a\x00b"},
        headers=OPERATOR,
    )
    assert assert_problem(nul, 422)["errors"]
    named = await command_client.post("/api/v1/agents", json={"name": "\x00"}, headers=OPERATOR)
    assert assert_problem(named, 422)["errors"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"item_id": "song-1", "vote": "sideways"}, ["body", "vote"]),
        ({"item_id": "", "vote": "up"}, ["body", "item_id"]),
        ({"item_id": "bad id with spaces", "vote": "up"}, ["body", "item_id"]),
        ({"item_id": "song-1\n", "vote": "up"}, ["body", "item_id"]),
        ({"item_id": "s" * 129, "vote": "up"}, ["body", "item_id"]),
        ({"vote": "up"}, ["body"]),
        ({"item_id": "song-1", "vote": "up", "unexpected": 1}, ["body"]),
        ({"item_id": "song-1", "vote": "up", "agent_id": "not-a-uuid"}, ["body", "agent_id"]),
        ({"item_id": "song-1", "vote": "up", "item_type": "album"}, ["body", "item_type"]),
        ([1, 2, 3], ["body"]),
        ("just a string", ["body"]),
    ],
)
async def test_invalid_bodies_answer_422(
    command_client: httpx.AsyncClient, body: object, location: list[str]
) -> None:
    """Malformed vote bodies are refused with problem details saying where and what."""
    agent = await new_agent(command_client)
    response = await command_client.post("/api/v1/vote", json=body, headers=agent.headers)
    [error] = assert_problem(response, 422)["errors"]
    assert error["location"] == location
    assert error["message"]


async def test_broken_json_and_bad_headers_answer_422(command_client: httpx.AsyncClient) -> None:
    """Unparseable JSON and a malformed Idempotency-Key are validation errors."""
    agent = await new_agent(command_client)
    headers = {**agent.headers, "Content-Type": "application/json"}
    assert_problem(
        await command_client.post("/api/v1/vote", content=b"{not json", headers=headers), 422
    )
    assert_problem(
        await command_client.post(
            "/api/v1/vote",
            json={"item_id": "a", "vote": "up"},
            headers={**agent.headers, "Idempotency-Key": "x" * 300},
        ),
        422,
    )


async def test_media_type_and_size_guards(
    settings: Settings, command_client: httpx.AsyncClient
) -> None:
    """A non-JSON body answers 415; an oversized one 413, with or without Content-Length."""
    agent = await new_agent(command_client)
    plain = await command_client.post(
        "/api/v1/vote",
        content=b"item_id=a",
        headers={**agent.headers, "Content-Type": "text/plain"},
    )
    assert_problem(plain, 415)
    big = b'{"item_id": "' + b"a" * settings.max_body_bytes + b'", "vote": "up"}'
    json_headers = {**agent.headers, "Content-Type": "application/json"}
    assert_problem(
        await command_client.post("/api/v1/vote", content=big, headers=json_headers), 413
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    streamed = await command_client.post("/api/v1/vote", content=chunks(), headers=json_headers)
    assert_problem(streamed, 413)


@pytest.fixture
def limited(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    """Settings with a tight rate limit: a burst of 3, then one vote every 2 seconds."""
    return make_settings(
        database_url,
        redis_url,
        redis_prefix,
        VOTELEDGER_RATE_LIMIT_PER_SECOND="0.5",
        VOTELEDGER_RATE_LIMIT_BURST="3",
    )


async def test_rate_limit_answers_429_with_headers(limited: Settings) -> None:
    """Past its burst an agent gets 429 with Retry-After and RateLimit headers."""
    async with command_api(limited) as client:
        agent = await new_agent(client)
        item = await new_item(client)
        statuses = []
        for direction in ["up", "down", "up", "down"]:
            response = await client.post(
                "/api/v1/vote", json={"item_id": item, "vote": direction}, headers=agent.headers
            )
            statuses.append(response.status_code)
        assert statuses == [201, 201, 201, 429]
        assert_problem(response, 429)
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["RateLimit-Policy"] == '"votes";q=3;w=6'
        assert response.headers["RateLimit"].startswith('"votes";r=0;')
        metrics = (await client.get("/metrics")).text
        assert "voteledger_rate_limited_total" in metrics


async def test_rate_limit_holds_for_concurrent_votes(
    limited: Settings, admin_conn: psycopg.Connection
) -> None:
    """Votes sent at once, which share a rate-limit check, are each charged: only the burst
    passes, and only the admitted votes are recorded."""
    async with command_api(limited) as client:
        agent = await new_agent(client)
        items = [await new_item(client) for _ in range(8)]
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/vote", json={"item_id": i, "vote": "up"}, headers=agent.headers
                )
                for i in items
            )
        )
    assert sorted(r.status_code for r in responses) == [201] * 3 + [429] * 5
    recorded = {i for i, r in zip(items, responses, strict=True) if r.status_code == 201}
    assert {i for i in items if _events_of(admin_conn, agent.agent_id, i)} == recorded


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def test_votes_are_accepted_when_redis_is_unreachable(
    database_url: str, redis_prefix: str, admin_conn: psycopg.Connection
) -> None:
    """With Redis unreachable the rate limit falls back in-process and votes are recorded."""
    unreachable = make_settings(database_url, "redis://127.0.0.1:1/0", redis_prefix)
    async with command_api(unreachable) as client:
        before = _metric(
            (await client.get("/metrics")).text, "voteledger_rate_limit_fallback_total"
        )
        agent = await new_agent(client)
        item = await new_item(client)
        response = await client.post(
            "/api/v1/vote", json={"item_id": item, "vote": "up"}, headers=agent.headers
        )
        assert response.status_code == 201
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "voteledger_rate_limit_fallback_total") > before
        assert _metric(metrics, "voteledger_rate_limit_redis_up") == 0
    assert len(_events_of(admin_conn, agent.agent_id, item)) == 1


async def test_database_down_answers_503(redis_url: str, redis_prefix: str) -> None:
    """When PostgreSQL cannot be reached, requests answer 503 with Retry-After, not 500."""
    down = make_settings(
        "postgresql://postgres@127.0.0.1:1/none",
        redis_url,
        redis_prefix,
        VOTELEDGER_POOL_TIMEOUT="0.5",
        VOTELEDGER_POOL_MIN_SIZE="0",
    )
    async with command_api(down) as client:
        response = await client.post(
            "/api/v1/vote",
            json={"item_id": "a", "vote": "up"},
            headers={"Authorization": "Bearer some-key"},
        )
        assert_problem(response, 503)
        assert response.headers["Retry-After"] == "1"
        assert_problem(await client.get("/readyz"), 503)
        assert (await client.get("/healthz")).status_code == 200


async def test_service_endpoints(command_client: httpx.AsyncClient) -> None:
    """Health, readiness, metrics and the OpenAPI document are served."""
    assert (await command_client.get("/healthz")).json() == {"status": "ok"}
    assert (await command_client.get("/readyz")).json() == {"status": "ready"}
    metrics = (await command_client.get("/metrics")).text
    assert "voteledger_http_requests_total" in metrics
    assert "voteledger_events_appended_total" in metrics
    schema = (await command_client.get("/openapi.json")).json()
    assert "/api/v1/vote" in schema["paths"]
    assert (await command_client.get("/docs")).status_code == 200
    assert_problem(await command_client.get("/no/such/route"), 404)
    assert_problem(await command_client.get("/api/v1/vote"), 405)
