"""`make bench`: end-to-end benchmarks of voteledger against baselines measured in the same run.

Runs inside `python -m devtools.devstack exec` (no --fast: PostgreSQL keeps fsync and synchronous
commits on), which provides a throwaway PostgreSQL and Redis. Every server and load generator is a
separate process started here and stopped here by PID, also on failure or Ctrl-C. Prints one
table, compares it with the previous bench/results.json and writes the new one. In order:

  seed       `voteledger seed` of 1,000,000 votes (events/s)
  catch-up   a projector worker from zero into both read models  vs  COPY of the same rows
  rebuild    `voteledger rebuild`, then `voteledger verify`, over the same ledger (wall time)
  votes      POST /vote at 16 and 64 connections  vs  /healthz  and  pgbench of the same SQL
  naive      bench/naive.py, the seed's design written plainly: votes at 16 and 64, top-50
  whole stack  votes at 16 and 64 with every server of `make run` on one CPU  vs  naive;
             lag at the end, CPU per vote per process, WAL and pg_stat_statements per vote
  live lag   votes at a fixed rate: vote response -> visible in the query API / in Redis
  reads      GET /top and /items/{id} at 64 connections  vs  /healthz, redis-benchmark, naive
  workers    votes and top-50 at 64 connections with 1 and 2 worker processes per API, the
             whole stack running, nothing pinned (bench/workers.py)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from bench import naive
from projections.generations import redis_key
from projections.redis_store import changes_key, meta_key, namespace

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results.json"
BIN = Path(sys.executable).parent  # the venv's bin: voteledger, uvicorn
HOST = "127.0.0.1"
BUDGET_SECONDS = 750.0  # the whole run must end within 13 minutes

SEED = ["--agents", "2000", "--items", "10000", "--votes", "1000000", "--days", "30"]
# For the HTTP scenarios; another --seed, so other agent ids than the first seed's.
VOTE_SEED = ["--agents", "200", "--items", "2000", "--votes", "0", "--seed", "1"]
API_AGENTS = 200
VOTE_SECONDS, READ_SECONDS, WARMUP_SECONDS = 15, 10, 2
LIVE_RATE, LIVE_SECONDS = 1000, 20
# The second live run: a rate this machine sustains with the projector and query API running
# (at 50% the command API was already saturated: vote p50 ~300 ms), so the lag is not queueing.
LIVE_SHARE_OF_CAPACITY = 0.25
CAPACITY = "POST /api/v1/vote c=16"  # the closed-loop vote rate the second live run scales
HEALTH = "query GET /healthz c=64"
ZREVRANGE = "redis-benchmark ZREVRANGE top:song 0 49 WITHSCORES c=64"
NAIVE_TOP = "naive GET /api/v1/top song limit=50 c=64"


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


class Budget:
    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds

    def left(self, cap: float) -> float:
        """A timeout for the next step: at most `cap`, never past the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 1:
            raise BenchError(f"out of time (the whole run is bounded to {BUDGET_SECONDS:.0f} s)")
        return min(cap, remaining)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


BUDGET = Budget(BUDGET_SECONDS)
CPUS = sorted(os.sched_getaffinity(0))
PIN = len(CPUS) >= 2 and shutil.which("taskset") is not None
SERVER_CPU, LOAD_CPU = (CPUS[0], CPUS[1]) if PIN else (None, None)
TICKS = os.sysconf("SC_CLK_TCK")


def on_cpu(cpu: int | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def pin(proc: subprocess.Popen[bytes], cpu: int | None) -> None:
    """Move a running process (all its threads) to one CPU, or back to all of them."""
    if PIN and proc.poll() is None:
        cpus = str(cpu) if cpu is not None else ",".join(map(str, CPUS))
        argv = ["taskset", "-a", "-p", "-c", cpus, str(proc.pid)]
        if subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=10).returncode != 0:
            log(f"warning: could not set the CPU affinity of pid {proc.pid}")


@dataclass
class Done:
    out: str
    err: str
    rc: int
    cpu_pct: float  # the tool's own CPU use, % of one core


