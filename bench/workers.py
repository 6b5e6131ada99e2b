"""The `workers` scenario of `make bench`: votes/s and top-50 req/s of an API served by 1 and by 2
uvicorn worker processes (`python -m infra.serve commands|queries --workers N`).

The whole stack runs as `make run` runs it: the command API, the query API and two projectors (one
active, one standby) keeping both read models current, with PostgreSQL and Redis. Between variants
only the API under test is restarted (same port); the database, Redis, the projectors and the other
API keep running. Each API is measured with 1, 2, 1, 2 workers (ROUNDS alternations, as the
hypervisor steals time in bursts) and each variant reports the median of its runs (of two runs:
their mean). Before each run the projectors have caught up and the CPUs have gone quiet.

Nothing is pinned: the point is whether a second worker puts the second core to use. The API under
test (its supervisor and workers), the other API, both projectors, PostgreSQL, Redis and wrk (one
thread) all share this machine's CPUs.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.run import (
    BUDGET,
    HOST,
    READ_SECONDS,
    VOTE_SECONDS,
    Bench,
    BenchError,
    Result,
    Usage,
    log,
    vs,
    wrk,
)

COUNTS = (1, 2)  # worker processes per variant
ROUNDS = 2  # 1, 2, 1, 2
CONNS = 64
STOP_SECONDS = 15  # for the supervisor and its workers to exit after SIGTERM
PINNING = (
    "nothing pinned: the API under test (supervisor and workers), the other API, both "
    "projectors, PostgreSQL, Redis and wrk (-t1) all share the machine's {cpus} CPUs"
)


@dataclass
class Target:
    name: str  # the server's name in Bench.servers: command | query
    api: str  # infra.serve's: commands | queries
    label: str  # what is measured
    path: str
    script: str
    seconds: int
    env: dict[str, str]


def scenario(bench: Bench) -> None:
    log("workers: " + PINNING.format(cpus=len(os.sched_getaffinity(0))))
    items = {"BENCH_ITEMS": str(bench.tmp / "items.txt")}
    top = "/api/v1/top?item_type=song&limit=50"
    targets = [
        Target(
            "command",
            "commands",
            f"POST /api/v1/vote c={CONNS}",
            "/",
            "vote.lua",
            VOTE_SECONDS,
            bench.env | items,
        ),
        Target(
            "query",
            "queries",
            f"GET /api/v1/top song limit=50 c={CONNS}",
            top,
            "get.lua",
            READ_SECONDS,
            bench.env,
        ),
    ]
    for target in targets:
        bench.results += summarize(target, alternate(bench, target))


def alternate(bench: Bench, target: Target) -> dict[int, list[Result]]:
    """The runs of each variant, alternating; the API is left serving with one worker."""
    runs: dict[int, list[Result]] = {n: [] for n in COUNTS}
    try:
        for round_ in range(1, ROUNDS + 1):
            for n in COUNTS:
                started = time.monotonic()
                restart(bench, target, n)
                result = measure(bench, target, n, time.monotonic() - started)
                result.details["round"] = round_
                runs[n].append(result)
    except BaseException:
        stop(bench, target.name)  # with its workers, before anything else stops
        raise
    restart(bench, target, 1)  # as `make run` serves it, for what follows
    return runs


def url_of(bench: Bench, target: Target) -> str:
    return bench.command_url if target.name == "command" else bench.query_url


def restart(bench: Bench, target: Target, workers: int) -> None:
    """Stop the API and start it on the same port with this many worker processes."""
    stop(bench, target.name)
    base = url_of(bench, target)
    argv = [sys.executable, "-m", "infra.serve", "--host", HOST, "--log-level", "warning"]
    argv += [target.api, "--port", base.rsplit(":", 1)[1], "--workers", str(workers)]
    proc = bench.servers.start(target.name, argv, bench.env)
    bench.servers.wait_http(target.name, f"{base}/readyz")
    if workers > 1:  # one worker answering does not mean that all of them are up
        deadline = time.monotonic() + BUDGET.left(30)
        while len(spawned(proc.pid)) < workers:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"{target.name}: {workers} workers did not start")
            time.sleep(0.1)
        with httpx.Client(timeout=5) as client:  # new connections, spread over the workers
            for _ in range(20):
                client.get(f"{base}/readyz", headers={"Connection": "close"})


def children(pid: int) -> dict[int, tuple[str, str]]:
    """A process's children: pid -> (start time, command line)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out[int(entry.name)] = (fields[19], cmdline)
    return out


def spawned(pid: int) -> list[int]:
    """uvicorn's worker processes under a supervisor (multiprocessing's spawn_main; not its
    resource tracker)."""
    return [p for p, (_, cmdline) in children(pid).items() if "spawn_main" in cmdline]


def alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def stop(bench: Bench, name: str) -> None:
    """SIGTERM to the server (uvicorn's supervisor stops its workers), then SIGKILL, by PID, to
    whichever of it and its children is left after STOP_SECONDS."""
    proc = bench.servers.procs.pop(name, None)
    if proc is None:
        return
    kids = {pid: started for pid, (started, _) in children(proc.pid).items()}
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(alive(p, s) for p, s in kids.items()):
            return
        time.sleep(0.05)
    log(f"warning: {name} did not stop within {STOP_SECONDS} s after SIGTERM; killing it")
    for pid, started in kids.items():
        if alive(pid, started):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def watch(bench: Bench) -> Callable[[], Usage]:
    """CPU use of every server process, the APIs' workers each by name, Redis and PostgreSQL."""

    def start() -> Usage:
        pids = {}
        for name, proc in bench.servers.procs.items():
            pids[name] = proc.pid
            for i, pid in enumerate(sorted(spawned(proc.pid)), 1):
                pids[f"{name} worker {i}"] = pid
        pids["redis"] = int(bench.redis.info("server")["process_id"])
        return Usage(pids, bench.postmaster)

    return start


def measure(bench: Bench, target: Target, workers: int, restart_s: float) -> Result:
    started = time.monotonic()
    bench.wait_projected()
    bench.settle()
    waited = {"restart_s": round(restart_s, 1), "settle_s": round(time.monotonic() - started, 1)}
    name = f"{target.name} API {workers} worker{'s' * (workers > 1)} {target.label}"
    url = url_of(bench, target) + target.path
    result = wrk(
        name, url, target.script, CONNS, target.seconds, target.env, watch(bench), load_cpu=None
    )
    if target.name == "command":
        result.details["lag_at_end"] = bench.lag_at_end(time.perf_counter())
    if result.details["non_2xx"] or result.details["socket_errors"]:
        result.details["log_tail"] = bench.servers.tail(target.name)
    result.details |= waited
    log(f"{line(result)} (restart {waited['restart_s']} s, settle {waited['settle_s']} s)")
    return result


def summarize(target: Target, runs: dict[int, list[Result]]) -> list[Result]:
    """Per variant, the medians of its runs (and the runs themselves, in details); the ratio of
    2 workers to 1."""
    out = []
    for n, results in runs.items():
        statuses: dict[str, int] = {}
        for r in results:
            for code, count in r.details["statuses"].items():
                statuses[code] = statuses.get(code, 0) + count
        details = {
            "workers": n,
            "pinning": PINNING.format(cpus=len(os.sched_getaffinity(0))),
            "runs": [summary(r) for r in results],
            "statuses": statuses,
            "non_2xx": sum(r.details["non_2xx"] for r in results),
            "socket_errors": [
                r.details["socket_errors"] for r in results if r.details["socket_errors"]
            ],
        }
        name = f"workers={n} {target.label} (median of {len(results)})"
        out.append(
            Result(
                name,
                median([r.throughput for r in results], 1),
                "req/s",
                median([r.p50_ms for r in results], 3),
                median([r.p99_ms for r in results], 3),
                details=details,
            )
        )
    base = out[0]
    vs(out[-1], base.scenario, base.throughput)
    one, two = runs[COUNTS[0]], runs[COUNTS[-1]]
    out[-1].details["ratio_per_round"] = [
        round(b.throughput / a.throughput, 3)
        for a, b in zip(one, two, strict=True)
        if a.throughput and b.throughput
    ]
    return out


def median(values: list[float | None], digits: int) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def summary(r: Result) -> dict[str, Any]:
    keep = ("round", "requests", "statuses", "non_2xx", "socket_errors", "cpu", "lag_at_end")
    out = {"name": r.scenario, "req_s": r.throughput, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}
    return out | {k: r.details[k] for k in (*keep, "log_tail") if k in r.details}


def line(r: Result) -> str:
    d = r.details
    text = (
        f"{r.scenario}: {r.throughput:,.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"non-2xx {d['non_2xx']}"
    )
    if d["socket_errors"]:
        text += f", socket errors {d['socket_errors']}"
    return text


def report(results: list[Result]) -> list[str]:
    """What ran, each run, the medians and the ratios."""
    mine = [r for r in results if r.details.get("workers")]
    lines = [f"workers (1 and 2 worker processes per API): {mine[0].details['pinning']}"]
    for r in mine:
        for run in r.details["runs"]:
            cpu = ", ".join(f"{k} {v}" for k, v in run.get("cpu", {}).items())
            lines.append(
                f"  round {run['round']}, {run['name']}: {run['req_s']:,.0f} req/s, "
                f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
                f"non-2xx {run['non_2xx']} {run['statuses']}"
            )
            lines.append(f"    CPU: {cpu}")
            if run.get("lag_at_end"):
                lines.append(f"    lag at the end: {run['lag_at_end']}")
            if run.get("log_tail"):
                lines.append(
                    "    the API's log:\n      " + run["log_tail"].replace("\n", "\n      ")
                )
    for r in mine:
        if r.error:
            continue
        text = f"  {r.scenario}: {r.throughput:,.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 "
        text += f"{r.p99_ms:.1f} ms, non-2xx {r.details['non_2xx']}"
        if r.ratio is not None:
            text += f"; 2 workers / 1 worker = {r.ratio:.2f}x (per round: "
            text += ", ".join(f"{x:.2f}x" for x in r.details["ratio_per_round"]) + ")"
        lines.append(text)
    return lines
