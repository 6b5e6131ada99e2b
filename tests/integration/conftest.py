from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from commands.app import create_app
from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass(frozen=True)
class Agent:
    agent_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def isolated(redis_url: str) -> Iterator[Settings]:
    """A database and Redis prefix of this test's own, so the ledger holds only its events."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        yield make_settings(
            url, redis_url, prefix, VOTELEDGER_BATCH_MAX="2000", VOTELEDGER_POLL_INTERVAL="0.2"
        )


@contextlib.asynccontextmanager
async def command_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real command app (lifespan, pools, Redis) behind an in-process HTTP client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://command") as client:
            yield client


@pytest.fixture(scope="session")
async def command_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with command_api(settings) as client:
        yield client


async def new_agent(client: httpx.AsyncClient) -> Agent:
    response = await client.post("/api/v1/agents", json={"name": "test"}, headers=OPERATOR)
    assert response.status_code == 201, response.text
    body = response.json()
    return Agent(body["agent_id"], body["api_key"])


async def new_item(client: httpx.AsyncClient, item_type: str = "song") -> str:
    item_id = f"{item_type}-{uuid.uuid4().hex[:12]}"
    response = await client.post(
        "/api/v1/items",
        json={"item_id": item_id, "item_type": item_type, "title": f"Title of {item_id}"},
        headers=OPERATOR,
    )
    assert response.status_code == 201, response.text
    return item_id
