"""The command API (port 8000): agents cast votes; operators register agents and list items.

Run with `uvicorn --factory commands.app:create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from commands import handlers, models
from commands.batcher import VoteBatcher
from commands.decide import CastVote, ItemTypeMismatch, UnknownItem
from commands.models import AgentIn, AgentOut, ItemIn, ItemOut
from commands.models import Problem as ProblemModel
from commands.ratelimit import RateLimiter
from infra import problems
from infra.db import pool_for
from infra.http import EdgeMiddleware
from infra.metrics import RATE_LIMITED, metrics_response
from infra.problems import Problem
from infra.settings import Settings, get_settings

log = logging.getLogger("voteledger.commands")

_PURGE_EVERY_SECONDS = 600

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemModel, "content": {"application/problem+json": {}}}
    for status in (401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Problem(
            401,
            "missing bearer credentials",
            slug="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.strip()


def require_operator(request: Request) -> None:
    token = _bearer(request)
    expected: str = request.app.state.settings.operator_token
    # No configured token locks the operator routes; it never opens them.
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Problem(
            401,
            "operator credentials required",
            slug="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_agent(request: Request) -> uuid.UUID:
    api_key = _bearer(request)
    found = await handlers.agent_for_key(request.app.state.pool, api_key, request.app.state.known)
    if found is None:
        raise Problem(
            401, "unknown API key", slug="unauthorized", headers={"WWW-Authenticate": "Bearer"}
        )
    agent_id, revoked = found
    if revoked:
        raise Problem(403, "this API key has been revoked", slug="revoked")
    return agent_id


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = pool_for(settings, "command")
        await pool.open()
        client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        app.state.pool = pool
        app.state.limiter = RateLimiter(
            client, settings.redis_prefix, settings.rate_limit_per_second, settings.rate_limit_burst
        )
        app.state.votes = VoteBatcher(pool, app.state.known, app.state.limiter)
        app.state.votes.start()
        purger = asyncio.create_task(_purge_keys_forever(pool, settings.idempotency_ttl_seconds))
        try:
            yield
        finally:
            await app.state.votes.stop()
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await client.aclose()
            await pool.close()

    app = FastAPI(
        title="voteledger command API",
        version="1.0.0",
        description="Agents cast, change and retract votes; each change is a ledger event.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.settings = settings
    app.state.known = handlers.Known()
    app.add_middleware(EdgeMiddleware, name="command", max_body_bytes=settings.max_body_bytes)
    problems.install(app)

    # The hot path: no pydantic model or dependency to solve; the body goes straight from bytes
    # to a msgspec struct, and the rate limit is checked once per batch (see VoteBatcher).
    @app.post(
        "/api/v1/vote",
        status_code=201,
        responses=models.VOTE_RESPONSES,
        openapi_extra=models.VOTE_OPENAPI,
        summary="Cast, change or retract a vote",
    )
    async def vote(request: Request) -> Response:
        agent_id = await require_agent(request)
        try:
            key = models.idempotency_key(request.headers.get("idempotency-key"))
            body = models.decode_vote(await request.body())
        except models.InvalidRequest as exc:
            raise Problem(422, "the request is not valid", slug="validation", errors=exc.errors)
        if body.agent_id is not None and body.agent_id != agent_id:
            raise Problem(
                403, "agent_id is not the agent this API key belongs to", slug="forbidden"
            )
        command = CastVote(agent_id, body.item_id, body.vote, body.item_type)
        answer = await request.app.state.votes.submit(handlers.VoteRequest(command, key))
        limiter: RateLimiter = request.app.state.limiter
        headers = limiter.headers(answer.decision)
        outcome = answer.outcome
        match outcome:
            case None:
                RATE_LIMITED.inc()
                raise Problem(
                    429, "too many votes; slow down", slug="rate-limited", headers=headers
                )
            case UnknownItem():
                raise Problem(
                    404, f"no item {body.item_id!r} in the catalogue", slug="unknown-item"
                )
            case ItemTypeMismatch():
                raise Problem(422, str(outcome), slug="item-type-mismatch")
            case handlers.Revoked():
                raise Problem(403, "this API key has been revoked", slug="revoked")
            case handlers.KeyReuseMismatch():
                raise Problem(
                    422,
                    "this Idempotency-Key was used for a different request",
                    slug="idempotency-key-reused",
                )
            case Exception():
                raise outcome
        reply = outcome
        if reply.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(reply.body, reply.status, headers, media_type="application/json")

    @app.post(
        "/api/v1/agents",
        response_model=AgentOut,
        status_code=201,
        dependencies=[Depends(require_operator)],
        summary="Register an agent (operator)",
    )
    async def create_agent(request: Request, body: AgentIn | None = None) -> AgentOut:
        agent = await handlers.register_agent(request.app.state.pool, body.name if body else "")
        return AgentOut(agent_id=agent.agent_id, api_key=agent.api_key, position=agent.position)

    @app.delete(
        "/api/v1/agents/{agent_id}",
        status_code=204,
        dependencies=[Depends(require_operator)],
        summary="Revoke an agent's API key (operator)",
    )
    async def revoke_agent(agent_id: uuid.UUID, request: Request) -> Response:
        try:
            await handlers.revoke_agent(request.app.state.pool, agent_id)
        except handlers.NotFound:
            raise Problem(404, f"no agent {agent_id}", slug="unknown-agent")
        return Response(status_code=204)

    @app.post(
        "/api/v1/items",
        response_model=ItemOut,
        status_code=201,
        dependencies=[Depends(require_operator)],
        summary="List a song or tool in the catalogue (operator)",
    )
    async def create_item(body: ItemIn, request: Request) -> ItemOut:
        try:
            position = await handlers.list_item(
                request.app.state.pool, body.item_id, body.item_type, body.title
            )
        except handlers.AlreadyExists:
            raise Problem(409, f"item {body.item_id!r} already exists", slug="duplicate-item")
        return ItemOut(**body.model_dump(), position=position)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> dict[str, str]:
        async with request.app.state.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    return app


async def _purge_keys_forever(pool: Any, ttl_seconds: int) -> None:
    """Expired idempotency keys are deleted periodically; a failure only delays the next try."""
    while True:
        try:
            purged = await handlers.purge_idempotency_keys(pool, ttl_seconds)
            if purged:
                log.info("purged %d expired idempotency keys", purged)
        except Exception:
            log.exception("purging idempotency keys failed")
        await asyncio.sleep(_PURGE_EVERY_SECONDS)
