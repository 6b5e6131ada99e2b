"""A drill: every process replicated on one machine, one replica of each killed under load, and
proof that nothing acknowledged was lost or recorded twice.

    python -m devtools.replicas [--duration 20] [--rate 150] [--read-rate 60] [--voters 32]
                                [--no-kill] [--json report.json]
    make replicas REPLICAS_ARGS='--duration 30'   # with throwaway PostgreSQL/Redis (devstack)

It needs DATABASE_URL and REDIS_URL (devtools.devstack provides them) and:
1. migrates, then registers agents and lists items through the command API;
2. runs 2 command APIs, 2 query APIs and 3 projector workers on free loopback ports, with the
   same settings; the first projector holds both leases, the other two are hot standbys;
3. runs a bounded load (devtools/replicas_load.py): votes to both command APIs in turn, reads
   from both query APIs in turn, a request a dead replica did not answer retried on the other
   one with the same Idempotency-Key;
4. SIGKILLs a command API, a query API and the projector holding the leases, at staggered times,
   and times the standby's takeover (from the kill until projection_leases shows a new fence);
5. waits for the projections to reach the ledger's head, runs `voteledger verify`, and checks
   the ledger against every acknowledged vote (devtools/replicas_checks.py);
6. prints the figures and PASS/FAIL per check; exits 1 if a check failed, 2 if the drill could
   not run. Every process it started is stopped (by PID) however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devtools.processes import install_signal_handlers, shielded
from devtools.replicas_checks import Check, answers, caught_up, ledger, verify
from devtools.replicas_fleet import DrillError, Fleet, Lease, aleases
from devtools.replicas_load import Agent, Plan, Tally, run_load

ITEMS = 40
COMMANDS, QUERIES = ["command-1", "command-2"], ["query-1", "query-2"]
PROJECTORS = ["projector-1", "projector-2", "projector-3"]
# When, as a share of the load's duration, each is killed (None: the projector holding leases).
KILLS: list[tuple[float, str | None]] = [(0.3, "command-1"), (0.5, "query-2"), (0.7, None)]
TAKEOVER_WITHIN = 30.0


@dataclass(frozen=True, slots=True)
class Kill:
    name: str
    at: float  # seconds after the load started
    # projection -> seconds from the kill until a new holder had the lease, new fence, holder
    takeover: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: tuple[str, ...] = ()


def drill_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
        raise DrillError(
            "DATABASE_URL and REDIS_URL must be set: run `make replicas`, or this module "
            "under `python -m devtools.devstack exec --`"
        )
    env.setdefault("VOTELEDGER_ENV", "development")
    env.setdefault("VOTELEDGER_OPERATOR_TOKEN", secrets.token_urlsafe(24))
    env.setdefault("VOTELEDGER_LOG_FORMAT", "text")
    limits = {
        "VOTELEDGER_RATE_LIMIT_PER_SECOND": "1000000",
        "VOTELEDGER_RATE_LIMIT_BURST": "1000000",
    }
    return env | limits | {"VOTELEDGER_WORKERS": "1", "PYTHONUNBUFFERED": "1"}


def migrate(env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "cli", "migrate"]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    if run.returncode != 0:
        raise DrillError(f"voteledger migrate failed ({run.returncode}): {run.stderr[-1500:]}")


def start(fleet: Fleet, database_url: str) -> None:
    """The APIs and the first projector, which takes both leases; then the two standbys."""
    for name in COMMANDS:
        fleet.start_api(name, "commands")
    for name in QUERIES:
        fleet.start_api(name, "queries")
    fleet.start_projector(PROJECTORS[0])
    fleet.wait_ready(COMMANDS + QUERIES, "/readyz")
    fleet.wait_leases(database_url, PROJECTORS[0])
    for name in PROJECTORS[1:]:
        fleet.start_projector(name)
    fleet.wait_ready(PROJECTORS, "/healthz")


def seed(url: str, token: str, voters: int) -> tuple[list[Agent], list[str]]:
    """An agent per voter and ITEMS items (songs and tools), through the command API."""
    run = uuid.uuid4().hex[:8]
    operator = {"Authorization": f"Bearer {token}"}
    agents, items = [], []
    with httpx.Client(base_url=url, headers=operator, timeout=10) as client:
        for i in range(voters):
            reply = client.post("/api/v1/agents", json={"name": f"drill-{run}-{i}"})
            if reply.status_code != 201:
                raise DrillError(f"registering an agent: {reply.status_code} {reply.text}")
            agents.append(Agent(reply.json()["agent_id"], reply.json()["api_key"]))
        for i in range(ITEMS):
            kind = "tool" if i % 4 == 0 else "song"
            item = {"item_id": f"drill-{run}-{kind}-{i}", "item_type": kind, "title": f"Drill {i}"}
            reply = client.post("/api/v1/items", json=item)
            if reply.status_code != 201:
                raise DrillError(f"listing an item: {reply.status_code} {reply.text}")
            items.append(item["item_id"])
    return agents, items


async def kill_holder(fleet: Fleet, conn: psycopg.AsyncConnection, started: float) -> Kill:
    """SIGKILL the projector holding the most leases; time each lease's takeover."""
    before = await aleases(conn)
    pids = [lease.pid for lease in before.values()]
    victim = fleet.by_pid(max(pids, key=pids.count) if pids else None)
    if victim is None or not victim.alive:
        raise DrillError(f"no live projector of this drill holds a lease: {before}")
    held = tuple(p for p, lease in before.items() if lease.pid == victim.proc.pid)
    at = await fleet.kill(victim.name)
    takeover: dict[str, dict[str, Any]] = {}
    while len(takeover) < len(held) and time.monotonic() < at + TAKEOVER_WITHIN:
        now = await aleases(conn)
        seen = time.monotonic()
        for p in held:
            lease = now.get(p, Lease(0, None))
            if p not in takeover and lease.fence > before[p].fence:
                new = fleet.by_pid(lease.pid)
                takeover[p] = {
                    "seconds": round(seen - at, 3),
                    "fence": [before[p].fence, lease.fence],
                    "holder": new.name if new else lease.holder,
                }
        await asyncio.sleep(0.02)
    return Kill(victim.name, round(at - started, 2), takeover, held)


