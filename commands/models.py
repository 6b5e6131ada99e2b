"""The command API's HTTP edge: request and response shapes, converted once into commands.

The vote, the hot path, is decoded and validated by msgspec straight from the body bytes; the
operator routes use pydantic models. Both are what the OpenAPI document shows.
"""

from __future__ import annotations

import http.client
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN, Direction, ItemType
from infra.openapi import json_response, json_schema

ItemId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ITEM_ID_MAX_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="Catalogue id: letters, digits and . _ : ~ -",
        examples=["song-42"],
    ),
]


VOTE_PATH = "/api/v1/vote"
ERROR_STATUSES = (401, 403, 404, 409, 413, 415, 422, 429, 503)

# PostgreSQL text cannot hold NUL: refused at the edge (422), not by the database (a 500).
NO_NUL = r"^[^\x00]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VoteIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=ITEM_ID_MAX_LENGTH,
            pattern=ITEM_ID_PATTERN,
            description="Catalogue id: letters, digits and . _ : ~ -",
            examples=["song-42"],
        ),
    ]
    vote: Annotated[Direction, msgspec.Meta(description="`none` retracts the vote")]
    agent_id: Annotated[
        uuid.UUID | None,
        msgspec.Meta(description="Optional; must be the agent the API key belongs to"),
    ] = None
    item_type: Annotated[
        ItemType | None,
        msgspec.Meta(description="Optional; must be the item's type"),
    ] = None


class VoteOut(msgspec.Struct, frozen=True):
    position: Annotated[
        int | None, msgspec.Meta(description="Ledger position of the slot's latest event")
    ]
    item_id: str
    vote: Direction
    previous: Direction
    changed: bool


class InvalidRequest(Exception):
    """A request that does not validate: `errors` as the 422 problem lists them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors


_vote_decoder = msgspec.json.Decoder(VoteIn)
_AT_PATH = re.compile(r" - at `\$((?:\.\w+|\[\d+\])*)`$")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def decode_vote(body: bytes) -> VoteIn:
    try:
        vote = _vote_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        found = _AT_PATH.search(message)
        path = re.findall(r"\w+", found.group(1)) if found else []
        message = message[: found.start()] if found else message
        raise InvalidRequest([{"location": ["body", *path], "message": message}]) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest([{"location": ["body"], "message": str(exc)}]) from None
    # msgspec matches patterns with re.search, where `$` also matches before a final newline.
    if vote.item_id.endswith("\n"):
        message = f"String must match pattern '{ITEM_ID_PATTERN}'"
        raise InvalidRequest([{"location": ["body", "item_id"], "message": message}])
    return vote


def idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header: 1 to 255 printable ASCII characters, or absent."""
    if value is None or _IDEMPOTENCY_KEY.fullmatch(value):
        return value
    message = "must be 1 to 255 printable ASCII characters without spaces"
    raise InvalidRequest([{"location": ["header", "Idempotency-Key"], "message": message}])


class ItemIn(Strict):
    item_id: ItemId
    item_type: Literal["song", "tool"]
    title: Annotated[str, Field(min_length=1, max_length=300, pattern=NO_NUL)]


class ItemOut(BaseModel):
    item_id: str
    item_type: Literal["song", "tool"]
    title: str
    position: int


# Whose agents these are: an operator account or organisation, named like a catalogue id.
Owner = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ITEM_ID_MAX_LENGTH,
        pattern=ITEM_ID_PATTERN,
        description="The agent's owner (the account or organisation that runs it): letters, "
        "digits and . _ : ~ -, at most 128. Omitted: the agent is its own owner, its agent_id "
        "as text. An owner's agents count once together on the independent chart.",
        examples=["acme-labs"],
    ),
]
OWNER_OUT = Field(description="The agent's owner; its own agent_id as text when it has none")


class AgentIn(Strict):
    name: Annotated[str, Field(max_length=100, pattern=NO_NUL)] = ""
    owner: Owner | None = None


class AgentOut(BaseModel):
    agent_id: uuid.UUID
    api_key: str = Field(description="Shown only once; only its digest is stored")
    position: int
    owner: str = OWNER_OUT


class RateLimitOut(BaseModel):
    per_second: float = Field(description="Votes refilled per second")
    burst: int = Field(description="Votes that may be cast at once after a pause")
    remaining: int = Field(description="Votes that would be accepted right now")
    reset_seconds: float = Field(description="Seconds until the whole burst is available again")


class AgentMeOut(BaseModel):
    agent_id: uuid.UUID
    name: str
    owner: str = OWNER_OUT
    rate_limit: RateLimitOut = Field(description="The vote rate limit; reading it costs no vote")


class AuditedVoteOut(BaseModel):
    agent_id: uuid.UUID
    owner: str
    vote: Literal["up", "down"]
    cast_at: datetime | None = Field(description="When the agent cast this vote")
    revoked: bool = Field(description="The agent's key is revoked (its votes stand)")


class VoteAuditOut(BaseModel):
    item_id: str
    votes: list[AuditedVoteOut] = Field(description="Current up and down votes, in agent order")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: none")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


# Any route may answer these, as problem details (in the form FastAPI's `responses` takes).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in ERROR_STATUSES
}


def vote_path_item() -> dict[str, Any]:
    """The OpenAPI path item of the vote, which `VoteEndpoint` answers before any route."""
    errors = {str(status): _problem_response(status) for status in ERROR_STATUSES}
    responses = {
        "201": json_response(VoteOut, "The vote was recorded"),
        **errors,
        "200": json_response(VoteOut, "The vote already had that state"),
    }
    operation = {
        "summary": "Cast, change or retract a vote",
        "operationId": "vote_api_v1_vote_post",
        "responses": responses,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": json_schema(VoteIn)}},
        },
        "parameters": [_IDEMPOTENCY_KEY_PARAMETER],
    }
    # Without nulls, as FastAPI writes the rest (msgspec gives optional fields `default: null`).
    return jsonable_encoder({"post": operation}, exclude_none=True)  # type: ignore[no-any-return]


_IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key return the first response and record nothing new",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
}


def _problem_response(status: int) -> dict[str, Any]:
    """An error response as FastAPI documents ERROR_RESPONSES: the Problem schema by reference."""
    return {
        "content": {
            "application/problem+json": {},
            "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}},
        },
        "description": http.client.responses[status],
    }