def run(argv: list[str], cap: float, env: dict[str, str] | None = None) -> Done:
    """Run a tool within the time budget; it is killed (by PID) on timeout or Ctrl-C."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=BUDGET.left(cap))
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out: {' '.join(argv[:4])} ...") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Done(out, err, proc.returncode, round(100 * used / (time.monotonic() - started)))


def check(argv: list[str], cap: float, env: dict[str, str] | None = None) -> Done:
    done = run(argv, cap, env)
    if done.rc != 0:
        last = [ln.strip() for ln in (done.err or done.out).splitlines() if ln.strip()][-3:]
        raise BenchError(f"{' '.join(argv[:3])} exited with {done.rc}: {' / '.join(last)}")
    return done


class Servers:
    """Long-running processes (APIs, projector), stopped by PID: SIGTERM, then SIGKILL."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def tail(self, name: str) -> str:
        lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-20:])

    def wait_http(self, name: str, url: str) -> None:
        deadline = time.monotonic() + BUDGET.left(30)
        while True:
            if self.procs[name].poll() is not None:
                raise BenchError(f"{name} exited: {self.tail(name)}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready at {url}: {self.tail(name)}")
            time.sleep(0.1)

    def stop(self, *names: str) -> None:
        procs = [self.procs.pop(n) for n in (names or list(self.procs)) if n in self.procs]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 3  # devstack allows 5 s after Ctrl-C
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def _busy() -> dict[str, tuple[int, int, int]]:
    """Per CPU: (busy, total, stolen by the hypervisor) jiffies since boot."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values[:8]]
            out[name] = (sum(v) - v[3] - v[4], sum(v), v[7])
    return out


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


class Usage:
    """CPU use over an interval: each CPU's busy %, named processes' and PostgreSQL's (the
    postmaster and all its children, summed) % of one core. A thread samples every 0.25 s so
    that backends which exit before the end (pgbench's) still count."""

    def __init__(self, pids: dict[str, int], postmaster: int | None = None) -> None:
        self.pids, self.postmaster = pids, postmaster
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.started, self.busy = time.monotonic(), _busy()
        self.stopped = threading.Event()
        self.seconds: dict[str, float] = {}  # CPU seconds per name, once done
        self._sample(initial=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _postgres(self) -> set[int]:
        if self.postmaster is None:
            return set()
        found = {self.postmaster}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] == self.postmaster:
                found.add(int(entry.name))
        return found

    def _sample(self, initial: bool = False) -> None:
        for pid in set(self.pids.values()) | self._postgres():
            if (st := _stat(pid)) is not None:
                self.last[pid] = st[1]
                self.first.setdefault(pid, st[1] if initial else 0)  # new: started since

    def _run(self) -> None:
        while not self.stopped.wait(0.25):
            self._sample()

    def done(self, tools: dict[str, float] | None = None) -> dict[str, int]:
        """The figures; `tools`: the load generators' own % (measured by whoever waited for
        them). "steal %": taken by the hypervisor; "other %": busy time nothing here accounts
        for, i.e. other work on this machine (and some kernel time)."""
        self.stopped.set()
        self.thread.join()
        self._sample()
        wall, busy = time.monotonic() - self.started, _busy()
        out = {
            f"{cpu} busy %": round(100 * (b - self.busy[cpu][0]) / max(1, t - self.busy[cpu][1]))
            for cpu, (b, t, _) in busy.items()
        }
        stolen = sum(st - self.busy[cpu][2] for cpu, (_, _, st) in busy.items())

        def seconds(pids: set[int]) -> float:
            return sum(self.last[p] - self.first[p] for p in pids if p in self.last) / TICKS

        self.seconds = {name: seconds({pid}) for name, pid in self.pids.items()}
        if self.postmaster is not None:
            mine = set(self.pids.values())
            self.seconds["postgres"] = seconds({p for p in self.last if p not in mine})
        out |= {f"{name} %": round(100 * s / wall) for name, s in self.seconds.items()}
        out |= {name: round(v) for name, v in (tools or {}).items()}
        out["steal %"] = round(100 * stolen / TICKS / wall)  # counted as busy above
        busy_total = sum(v for k, v in out.items() if k.endswith("busy %"))
        accounted = sum(v for k, v in out.items() if not k.endswith("busy %"))
        out["other %"] = max(0, busy_total - accounted)
        return out


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    scenario: str
    throughput: float | None = None
    unit: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline: str = ""
    baseline_throughput: float | None = None
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.scenario} | {self.baseline}"


def vs(result: Result, baseline: str, base: float | None) -> Result:
    result.baseline, result.baseline_throughput = baseline, base
    if base and result.throughput is not None:
        result.ratio = round(result.throughput / base, 3)
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)


class Profile:
    """PostgreSQL's side of a measurement, when pg_stat_statements is loaded (`make bench` loads
    it): WAL bytes, and each statement's calls, rows and execution time, per vote."""

    TOP = 14

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        loaded = "pg_stat_statements" in str(
            conn.execute("SHOW shared_preload_libraries").fetchone()
        )
        if loaded:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.loaded, self.wal = loaded, 0

    def _wal(self) -> int:
        return int(self.conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()[0])  # type: ignore[index]

    def start(self) -> None:
        if self.loaded:
            self.conn.execute("SELECT pg_stat_statements_reset()")
        self.wal = self._wal()

    def done(self, votes: int) -> dict[str, Any]:
        votes = max(1, votes)
        out: dict[str, Any] = {"wal_bytes_per_vote": round((self._wal() - self.wal) / votes)}
        if not self.loaded:
            return out
        rows = self.conn.execute(
            "SELECT calls, rows, total_exec_time, mean_exec_time, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements "
            "WHERE query NOT LIKE '%%pg_stat%%' ORDER BY total_exec_time DESC LIMIT %s",
            (self.TOP,),
        ).fetchall()
        out["statements"] = [
            {
                "calls_per_vote": round(calls / votes, 3),
                "rows_per_call": round(n / max(1, calls), 1),
                "mean_ms": round(mean, 3),
                "us_per_vote": round(total * 1000 / votes, 1),
                "query": query,
            }
            for calls, n, total, mean, query in rows
        ]
        return out


def per_vote(result: Result) -> dict[str, float]:
    """Server CPU per 2xx vote in µs, per process and in all (load generators left out)."""
    seconds = result.details["cpu_seconds"]
    votes = max(1, result.details["requests"] - result.details["non_2xx"])
    out = {k: round(v / votes * 1e6) for k, v in seconds.items()}
    out["all servers"] = sum(out.values())
    return out


def wrk(
    name: str,
    url: str,
    script: str,
    conns: int,
    seconds: int,
    env: dict[str, str],
    watch: Callable[[], Usage],
    profile: Profile | None = None,
    load_cpu: int | None = LOAD_CPU,
) -> Result:
    """One wrk run after a short warm-up at the same concurrency, from its done() JSON line;
    wrk runs on `load_cpu` (None: not pinned)."""
    argv = ["wrk", "-t1", f"-c{conns}", "--timeout", "10s", "-s", str(BENCH / script), url]
    check(on_cpu(load_cpu, [*argv, f"-d{WARMUP_SECONDS}s"]), WARMUP_SECONDS + 30, env)
    if profile is not None:
        profile.start()
    usage = watch()
    done = check(on_cpu(load_cpu, [*argv, f"-d{seconds}s"]), seconds + 30, env)
    cpu = usage.done({"wrk %": done.cpu_pct})
    seconds = {name: round(v, 3) for name, v in usage.seconds.items()}
    line = next(ln for ln in done.out.splitlines() if ln.startswith("BENCH_JSON "))
    data = json.loads(line.removeprefix("BENCH_JSON "))
    statuses = {int(k): v for k, v in data["statuses"].items()}
    details = {
        "requests": data["requests"],
        "statuses": data["statuses"],
        "non_2xx": sum(v for k, v in statuses.items() if not 200 <= k < 300),
        "socket_errors": {k: v for k, v in data["errors"].items() if k != "status" and v},
        "p90_ms": data["p90_us"] / 1000,
        "max_ms": data["max_us"] / 1000,
        "cpu": cpu,
        "cpu_seconds": seconds,
    }
    if profile is not None:
        details["postgres"] = profile.done(data["requests"] - details["non_2xx"])
    rps = round(data["requests"] / (data["duration_us"] / 1e6), 1)
    return Result(name, rps, "req/s", data["p50_us"] / 1000, data["p99_us"] / 1000, details=details)


