"""The command API's routes: the operator's (register and revoke agents, list items) and the
service endpoints. Each calls one function. Votes never get here: see commands/vote.py."""

from __future__ import annotations

import hmac
import uuid

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from commands import agents, catalogue
from commands.models import AgentIn, AgentOut, ItemIn, ItemOut
from commands.vote import bearer
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
)
async def create_agent(request: Request, body: AgentIn | None = None) -> AgentOut:
    agent = await agents.register_agent(request.app.state.pool, body.name if body else "")
    return AgentOut(agent_id=agent.agent_id, api_key=agent.api_key, position=agent.position)


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
