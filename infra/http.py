"""ASGI middleware shared by both APIs: request metrics, body size and content type guards, and
redirects that never name a host the client chose.

Pure ASGI rather than BaseHTTPMiddleware: it adds no task or copy per request on the hot path.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import HTTPException
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra import logs
from infra.metrics import HTTP_LATENCY, HTTP_REQUESTS
from infra.problems import problem_response

_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}
# nginx's "client closed request": the client went away before any answer, so no server error.
CLIENT_CLOSED = 499
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# A client's X-Request-ID is kept when it is a plain token (it goes into logs and back out).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
access_log = logging.getLogger("voteledger.access")

# Metrics go to Prometheus (infra/metrics.py). FastAPI's OpenTelemetry support would otherwise
# look for a configured provider on every request.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class EdgeMiddleware:
    def __init__(
        self, app: ASGIApp, *, name: str, max_body_bytes: int, access_log: bool = False
    ) -> None:
        self.app = app
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        # Bounded: routes and statuses are the app's, methods a fixed few, unmatched paths one.
        self._labelled: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        # Clients choose the method: any other than these shares one label, so series stay few.
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        gone = False
        request_id = _request_id(scope["headers"])
        logs.begin_request(request_id.decode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if 300 <= status < 400:
                    headers = _relative_location(headers)
                message = {**message, "headers": headers}
            await send(message)

        def watched(message: Message) -> Message:
            nonlocal gone
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            await self.app(scope, self._limited(receive, watched), send_wrapper)
        finally:
            if status is None:
                # No answer began: the client went away first, or the app failed.
                status = CLIENT_CLOSED if gone else 500
            route = getattr(scope.get("route"), "path", "unmatched")
            count, latency = self._series(route, method, status)
            count.inc()
            elapsed = time.perf_counter() - started
            latency.observe(elapsed)
            if self.access_log:
                _log(scope, route, status, elapsed)

    def _series(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The labelled metrics of one kind of request, looked up once (labels() is not free)."""
        key = (route, method, status)
        series = self._labelled.get(key)
        if series is None:
            series = (
                HTTP_REQUESTS.labels(self.name, route, method, str(status)),
                HTTP_LATENCY.labels(self.name, route),
            )
            self._labelled[key] = series
        return series

    def _too_large(self) -> Any:
        return problem_response(
            413, f"the request body exceeds {self.max_body_bytes} bytes", slug="too-large"
        )

    def _reject(self, scope: Scope) -> Any:
        if scope["method"].encode() not in _BODY_METHODS:
            return None
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return self._too_large()
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return problem_response(
                415, "the request body must be application/json", slug="unsupported-media-type"
            )
        return None

    def _limited(self, receive: Receive, watched: Callable[[Message], Message]) -> Receive:
        """Counts streamed body bytes too: a chunked body has no Content-Length to check; every
        message passes `watched`, which notes a disconnect."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = watched(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # Raised while the route reads its body, so the problem handlers answer it.
                    raise HTTPException(
                        413, f"the request body exceeds {self.max_body_bytes} bytes"
                    )
            return message

        return wrapped


def _log(scope: Scope, route: str, status: int, elapsed: float) -> None:
    """One access line; the request's fields (request_id, agent_id, ...) come with it."""
    access_log.info(
        "%s %s %d",
        scope["method"],
        scope["path"],
        status,
        extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 3)},
    )


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-ID when it is a plain token, a new random one otherwise."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value
    return secrets.token_hex(8).encode()


def _relative_location(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A redirect's Location without scheme and host: frameworks build absolute ones from the
    request's Host header, which the client chooses (an open redirect to any host)."""
    fixed = []
    for name, value in headers:
        if name.lower() == b"location":
            split = urlsplit(value.decode("latin-1"))
            path = "/" + split.path.lstrip("/")  # "//host/x" would name a host again
            value = urlunsplit(("", "", path, split.query, "")).encode("latin-1")
        fixed.append((name, value))
    return fixed
