"""The replicas drill's processes: API servers and projector workers on free loopback ports, each
in a session of its own (SIGKILL by PID reaches it alone), each dying with the drill
(processes.with_lifeline), every one stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from devtools.devstack import free_port, spawn
from devtools.processes import stop_all
from devtools.supervise import STOP_GRACE

HOST = "127.0.0.1"
PROJECTIONS = ("postgres", "redis")
_LEASES = "SELECT projection, fence, holder FROM projection_leases"


class DrillError(RuntimeError):
    """The drill could not be set up or run; the message is meant for humans."""


@dataclass(slots=True)
class Member:
    name: str
    proc: subprocess.Popen[bytes]
    url: str  # an API's base URL, or a projector's metrics URL
    log: Path
    killed_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass(frozen=True, slots=True)
class Lease:
    fence: int
    holder: str | None

    @property
    def pid(self) -> int | None:
        """The holder's PID (projections/lease.py: worker_identity is `hostname:pid`)."""
        tail = (self.holder or "").rpartition(":")[2]
        return int(tail) if tail.isdigit() else None


def leases(database_url: str) -> dict[str, Lease]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        rows = conn.execute(_LEASES).fetchall()
    return {name: Lease(fence, holder) for name, fence, holder in rows}


async def aleases(conn: psycopg.AsyncConnection) -> dict[str, Lease]:
    rows = await (await conn.execute(_LEASES)).fetchall()
    return {name: Lease(fence, holder) for name, fence, holder in rows}


class Fleet:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.members: dict[str, Member] = {}

    def _start(self, name: str, argv: list[str], url: str) -> Member:
        log = self.logs / f"{name}.log"
        self.members[name] = Member(name, spawn(argv, log, env=self.env), url, log)
        return self.members[name]

    def start_api(self, name: str, api: str) -> Member:
        port = free_port()
        argv = [sys.executable, "-m", "infra.serve", api, "--host", HOST, "--port", str(port)]
        return self._start(name, [*argv, "--log-level", "warning"], f"http://{HOST}:{port}")

    def start_projector(self, name: str) -> Member:
        port = free_port()
        argv = [sys.executable, "-m", "cli", "project", "--metrics-port", str(port)]
        return self._start(name, argv, f"http://{HOST}:{port}")

    def wait_ready(self, names: list[str], path: str, within: float = 60.0) -> None:
        """Until each member answers `path` with 200; a member that exits meanwhile fails it."""
        deadline = time.monotonic() + within
        for name in names:
            member = self.members[name]
            while not _answers(member.url + path):
                if not member.alive:
                    raise DrillError(f"{name} exited at start:\n{self.tail(name)}")
                if time.monotonic() > deadline:
                    raise DrillError(f"{name} not ready within {within:.0f} s:\n{self.tail(name)}")
                time.sleep(0.1)

    def wait_leases(self, database_url: str, name: str, within: float = 30.0) -> None:
        """Until `name` holds every projection's lease."""
        pid, deadline = self.members[name].proc.pid, time.monotonic() + within
        while True:
            held = leases(database_url)
            if all(held.get(p, Lease(0, None)).pid == pid for p in PROJECTIONS):
                return
            if not self.members[name].alive or time.monotonic() > deadline:
                who = {p: lease.holder for p, lease in held.items()}
                raise DrillError(f"{name} (pid {pid}) did not take the leases (holders {who})")
            time.sleep(0.1)

    def alive_named(self, name: str) -> bool:
        member = self.members.get(name)
        return member is not None and member.alive

    def by_pid(self, pid: int | None) -> Member | None:
        return next((m for m in self.members.values() if m.proc.pid == pid), None)

    async def kill(self, name: str) -> float:
        """SIGKILL the member (by its PID's process group) and reap it; the time of the kill."""
        member = self.members[name]
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(member.proc.pid, signal.SIGKILL)
        member.killed_at = time.monotonic()
        for _ in range(500):
            if member.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        return member.killed_at

    def stop(self) -> None:
        stop_all([m.proc for m in self.members.values()], signal.SIGTERM, STOP_GRACE)

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.members[name].log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
