"""The query API (port 8001): rankings, item detail and a live stream, from projections only; and
the live chart page at `/` (`queries.page`).

Run with `uvicorn --factory queries.app:create_app`. It connects to PostgreSQL as the role that
can read only the read models, never the ledger. `create_app` assembles: the read side, its
lifespan, the middleware, the routes (`queries.routes`) and the problem handlers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from infra import errors, heap, problems
from infra.http import NO_TELEMETRY, EdgeMiddleware
from infra.settings import Settings, get_settings
from queries import explain, history
from queries.cache import CachedPages
from queries.direct import ItemEndpoint
from queries.page import page_router
from queries.routes import router
from queries.side import ReadSide
from queries.stream import StreamHub

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
        await app.state.hub.stop()
        await side.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    errors.init(settings, "query-api")
    side = ReadSide(settings)
    # No slash redirects: Starlette builds them from the request's Host header, so anyone could
    # make this API redirect to a host of their choosing.
    app = FastAPI(
        redirect_slashes=False,
        title="voteledger query API",
        version="1.0.0",
        description="Rankings of songs and tools, read from projections of the vote ledger.",
        lifespan=lifespan,
        responses=_ERRORS,
        telemetry=NO_TELEMETRY,
    )
    app.state.side = side
    app.state.hub = StreamHub(side, settings.stream_clients_max)
    # Added first, so they run inside EdgeMiddleware and their answers are counted in the
    # metrics: a cached page first, then an item's detail, before routing.
    app.add_middleware(ItemEndpoint, side=side)
    app.add_middleware(CachedPages, current=side.current_page)
    if settings.cors_origins:
        # Outside CachedPages, so cached answers carry the headers too. Rankings are public: any
        # listed origin may read them, never with credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["If-None-Match", "Last-Event-ID"],
            expose_headers=["ETag", "X-Ledger-Position", "X-Read-Model", "Retry-After"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(
        EdgeMiddleware,
        name="query",
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )
    problems.install(app)
    app.include_router(router)
    app.include_router(history.router)  # charts as they stood: as-of, history, digests
    app.include_router(explain.router)  # why an item has its score
    app.include_router(page_router())  # the live chart page at /, for people
    return app
