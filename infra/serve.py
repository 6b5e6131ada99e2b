"""Serving an API with the limits slow or numerous clients need: uvicorn, programmatically.

    python -m infra.serve commands|queries [--host 0.0.0.0] [--port 8000]

uvicorn bounds idle keep-alive connections but not a request whose head or body never arrives: a
client that sends half its headers and stops holds the connection for ever. `GuardedProtocol`
(uvicorn's httptools protocol) closes a connection whose request head is not complete within
VOTELEDGER_HEADER_TIMEOUT_SECONDS of its first byte (or of the connection), or whose body is not
complete within VOTELEDGER_BODY_TIMEOUT_SECONDS of its head. Connections per process are bounded
by VOTELEDGER_MAX_CONNECTIONS (uvicorn's limit_concurrency: 503 past it).

With VOTELEDGER_WORKERS (or --workers) above 1, uvicorn's supervisor runs that many worker
processes on one listening socket and restarts any that dies; their metrics are merged
(infra/metrics.py). Logs are JSON or text by VOTELEDGER_LOG_FORMAT (infra/logs.py).

Running uvicorn's own command line instead, pass `--http infra.serve:GuardedProtocol
--limit-concurrency N`: the protocol then reads its timeouts from the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from infra import logs
from infra.settings import Settings, get_settings

# Named, not imported: infra imports nothing above it (the apps are loaded by uvicorn). The command
# API is served with the agents' MCP tools mounted at /mcp (mcp_tools/app.py).
APPS = {"commands": "mcp_tools.app:create_app", "queries": "queries.app:create_app"}


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for a request's head and body."""

    header_timeout: float | None = None  # None: from the settings, on first use
    body_timeout: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).header_timeout is None:
            settings = get_settings()
            type(self).header_timeout = settings.header_timeout_seconds
            type(self).body_timeout = settings.body_timeout_seconds
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float | None) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds or 10.0, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """Closed: an unfinished request's app sees a disconnect (uvicorn's connection_lost)."""
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade()


def guarded(settings: Settings) -> type[GuardedProtocol]:
    """The protocol with these settings' timeouts."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "header_timeout": settings.header_timeout_seconds,
            "body_timeout": settings.body_timeout_seconds,
        },
    )


def config(
    api: str, settings: Settings, host: str, port: int | None, **options: Any
) -> uvicorn.Config:
    """uvicorn's configuration of one API with the settings' limits."""
    default_port = settings.command_port if api == "commands" else settings.query_port
    workers = options.pop("workers", 1)
    return uvicorn.Config(
        APPS[api],
        factory=True,
        host=host,
        port=port or default_port,
        # Worker processes are spawned: they get the protocol by name and read the same settings.
        http=GuardedProtocol if workers > 1 else guarded(settings),
        workers=workers,
        log_config=logs.config(settings.log_format, options.get("log_level", "info")),
        limit_concurrency=settings.max_connections,
        # Live streams never end by themselves: without a bound, a stopping server would wait
        # for its stream clients for ever. In-flight vote batches finish well within it.
        timeout_graceful_shutdown=10,
        **options,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.serve", description=__doc__)
    parser.add_argument("api", choices=sorted(APPS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: VOTELEDGER_{COMMAND,QUERY}_PORT")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--access-log", action="store_true", help="uvicorn's access log (off by default)"
    )
    parser.add_argument("--workers", type=int, help="default: VOTELEDGER_WORKERS (1)")
    args = parser.parse_args(argv)
    settings = get_settings()
    workers = args.workers or settings.workers
    options = {"log_level": args.log_level, "access_log": args.access_log, "workers": workers}
    served = config(args.api, settings, args.host, args.port, **options)
    if workers == 1:
        uvicorn.Server(served).run()
        return
    with _merged_metrics():
        Multiprocess(served, sockets=[served.bind_socket()]).run()


@contextlib.contextmanager
def _merged_metrics() -> Iterator[None]:
    """A fresh directory for the workers' metric files (stale files would add to the totals),
    removed at exit; PROMETHEUS_MULTIPROC_DIR, when given, names its parent."""
    parent = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    directory = tempfile.mkdtemp(prefix="voteledger-metrics-", dir=parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
