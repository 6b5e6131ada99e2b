"""The replicas drill (`make replicas`), short: 2 command APIs, 2 query APIs and 3 projectors as
processes, one of each SIGKILLed under load, and every acknowledged vote in the ledger exactly
once, the read models equal to a fresh fold, no 5xx, the leases taken over by a standby."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    """One run of `python -m devtools.replicas` on a database and Redis prefix of its own."""
    report = tmp_path_factory.mktemp("replicas") / "report.json"
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "VOTELEDGER_REDIS_PREFIX": prefix,
            "VOTELEDGER_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "VOTELEDGER_ENV": "test",
        }
        argv = [sys.executable, "-m", "devtools.replicas", "--duration", "8", "--rate", "80"]
        argv += ["--read-rate", "40", "--json", str(report)]
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            out, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it stops every process it started
            out, _ = proc.communicate(timeout=30)
            pytest.fail(f"the drill ran over 150 s:\n{out.decode(errors='replace')}")
        finally:
            if proc.poll() is None:  # interrupted: SIGTERM, then its children die with it
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        text = out.decode(errors="replace")
        print(text)
        assert proc.returncode == 0, text
        result = json.loads(report.read_text())
        result["seconds"] = time.monotonic() - started
        yield result


def test_every_check_passes(drill: dict[str, Any]) -> None:
    failed = [c for c in drill["checks"] if not c["passed"]]
    assert drill["passed"] and failed == []
    names = {c["name"] for c in drill["checks"]}
    assert {
        "every vote acknowledged (2xx)",
        "no client saw a 5xx",
        "each acknowledged vote recorded exactly once",
        "final vote per (agent, item) = last acknowledged",
        "idempotency keys hold the acknowledged answers",
        "projections reached the ledger's head",
        "voteledger verify: read models equal a fresh fold",
        "a standby projector took over the leases",
    } <= names


def test_one_replica_of_each_was_killed_and_the_others_answered(drill: dict[str, Any]) -> None:
    figures = drill["figures"]
    kills = {k["name"]: k for k in figures["kills"]}
    assert {"command-1", "query-2", "projector-1"} == set(kills)
    # Votes kept going to the dead command API in turn: each was sent again to the live one.
    assert sum(figures["retried_elsewhere"]["command-1"].values()) > 0
    assert sum(figures["retried_elsewhere"]["query-2"].values()) > 0
    assert figures["votes_acknowledged"] == figures["votes_sent"] > 0
    statuses = figures["statuses"]
    assert set(statuses["command-2"]) == {"201"} and set(statuses["query-1"]) == {"200"}
    assert drill["oddities"] == []


def test_a_standby_took_over_both_leases_promptly(drill: dict[str, Any]) -> None:
    projector = next(k for k in drill["figures"]["kills"] if k["name"] == "projector-1")
    assert set(projector["takeover"]) == {"postgres", "redis"}
    for takeover in projector["takeover"].values():
        assert takeover["holder"] in {"projector-2", "projector-3"}
        assert takeover["fence"][1] > takeover["fence"][0]
        assert takeover["seconds"] < 10  # the standbys poll every 0.5 s


def test_the_drill_is_short(drill: dict[str, Any]) -> None:
    assert drill["seconds"] < 90