# --------------------------------------------------------------------------- the scenarios


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = os.environ["DATABASE_URL"]
        self.redis_url = os.environ["REDIS_URL"]
        self.prefix = os.environ.get("VOTELEDGER_REDIS_PREFIX", "vl")
        self.token = secrets.token_urlsafe(24)
        self.env = os.environ | {
            "VOTELEDGER_OPERATOR_TOKEN": self.token,
            # The bench measures the vote path, not the per-agent limit: no 429s.
            "VOTELEDGER_RATE_LIMIT_PER_SECOND": "1000000",
            "VOTELEDGER_RATE_LIMIT_BURST": "1000000",
            "BENCH_DIR": str(BENCH),
            "BENCH_KEYS": str(tmp / "keys.txt"),
        }
        self.servers = Servers(tmp)
        self.sql = psycopg.connect(self.db, autocommit=True)
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        self.bindir = pg_bindir()
        # The postmaster's PID, to count the CPU time of PostgreSQL's processes.
        pidfile = Path(self.q("SHOW data_directory")) / "postmaster.pid"
        self.postmaster = int(pidfile.read_text().split()[0]) if pidfile.exists() else None
        self.results: list[Result] = []
        self.command_url = self.query_url = ""
        self.events = 0

    def q(self, query: str) -> Any:
        row = self.sql.execute(query).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def voteledger(self, *args: str, cap: float = 120) -> Done:
        return check([str(BIN / "voteledger"), *args], cap, self.env)

    def usage(self, *names: str) -> Usage:
        """Start measuring CPU use: these servers of ours, Redis and PostgreSQL."""
        found = {n: self.servers.procs[n].pid for n in names if n in self.servers.procs}
        return Usage(
            found | {"redis": int(self.redis.info("server")["process_id"])}, self.postmaster
        )

    def watch(self, *names: str) -> Callable[[], Usage]:
        return lambda: self.usage(*names)

    def scenario(self, name: str, fn: Any) -> None:
        log(f"--- {name} ({BUDGET.elapsed():.0f} s elapsed)")
        try:
            fn()
        except BenchError as exc:
            log(f"{name} FAILED: {exc}")
            self.results.append(Result(name, error=str(exc)))

    def settle(self) -> None:
        """Before a measurement: vacuum what earlier scenarios wrote (so autovacuum does not
        start in the middle), then wait, at most 20 s, for the CPUs to go quiet."""
        for table in ("events", "vote_slots", "idempotency_keys"):
            self.sql.execute(f"VACUUM (ANALYZE) {table}")  # type: ignore[arg-type]
        deadline = time.monotonic() + BUDGET.left(20)
        while time.monotonic() < deadline:
            before = _busy()
            time.sleep(0.5)
            after = _busy()
            if all(after[c][0] - b < 0.2 * (after[c][1] - t) for c, (b, t, _) in before.items()):
                return
        log("warning: the CPUs did not go quiet before the next measurement")

    def head(self) -> int:
        return int(self.q("SELECT pg_sequence_last_value('events_position_seq')") or 0)

    # --- 1M events: seed, COPY baseline, catch-up, rebuild, verify ---------------------------

    def seed(self) -> None:
        self.voteledger("migrate")
        if self.q("SELECT count(*) FROM events"):
            raise BenchError("the database already holds events: the bench needs a fresh one")
        started = time.perf_counter()
        self.voteledger("seed", *SEED, cap=240)
        seconds = time.perf_counter() - started
        self.events = self.q("SELECT count(*) FROM events")
        details = {"events": self.events, "seconds": round(seconds, 2)}
        name = "seed 1M votes (voteledger seed)"
        self.results.append(Result(name, round(self.events / seconds), "events/s", details=details))
        # What autovacuum would soon do anyway, so that it does not run during a measurement.
        started = time.perf_counter()
        for statement in ("VACUUM (ANALYZE) events", "VACUUM (ANALYZE) vote_slots", "CHECKPOINT"):
            self.sql.execute(statement)  # type: ignore[arg-type]
        log(f"vacuum + checkpoint after seeding: {time.perf_counter() - started:.1f} s")

    def copy_baseline(self) -> float:
        """Events/s of `psql COPY (SELECT * FROM events) TO STDOUT | psql COPY ... FROM STDIN`."""
        psql = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.db]
        self.sql.execute("DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE events)")
        started = time.perf_counter()
        export = [*psql, "-c", "COPY (SELECT * FROM events) TO STDOUT"]
        out = subprocess.Popen(export, stdout=subprocess.PIPE)
        into = subprocess.Popen([*psql, "-c", "COPY bench_copy FROM STDIN"], stdin=out.stdout)
        assert out.stdout is not None
        out.stdout.close()
        try:
            codes = [p.wait(timeout=BUDGET.left(120)) for p in (out, into)]
        except subprocess.TimeoutExpired:
            raise BenchError("COPY baseline timed out") from None
        finally:
            for p in (out, into):
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=5)
        seconds = time.perf_counter() - started
        copied = self.q("SELECT count(*) FROM bench_copy")
        self.sql.execute("DROP TABLE bench_copy")
        if codes != [0, 0] or copied != self.events:
            raise BenchError(f"COPY baseline failed: exit codes {codes}, {copied} rows copied")
        return copied / seconds

    def start_projector(self, standby: bool = False) -> subprocess.Popen[bytes]:
        """A projector worker; with `standby`, a second one too, as `make run` starts them (it
        waits on the leases, ready to take over)."""
        argv = [str(BIN / "voteledger"), "project", "--metrics-port", "0"]
        proc = self.servers.start("projector", argv, self.env)
        if standby:
            self.servers.start("standby", argv, self.env)
        return proc

    def catch_up(self) -> None:
        copy_rate = self.copy_baseline()
        generation, head = self.q("SELECT generation FROM read_model_generation"), self.head()
        meta = meta_key(self.prefix, generation)
        checkpoint = (
            f"SELECT watermark FROM rm_g{generation}.checkpoint WHERE projection = 'postgres'"
        )
        started = time.perf_counter()
        proc = self.start_projector()
        done: dict[str, float] = {}
        deadline = time.monotonic() + BUDGET.left(240)
        while len(done) < 2:
            if proc.poll() is not None:
                raise BenchError(f"projector exited: {self.servers.tail('projector')}")
            if time.monotonic() > deadline:
                raise BenchError(f"projector did not catch up in time; done: {done}")
            marks = {"postgres": self.q(checkpoint), "redis": self.redis.hget(meta, "watermark")}
            for name, mark in marks.items():
                if name not in done and mark is not None and int(mark) >= head:
                    done[name] = round(time.perf_counter() - started, 2)
            time.sleep(0.05)
        seconds = max(done.values())
        details = {
            "events": self.events,
            "seconds": seconds,
            "postgres_s": done["postgres"],
            "redis_s": done["redis"],
            "includes": "the worker's start-up",
        }
        name = "projector catch-up, both read models"
        result = Result(name, round(self.events / seconds), "events/s", details=details)
        self.results.append(vs(result, "COPY events out + into a scratch table", round(copy_rate)))

    def rebuild_and_verify(self) -> None:
        for command in ("rebuild", "verify"):
            started = time.perf_counter()
            done = run([str(BIN / "voteledger"), command, "--json"], 240, self.env)
            seconds = time.perf_counter() - started
            lines = [ln for ln in done.out.splitlines() if ln.startswith("[")]
            report = json.loads(lines[-1]) if lines else []
            details = {"seconds": round(seconds, 2), "exit_code": done.rc, "report": report}
            name = f"voteledger {command} (both read models)"
            result = Result(name, round(self.events / seconds), "events/s", details=details)
            if done.rc != 0:
                result.error = f"exit code {done.rc}: {(done.err or done.out)[-800:]}"
            elif command == "verify" and not all(r.get("equal") for r in report):
                result.error = "verify found differences"
            self.results.append(result)

    # --- the HTTP scenarios ----------------------------------------------------------------

    def start_apis(self) -> None:
        before = {r[0] for r in self.sql.execute("SELECT item_id FROM items")}
        self.voteledger("seed", *VOTE_SEED)
        every = [r[0] for r in self.sql.execute("SELECT item_id FROM items")]
        items = sorted(set(every) - before)
        # As `make run` starts them.
        serve = [sys.executable, "-m", "infra.serve", "--host", HOST, "--log-level", "warning"]
        for name, api in (("command", "commands"), ("query", "queries")):
            port = free_port()
            self.servers.start(name, [*serve, api, "--port", str(port)], self.env)
            setattr(self, f"{name}_url", f"http://{HOST}:{port}")
        self.servers.wait_http("command", f"{self.command_url}/readyz")
        self.servers.wait_http("query", f"{self.query_url}/readyz")
        keys, agent_ids = [], []
        operator = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.command_url, timeout=10, headers=operator) as client:
            for i in range(API_AGENTS):
                reply = client.post("/api/v1/agents", json={"name": f"bench-{i}"})
                if reply.status_code != 201:
                    raise BenchError(f"creating an agent: {reply.status_code} {reply.text}")
                keys.append(reply.json()["api_key"])
                agent_ids.append(reply.json()["agent_id"])
        for name, lines in (("keys", keys), ("items", items), ("all-items", every)):
            (self.tmp / f"{name}.txt").write_text("\n".join(lines) + "\n")
        # pgbench picks agents and items by number among the very ones the HTTP bench uses.
        self.sql.execute("DROP TABLE IF EXISTS bench_agents, bench_items")
        self.sql.execute("CREATE TABLE bench_agents (n int PRIMARY KEY, agent_id uuid)")
        self.sql.execute(
            "CREATE TABLE bench_items (n int PRIMARY KEY, item_id text, item_type text)"
        )
        numbered = "SELECT row_number() OVER (ORDER BY item_id), item_id, item_type FROM items"
        with self.sql.cursor() as cur:
            cur.executemany("INSERT INTO bench_agents VALUES (%s, %s)", enumerate(agent_ids, 1))
            cur.execute(f"INSERT INTO bench_items {numbered} WHERE item_id = ANY(%s)", (items,))

    def votes(self) -> None:
        # The command path alone, as for both baselines: the projectors are stopped (the query
        # API idles). They catch up afterwards on these votes and pgbench's (VoteCast-shaped) rows.
        self.servers.stop("projector", "standby")
        self.settle()
        command, url, watch = self.servers.procs["command"], self.command_url, self.watch("command")
        env = self.env | {"BENCH_ITEMS": str(self.tmp / "items.txt")}
        pin(command, SERVER_CPU)
        try:
            for conns in (16, 64):
                health_name = f"command GET /healthz c={conns}"
                name = f"POST /api/v1/vote c={conns}"
                health = wrk(
                    health_name, f"{url}/healthz", "get.lua", conns, VOTE_SECONDS, self.env, watch
                )
                vote = wrk(name, f"{url}/", "vote.lua", conns, VOTE_SECONDS, env, watch)
                pgb = self.pgbench(conns)
                self.results += [health, vs(vote, health_name, health.throughput), pgb]
                self.results.append(vs(Result(**asdict(vote)), pgb.scenario, pgb.throughput))
        finally:
            pin(command, None)
            self.start_projector(standby=True)

    # --- the whole stack, and the naive design ----------------------------------------------

    def redis_watermark(self) -> tuple[int, int]:
        """Redis's current generation and its watermark (0: none yet)."""
        generation = int(self.redis.get(redis_key(self.prefix)) or 1)  # type: ignore[arg-type]
        mark = self.redis.hget(meta_key(self.prefix, generation), "watermark")
        return generation, int(mark or 0)  # type: ignore[arg-type]

    def watermarks(self) -> dict[str, int]:
        """Both read models' watermarks, in their current generations."""
        pg = self.q("SELECT generation FROM read_model_generation")
        mark = self.q(f"SELECT watermark FROM rm_g{pg}.checkpoint WHERE projection = 'postgres'")
        return {"postgres": int(mark or 0), "redis": self.redis_watermark()[1]}

    def lag_at_end(self, ended: float) -> dict[str, Any]:
        """How far behind the head both projections were when the load ended: the seconds from
        then until each watermark reached the head as it was then (None: not within 10 s)."""
        head, behind = self.head(), self.watermarks()
        caught: dict[str, float | None] = {"postgres": None, "redis": None}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and None in caught.values():
            for name, mark in self.watermarks().items():
                if caught[name] is None and mark >= head:
                    caught[name] = round(time.perf_counter() - ended, 3)
            time.sleep(0.01)
        events = {name: head - mark for name, mark in behind.items()}
        return {"head": head, "events_behind": events, "caught_up_after_s": caught}

    def naive(self) -> None:
        """The naive design (bench/naive.py) on the same PostgreSQL, agents, items, bodies and
        pinning: votes at 16 and 64 connections, then its top-50."""
        naive.prepare(self.sql)
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "--factory", "bench.naive:create_app"]
        argv += ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
        proc = self.servers.start("naive", argv, self.env)
        url = f"http://{HOST}:{port}"
        self.servers.wait_http("naive", f"{url}/healthz")
        env = self.env | {"BENCH_ITEMS": str(self.tmp / "items.txt")}
        watch = self.watch("naive")
        self.settle()
        pin(proc, SERVER_CPU)
        try:
            for conns in (16, 64):
                vote = wrk(
                    f"naive POST /api/v1/vote c={conns}",
                    f"{url}/",
                    "vote.lua",
                    conns,
                    VOTE_SECONDS,
                    env,
                    watch,
                )
                vote.details["cpu_us_per_vote"] = per_vote(vote)
                self.results.append(vote)
            top = f"{url}/api/v1/top?item_type=song&limit=50"
            self.results.append(wrk(NAIVE_TOP, top, "get.lua", 64, READ_SECONDS, self.env, watch))
        finally:
            self.servers.stop("naive")
            naive.drop(self.sql)

    def whole_stack(self) -> None:
        """Votes with everything `make run` starts working at once: the command API, both
        projectors (active and standby) keeping both read models current, and the query API, all
        pinned to one CPU; PostgreSQL and Redis float; wrk on the other CPU."""
        self.wait_projected()
        self.settle()
        names = ("command", "query", "projector", "standby")
        procs = [self.servers.procs[n] for n in names]
        env = self.env | {"BENCH_ITEMS": str(self.tmp / "items.txt")}
        for proc in procs:
            pin(proc, SERVER_CPU)
        try:
            for conns in (16, 64):
                name = f"whole stack POST /api/v1/vote c={conns}"
                vote = wrk(
                    name,
                    f"{self.command_url}/",
                    "vote.lua",
                    conns,
                    VOTE_SECONDS,
                    env,
                    self.watch(*names),
                    Profile(self.sql),
                )
                lag = self.lag_at_end(time.perf_counter())
                vote.details |= {"cpu_us_per_vote": per_vote(vote), "lag_at_end": lag}
                late = [n for n, s in lag["caught_up_after_s"].items() if s is None or s > 1]
                if late:
                    vote.error = f"projections behind for over 1 s after the load: {lag}"
                naive_name = f"naive POST /api/v1/vote c={conns}"
                base = next((r.throughput for r in self.results if r.scenario == naive_name), None)
                self.results.append(vs(vote, naive_name, base))
        finally:
            for proc in procs:
                pin(proc, None)

    def pgbench(self, clients: int) -> Result:
        agents = self.q("SELECT count(*) FROM bench_agents")
        items = self.q("SELECT count(*) FROM bench_items")
        prefix = self.tmp / f"pgbench-c{clients}"
        argv = [
            str(self.bindir / "pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            "1",
            "-T",
            str(VOTE_SECONDS),
            "-f",
            str(BENCH / "vote.sql"),
            "-D",
            f"agents={agents}",
            "-D",
            f"items={items}",
            "-l",
            f"--log-prefix={prefix}",
            self.db,
        ]
        usage = self.usage()
        done = check(on_cpu(LOAD_CPU, argv), VOTE_SECONDS + 30)
        tps = failed = None
        for line in done.out.splitlines():
            if line.startswith("tps = "):
                tps = float(line.split()[2])
            elif line.startswith("number of failed transactions"):
                failed = int(line.split(":")[1].split()[0])
        latencies = [
            int(ln.split()[2]) / 1000
            for f in self.tmp.glob(f"{prefix.name}.*")
            for ln in f.read_text().splitlines()
        ]
        cpu = usage.done({"pgbench %": done.cpu_pct})
        details = {"transactions": len(latencies), "failed": failed, "cpu": cpu}
        name = f"pgbench vote SQL (event + slot upsert) c={clients}"
        return Result(name, tps, "tx/s", pct(latencies, 50), pct(latencies, 99), details=details)

    def wait_projected(self) -> int:
        """The Redis generation, once the projector has applied everything up to the head."""
        head = self.head()
        deadline = time.monotonic() + BUDGET.left(60)
        while True:
            generation, mark = self.redis_watermark()
            if mark >= head:
                return generation
            if time.monotonic() > deadline:
                raise BenchError(f"projector stuck at watermark {mark}, head {head}")
            time.sleep(0.1)

    def live_lag(self) -> None:
        """Open-loop votes at 1,000/s, then at a fraction of the measured closed-loop capacity."""
        capacity = next((r.throughput for r in self.results if r.scenario == CAPACITY), None)
        runs = [(LIVE_RATE, f"target {LIVE_RATE} votes/s, open loop", f"@{LIVE_RATE}/s")]
        share = LIVE_SHARE_OF_CAPACITY
        if capacity and capacity * share < LIVE_RATE:
            rate = max(10, round(capacity * share))
            label = f"@{share:.0%} capacity"
            runs.append((rate, f"target {share:.0%} of {CAPACITY}, open loop", label))
        for rate, target, label in runs:
            generation = self.wait_projected()
            self.settle()
            argv = [
                sys.executable,
                "-m",
                "bench.load",
                "--command-url",
                self.command_url,
                "--query-url",
                self.query_url,
                "--redis-url",
                self.redis_url,
                "--channel",
                changes_key(self.prefix, generation),
                "--keys",
                str(self.tmp / "keys.txt"),
                "--items",
                str(self.tmp / "items.txt"),
                "--rate",
                str(rate),
                "--duration",
                str(LIVE_SECONDS),
            ]
            # Not pinned: three Python servers, PostgreSQL and Redis all work here at once.
            usage = self.usage("command", "query", "projector")
            done = check(argv, LIVE_SECONDS + 40, self.env)
            data = json.loads(done.out)
            common = {k: v for k, v in data.items() if not k.startswith(("query_lag", "redis_lag"))}
            common["cpu"] = usage.done({"bench.load %": done.cpu_pct})
            for name, where in (("visible in query API", "query"), ("Redis watermark", "redis")):
                result = Result(
                    f"live lag {label}: vote -> {name}",
                    data["achieved_rate"],
                    "votes/s",
                    data[f"{where}_lag_p50_ms"],
                    data[f"{where}_lag_p99_ms"],
                    details={"samples": data[f"{where}_lag_samples"], **common},
                )
                self.results.append(vs(result, target, rate))

    def reads(self) -> None:
        generation = self.wait_projected()
        self.settle()
        query, url = self.servers.procs["query"], self.query_url
        watch = self.watch("query", "command", "projector")
        items = {"BENCH_ITEMS": str(self.tmp / "all-items.txt"), "BENCH_PATH": "/api/v1/items/%s"}
        pin(query, SERVER_CPU)
        try:
            health = wrk(HEALTH, f"{url}/healthz", "get.lua", 64, READ_SECONDS, self.env, watch)
            top = wrk(
                "GET /api/v1/top song limit=50 c=64",
                f"{url}/api/v1/top?item_type=song&limit=50",
                "get.lua",
                64,
                READ_SECONDS,
                self.env,
                watch,
            )
            item = wrk(
                "GET /api/v1/items/{id} random c=64",
                f"{url}/",
                "get.lua",
                64,
                READ_SECONDS,
                self.env | items,
                watch,
            )
        finally:
            pin(query, None)
        key = f"{namespace(self.prefix, generation)}:top:song"
        if not self.redis.zcard(key):
            raise BenchError(f"no sorted set {key} in Redis")
        zrev = self.redis_benchmark(key)
        self.results += [health, zrev]
        for r in (top, item):
            self.results.append(vs(r, HEALTH, health.throughput))
            self.results.append(vs(Result(**asdict(r)), ZREVRANGE, zrev.throughput))
        base = next((r.throughput for r in self.results if r.scenario == NAIVE_TOP), None)
        self.results.append(vs(Result(**asdict(top)), NAIVE_TOP, base))

    def workers(self) -> None:
        from bench import workers  # imported here: it imports this module

        workers.scenario(self)

    def redis_benchmark(self, key: str) -> Result:
        port = str(self.redis.connection_pool.connection_kwargs["port"])
        argv = ["redis-benchmark", "-h", HOST, "-p", port, "-c", "64", "--csv"]
        command = ["ZREVRANGE", key, "0", "49", "WITHSCORES"]
        probe = parse_redis_csv(check(on_cpu(LOAD_CPU, [*argv, "-n", "20000", *command]), 60).out)
        n = int(min(max(probe["rps"] * READ_SECONDS, 20000), 2_000_000))  # about READ_SECONDS
        usage = self.usage()
        done = check(on_cpu(LOAD_CPU, [*argv, "-n", str(n), *command]), 60)
        data = parse_redis_csv(done.out)
        details = {"requests": n, "cpu": usage.done({"redis-benchmark %": done.cpu_pct})}
        return Result(
            ZREVRANGE, data["rps"], "req/s", data["p50_ms"], data["p99_ms"], details=details
        )


def parse_redis_csv(out: str) -> dict[str, float]:
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows:
        raise BenchError(f"unexpected redis-benchmark output: {out[-500:]}")
    row = rows[-1]
    columns = {"rps": "rps", "p50_ms": "p50_latency_ms", "p99_ms": "p99_latency_ms"}
    return {k: float(row[c]) for k, c in columns.items()}


# --------------------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
    candidates = [Path(out.stdout.strip())] if out.returncode == 0 else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "pgbench").is_file() and (d / "psql").is_file():
            return d
    raise BenchError("pgbench/psql not found (pg_config --bindir, /usr/lib/postgresql/*/bin)")


