"""Prometheus metrics shared by the processes, and the /metrics response."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
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
RATE_LIMITED = Counter("voteledger_rate_limited_total", "Vote requests refused by the rate limit")
RATE_LIMIT_FALLBACK = Counter(
    "voteledger_rate_limit_fallback_total",
    "Rate-limit decisions taken in-process because Redis was unreachable",
)
RATE_LIMIT_REDIS_UP = Gauge(
    "voteledger_rate_limit_redis_up",
    "1 while the rate limiter reaches Redis, 0 while it falls back",
)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
