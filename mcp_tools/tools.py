"""The MCP server agents talk to: four curated tools over the HTTP APIs (mcp_tools/upstream.py).

The same server runs mounted on the command API at /mcp (the agent's key comes with each HTTP
request) and over stdio (`voteledger mcp`, the key given once); `authorization` tells them apart.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping
from datetime import date

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from mcp_tools.shapes import (
    Chart,
    ChartArg,
    DateArg,
    IdempotencyKeyArg,
    ItemDetail,
    ItemIdArg,
    ItemTypeArg,
    LimitArg,
    MinPositionArg,
    VoteArg,
    VoteResult,
    Whoami,
)
from mcp_tools.upstream import READ_WAIT_MS, Upstream

# The `Authorization` header to send for the agent of a tool call, or None when it has none.
Authorization = Callable[[Context], str | None]

INSTRUCTIONS = """\
A vote ledger for an AI music store: agents vote songs and tools up or down, and the charts rank
them. Read with get_chart and get_item; vote with cast_vote (one vote per agent and item: voting
again changes it, `none` retracts it); whoami shows the agent and its vote rate limit. To read your
own vote, pass the position cast_vote returned as min_position. A refused call comes back as an
error result that says why (and, when rate limited, how long to wait)."""

_READ = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
# A vote sets state: repeating it changes nothing more (and with the same idempotency key returns
# the first answer); it replaces nothing that cannot be set back, and the ledger keeps history.
_VOTE = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
_CHART_PATHS = {
    "top": ("/api/v1/top", {}),
    "independent": ("/api/v1/top", {"sort": "independent"}),
    "trending": ("/api/v1/trending", {}),
    "daily": ("/api/v1/top/daily", {}),
}


def chart_query(
    chart: str, item_type: str, limit: int, day: date | None, min_position: int | None
) -> tuple[str, dict[str, str | int]]:
    """The query API request of a chart: path and parameters."""
    if day is not None and chart != "daily":
        raise ToolError("`date` applies to the daily chart only: leave it out, or chart=daily.")
    path, fixed = _CHART_PATHS[chart]
    params: dict[str, str | int] = {"item_type": item_type, "limit": limit, **fixed}
    if day is not None:
        params["date"] = day.isoformat()
    return path, {**params, **read_after(min_position)}


def read_after(min_position: int | None) -> dict[str, int]:
    """Query parameters that make a read wait for (and reflect) a ledger position."""
    if min_position is None:
        return {}
    return {"min_position": min_position, "wait_ms": READ_WAIT_MS}


def bearer_of(headers: Mapping[str, str] | None) -> str | None:
    """The Authorization header of an HTTP tool call (None over stdio)."""
    return None if headers is None else headers.get("authorization")


class VoteTools:
    """The tools; each method's docstring is the description a model reads."""

    def __init__(self, upstream: Upstream, authorization: Authorization) -> None:
        self.upstream = upstream
        self.authorization = authorization

    def _credentials(self, ctx: Context) -> str:
        found = self.authorization(ctx)
        if not found:
            raise ToolError("401 Unauthorized: no API key came with this call.")
        return found

    async def cast_vote(
        self,
        ctx: Context,
        item_id: ItemIdArg,
        vote: VoteArg,
        idempotency_key: IdempotencyKeyArg = None,
    ) -> VoteResult:
        """Cast, change or retract this agent's vote on a song or tool.

        One vote per agent and item: `up` or `down` replaces the agent's earlier vote, `none`
        retracts it. Voting what is already recorded changes nothing (changed: false). Votes are
        rate limited per agent (see whoami); a refused vote says how long to wait."""
        key = idempotency_key or f"mcp-{uuid.uuid4()}"
        found = await self.upstream.vote(self._credentials(ctx), item_id, vote, key)
        return VoteResult.model_validate(found)

    async def get_chart(
        self,
        chart: ChartArg,
        item_type: ItemTypeArg,
        limit: LimitArg = 10,
        date: DateArg = None,
        min_position: MinPositionArg = None,
    ) -> Chart:
        """A ranking of songs or tools: all-time (top), all-time counting each owner once
        (independent), time-decayed (trending) or of one UTC day (daily), best first, with each
        entry's rank, id, title, score and vote counts."""
        path, params = chart_query(chart, item_type, limit, date, min_position)
        found = await self.upstream.read(path, params)
        return Chart.model_validate({**found, "chart": chart, "item_type": item_type})

    async def get_item(self, item_id: ItemIdArg, min_position: MinPositionArg = None) -> ItemDetail:
        """One song or tool: title, up and down votes, net, confidence, trending score, and its
        ranks in the all-time, trending and today's charts."""
        found = await self.upstream.read(f"/api/v1/items/{item_id}", read_after(min_position))
        return ItemDetail.model_validate(found)

    async def whoami(self, ctx: Context) -> Whoami:
        """This agent (id, name and owner, by its API key) and its vote rate limit right now: votes
        per second, burst, votes remaining, seconds until the burst is full again. Costs no vote."""
        found = await self.upstream.me(self._credentials(ctx))
        return Whoami.model_validate(found)


def build_server(upstream: Upstream, authorization: Authorization) -> MCPServer:
    tools = VoteTools(upstream, authorization)
    server: MCPServer = MCPServer(
        "voteledger", title="voteledger", version="1.0.0", instructions=INSTRUCTIONS
    )
    for method, title, hints in (
        (tools.cast_vote, "Cast a vote", _VOTE),
        (tools.get_chart, "Read a chart", _READ),
        (tools.get_item, "Read one item", _READ),
        (tools.whoami, "This agent and its rate limit", _READ),
    ):
        description = inspect.getdoc(method)
        server.add_tool(method, title=title, description=description, annotations=hints)
    return server
