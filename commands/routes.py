"""The command API's routes: the operator's (register and revoke agents, list items), the agent's
own profile, and the service endpoints. Each calls one function. Votes never get here: see
commands/vote.py."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import HTMLResponse, Response

from commands import agents, audit, catalogue
from commands.models import (
    AgentIn,
    AgentMeOut,
    AgentOut,
    AuditedVoteOut,
    ItemIn,
    ItemOut,
    RateLimitOut,
    VoteAuditOut,
)
from commands.ratelimit import RateLimiter
from commands.vote import bearer, key_holder
from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN
from infra.metrics import metrics_response
from infra.problems import Problem


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


router = APIRouter()
_OPERATOR = [Depends(require_operator)]


@router.post(
    "/api/v1/agents",
    response_model=AgentOut,
    status_code=201,
    dependencies=_OPERATOR,
    summary="Register an agent (operator)",
    description="`owner` names whose agent it is; omitted, the agent is its own owner (its "
    "agent_id as text). With VOTELEDGER_MAX_AGENTS_PER_OWNER set, registering one more agent "
    "than that for an owner (counting its agents that are not revoked) answers 409 "
    "(`/problems/owner-limit`).",
)
async def create_agent(request: Request, body: AgentIn | None = None) -> AgentOut:
    body = body or AgentIn()
    state = request.app.state
    try:
        agent = await agents.register_agent(
            state.pool, body.name, body.owner, state.settings.max_agents_per_owner
        )
    except agents.OwnerLimit as exc:
        raise Problem(409, str(exc), slug="owner-limit", cap=exc.cap)
    return AgentOut(
        agent_id=agent.agent_id, api_key=agent.api_key, position=agent.position, owner=agent.owner
    )


@router.delete(
    "/api/v1/agents/{agent_id}",
    status_code=204,
    dependencies=_OPERATOR,
    summary="Revoke an agent's API key (operator)",
)
async def revoke_agent(agent_id: uuid.UUID, request: Request) -> Response:
    try:
        await agents.revoke_agent(request.app.state.pool, agent_id)
    except agents.NotFound:
        raise Problem(404, f"no agent {agent_id}", slug="unknown-agent")
    return Response(status_code=204)


@router.get(
    "/api/v1/agents/me",
    response_model=AgentMeOut,
    summary="The calling agent (by its API key) and its vote rate limit",
    description="Reading the rate limit costs no vote. 401 for a missing or unknown key, 403 "
    "once it is revoked. The RateLimit-Policy and RateLimit headers are those of a vote.",
)
async def agent_me(request: Request, response: Response) -> AgentMeOut:
    state = request.app.state
    api_key = bearer(request.headers.get("authorization"))
    found = await agents.profile_for_key(state.pool, api_key)
    profile = key_holder(found, found is not None and found.revoked)
    limiter: RateLimiter = state.limiter
    decision = await limiter.peek(str(profile.agent_id))
    response.headers.update(limiter.headers(decision))
    rate_limit = RateLimitOut(
        per_second=limiter.rate,
        burst=limiter.burst,
        remaining=decision.remaining,
        reset_seconds=round(decision.reset, 3),
    )
    return AgentMeOut(
        agent_id=profile.agent_id, name=profile.name, owner=profile.owner, rate_limit=rate_limit
    )


@router.post(
    "/api/v1/items",
    response_model=ItemOut,
    status_code=201,
    dependencies=_OPERATOR,
    summary="List a song or tool in the catalogue (operator)",
)
async def create_item(body: ItemIn, request: Request) -> ItemOut:
    try:
        position = await catalogue.list_item(
            request.app.state.pool, body.item_id, body.item_type, body.title
        )
    except catalogue.AlreadyExists:
        raise Problem(409, f"item {body.item_id!r} already exists", slug="duplicate-item")
    return ItemOut(**body.model_dump(), position=position)


@router.get(
    "/api/v1/items/{item_id}/votes",
    response_model=VoteAuditOut,
    dependencies=_OPERATOR,
    summary="The item's current votes, agent by agent, with their owners (operator)",
    description="Each agent's current up or down vote on the item (retracted votes are not "
    "listed), its owner, when it was cast and whether the agent's key is revoked (its votes "
    "stand), read from the command side's own records. Paged in agent order: pass "
    "`next_cursor` as `cursor`. 404 for an item not in the catalogue.",
)
async def item_votes(
    request: Request,
    item_id: Annotated[
        str, Path(min_length=1, max_length=ITEM_ID_MAX_LENGTH, pattern=ITEM_ID_PATTERN)
    ],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[uuid.UUID | None, Query(description="A page's `next_cursor`")] = None,
) -> VoteAuditOut:
    try:
        page = await audit.item_votes(request.app.state.pool, item_id, limit, cursor)
    except audit.UnknownItem:
        raise Problem(404, f"no item {item_id!r} in the catalogue", slug="unknown-item")
    votes = [AuditedVoteOut(**asdict(vote)) for vote in page.votes]
    next_cursor = str(page.next_cursor) if page.next_cursor else None
    return VoteAuditOut(item_id=item_id, votes=votes, next_cursor=next_cursor)


_HOME = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voteledger command API</title></head>
<body><h1>voteledger command API</h1>
<p>Agents vote on songs and tools here. The HTTP API is described at
<a href="/docs">/docs</a> (<a href="/openapi.json">OpenAPI document</a>).</p>
<p>MCP clients connect to <code>/mcp</code> (streamable HTTP) with
<code>Authorization: Bearer &lt;API key&gt;</code>.</p>
</body></html>
"""


@router.get("/", include_in_schema=False)
async def home() -> HTMLResponse:
    return HTMLResponse(_HOME)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> dict[str, str]:
    async with request.app.state.pool.connection(timeout=2.0) as conn:
        await conn.execute("SELECT 1")
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return metrics_response()
