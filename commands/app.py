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
from commands.models import AgentIn, AgentOut, ItemIn, ItemOut
from commands.models import Problem as ProblemModel
from commands.ratelimit import RateLimiter
from commands.vote import VOTE_PATH, VoteEndpoint, Voting, bearer
from infra import heap, problems
from infra.db import pool_for
from infra.http import NO_TELEMETRY, EdgeMiddleware
from infra.metrics import metrics_response
from infra.problems import Problem
from infra.settings import Settings, get_settings

log = logging.getLogger("voteledger.commands")

_PURGE_EVERY_SECONDS = 600

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemModel, "content": {"application/problem+json": {}}}
    for status in (401, 403, 404, 409, 413, 415, 422, 429, 503)
}


def require_operator(request: Request) -> None:
    token = bearer(request.headers.get("authorization"))
    expected: str = request.app.state.settings.operator_token
    # No configured token locks the operator routes; it never opens them.
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Problem(
            401,
            "operator credentials required",
            slug="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


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
        app.state.voting = voting = Voting(pool, app.state.known, app.state.limiter)
        voting.batcher.start()
        purger = asyncio.create_task(_purge_keys_forever(pool, settings.idempotency_ttl_seconds))
        heap.settle()
        try:
            yield
        finally:
            await voting.batcher.stop()
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
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.known = handlers.Known()
    problems.install(app)

    # Answered by VoteEndpoint before routing (see commands/vote.py); the route documents it.
    @app.post(
        VOTE_PATH,
        status_code=201,
        responses=models.VOTE_RESPONSES,
        openapi_extra=models.VOTE_OPENAPI,
        summary="Cast, change or retract a vote",
    )
    async def vote(request: Request) -> Response:
        status, headers, body = await request.app.state.voting.answer(
            request.headers.get("authorization"),
            request.headers.get("idempotency-key"),
            await request.body(),
        )
        return Response(body, status, headers, media_type="application/json")

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

    vote_route = next(r for r in app.routes if getattr(r, "path", None) == VOTE_PATH)
    app.add_middleware(VoteEndpoint, state=app.state, route=vote_route)
    # Added last, so outermost: its size and media-type guards and metrics cover votes too.
    app.add_middleware(EdgeMiddleware, name="command", max_body_bytes=settings.max_body_bytes)
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
