"""Property-based fuzzing of the query API's OpenAPI schema against a running server, with a
projector and a ledger of a few votes: no input, min_position included, is a server error."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings
from tests.integration.projection_support import worker_process
from tests.servers import uvicorn_server

pytestmark = pytest.mark.timeout(600)
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def query_url(redis_url: str) -> Iterator[str]:
    """The query API of a ledger with a few votes, once the projector has reported its head."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2")
        with (
            worker_process(settings),
            uvicorn_server("commands.app:create_app", settings) as command,
            uvicorn_server("queries.app:create_app", settings) as query,
        ):
            position = _seed(command)
            deadline = time.monotonic() + 30
            params = {"item_type": "song", "min_position": position, "wait_ms": 1000}
            while httpx.get(f"{query}/api/v1/top", params=params).status_code != 200:
                assert time.monotonic() < deadline, "the projector never caught up"
            yield query


def _seed(command: str) -> int:
    """An agent, a song and a tool with a vote each; returns the last vote's position."""
    agent = httpx.post(f"{command}/api/v1/agents", json={}, headers=OPERATOR).json()
    position = 0
    for item_id, item_type in (("song-1", "song"), ("tool-1", "tool")):
        item = {"item_id": item_id, "item_type": item_type, "title": item_id}
        httpx.post(f"{command}/api/v1/items", json=item, headers=OPERATOR)
        voted = httpx.post(
            f"{command}/api/v1/vote",
            json={"item_id": item_id, "vote": "up"},
            headers={"Authorization": f"Bearer {agent['api_key']}"},
        )
        position = int(voted.json()["position"])
    return position


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_no_input_produces_a_server_error(
    query_url: str, mode: schemathesis.GenerationMode
) -> None:
    """Whatever the schema admits (and, negatively, what it does not), the query API never
    answers 5xx: a min_position not reached is a 4xx (425 or 422), not a 503."""
    schema = schemathesis.openapi.from_url(f"{query_url}/openapi.json").exclude(
        path_regex="/stream"  # an endless response; tests/integration/test_live_clients.py
    )

    @given(case=schema.as_strategy(mode))
    @hsettings(
        max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=query_url, timeout=10, checks=[not_a_server_error])

    check()
