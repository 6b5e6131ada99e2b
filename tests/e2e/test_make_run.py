"""`make run` as a user runs it: a projector that dies comes back while the APIs keep answering,
and nothing of the stack outlives a launcher killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import OPERATOR_TOKEN, fresh_database, fresh_redis_prefix, make_settings
from tests.servers import free_port, settings_env

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


@dataclass
class Stack:
    """A `make run` in a child process, and what its launcher said."""

    proc: subprocess.Popen[str]
    ports: dict[str, int]
    env: dict[str, str]
    reader: threading.Thread
    lines: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def started(self) -> dict[str, int]:
        """The latest PID of each supervised process, by name."""
        return {m[1]: int(m[2]) for line in list(self.lines) if (m := STARTED.search(line))}

    def supervisor(self) -> int:
        found = [re.search(r"supervising .* \(pid (\d+)\)", line) for line in list(self.lines)]
        return next(int(m[1]) for m in found if m)


def _read(stack: Stack) -> None:
    assert stack.proc.stdout is not None
    for line in stack.proc.stdout:
        stack.lines.append(line)


@contextlib.contextmanager
def _make(target: str, redis_url: str) -> Iterator[Stack]:
    """`make TARGET` against a database and Redis prefix of this test's own, on free ports."""
    with fresh_database() as url, fresh_redis_prefix(redis_url) as prefix:
        settings = make_settings(url, redis_url, prefix)
        names = ("COMMAND_PORT", "QUERY_PORT", "METRICS_PORT", "STANDBY_METRICS_PORT")
        ports = {name: free_port() for name in names}
        args = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in ports.items())]
        env = settings_env(settings)
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, **out)
        running = Stack(proc, ports, env, threading.Thread(daemon=True))
        running.reader = threading.Thread(target=_read, args=(running,), daemon=True)
        running.reader.start()
        try:
            _wait_up(running)
            yield running
        finally:
            _stop(running)


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    with _make("run", redis_url) as running:
        yield running


def _wait_up(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    for name in stack.ports:
        path = "/metrics" if "METRICS" in name else "/healthz"
        while not _answers(stack.url(name) + path):
            assert stack.proc.poll() is None, "".join(stack.lines)
            assert time.monotonic() < deadline, "".join(stack.lines)
            time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _stop(stack: Stack) -> None:
    if stack.proc.poll() is None:
        os.killpg(stack.proc.pid, signal.SIGINT)
        try:
            stack.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait(timeout=5)
    stack.reader.join(timeout=5)
    assert stack.proc.stdout is not None
    stack.proc.stdout.close()


class Load:
    """Votes and reads in a loop (bounded by `stop`), counting every answer that was not 2xx."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.stop, self.sent = stack, threading.Event(), 0
        self.failures: list[str] = []
        with httpx.Client(base_url=stack.url("COMMAND_PORT"), timeout=5) as client:
            agent = client.post("/api/v1/agents", json={"name": "load"}, headers=OPERATOR).json()
            self.items = [f"song-{uuid.uuid4().hex[:8]}" for _ in range(5)]
            for item in self.items:
                body = {"item_id": item, "item_type": "song", "title": item}
                assert client.post("/api/v1/items", json=body, headers=OPERATOR).status_code == 201
        self.key = agent["api_key"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=5) as client:
            for n in range(100_000):
                if self.stop.is_set():
                    return
                vote = {"item_id": self.items[n % 5], "vote": ("up", "down", "none")[n % 3]}
                command, query = self.stack.url("COMMAND_PORT"), self.stack.url("QUERY_PORT")
                self._check(client.post(f"{command}/api/v1/vote", json=vote, headers=headers))
                top = client.get(f"{query}/api/v1/top", params={"item_type": "song"})
                self._check(top)
                time.sleep(0.01)

    def _check(self, response: httpx.Response) -> None:
        self.sent += 1
        if not response.is_success:
            self.failures.append(f"{response.request.url}: {response.status_code}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _replaced(stack: Stack, name: str, old: int, within: float = 30) -> float:
    """Seconds until the supervisor has started `name` again under a new PID."""
    killed = time.monotonic()
    while stack.started().get(name) == old:
        assert time.monotonic() - killed < within, "".join(stack.lines)
        time.sleep(0.05)
    return time.monotonic() - killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_killed_workers_come_back_while_the_apis_answer(stack: Stack) -> None:
    """kill -9 of each projector in turn: both come back, no request fails meanwhile, and the
    read models converge to the ledger."""
    load = Load(stack)
    time.sleep(1)
    for name in ("voteledger#2", "voteledger#3"):
        old = stack.started()[name]
        os.kill(old, signal.SIGKILL)
        seconds = _replaced(stack, name, old)
        print(f"{name}: replaced {seconds:.2f} s after kill -9")
        time.sleep(1)
    load.finish()
    assert load.sent > 50 and load.failures == []
    assert _verified(stack), "".join(stack.lines[-40:])


def _verified(stack: Stack, within: float = 60) -> bool:
    """`voteledger verify` passes once the projections have caught up (they may need a moment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = _cli(stack, "status", "--json")
        if status.stdout.count(b'"lag_events": 0') == 2 and _cli(stack, "verify").returncode == 0:
            return True
        time.sleep(1)
    return False


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[bytes]:
    voteledger = str(ROOT / ".venv" / "bin" / "voteledger")
    return subprocess.run([voteledger, *args], env=stack.env, capture_output=True, timeout=60)


def test_nothing_outlives_a_killed_launcher(stack: Stack) -> None:
    """kill -9 of the launcher: every process it started dies with it."""
    children = list(stack.started().values())
    assert len(children) == 4 and all(_alive(pid) for pid in children)
    assert any("the ledger is empty" in line for line in stack.lines), "".join(stack.lines)
    os.kill(stack.supervisor(), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if _alive(pid)]
        time.sleep(0.1)
    for name in stack.ports:
        assert not _answers(stack.url(name) + "/healthz")


def test_make_demo_seeds_an_empty_ledger_and_keeps_votes_coming(redis_url: str) -> None:
    """`make demo`: the charts hold the seeded catalogue, and live votes keep arriving through
    the command API (the ledger's position moves while nobody else votes)."""
    with _make("demo", redis_url) as demo:
        top = f"{demo.url('QUERY_PORT')}/api/v1/top"
        deadline = time.monotonic() + 30
        positions: list[int] = []
        while len(set(positions)) < 3:
            assert time.monotonic() < deadline, "".join(demo.lines[-40:])
            answer = httpx.get(top, params={"item_type": "song", "limit": 200}, timeout=5)
            assert answer.status_code == 200, answer.text
            if len(answer.json()["items"]) >= 80:  # 90 songs are seeded
                positions.append(int(answer.headers["X-Ledger-Position"]))
            time.sleep(0.5)
        assert positions == sorted(positions)
        assert any(line.startswith("seeded ") for line in demo.lines)
        assert any("demo: 12 agents voting" in line for line in demo.lines), "".join(demo.lines)