async def killer(fleet: Fleet, database_url: str, plan: Plan, duration: float) -> list[Kill]:
    started, kills = plan.deadline - duration, []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for share, name in KILLS:
            await asyncio.sleep(max(0.0, started + share * duration - time.monotonic()))
            if name is None:
                kills.append(await kill_holder(fleet, conn, started))
            else:
                at = await fleet.kill(name)
                kills.append(Kill(name, round(at - started, 2)))
    return kills


async def load_and_kill(
    fleet: Fleet,
    env: dict[str, str],
    seeded: tuple[list[Agent], list[str]],
    args: argparse.Namespace,
) -> tuple[Tally, list[Kill]]:
    plan = Plan.of(args.duration, args.rate, args.read_rate, len(seeded[0]))
    commands = {n: fleet.members[n].url for n in COMMANDS}
    queries = {n: fleet.members[n].url for n in QUERIES}
    load = run_load(commands, queries, *seeded, plan)
    if args.no_kill:
        return await load, []
    tally, kills = await asyncio.gather(
        load, killer(fleet, env["DATABASE_URL"], plan, args.duration)
    )
    return tally, kills


def process_checks(fleet: Fleet, kills: list[Kill]) -> list[Check]:
    checks = []
    for kill in kills:
        if not kill.held:
            continue
        taken = {p: t for p, t in kill.takeover.items() if fleet.alive_named(str(t["holder"]))}
        shown = ", ".join(f"{p} {t['seconds']:.2f} s by {t['holder']}" for p, t in taken.items())
        passed = set(taken) == set(kill.held)
        detail = f"{kill.name} killed holding {', '.join(kill.held)}; {shown or 'no takeover'}"
        checks.append(Check("a standby projector took over the leases", passed, detail))
    left = [m.name for m in fleet.members.values() if m.killed_at is None]
    dead = [name for name in left if not fleet.members[name].alive]
    detail = f"{len(left) - len(dead)}/{len(left)} running" + (f"; exited: {dead}" if dead else "")
    checks.append(Check("every process not killed still runs", not dead, detail))
    return checks


def figures(
    tally: Tally, kills: list[Kill], catch_up: float, args: argparse.Namespace
) -> dict[str, Any]:
    seconds = sorted(tally.vote_seconds)

    def pct(q: float) -> float | None:
        if not seconds:
            return None
        return round(1000 * seconds[min(len(seconds) - 1, int(q * len(seconds)))], 1)

    return {
        "duration_s": round(tally.elapsed, 2),
        "target_votes_per_s": args.rate,
        "votes_sent": tally.votes_sent,
        "votes_acknowledged": len(tally.acks),
        "votes_replayed": sum(a.replayed for a in tally.acks),
        "votes_per_s": round(len(tally.acks) / tally.elapsed, 1),
        "vote_p50_ms": pct(0.5),
        "vote_p99_ms": pct(0.99),
        "reads_sent": tally.reads_sent,
        "reads_ok": tally.reads_ok,
        "reads_per_s": round(tally.reads_ok / tally.elapsed, 1),
        "statuses": {
            r: {str(s): n for s, n in sorted(c.items())} for r, c in tally.statuses.items()
        },
        "retried_elsewhere": {r: dict(c) for r, c in tally.retried.items()},
        "kills": [asdict(k) for k in kills],
        "catch_up_after_load_s": round(catch_up, 2),
        "client_cpu_pct": round(100 * tally.client_cpu / tally.elapsed),
    }