def ensure_tools() -> None:
    if shutil.which("wrk") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise BenchError("wrk is not installed (Debian package 'wrk'); install it as root")
        log("installing wrk with apt-get")
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            if subprocess.run(argv, env=env, timeout=300, check=False).returncode != 0:
                raise BenchError(f"`{' '.join(argv)}` failed; install wrk by hand")
    if shutil.which("redis-benchmark") is None:
        raise BenchError("redis-benchmark not found (Debian package redis-tools)")


def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


def notes(bench: Bench) -> dict[str, Any]:
    import fastapi
    import uvicorn

    def proc_field(path: str, key: str) -> str:
        lines = Path(path).read_text().splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "?")

    memory = int(proc_field("/proc/meminfo", "MemTotal").split()[0]) // 2**20
    settings = {s: bench.q(f"SHOW {s}") for s in ("fsync", "synchronous_commit", "shared_buffers")}
    status = ["git", "-C", str(ROOT), "status", "--porcelain"]
    lines = subprocess.run(status, capture_output=True, text=True, timeout=10).stdout.splitlines()
    dirty = [ln[3:] for ln in lines if not ln[3:].startswith("bench/")]  # the code measured
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{proc_field('/proc/cpuinfo', 'model name')}, {memory} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        "nproc": os.cpu_count(),
        "shared_machine": "the servers (APIs, projector, PostgreSQL, Redis) and the load "
        "generators all share this machine's CPUs",
        "pinning": pinning(),
        "postgres_settings": settings,
        "versions": {
            "python": platform.python_version(),
            "postgres": bench.q("SHOW server_version"),
            "redis": bench.redis.info("server")["redis_version"],
            "wrk": first_line(["wrk", "--version"]).split(" Copyright")[0],
            "pgbench": first_line([str(bench.bindir / "pgbench"), "--version"]),
            "redis-benchmark": first_line(["redis-benchmark", "--version"]),
            "uvicorn": uvicorn.__version__,
            "fastapi": fastapi.__version__,
            "git": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
            + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else ""),
        },
    }


