"""Commands on the read models: run the projector, rebuild, verify, and show where each stands."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Annotated

import psycopg
import typer
from prometheus_client.exposition import MetricsHandler
from rich.markup import escape
from rich.table import Table

from cli.common import (
    JsonOpt,
    ProjectionArgs,
    console,
    err,
    projections,
    settings,
    tune_gc_for_bulk_work,
)
from cli.progress import Phases
from events.store import Checkpoint, Undecodable, configure_reader
from infra import errors, logs
from infra.settings import Settings
from projections import verify
from projections.health import HEALTH
from projections.model import Changes
from projections.rebuild import RebuildError, rebuild
from projections.runner import run_worker
from projections.status import ProjectionStatus, status
from projections.stores import connect, open_store

MetricsPort = Annotated[
    int | None,
    typer.Option(help="Serve /metrics here (default VOTELEDGER_METRICS_PORT; 0: off)"),
]


def project_command(projection: ProjectionArgs = None, metrics_port: MetricsPort = None) -> None:
    """Run projector workers until stopped. A second instance waits as a hot standby."""
    config = settings()
    tune_gc_for_bulk_work()
    chosen = projections(projection)
    logs.configure(config.log_format)
    errors.init(config, "projector")
    port = config.metrics_port if metrics_port is None else metrics_port
    if port:
        serve_metrics(config.metrics_addr, port)
        console.print(f"projector metrics on http://{config.metrics_addr}:{port}/metrics")
    asyncio.run(_project_until_stopped(config, chosen))


class _Handler(MetricsHandler):
    """prometheus_client's /metrics, and /healthz: 200 while every projection of this worker
    goes on, 503 with the reasons while one is stalled."""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/healthz":
            return super().do_GET()
        problems = HEALTH.problems()
        body = json.dumps({"ok": not problems, "stalled": problems}).encode()
        self.send_response(503 if problems else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes and probes are not worth a log line each."""


