"""The command API with the MCP tools mounted at /mcp: what `python -m infra.serve commands` runs.

    create_app(settings) = commands.app.create_app(settings) + /mcp (streamable HTTP, stateless,
    JSON responses), the MCP session manager running inside the command app's lifespan.

Each MCP request must carry the agent's key as `Authorization: Bearer <key>`; one without any
bearer credentials is refused here with a 401 problem (and `WWW-Authenticate: Bearer`), before
the MCP layer. Whether the key is known, revoked or rate limited is the command API's to say,
per tool call, as an `isError` result.

The tools reach the command API in process (an ASGI transport on this very app): no socket, so
nothing depends on the address, port, worker count or proxy the server runs behind, and no
request can land on another replica. Reads go to the query API at VOTELEDGER_QUERY_URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from commands.app import create_app as create_command_app
from commands.vote import bearer
from infra.problems import Problem, problem_response
from infra.settings import Settings, get_settings
from mcp_tools.tools import bearer_of, build_server
from mcp_tools.upstream import Upstream

MCP_PATH = "/mcp"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_command_app(settings)
    upstream = Upstream.in_process(app, settings.query_url)
    server = build_server(upstream, lambda ctx: bearer_of(ctx.headers))
    mcp_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_body_bytes,
        # The Host/Origin allow-list guards servers that trust whoever reaches them on localhost;
        # this one serves any host name it is deployed under and trusts no one without a key.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app.router.routes.append(Route(MCP_PATH, endpoint=RequireBearer(mcp_app)))
    command_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        # Inside the command app's lifespan: tools never run without its pool and batcher, and
        # on shutdown MCP stops first.
        async with command_lifespan(app) as state, contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(upstream.aclose)
            await stack.enter_async_context(server.session_manager.run())
            yield state

    app.router.lifespan_context = lifespan
    return app


class RequireBearer:
    """Refuses an MCP request without `Authorization: Bearer <something>` (401 problem)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _has_bearer(scope):
            refusal = problem_response(
                401,
                "MCP requests need the agent's API key: Authorization: Bearer <key>",
                slug="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
                instance=MCP_PATH,
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _has_bearer(scope: Scope) -> bool:
    """Whether the request's Authorization header holds bearer credentials, as a vote's must."""
    try:
        bearer(Headers(scope=scope).get("authorization"))
    except Problem:
        return False
    return True
