"""The typed client (clients/python): its models against both APIs' OpenAPI documents, so they
cannot drift; and its pure parts (Retry-After, the retry decision, reading answers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal

import httpx
import msgspec
import pytest
import stamina
import voteledger_client.models as client_models
from voteledger_client import Client, ProblemError, RetryOn, RetryPolicy, VoteResult
from voteledger_client.core import parse_as, parse_rate_limit, problem_error
from voteledger_client.models import (
    Agent,
    ChartDigest,
    Component,
    DailySeries,
    DayNet,
    Detail,
    Entry,
    Explanation,
    HistoryDay,
    Item,
    ItemHistory,
    Page,
    Placing,
    Problem,
)
from voteledger_client.retry import parse_retry_after, retry_wait

from commands.app import create_app as command_app
from infra.settings import Settings
from queries.app import create_app as query_app

Schema = dict[str, Any]

# --- the models against the OpenAPI documents -----------------------------------------------


@pytest.fixture(scope="module")
def documents() -> dict[str, Schema]:
    settings = Settings.from_env(
        {
            "VOTELEDGER_ENV": "test",
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    return {"commands": command_app(settings).openapi(), "queries": query_app(settings).openapi()}


def _body(document: Schema, path: str, method: str, status: str) -> Schema:
    response = document["paths"][path][method]["responses"][status]
    return _resolve(document, response["content"]["application/json"]["schema"])


def _resolve(document: Schema, schema: Schema) -> Schema:
    """`schema`, or what its $ref (#/components/schemas/... or #/$defs/...) points at."""
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


# Each response model and where the APIs document its body: (API, path, method, status).
BODIES: dict[type[msgspec.Struct], list[tuple[str, str, str, str]]] = {
    VoteResult: [
        ("commands", "/api/v1/vote", "post", "201"),
        ("commands", "/api/v1/vote", "post", "200"),
    ],
    Agent: [("commands", "/api/v1/agents", "post", "201")],
    Item: [("commands", "/api/v1/items", "post", "201")],
    Problem: [
        ("commands", "/api/v1/vote", "post", "404"),
        ("commands", "/api/v1/items", "post", "409"),
    ],
    Page: [
        ("queries", "/api/v1/top", "get", "200"),
        ("queries", "/api/v1/top/daily", "get", "200"),
        ("queries", "/api/v1/trending", "get", "200"),
    ],
    Detail: [("queries", "/api/v1/items/{item_id}", "get", "200")],
    ItemHistory: [("queries", "/api/v1/items/{item_id}/history", "get", "200")],
    ChartDigest: [("queries", "/api/v1/charts/{date}/digest", "get", "200")],
    Explanation: [("queries", "/api/v1/items/{item_id}/explain", "get", "200")],
    DailySeries: [("queries", "/api/v1/items/{item_id}/daily", "get", "200")],
}
# Checked as part of a body above (Entry: Page.items, HistoryDay and Placing: ItemHistory.days,
# Component: Explanation.components, DayNet: DailySeries.days), or not a body at all.
NOT_BODIES = {
    Entry,
    HistoryDay,
    Placing,
    Component,
    DayNet,
    client_models.RateLimit,
    client_models.VoteAndRead,
}


def test_every_model_is_checked() -> None:
    """A new model must be placed: as a body with its schema, or knowingly not a body."""
    models = {
        value
        for value in vars(client_models).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value is not msgspec.Struct
    }
    assert models == set(BODIES) | NOT_BODIES


@pytest.mark.parametrize("model", list(BODIES), ids=lambda model: model.__name__)
def test_models_match_the_openapi_documents(
    model: type[msgspec.Struct], documents: dict[str, Schema]
) -> None:
    """Every body field of the model is in the schema with a type that takes every value the
    schema allows, required only where the schema requires it; every field the schema requires
    is in the model. Nested models (Page.items) are checked the same way."""
    (root,), definitions = msgspec.json.schema_components([model], ref_template="#/$defs/{name}")
    client = {"$defs": definitions}
    for api, path, method, status in BODIES[model]:
        server = documents[api]
        where = f"{model.__name__} vs {api} {method.upper()} {path} {status}"
        assert (
            _object_drift(
                client, _resolve(client, root), server, _body(server, path, method, status), where
            )
            == []
        )


def _object_drift(
    client: Schema, mine: Schema, server: Schema, theirs: Schema, where: str
) -> list[str]:
    # Fields filled from headers are listed by the model (the schema has its title).
    from_headers: frozenset[str] = getattr(
        getattr(client_models, mine["title"], None), "FROM_HEADERS", frozenset()
    )
    properties = theirs.get("properties", {})
    required = set(theirs.get("required", []))
    drift = [
        f"{where}: {name} is required by the schema, missing in the model"
        for name in required - set(mine["properties"])
    ]
    for name, field in mine["properties"].items():
        if name in from_headers:
            if name in properties:
                drift.append(f"{where}: {name} is a body field, not a header's")
            continue
        if name not in properties:
            drift.append(f"{where}: {name} is not in the schema")
            continue
        if name in mine.get("required", []) and name not in required:
            drift.append(f"{where}: {name} is required by the model, optional in the schema")
        drift += _type_drift(client, field, server, properties[name], f"{where}.{name}")
    return drift


def _type_drift(
    client: Schema, mine: Schema, server: Schema, theirs: Schema, where: str
) -> list[str]:
    """What the server may send that the model's type would refuse."""
    mine, theirs = _resolve(client, mine), _resolve(server, theirs)
    if "anyOf" in theirs:
        return [
            d
            for branch in theirs["anyOf"]
            for d in _type_drift(client, mine, server, branch, where)
        ]
    if "anyOf" in mine:
        tries = [_type_drift(client, branch, server, theirs, where) for branch in mine["anyOf"]]
        return [] if any(t == [] for t in tries) else [f"{where}: no branch takes {theirs}"]
    if "enum" in theirs:
        if mine.get("type") == "string" and "enum" not in mine:
            return []  # a plain string takes any value of the schema's enum
        missing = set(theirs["enum"]) - set(mine.get("enum", []))
        return [f"{where}: the model refuses {sorted(missing)}"] if missing else []
    kind, accepted = theirs.get("type"), mine.get("type")
    if kind == "object" and accepted == "object":
        return _object_drift(client, mine, server, theirs, where)
    if kind == "array" and accepted == "array":
        return _type_drift(client, mine["items"], server, theirs["items"], f"{where}[]")
    if kind == accepted or (kind, accepted) == ("integer", "number"):
        return []
    return [f"{where}: the schema's {kind} is not the model's {accepted}"]


def test_the_drift_check_finds_drift(documents: dict[str, Schema]) -> None:
    """The comparison fails for a model that has drifted: a renamed field, a narrower type, a
    field the schema does not require made required."""

    class Drifted(msgspec.Struct):
        item_id: int  # a string on the wire
        titel: str  # misspelt; `title` is missing
        item_type: Literal["song"]  # refuses "tool"
        position: int

    (root,), definitions = msgspec.json.schema_components([Drifted], ref_template="#/$defs/{name}")
    client = {"$defs": definitions}
    theirs = _body(documents["commands"], "/api/v1/items", "post", "201")
    drift = _object_drift(client, _resolve(client, root), documents["commands"], theirs, "Drifted")
    assert len(drift) == 4, drift
    assert any("title is required" in d for d in drift)
    assert any("titel is not in the schema" in d for d in drift)
    assert any("refuses ['tool']" in d for d in drift)
    assert any("string is not the model's integer" in d for d in drift)


# --- reading answers ----------------------------------------------------------------------------


def test_unknown_fields_are_tolerated_and_headers_fill_their_fields() -> None:
    body: dict[str, Any] = {
        "position": 7,
        "item_id": "song-1",
        "vote": "up",
        "previous": "none",
        "changed": True,
    }
    headers = {
        "Idempotent-Replayed": "true",
        "RateLimit": '"votes";r=3;t=1',
        "RateLimit-Policy": '"votes";q=40;w=2',
    }
    response = httpx.Response(201, json={**body, "added_later": [1, 2]}, headers=headers)
    result = parse_as(VoteResult)(response)
    assert result == VoteResult(
        **body, replayed=True, rate_limit=client_models.RateLimit("votes", 3, 1, 40, 2)
    )
    assert parse_as(VoteResult)(httpx.Response(200, json=body)).replayed is False


def test_rate_limit_headers() -> None:
    assert parse_rate_limit({}) is None
    only_policy = parse_rate_limit({"ratelimit-policy": '"votes";q=5;w=1, "other";q=1;w=9'})
    assert only_policy == client_models.RateLimit("votes", None, None, 5, 1)
    assert parse_rate_limit({"ratelimit": '"v";r=x;t=2'}) == client_models.RateLimit("v", reset=2)


def test_problem_documents_and_other_error_answers() -> None:
    document = {
        "type": "/problems/validation",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "the request is not valid",
        "instance": "/api/v1/vote",
        "errors": [{"location": ["body"], "message": "bad"}],
    }
    error = problem_error(
        httpx.Response(422, json=document, headers={"Content-Type": "application/problem+json"})
    )
    assert (error.status, error.type, error.title, error.detail, error.instance) == (
        422,
        "/problems/validation",
        "Unprocessable Content",
        "the request is not valid",
        "/api/v1/vote",
    )
    assert error.extra == {"errors": [{"location": ["body"], "message": "bad"}]}
    assert error.retry_after is None
    proxy = problem_error(
        httpx.Response(502, text="<html>Bad Gateway</html>", headers={"Retry-After": "3"})
    )
    assert (proxy.status, proxy.type, proxy.title, proxy.retry_after) == (
        502,
        "about:blank",
        "Bad Gateway",
        3.0,
    )
    assert "Bad Gateway" in proxy.detail


# --- Retry-After and the retry decision ------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("1", 1.0),
        (" 120 ", 120.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        ("Sun, 01 Mar 2026 12:00:05 GMT", 5.0),  # the IMF-fixdate of RFC 9110
        ("Sunday, 01-Mar-26 12:00:05 GMT", 5.0),  # the obsolete RFC 850 form
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),  # past: now
        ("99999999999999999999999", float(2**53)),
        (None, None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("²", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def _problem(
    status: int, retry_after: float | None = None, type: str = "about:blank"
) -> ProblemError:
    return ProblemError(status=status, type=type, retry_after=retry_after)


POLICY = RetryPolicy(timeout=30.0, retry_after_max=10.0)
VOTE = RetryOn()
OPERATOR = RetryOn(resend=False)
READ = RetryOn(statuses=frozenset({425, 429, 503}))
REQUEST = httpx.Request("POST", "http://127.0.0.1/api/v1/vote")


@pytest.mark.parametrize(
    ("failure", "on", "elapsed", "decision"),
    [
        (_problem(503), VOTE, 0.0, True),  # no Retry-After: backoff
        (_problem(503, 2.0), VOTE, 0.0, 2.0),  # as the server says
        (_problem(429, 1.0), VOTE, 0.0, 1.0),
        (_problem(429, 0.0), VOTE, 0.0, 0.0),
        (_problem(429, 11.0), VOTE, 0.0, False),  # more than retry_after_max: raise it
        (_problem(429, 5.0), VOTE, 26.0, False),  # would end past the timeout
        (_problem(425, 1.0), VOTE, 0.0, False),  # Too Early is a read's
        (_problem(425, 1.0), READ, 0.0, 1.0),
        (_problem(422, type="/problems/not-issued"), READ, 0.0, False),
        (
            _problem(422, type="/problems/not-issued"),
            RetryOn(problem_types=frozenset({"/problems/not-issued"})),
            0.0,
            True,
        ),
        (_problem(404), READ, 0.0, False),
        (_problem(400), VOTE, 0.0, False),
        (_problem(500), VOTE, 0.0, False),
        (httpx.ConnectError("refused", request=REQUEST), OPERATOR, 0.0, True),  # never sent
        (httpx.ConnectTimeout("slow", request=REQUEST), OPERATOR, 0.0, True),
        (httpx.PoolTimeout("busy", request=REQUEST), OPERATOR, 0.0, True),
        (httpx.ReadTimeout("slow", request=REQUEST), VOTE, 0.0, True),  # maybe sent: idempotent
        (httpx.ReadTimeout("slow", request=REQUEST), OPERATOR, 0.0, False),  # maybe sent twice
        (httpx.RemoteProtocolError("cut", request=REQUEST), VOTE, 0.0, True),
        (httpx.ReadError("reset", request=REQUEST), OPERATOR, 0.0, False),
        (httpx.UnsupportedProtocol("ftp", request=REQUEST), VOTE, 0.0, False),
        (ValueError("a bug"), VOTE, 0.0, False),
    ],
)
def test_retry_decision(
    failure: BaseException, on: RetryOn, elapsed: float, decision: bool | float
) -> None:
    assert retry_wait(failure, on, POLICY, elapsed) == decision
    assert type(retry_wait(failure, on, POLICY, elapsed)) is type(decision)


def test_a_vote_is_retried_with_its_one_idempotency_key() -> None:
    """Retries of one vote send the same key; the next vote a new one; a 422 is not retried."""
    seen: list[tuple[str, str]] = []
    answers = iter([503, 429, 201, 201, 422])

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["Idempotency-Key"], json.loads(request.content)["item_id"]))
        status = next(answers)
        if status == 201:
            body = {
                "position": 1,
                "item_id": "s",
                "vote": "up",
                "previous": "none",
                "changed": True,
            }
            return httpx.Response(201, json=body)
        return httpx.Response(
            status,
            json={"type": "about:blank", "title": "", "status": status, "detail": "x"},
            headers={"Retry-After": "1"},
        )

    with (
        stamina.set_testing(True, attempts=5),
        Client(api_key="k", transport=httpx.MockTransport(answer)) as client,
    ):
        assert client.vote("s", "up").changed
        assert client.vote("t", "up", idempotency_key="mine").position == 1
        with pytest.raises(ProblemError) as refused:
            client.vote("u", "up")
    keys = [key for key, _ in seen]
    assert [item for _, item in seen] == ["s", "s", "s", "t", "u"]
    assert keys[0] == keys[1] == keys[2] != keys[4]
    assert keys[3] == "mine"
    assert refused.value.status == 422
