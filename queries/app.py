"""The query API (port 8001): rankings, item detail and a live stream, from projections only.

Run with `uvicorn --factory queries.app:create_app`. It connects to PostgreSQL as the role that
can read only the read models, never the ledger. `create_app` assembles: the read side, its
lifespan, the middleware, the routes (`queries.routes`) and the problem handlers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from infra import heap, problems
from infra.http import NO_TELEMETRY, EdgeMiddleware
from infra.settings import Settings, get_settings
from queries.cache import CachedPages
from queries.routes import router
from queries.side import ReadSide

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/problem+json": {}}} for status in (404, 410, 422, 503)
}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    side: ReadSide = app.state.side
    await side.start()
    heap.settle()
    try:
        yield
    finally:
        await side.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    side = ReadSide(settings)
    app = FastAPI(
        title="voteledger query API",
        version="1.0.0",
        description="Rankings of songs and tools, read from projections of the vote ledger.",
        lifespan=lifespan,
        responses=_ERRORS,
        telemetry=NO_TELEMETRY,
    )
    app.state.side = side
    # Added first, so it runs inside EdgeMiddleware and its answers are counted in the metrics.
    app.add_middleware(CachedPages, current=side.current_page)
    app.add_middleware(EdgeMiddleware, name="query", max_body_bytes=settings.max_body_bytes)
    problems.install(app)
    app.include_router(router)
    return app