def pinning() -> str:
    if not PIN:
        return "no CPU pinning (fewer than 2 usable CPUs, or no taskset)"
    return (
        f"closed-loop HTTP and pgbench/redis-benchmark: the API process under test on CPU "
        f"{SERVER_CPU}, the load generator on CPU {LOAD_CPU}; PostgreSQL and Redis float over "
        f"both. The whole stack: every server make run starts on CPU {SERVER_CPU}. Batch "
        "scenarios and live lag (three Python servers at once) are not pinned. The workers "
        "scenario pins nothing."
    )


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[Result]) -> str:
    head = ("scenario", "throughput", "p50 ms", "p99 ms", "baseline", "baseline thr.", "ratio")
    rows = [head]
    for r in results:
        thr = f"{fmt(r.throughput)} {r.unit}" if r.error is None else f"FAILED: {r.error[:60]}"
        if r.error is None and r.unit == "events/s":
            thr += f" ({r.details['seconds']:.1f} s)"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        rows.append(
            (
                r.scenario,
                thr,
                fmt(r.p50_ms, 2),
                fmt(r.p99_ms, 2),
                r.baseline or "-",
                fmt(r.baseline_throughput),
                ratio,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    left = (0, 4)  # text columns; numbers are right-aligned
    lines = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def problems(results: list[Result]) -> list[str]:
    """Failures, non-2xx responses, socket errors and failed transactions, spelled out."""
    out = []
    for r in results:
        d = r.details
        if r.error:
            out.append(f"{r.scenario}: {r.error}")
        if d.get("non_2xx"):
            out.append(f"{r.scenario}: {d['non_2xx']} non-2xx responses {d.get('statuses')}")
        for k in ("socket_errors", "errors"):
            if d.get(k):
                out.append(f"{r.scenario}: {k} {d[k]}")
        if d.get("failed"):
            out.append(f"{r.scenario}: {d['failed']} failed transactions")
        if any(k != "200" for k in d.get("query_statuses", {})):
            out.append(f"{r.scenario}: query API answered {d['query_statuses']}")
        outside = d.get("cpu", {}).get("other %", 0) + d.get("cpu", {}).get("steal %", 0)
        if outside > 25:
            out.append(
                f"{r.scenario}: {outside}% of a core went to work outside the bench (other % + "
                "steal %) during this measurement: its numbers are disturbed"
            )
        if d.get("queued_in_client", {}).get("query"):
            out.append(
                f"{r.scenario}: {d['queued_in_client']['query']} visibility checks waited for a "
                "free client connection (all in use): that wait is part of their lag"
            )
        if (d.get("vote_p50_ms") or 0) > 50:  # the live-lag load outran the command API
            label = r.scenario.split(":")[0]
            early = d["redis_watermark_before_response"]
            out.append(
                f"{label}: saturated: votes waited {d['vote_p50_ms']:.0f} ms (p50) from their "
                f"scheduled time; {early} of {d['events_recorded']} were in Redis before their "
                "response arrived, so lag measured from the response understates commit->visible"
            )
    return list(dict.fromkeys(out))


def cpu_use(results: list[Result]) -> list[str]:
    """Per measurement: how busy each CPU was and what the processes we watched used."""
    lines = {}
    for r in results:
        if "cpu" in r.details:
            usage = ", ".join(f"{k} {v}" for k, v in r.details["cpu"].items())
            lines[r.scenario] = f"{r.scenario}: {usage}"
    return list(lines.values())


def cost_per_vote(results: list[Result]) -> list[str]:
    """Server CPU per vote by process and, for the whole stack, PostgreSQL's profile."""
    lines = []
    for r in results:
        if (cpu := r.details.get("cpu_us_per_vote")) and r.baseline != "":
            lines.append(f"{r.scenario}: " + ", ".join(f"{k} {v} us" for k, v in cpu.items()))
        if (lag := r.details.get("lag_at_end")) is not None and r.baseline != "":
            lines.append(f"  lag at the end: {lag}")
        if (pg := r.details.get("postgres")) and r.baseline != "":
            lines.append(f"  PostgreSQL WAL: {pg['wal_bytes_per_vote']} bytes per vote")
            for st in pg.get("statements", []):
                lines.append(
                    f"  {st['us_per_vote']:7.1f} us/vote {st['calls_per_vote']:6.3f} calls/vote "
                    f"{st['mean_ms']:7.3f} ms/call {st['rows_per_call']:6.1f} rows/call  "
                    f"{st['query']}"
                )
    return lines


def vs_health(r: Result) -> str:
    return f"{r.ratio:.2f}x, p99 {r.p99_ms:.1f} ms"


def goals(results: list[Result]) -> list[str]:
    # A result whose baseline did not run (--only) has no ratio to judge.
    by = {r.key: r for r in results if r.error is None and (r.ratio is not None or not r.baseline)}
    lines = []

    def goal(text: str, key: str, ok: Any, measured: Any) -> None:
        r = by.get(key)
        verdict = "?     " if r is None else "met   " if ok(r) else "MISSED"
        lines.append(f"{verdict} {text}: {measured(r) if r else 'not measured'}")

    goal(
        "whole stack: votes c=64 >= 2.0x the naive design, p99 <= 50 ms, caught up",
        "whole stack POST /api/v1/vote c=64 | naive POST /api/v1/vote c=64",
        lambda r: r.ratio >= 2.0 and r.p99_ms <= 50,
        vs_health,
    )
    goal(
        "whole stack: server CPU per vote (all processes) <= 300 us",
        "whole stack POST /api/v1/vote c=64 | naive POST /api/v1/vote c=64",
        lambda r: r.details["cpu_us_per_vote"]["all servers"] <= 300,
        lambda r: ", ".join(f"{k} {v}" for k, v in r.details["cpu_us_per_vote"].items()),
    )
    goal(
        "command path alone: vote c=64 >= 0.8x /healthz",
        "POST /api/v1/vote c=64 | command GET /healthz c=64",
        lambda r: r.ratio >= 0.8,
        vs_health,
    )
    goal(
        "projector catch-up >= 50,000 events/s",
        "projector catch-up, both read models | COPY events out + into a scratch table",
        lambda r: r.throughput >= 50_000,
        lambda r: f"{r.throughput:,.0f} events/s",
    )
    goal(
        "rebuild <= 20 s",
        "voteledger rebuild (both read models) | ",
        lambda r: r.details["seconds"] <= 20,
        lambda r: f"{r.details['seconds']} s",
    )
    for key in [r.key for r in results if r.scenario.startswith("live lag") and not r.error]:
        goal(
            f"{key.split(' | ')[0]} p99 <= 100 ms",
            key,
            lambda r: r.p99_ms is not None and r.p99_ms <= 100,
            lambda r: f"p99 {fmt(r.p99_ms, 1)} ms at {r.throughput:,.0f} votes/s",
        )
    goal(
        "top-50 >= 3x /healthz, p99 <= 10 ms",
        f"GET /api/v1/top song limit=50 c=64 | {HEALTH}",
        lambda r: r.ratio >= 3 and r.p99_ms <= 10,
        vs_health,
    )
    goal(
        "top-50 >= 20x the naive design",
        f"GET /api/v1/top song limit=50 c=64 | {NAIVE_TOP}",
        lambda r: r.ratio >= 20,
        vs_health,
    )
    return lines


def compare(results: list[Result], previous: dict[str, Any]) -> list[str]:
    before = {f"{r['scenario']} | {r['baseline']}": r for r in previous.get("scenarios", [])}
    lines = [f"against the previous bench/results.json ({previous.get('notes', {}).get('date')}):"]
    for r in results:
        old = before.get(r.key)
        if not old or r.throughput is None or not old.get("throughput"):
            continue
        line = f"  {r.key.rstrip(' |')}: {fmt(old['throughput'])} -> {fmt(r.throughput)} {r.unit}"
        line += f" ({r.throughput / old['throughput']:.2f}x)"
        if r.ratio is not None and old.get("ratio") is not None:
            line += f"; ratio {old['ratio']:.2f}x -> {r.ratio:.2f}x ({r.ratio - old['ratio']:+.2f})"
        lines.append(line)
    return lines


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (start_apis always runs); "
        "bench/results.json is then left as it was",
    )
    only = [name for name in parser.parse_args(argv).only.split(",") if name]
    for var in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(var):
            log(f"{var} is not set: run this with `make bench` (devtools.devstack exec)")
            return 2
    if os.environ.get("VOTELEDGER_REDIS_DISPOSABLE") != "1":
        log("REDIS_URL is not a throwaway server: unset DATABASE_URL and REDIS_URL and retry")
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
    banner = (
        f"NOTE: the servers (APIs, projector, PostgreSQL, Redis) and the load generators share "
        f"this machine's {len(CPUS)} CPUs (nproc {os.cpu_count()}). {pinning()}"
    )
    print(banner, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="voteledger-bench-"))
    bench: Bench | None = None
    try:
        ensure_tools()
        bench = Bench(tmp)
        run_scenarios(bench, only)
        info = notes(bench)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        # A second Ctrl-C must not interrupt the clean-up and leave servers behind.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if bench is not None:
            bench.servers.stop()
            bench.sql.close()
            bench.redis.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results = bench.results
    info["total_seconds"] = round(BUDGET.elapsed(), 1)
    report(results, info, banner, previous)
    if any(r.error for r in results):
        print(f"\nsome scenarios failed: {RESULTS.relative_to(ROOT)} left as it was")
        return 1
    if only:
        return 0
    data = {"notes": info, "scenarios": [asdict(r) for r in results]}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