def serve_metrics(addr: str, port: int) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on a daemon thread (port 0: any free port)."""
    server = ThreadingHTTPServer((addr, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server


async def _project_until_stopped(config: Settings, chosen: tuple[str, ...]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(config, stop, chosen)


def rebuild_command(projection: ProjectionArgs = None, as_json: JsonOpt = False) -> None:
    """Rebuild read models into a new generation from the start of the ledger, with no downtime.

    The live generation keeps serving until the new one has caught up and matches a fresh fold;
    an interrupted rebuild leaves it untouched. Exit codes: 0 done, 1 failed, 2 usage.
    """
    config, names = settings(), projections(projection)
    tune_gc_for_bulk_work()
    progress = Phases()
    try:
        with progress.bar:
            reports = asyncio.run(rebuild(config, names, progress))
    except RebuildError as exc:
        err.print(f"[red]rebuild failed; the live read models are unchanged:[/] {exc}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        err.print("rebuild interrupted; the live read models are unchanged")
        raise typer.Exit(130)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in reports]))
        return
    for r in reports:
        console.print(
            f"{r.projection}: generation {r.old_generation} -> {r.new_generation}, "
            f"{r.events:,} events, watermark {r.position:,}, {r.seconds:.1f} s"
        )


Limit = Annotated[int, typer.Option(min=1, help="Show at most this many differences")]


def verify_command(
    projection: ProjectionArgs = None, limit: Limit = 20, as_json: JsonOpt = False
) -> None:
    """Fold the ledger independently and compare it with the live read models.

    Exit codes: 0 equal, 1 differences found, 2 usage, 3 a store unreachable, 4 an event in the
    ledger cannot be folded (its position and reason are printed).
    """
    config, names = settings(), projections(projection)
    tune_gc_for_bulk_work()
    started = time.perf_counter()
    try:
        outcomes = asyncio.run(_verify(config, names, limit))
    except (psycopg.OperationalError, OSError) as exc:
        err.print(f"[red]cannot reach a store:[/] {exc}")
        raise typer.Exit(3)
    except Undecodable as exc:
        if as_json:
            print(json.dumps({"undecodable": {"position": exc.position, "reason": exc.reason}}))
        err.print(f"[red]cannot fold the event at position {exc.position}:[/] {escape(exc.reason)}")
        raise typer.Exit(4)
    if as_json:
        print(json.dumps([_outcome_json(o) for o in outcomes]))
    else:
        for outcome in outcomes:
            _print_outcome(outcome)
        console.print(f"verified in {time.perf_counter() - started:.1f} s")
    if any(o.differences for o in outcomes):
        raise typer.Exit(1)


async def _verify(config: Settings, names: tuple[str, ...], limit: int) -> list[verify.Outcome]:
    half_life, url = config.trending_half_life_seconds, config.database_url
    # Stores standing at the same checkpoint (a quiet ledger) are checked against one fold.
    folds: dict[Checkpoint, Changes] = {}
    outcomes = []
    async with contextlib.AsyncExitStack() as stack:
        ledger = await connect(stack, url)
        await configure_reader(ledger)  # it also reads a gap-safe batch after each checkpoint
        for name in names:
            target = await open_store(name, config, stack, url)
            generation = await target.live()
            outcomes.append(await verify.check(target, generation, ledger, half_life, limit, folds))
    return outcomes


def _outcome_json(o: verify.Outcome) -> dict[str, object]:
    return {
        "projection": o.store,
        "generation": o.generation,
        "position": o.checkpoint.position,
        "items": o.items,
        "equal": not o.differences,
        "differences": verify.to_json(o.differences),
    }


def _print_outcome(o: verify.Outcome) -> None:
    if not o.differences:
        console.print(
            f"[green]{o.store} generation {o.generation} equals the ledger[/] "
            f"up to position {o.checkpoint.position:,} ({o.items:,} items)"
        )
        return
    console.print(
        f"[red]{o.store} generation {o.generation} differs from the ledger[/] "
        f"(first {len(o.differences)} differences):"
    )
    for d in o.differences:
        console.print(f"  {d}", markup=False)


def status_command(as_json: JsonOpt = False) -> None:
    """Per projection: generation, checkpoint, ledger head, lag, lease holder, held-back reader,
    and whether it is stalled. Exit codes: 0 every projection goes on, 1 one is stalled."""
    report = asyncio.run(status(settings()))
    for name, why in report.unreachable.items():
        err.print(f"[yellow]{name} unreachable:[/] {escape(why)}")
    held = report.oldest_open_transaction_seconds
    if as_json:
        rows = [dataclasses.asdict(r) for r in report.projections]
        print(json.dumps({"projections": rows, "oldest_open_transaction_seconds": held}))
    else:
        _print_status(report.projections, held)
    if report.stalled:
        raise typer.Exit(1)


def _print_status(rows: list[ProjectionStatus], held: float) -> None:
    columns = ("projection", "generation", "watermark", "head", "lag", "lag s", "progress s")
    table = Table(*columns, "lease holder", "stalled")
    for r in rows:
        holder = f"{r.lease_holder or '-'} (fence {r.lease_fence})"
        lag = (f"{r.lag_events}", f"{r.lag_seconds:.1f}")
        age = "-" if r.progress_age_seconds is None else f"{r.progress_age_seconds:.0f}"
        stalled = f"[red]at {r.stalled['position']}" if r.stalled else "-"
        where = (r.projection, str(r.generation), f"{r.watermark}", f"{r.ledger_head}")
        table.add_row(*where, *lag, age, holder, stalled)
    console.print(table)
    for r in rows:
        if r.stalled:
            why = escape(str(r.stalled["reason"]))
            line = f"[red]{r.projection} stalled at position {r.stalled['position']}:[/] {why}"
            console.print(line, soft_wrap=True)
    warn = "[yellow]" if held > 5 else ""
    console.print(f"{warn}oldest open transaction: {held:.1f} s (it holds every projection back)")