def drill(args: argparse.Namespace, fleet: Fleet, env: dict[str, str]) -> dict[str, Any]:
    database_url = env["DATABASE_URL"]
    log("migrating")
    migrate(env)
    log("starting 2 command APIs, 2 query APIs, 3 projectors")
    start(fleet, database_url)
    command = fleet.members[COMMANDS[0]].url
    seeded = seed(command, env["VOTELEDGER_OPERATOR_TOKEN"], args.voters)
    ready, _ = asyncio.run(caught_up(env))
    if not ready.passed:
        raise DrillError(f"projections did not catch up before the load: {ready.detail}")
    rates = f"{args.rate:g} votes/s from {args.voters} agents, {args.read_rate:g} reads/s"
    kills = "no kills" if args.no_kill else "kills at " + ", ".join(f"{s:.0%}" for s, _ in KILLS)
    log(f"load: {args.duration:g} s, {rates}; {kills}")
    tally, done = asyncio.run(load_and_kill(fleet, env, seeded, args))
    log("checking")
    head, catch_up = asyncio.run(caught_up(env))
    checks = answers(tally) + ledger(database_url, [a.agent_id for a in seeded[0]], tally)
    checks += [head, verify(env), *process_checks(fleet, done)]
    return {
        "passed": all(c.passed for c in checks),
        "checks": [asdict(c) for c in checks],
        "figures": figures(tally, done, catch_up, args),
        "oddities": [asdict(o) for o in tally.oddities],
    }


def summary(report: dict[str, Any]) -> str:
    f = report["figures"]
    lines = [
        "",
        f"replicas drill: {len(COMMANDS)} command APIs, {len(QUERIES)} query APIs, "
        f"{len(PROJECTORS)} projectors; {f['duration_s']} s of load",
        f"  votes  {f['votes_acknowledged']}/{f['votes_sent']} acknowledged, "
        f"{f['votes_per_s']}/s (target {f['target_votes_per_s']:g}), "
        f"p50 {f['vote_p50_ms']} ms, p99 {f['vote_p99_ms']} ms (retries included); "
        f"{f['votes_replayed']} answered by an idempotent replay",
        f"  reads  {f['reads_ok']}/{f['reads_sent']} ok, {f['reads_per_s']}/s; "
        f"the load's clients used {f['client_cpu_pct']}% of a CPU",
    ]
    if f["votes_per_s"] < 0.8 * f["target_votes_per_s"]:
        lines.append(
            "  (below the target rate: the clients fell behind; servers and clients share CPUs)"
        )
    for replica, statuses in f["statuses"].items():
        retried = f["retried_elsewhere"].get(replica) or {}
        errors = f"; connection errors retried elsewhere: {retried}" if retried else ""
        lines.append(f"  {replica:<11} statuses {statuses}{errors}")
    for k in f["kills"]:
        lines.append(f"  SIGKILL {k['name']} at {k['at']} s")
        for p, t in k["takeover"].items():
            move = f"fence {t['fence'][0]} -> {t['fence'][1]}"
            lines.append(f"    {p} lease taken over by {t['holder']} in {t['seconds']} s ({move})")
    lines.append(f"  projections at the head {f['catch_up_after_load_s']} s after the load")
    for c in report["checks"]:
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    lines.append("PASS" if report["passed"] else "FAIL")
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"replicas: {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devtools.replicas", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (1 to 600)")
    p.add_argument("--rate", type=float, default=150.0, help="votes per second (1 to 2000)")
    p.add_argument("--read-rate", type=float, default=60.0, help="reads per second (1 to 2000)")
    p.add_argument("--voters", type=int, default=32, help="agents voting at once (1 to 256)")
    p.add_argument("--no-kill", action="store_true", help="load only, kill nothing")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    bounds = [("duration", 1, 600), ("rate", 1, 2000), ("read_rate", 1, 2000), ("voters", 1, 256)]
    for name, low, high in bounds:
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name.replace('_', '-')} must be within {low} and {high}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    install_signal_handlers()
    logs = Path(tempfile.mkdtemp(prefix="voteledger-replicas-"))
    fleet, report = None, None
    try:
        fleet = Fleet(drill_env(), logs)
        report = drill(args, fleet, fleet.env)
    except DrillError as e:
        log(f"error: {e}")
    except KeyboardInterrupt:
        log(f"interrupted; process logs kept in {logs}")
        return 130
    finally:
        with shielded():
            if fleet is not None:
                fleet.stop()
    if report is None:
        log(f"process logs kept in {logs}")
        return 2
    print(summary(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["passed"]:
        shutil.rmtree(logs, ignore_errors=True)
        return 0
    log(f"process logs kept in {logs}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