def run_scenarios(bench: Bench, only: list[str]) -> None:
    """The scenarios in their order: all of them, or those named (start_apis always runs)."""
    if only and "seed" not in only:
        bench.voteledger("migrate")
    for name in ("seed", "catch_up", "rebuild_and_verify", "start_apis"):
        if name in only or not only or name == "start_apis":
            bench.scenario(name, getattr(bench, name))
    if only and "catch_up" not in only:
        bench.start_projector(standby=True)
    if "command" in bench.servers.procs:
        for name in ("votes", "naive", "whole_stack", "live_lag", "reads", "workers"):
            if name in only or not only:
                bench.scenario(name, getattr(bench, name))


def report(
    results: list[Result], info: dict[str, Any], banner: str, previous: dict[str, Any] | None
) -> None:
    print("\n" + table(results))
    print(
        f"\n{banner}\nPostgreSQL fsync={info['postgres_settings']['fsync']}, synchronous_commit="
        f"{info['postgres_settings']['synchronous_commit']}. Total {info['total_seconds']:.0f} s."
    )
    issues = problems(results)
    print("\nerrors and non-2xx responses:" + ("".join(f"\n  {p}" for p in issues) or " none"))
    print("\nCPU use during each measurement (process %: of one core):")
    print("  " + "\n  ".join(cpu_use(results)))
    print("\nserver CPU per vote, and PostgreSQL's statements per vote (whole stack):")
    print("  " + "\n  ".join(cost_per_vote(results)))
    print("\ngoals:\n  " + "\n  ".join(goals(results)))
    if any(r.details.get("workers") for r in results):
        from bench import workers

        print("\n" + "\n".join(workers.report(results)))
    if previous:
        print("\n" + "\n".join(compare(results, previous)))


if __name__ == "__main__":
    # Run as the module bench.run, not as __main__: bench.workers imports bench.run, and both must
    # share one copy of it (its BenchError, Result and time budget).
    import importlib

    sys.exit(importlib.import_module("bench.run").main())
