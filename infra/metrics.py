"""Prometheus metrics shared by the processes, and the /metrics response.

An API server with several worker processes (VOTELEDGER_WORKERS) runs in prometheus-client's
multiprocess mode: infra.serve points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the
workers start, each worker writes its samples there, and /metrics, whichever worker answers it,
merges them all. Counters of a worker that died still count (totals never go back); the live
gauges of a dead worker are dropped at the next scrape.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response

HTTP_REQUESTS = Counter(
    "voteledger_http_requests_total", "HTTP requests served", ["app", "route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "voteledger_http_request_seconds",
    "HTTP request latency",
    ["app", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_APPENDED = Counter("voteledger_events_appended_total", "Events appended", ["type"])
VOTE_BATCH = Histogram(
    "voteledger_vote_batch_size",
    "Vote requests that shared one rate-limit check and one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
VOTE_BATCH_SECONDS = Histogram(
    "voteledger_vote_batch_seconds",
    "Time to answer a batch of votes: rate limit, transaction and commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
RATE_LIMITED = Counter("voteledger_rate_limited_total", "Vote requests refused by the rate limit")
RATE_LIMIT_FALLBACK = Counter(
    "voteledger_rate_limit_fallback_total",
    "Rate-limit decisions taken in-process because Redis was unreachable",
)
RATE_LIMIT_REDIS_UP = Gauge(
    "voteledger_rate_limit_redis_up",
    "1 while the rate limiter reaches Redis, 0 while it falls back",
    multiprocess_mode="livemin",  # one worker falling back is enough to show
)
IDEMPOTENCY_KEYS = Gauge(
    "voteledger_idempotency_keys",
    "Rows in the idempotency-key table (PostgreSQL's estimate, refreshed by the purge loop)",
    multiprocess_mode="livemax",
)
QUERY_READS = Counter(
    "voteledger_query_reads_total",
    "Reads answered, by the read model that answered (postgres: the fallback)",
    ["source"],
)
STREAM_CLIENTS = Gauge(
    "voteledger_stream_clients", "Open live-stream connections", multiprocess_mode="livesum"
)


def metrics_response() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def exposition() -> bytes:
    """This process's metrics, or every worker's in multiprocess mode."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest()
    _forget_dead_workers(Path(directory))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of workers that are gone (uvicorn restarts a worker that dies)."""
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.fullmatch(path.name)
        if match and not _alive(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PROJECTION_APPLIED = Counter(
    "voteledger_projection_events_applied_total", "Events applied", ["projection"]
)
PROJECTION_BATCH = Histogram(
    "voteledger_projection_batch_events",
    "Events per applied batch",
    ["projection"],
    buckets=(1, 5, 20, 100, 500, 2000, 5000, 10000, 20000, 50000),
)
PROJECTION_APPLY_SECONDS = Histogram(
    "voteledger_projection_apply_seconds",
    "Time to apply one batch to its store",
    ["projection"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PROJECTION_LAG_EVENTS = Gauge(
    "voteledger_projection_lag_events", "Positions drawn but not yet applied", ["projection"]
)
PROJECTION_LAG_SECONDS = Gauge(
    "voteledger_projection_lag_seconds",
    "Age of the last applied event while positions wait to be applied (0 when caught up)",
    ["projection"],
)
PROJECTION_HELD_BACK_SECONDS = Gauge(
    "voteledger_projection_held_back_seconds",
    "How long an open transaction has kept the reader from events that are already committed",
    ["projection"],
)
PROJECTION_WATERMARK = Gauge(
    "voteledger_projection_watermark", "Every position up to this one is applied", ["projection"]
)
PROJECTION_LEASE_ACQUIRED = Counter(
    "voteledger_projection_lease_acquired_total",
    "Times this worker took the projection's lease (many across workers: flapping)",
    ["projection"],
)
PROJECTION_HEAD = Gauge(
    "voteledger_projection_head_position",
    "The newest ledger position this worker has seen drawn",
    ["projection"],
)
PARTITIONS_READY_UNTIL = Gauge(
    "voteledger_event_partitions_ready_until_timestamp_seconds",
    "Events can be recorded until this time: the upper bound of the newest event partition",
)
PROJECTION_LEASE_HELD = Gauge(
    "voteledger_projection_lease_held",
    "1 while this worker holds the projection's lease",
    ["projection"],
)
PROJECTION_STALLED = Gauge(
    "voteledger_projection_stalled",
    "1 while the projection stands before an event it cannot fold (see the position gauge)",
    ["projection"],
)
PROJECTION_STALLED_POSITION = Gauge(
    "voteledger_projection_stalled_position",
    "The position of the event a stalled projection cannot fold (0 when not stalled)",
    ["projection"],
)
PROJECTION_PROGRESS_AT = Gauge(
    "voteledger_projection_progress_timestamp_seconds",
    "When the projection's watermark last moved (an alert compares it with the lag)",
    ["projection"],
)
