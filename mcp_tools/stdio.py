"""The tools over stdio (`voteledger mcp`): one agent, its key given once, the APIs over HTTP."""

from __future__ import annotations

from mcp_tools.tools import build_server
from mcp_tools.upstream import Upstream


async def serve_stdio(command_url: str, query_url: str, api_key: str) -> None:
    """Serve until the client closes stdin. stdout carries the protocol alone."""
    upstream = Upstream.over_http(command_url, query_url)
    authorization = f"Bearer {api_key}"
    server = build_server(upstream, lambda ctx: authorization)
    try:
        await server.run_stdio_async()
    finally:
        await upstream.aclose()
