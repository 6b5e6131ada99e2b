"""Every metric the alert rules and the dashboard use is exported by a running process.

The command API, the query API (each as `python -m infra.serve`) and a projector worker
(`voteledger project`) run against a database of their own. A vote is cast and read back, then an
event no projection can fold stalls the projector, so that the series which exist only once
something happened (labelled counters, the stall gauges) are there too. Then all three /metrics
are scraped and compared, sample by sample, with the selectors of every alert and panel
(deploy/monitoring/rules.yml, deploy/k8s/components/monitoring/dashboard.json).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import Settings
from tests.conftest import fresh_database, fresh_redis_prefix, make_settings
from tests.deploy.test_monitoring import TARGET_LABELS, missing_report, referenced
from tests.integration.conftest import new_agent, new_item
from tests.integration.stall_support import eventually, insert_as_owner
from tests.servers import free_port, settings_env, stop, uvicorn_server, wait_serving

pytestmark = pytest.mark.timeout(180)

PROJECTIONS = ("postgres", "redis")
# Sample name -> the label sets of its series, for each process scraped.
Scraped = dict[str, dict[str, list[dict[str, str]]]]


@contextlib.contextmanager
def projector(settings: Settings) -> Iterator[str]:
    """`voteledger project` in a child process with its metrics on a free loopback port; yields
    the metrics base URL; stopped by PID however the test ends."""
    port = free_port()
    env = settings_env(settings) | {"VOTELEDGER_METRICS_ADDR": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "project", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(f"{url}/metrics", proc, "the projector")
        yield url
    finally:
        stop(proc)


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from one /metrics (a counter's samples are `..._total`)."""
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def _projections(samples: dict[str, list[dict[str, str]]], name: str) -> set[str]:
    """The projections a sample name has series for."""
    return {labels.get("projection", "") for labels in samples.get(name, [])}


async def _vote_and_read(client: httpx.AsyncClient, command: str, query: str) -> str:
    """An agent, an item and a vote through the command API; the item's rankings through the
    query API once the projections have it. Returns the item id."""
    api = httpx.AsyncClient(base_url=command)
    async with api:
        agent, item_id = await new_agent(api), await new_item(api)
        vote = await api.post(
            "/api/v1/vote", json={"item_id": item_id, "vote": "up"}, headers=agent.headers
        )
    assert vote.status_code == 201, vote.text
    position = vote.json()["position"]
    wait = {"min_position": position, "wait_ms": 5000}
    top = await client.get(f"{query}/api/v1/top", params={"item_type": "song", **wait})
    assert top.status_code == 200 and item_id in top.text, top.text
    item = await client.get(f"{query}/api/v1/items/{item_id}", params=wait)
    assert item.status_code == 200, item.text
    return item_id


async def _stall(client: httpx.AsyncClient, url: str, settings: Settings, item_id: str) -> None:
    """An event no projection can fold: both stall before it, and say so in their metrics."""
    insert_as_owner(settings.database_url, "VoteCast", "{}", item_id=item_id)

    async def stalled() -> bool:
        samples = await scrape(client, url)
        return _projections(samples, "voteledger_projection_stalled") == set(PROJECTIONS)

    await eventually(stalled, within=60)


@pytest.fixture(scope="module")
async def exported(redis_url: str) -> AsyncIterator[Scraped]:
    """Process -> what its /metrics exports, after a vote, two reads and a stall."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_database())
        prefix = stack.enter_context(fresh_redis_prefix(redis_url))
        settings = make_settings(url, redis_url, prefix, VOTELEDGER_POLL_INTERVAL="0.2")
        command = stack.enter_context(uvicorn_server("commands.app:create_app", settings))
        query = stack.enter_context(uvicorn_server("queries.app:create_app", settings))
        projector_url = stack.enter_context(projector(settings))
        async with httpx.AsyncClient(timeout=10) as client:
            item_id = await _vote_and_read(client, command, query)
            await _stall(client, projector_url, settings, item_id)
            yield {
                "command API": await scrape(client, command),
                "query API": await scrape(client, query),
                "projector": await scrape(client, projector_url),
            }


def test_every_metric_used_by_alerts_and_dashboard_is_exported(exported: Scraped) -> None:
    """Each sample name a selector names (`voteledger_x_total`, `..._bucket`) is one some
    process really exports; a missing one is reported with where it is used and the exported
    names closest to it."""
    names = {name for samples in exported.values() for name in samples}
    assert missing_report(referenced(), names) == {}


def test_every_label_the_selectors_match_on_is_exported(exported: Scraped) -> None:
    """A selector's labels (`status`, `projection`, `source`, ...) are labels of the series it
    selects (the target's own labels, such as job and instance, excepted)."""
    labels: dict[str, set[str]] = {}
    for samples in exported.values():
        for name, series in samples.items():
            labels.setdefault(name, set()).update(key for one in series for key in one)
    wrong = {}
    for name, uses in referenced().items():
        for where, matched in uses.items():
            unknown = matched - TARGET_LABELS - labels.get(name, set())
            if name in labels and unknown:
                wrong[f"{where}: {name}"] = sorted(unknown)
    assert wrong == {}


def test_the_projector_reports_each_projection(exported: Scraped) -> None:
    """The per-projection series the alerts aggregate are there for both projections, from the
    worker holding the leases."""
    samples = exported["projector"]
    for name in (
        "voteledger_projection_lease_held",
        "voteledger_projection_watermark",
        "voteledger_projection_head_position",
        "voteledger_projection_lag_seconds",
        "voteledger_projection_progress_timestamp_seconds",
    ):
        assert _projections(samples, name) == set(PROJECTIONS), name
