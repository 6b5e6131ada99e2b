"""POST /api/v1/vote, the hot path, answered before routing.

Votes are the one request agents send in volume, so they skip the framework: `VoteEndpoint`
reads the raw ASGI request, `Voting.answer` checks the key, decodes the body with msgspec and
hands the vote to the batcher, and the reply goes out as two ASGI messages. It is the vote's only
entry; `models.vote_path_item` documents it in OpenAPI, and errors leave through the same problem
details as the routes'.
"""

from __future__ import annotations

import uuid
from typing import TypeVar

from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import URL, State
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from commands import agents, models
from commands.batcher import VoteBatcher
from commands.decide import CastVote, ItemTypeMismatch, UnknownItem
from commands.known import Known
from commands.plan import KeyReuseMismatch, Revoked, VoteRequest
from commands.ratelimit import RateLimiter
from infra import logs
from infra.metrics import RATE_LIMITED
from infra.problems import Problem, response_for

VOTE_PATH = models.VOTE_PATH
_Holder = TypeVar("_Holder")


class _VoteRoute:
    path = VOTE_PATH  # the metrics label of votes (EdgeMiddleware reads scope["route"].path)


def bearer(authorization: str | None) -> str:
    """The credentials of an `Authorization: Bearer ...` header, or 401."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Problem(
            401,
            "missing bearer credentials",
            slug="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.strip()


def key_holder(holder: _Holder | None, revoked: bool) -> _Holder:
    """What an API key was found to belong to: 401 for an unknown key (None), 403 once the key
    is revoked."""
    if holder is None:
        raise Problem(
            401, "unknown API key", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"}
        )
    if revoked:
        raise Problem(403, "this API key has been revoked", slug="revoked")
    return holder


class Voting:
    def __init__(self, pool: AsyncConnectionPool, known: Known, limiter: RateLimiter) -> None:
        self.pool = pool
        self.known = known
        self.limiter = limiter
        self.batcher = VoteBatcher(pool, known, limiter)

    async def agent(self, authorization: str | None) -> uuid.UUID:
        """The agent an API key belongs to: 401 for no or an unknown key, 403 once revoked."""
        found = await agents.agent_for_key(self.pool, bearer(authorization), self.known)
        agent_id, revoked = found or (None, False)
        return key_holder(agent_id, revoked)

    async def answer(
        self, authorization: str | None, idempotency_key: str | None, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and JSON body of a vote request; raises Problem for a refusal."""
        agent_id = await self.agent(authorization)
        logs.note(agent_id=str(agent_id))
        try:
            key = models.idempotency_key(idempotency_key)
            vote = models.decode_vote(body)
        except models.InvalidRequest as exc:
            raise Problem(422, "the request is not valid", slug="validation", errors=exc.errors)
        if vote.agent_id is not None and vote.agent_id != agent_id:
            raise Problem(
                403, "agent_id is not the agent this API key belongs to", slug="forbidden"
            )
        command = CastVote(agent_id, vote.item_id, vote.vote, vote.item_type)
        answer = await self.batcher.submit(VoteRequest(command, key))
        headers = self.limiter.headers(answer.decision)
        outcome = answer.outcome
        if outcome is None:
            RATE_LIMITED.inc()
            raise Problem(429, "too many votes; slow down", slug="rate-limited", headers=headers)
        if isinstance(outcome, Exception):
            raise _refusal(outcome, vote.item_id)
        if outcome.replayed:
            headers["Idempotent-Replayed"] = "true"
        logs.note(position=outcome.position)
        return outcome.status, headers, outcome.body


def _refusal(outcome: Exception, item_id: str) -> Exception:
    """The problem a refused vote answers with (an unexpected exception: itself)."""
    match outcome:
        case UnknownItem():
            return Problem(404, f"no item {item_id!r} in the catalogue", slug="unknown-item")
        case ItemTypeMismatch():
            return Problem(422, str(outcome), slug="item-type-mismatch")
        case Revoked():
            return Problem(403, "this API key has been revoked", slug="revoked")
        case KeyReuseMismatch():
            return Problem(
                422,
                "this Idempotency-Key was used for a different request",
                slug="idempotency-key-reused",
            )
    return outcome


class VoteEndpoint:
    """ASGI middleware: answers POST /api/v1/vote itself and passes everything else on.

    Other methods on that path get the 405 and a trailing slash the redirect that routing would
    give a route of that path."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state  # app.state: `voting` is set there once the lifespan has started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != VOTE_PATH:
            await self.app(scope, receive, send)
            return
        if scope["path"] != VOTE_PATH:
            redirect = RedirectResponse(str(URL(scope={**scope, "path": VOTE_PATH})))
            await redirect(scope, receive, send)
            return
        scope["route"] = _VoteRoute
        if scope["method"] != "POST":
            refusal = HTTPException(405, headers={"Allow": "POST"})
            await response_for(refusal, VOTE_PATH)(scope, receive, send)
            return
        await self._vote(scope, receive, send)

    async def _vote(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _body(receive)
            if body is None:
                return  # the client went away before sending its vote
            status, headers, reply = await self.state.voting.answer(*_vote_headers(scope), body)
        except Exception as exc:
            await response_for(exc, VOTE_PATH)(scope, receive, send)
            return
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]
        raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": reply})


def _vote_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The Authorization and Idempotency-Key headers; the first of a repeated header counts, as
    with Starlette's request.headers."""
    authorization = idempotency_key = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"idempotency-key" and idempotency_key is None:
            idempotency_key = value.decode("latin-1")
    return authorization, idempotency_key


async def _body(receive: Receive) -> bytes | None:
    """The request body; None if the client disconnected first. EdgeMiddleware's receive refuses
    one that grows too large."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
