"""Real server processes for tests over HTTP: started per test module, always stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO

import httpx

from infra.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process read the same settings."""
    return {
        **os.environ,
        "VOTELEDGER_ENV": settings.env,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "VOTELEDGER_REDIS_PREFIX": settings.redis_prefix,
        "VOTELEDGER_OPERATOR_TOKEN": settings.operator_token,
        "VOTELEDGER_RATE_LIMIT_PER_SECOND": str(settings.rate_limit_per_second),
        "VOTELEDGER_RATE_LIMIT_BURST": str(settings.rate_limit_burst),
        "VOTELEDGER_BATCH_MIN": str(settings.batch_min),
        "VOTELEDGER_BATCH_MAX": str(settings.batch_max),
        "VOTELEDGER_POLL_INTERVAL": str(settings.poll_interval),
        "VOTELEDGER_CHANGES_STREAM_MAX": str(settings.changes_stream_max),
        "VOTELEDGER_DAILY_RETENTION_DAYS": str(settings.daily_retention_days),
        "VOTELEDGER_TRENDING_HALF_LIFE_HOURS": str(settings.trending_half_life_seconds / 3600),
        "VOTELEDGER_MAX_AGENTS_PER_OWNER": str(settings.max_agents_per_owner or ""),
    }


@contextlib.contextmanager
def uvicorn_server(
    factory: str,
    settings: Settings,
    *,
    args: Sequence[str] = ("--log-level", "warning"),
    stderr: IO[bytes] | None = None,
    **env: str,
) -> Iterator[str]:
    """Run an API as `python -m infra.serve` (uvicorn with its limits) in a child process, with
    the settings' environment and `env` and `args`; yields its base URL; stops it by PID."""
    port = free_port()
    api = factory.split(".", 1)[0]  # "commands.app:create_app" -> commands
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.serve",
            api,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        env=settings_env(settings) | env,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(f"{url}/healthz", proc, factory)
        yield url
    finally:
        stop(proc)


def wait_serving(url: str, proc: subprocess.Popen[bytes], what: str, within: float = 20) -> None:
    """Until `url` answers 200; RuntimeError if `proc` exits or `within` seconds pass first."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()})")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Stop a child process by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
