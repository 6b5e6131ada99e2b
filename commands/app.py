"""The command API (port 8000): agents cast votes; operators register agents and list items.

Run with `uvicorn --factory commands.app:create_app`. This module assembles: the vote endpoint
(commands/vote.py), the routes (commands/routes.py), and the lifespan that opens the pool, the
rate limiter's Redis client, the vote batcher and the purge of expired idempotency keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from commands import models, routes
from commands.known import Known
from commands.ratelimit import RateLimiter
from commands.record import purge_idempotency_keys
from commands.vote import VOTE_PATH, VoteEndpoint, Voting
from infra import errors, heap, problems, redis_client
from infra.db import pool_for
from infra.http import NO_TELEMETRY, EdgeMiddleware
from infra.metrics import IDEMPOTENCY_KEYS
from infra.settings import Settings, get_settings

log = logging.getLogger("voteledger.commands")

_PURGE_EVERY_SECONDS = 600


class CommandAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """The routes' document with the vote added: VoteEndpoint answers it before routing."""
        if self.openapi_schema is None:
            schema = super().openapi()
            schema["paths"] = {VOTE_PATH: models.vote_path_item(), **schema["paths"]}
        return super().openapi()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    errors.init(settings, "command-api")
    app = CommandAPI(
        title="voteledger command API",
        version="1.0.0",
        description="Agents cast, change and retract votes; each change is a ledger event.",
        lifespan=lifespan,
        responses=models.ERROR_RESPONSES,
        telemetry=NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.known = Known()
    problems.install(app)
    app.include_router(routes.router)
    app.add_middleware(VoteEndpoint, state=app.state)
    if settings.command_cors_origins:
        # Only when configured (VOTELEDGER_COMMAND_CORS_ORIGINS): outside VoteEndpoint, so votes
        # answered before routing carry the headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.command_cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Idempotent-Replayed", "Retry-After", "RateLimit", "RateLimit-Policy"],
            allow_credentials=False,
        )
    # Added last, so outermost: its size and media-type guards and metrics cover votes too.
    app.add_middleware(
        EdgeMiddleware,
        name="command",
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    pool = pool_for(settings, "command")
    await pool.open()
    client = redis_client.connect(settings, socket_timeout=0.25, socket_connect_timeout=0.25)
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


async def _purge_keys_forever(pool: Any, ttl_seconds: int) -> None:
    """Expired idempotency keys are deleted periodically; a failure only delays the next try."""
    while True:
        try:
            purged, left = await purge_idempotency_keys(pool, ttl_seconds)
            IDEMPOTENCY_KEYS.set(left)
            if purged:
                log.info("purged %d expired idempotency keys", purged)
        except Exception:
            log.exception("purging idempotency keys failed")
        await asyncio.sleep(_PURGE_EVERY_SECONDS)
