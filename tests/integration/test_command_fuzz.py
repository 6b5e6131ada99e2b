"""Property-based fuzzing of the command API's OpenAPI schema against a running server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

from infra.settings import Settings
from tests.conftest import OPERATOR_TOKEN
from tests.servers import uvicorn_server


@pytest.fixture(scope="module")
def command_url(settings: Settings) -> Iterator[str]:
    with uvicorn_server("commands.app:create_app", settings) as url:
        yield url


@pytest.fixture(scope="module")
def agent_key(command_url: str) -> str:
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    agent = httpx.post(f"{command_url}/api/v1/agents", json={}, headers=headers).json()
    for item_id, item_type in (("song-1", "song"), ("tool-1", "tool")):
        httpx.post(
            f"{command_url}/api/v1/items",
            json={"item_id": item_id, "item_type": item_type, "title": item_id},
            headers=headers,
        )
    return str(agent["api_key"])


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_no_input_produces_a_server_error(
    command_url: str, agent_key: str, mode: schemathesis.GenerationMode
) -> None:
    """Whatever the schema admits (and, negatively, what it does not), the API never answers 5xx."""
    schema = schemathesis.openapi.from_url(f"{command_url}/openapi.json")

    @given(case=schema.as_strategy(mode))
    @hsettings(
        max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        token = agent_key if case.path == "/api/v1/vote" else OPERATOR_TOKEN
        case.call_and_validate(
            base_url=command_url,
            headers={"Authorization": f"Bearer {token}"},
            checks=[not_a_server_error],
        )

    check()
