"""The HTTP APIs as the tools reach them: every call bounded in time, every refusal a ToolError.

The tools are a facade: votes and the agent's profile go to the command API, reads to the query
API, so authentication, validation, rate limits and problem details are exactly those of HTTP.
A refusal comes back to the model as a tool result with `isError` whose text carries the
problem's status, title and detail (and Retry-After), never as a protocol error or a trace.

httpx2 is the HTTP client the MCP SDK itself depends on (httpx's successor, the same API), so an
installation that has the SDK has it; httpx is only a development dependency here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import anyio
import httpx2
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp

# A read may wait for a position (wait_ms, at most 5000 on the query API); every call, in process
# or not, is cut off after CALL_DEADLINE seconds in all.
READ_WAIT_MS = 5000
CALL_DEADLINE = 10.0
_TIMEOUT = httpx2.Timeout(CALL_DEADLINE, connect=3.0)
_DETAIL_MAX = 500
# httpx2 logs each request at INFO: a line per tool call would drown the service's own logs.
logging.getLogger("httpx2").setLevel(logging.WARNING)
_ERRORS_MAX = 5

# What a model can do about each refusal, after the problem's own words.
_HINTS = {
    401: "The API key is missing or unknown: the agent's key goes in `Authorization: Bearer`.",
    403: "This API key may not do that (it was revoked, or names another agent).",
    404: "No such item: get_chart lists the items that exist.",
    413: "The request is too large.",
    422: "Correct the arguments named above and call again.",
    425: "The charts have not reached that position yet: call again in a moment.",
    429: "Too many votes: wait the Retry-After seconds before voting again.",
    503: "The service is briefly unavailable: call again in a moment.",
}


def problem_text(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """What a model reads when an API refuses: status, title, detail, the failing arguments of
    a 422, Retry-After, and a hint. Pure; the body may be anything (it is bounded here)."""
    problem = _json_object(body)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    title = _text(problem.get("title")) or phrase
    detail = _text(problem.get("detail")) or _text(body.decode("utf-8", "replace"))
    lines = [f"{status} {title}" + (f": {detail}" if detail else "")]
    errors = problem.get("errors")
    for error in errors[:_ERRORS_MAX] if isinstance(errors, list) else []:
        if isinstance(error, dict):
            where = ".".join(str(p) for p in error.get("location", []) if p != "body")
            lines.append(f"- {where or 'request'}: {_text(error.get('message'))}")
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        lines.append(f"Retry after {retry_after} s (Retry-After: {retry_after}).")
    hint = _HINTS.get(status) or ("Call again later." if status >= 500 else "")
    return "\n".join([*lines, hint] if hint else lines)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _text(value: Any) -> str:
    """A bounded single line of text (an API's words are not trusted to be short)."""
    text = " ".join(str(value or "").split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"


class Upstream:
    """The command API (votes, the agent's profile) and the query API (charts, items)."""

    def __init__(self, commands: httpx2.AsyncClient, queries: httpx2.AsyncClient) -> None:
        self.commands = commands
        self.queries = queries

    @classmethod
    def in_process(cls, command_app: ASGIApp, query_url: str) -> Upstream:
        """Calls to the command API go straight to its ASGI app (no socket, whatever address or
        port it serves on); reads go to the query API at `query_url`."""
        transport = httpx2.ASGITransport(app=command_app, raise_app_exceptions=False)
        commands = httpx2.AsyncClient(transport=transport, base_url="http://command-api")
        return cls(commands, _client(query_url, trust_env=False))

    @classmethod
    def over_http(cls, command_url: str, query_url: str) -> Upstream:
        return cls(_client(command_url), _client(query_url))

    async def aclose(self) -> None:
        await self.commands.aclose()
        await self.queries.aclose()

    async def vote(self, authorization: str, item_id: str, vote: str, key: str) -> dict[str, Any]:
        """POST /api/v1/vote. Safe to send twice: the Idempotency-Key makes the second a replay,
        so a call that failed on the way is tried once more."""
        headers = {"Authorization": authorization, "Idempotency-Key": key}
        body = {"item_id": item_id, "vote": vote}
        try:
            return await self._call(self.commands, "POST", "/api/v1/vote", headers, json=body)
        except _Unreachable:
            return await self._call(self.commands, "POST", "/api/v1/vote", headers, json=body)

    async def me(self, authorization: str) -> dict[str, Any]:
        headers = {"Authorization": authorization}
        return await self._call(self.commands, "GET", "/api/v1/agents/me", headers)

    async def read(self, path: str, params: Mapping[str, str | int]) -> dict[str, Any]:
        """A GET on the query API (public: no credentials)."""
        return await self._call(self.queries, "GET", path, {}, params=params)

    async def _call(
        self,
        client: httpx2.AsyncClient,
        method: str,
        path: str,
        headers: dict[str, str],
        **options: Any,
    ) -> dict[str, Any]:
        what = "command API" if client is self.commands else "query API"
        try:
            # The ASGI transport ignores the client's timeouts: this deadline bounds both.
            with anyio.fail_after(CALL_DEADLINE):
                response = await client.request(method, path, headers=headers, **options)
        except TimeoutError:
            raise ToolError(f"The {what} did not answer within {CALL_DEADLINE:g} s. Call again.")
        except httpx2.TransportError as exc:
            failure = type(exc).__name__
            raise _Unreachable(f"The {what} could not be reached or did not answer ({failure}).")
        if response.status_code >= 400:
            raise ToolError(problem_text(response.status_code, response.headers, response.content))
        found = _json_object(response.content)
        if not found:
            raise ToolError(f"The {what} answered {response.status_code} without a JSON object.")
        return found


class _Unreachable(ToolError):
    """No answer came from the API (connection refused, reset, timed out): worth a retry."""


def _client(base_url: str, *, trust_env: bool = True) -> httpx2.AsyncClient:
    # Small answers, few at a time: a handful of kept-alive connections per API.
    limits = httpx2.Limits(max_connections=50, max_keepalive_connections=10)
    return httpx2.AsyncClient(
        base_url=base_url, timeout=_TIMEOUT, limits=limits, trust_env=trust_env
    )
