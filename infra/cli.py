"""`voteledger`: the operator CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra import catalogue, heap, partitions
from infra.db import pool_for
from infra.migrate import MigrationError, migrate
from infra.settings import Settings, SettingsError, get_settings

app = typer.Typer(help="Operate the vote ledger.", no_args_is_help=True)
partitions_app = typer.Typer(help="Event table partitions.", no_args_is_help=True)
agents_app = typer.Typer(help="Agents and their API keys.", no_args_is_help=True)
items_app = typer.Typer(help="The catalogue.", no_args_is_help=True)
app.add_typer(partitions_app, name="partitions")
app.add_typer(agents_app, name="agents")
app.add_typer(items_app, name="items")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _tune_gc_for_bulk_work() -> None:
    """Fewer cyclic-GC passes: replays allocate millions of short-lived, cycle-free objects, and
    with the default thresholds the collector rescans them over and over (measured: about 30%
    of a 1M-event fold)."""
    heap.settle(young=100_000, middle=50, old=100)


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)


def _with_command_pool(action: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    async def run() -> T:
        async with pool_for(_settings(), "command") as pool:
            return await action(pool)

    return asyncio.run(run())


@app.command("migrate")
def migrate_command() -> None:
    """Apply pending schema migrations and create upcoming partitions."""
    settings = _settings()
    try:
        applied = migrate(settings.database_url, settings.db_password)
    except MigrationError as exc:
        err.print(f"[red]migration refused:[/] {exc}")
        raise typer.Exit(1)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach PostgreSQL:[/] {exc}")
        raise typer.Exit(3)
    for name in applied:
        console.print(f"applied {name}")
    console.print("schema is up to date" if not applied else f"{len(applied)} migration(s) applied")


@app.command("project")
def project_command(
    projection: Annotated[
        list[str] | None, typer.Argument(help="postgres and/or redis (default: both)")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics here (default VOTELEDGER_METRICS_PORT; 0: off)"),
    ] = None,
) -> None:
    """Run projector workers until stopped. A second instance waits as a hot standby."""
    import logging
    import signal

    from prometheus_client import start_http_server

    from projections.runner import PROJECTIONS, run_worker

    settings = _settings()
    _tune_gc_for_bulk_work()
    chosen = tuple(projection or PROJECTIONS)
    unknown = set(chosen) - set(PROJECTIONS)
    if unknown:
        err.print(f"[red]unknown projection(s):[/] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port, addr=settings.metrics_addr)
        console.print(f"projector metrics on http://{settings.metrics_addr}:{port}/metrics")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop, chosen)

    asyncio.run(main())


ProjectionArgs = Annotated[
    list[str] | None, typer.Argument(help="postgres and/or redis (default: both)")
]


def _projections(chosen: list[str] | None) -> tuple[str, ...]:
    from projections.runner import PROJECTIONS

    names = tuple(chosen or PROJECTIONS)
    unknown = set(names) - set(PROJECTIONS)
    if unknown:
        err.print(f"[red]unknown projection(s):[/] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    return names


class _RichProgress:
    """Phases with a progress bar (rate and ETA) for the long ones."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )  # fmt: skip

        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err,
        )  # fmt: skip
        self.task: object = None
        self.started = 0.0

    def phase(self, name: str, total: int | None = None) -> None:
        import time

        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[-1].total or 0)  # type: ignore[arg-type]
        self.task = self.bar.add_task(name, total=total, rate="")
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        import time

        if self.task is None or n == 0:
            return
        self.bar.advance(self.task, n)  # type: ignore[arg-type]
        done = self.bar.tasks[-1].completed
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, rate=f"{rate:,.0f} events/s")  # type: ignore[arg-type]


@app.command("rebuild")
def rebuild_command(projection: ProjectionArgs = None, as_json: JsonOpt = False) -> None:
    """Rebuild read models into a new generation from the start of the ledger, with no downtime.

    The live generation keeps serving until the new one has caught up and matches a fresh fold;
    an interrupted rebuild leaves it untouched. Exit codes: 0 done, 1 failed, 2 usage.
    """
    from projections.rebuild import RebuildError, rebuild

    settings = _settings()
    names = _projections(projection)
    _tune_gc_for_bulk_work()
    progress = _RichProgress()
    try:
        with progress.bar:
            reports = asyncio.run(rebuild(settings, names, progress))
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


@app.command("verify")
def verify_command(
    projection: ProjectionArgs = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many differences")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Fold the ledger independently and compare it with the live read models.

    Exit codes: 0 equal, 1 differences found, 2 usage, 3 a store unreachable.
    """
    import contextlib
    import time

    from events.store import Checkpoint
    from projections import verify
    from projections.model import Changes
    from projections.stores import connect, open_store

    settings = _settings()
    names = _projections(projection)
    _tune_gc_for_bulk_work()
    half_life, url = settings.trending_half_life_seconds, settings.database_url

    async def run() -> list[verify.Outcome]:
        # Stores standing at the same checkpoint (a quiet ledger) are checked against one fold.
        folds: dict[Checkpoint, Changes] = {}
        outcomes = []
        async with contextlib.AsyncExitStack() as stack:
            ledger = await connect(stack, url)
            for name in names:
                target = await open_store(name, settings, stack, url)
                generation = await target.live()
                outcomes.append(
                    await verify.check(target, generation, ledger, half_life, limit, folds)
                )
        return outcomes

    started = time.perf_counter()
    try:
        outcomes = asyncio.run(run())
    except (psycopg.OperationalError, OSError) as exc:
        err.print(f"[red]cannot reach a store:[/] {exc}")
        raise typer.Exit(3)
    elapsed = time.perf_counter() - started
    failed = any(o.differences for o in outcomes)
    if as_json:
        print(
            json.dumps(
                [
                    {"projection": o.store, "generation": o.generation,
                     "position": o.checkpoint.position, "items": o.items,
                     "equal": not o.differences, "differences": verify.to_json(o.differences)}
                    for o in outcomes
                ]
            )
        )  # fmt: skip
    else:
        for o in outcomes:
            if o.differences:
                console.print(
                    f"[red]{o.store} generation {o.generation} differs from the ledger[/] "
                    f"(first {len(o.differences)} differences):"
                )
                for d in o.differences:
                    console.print(f"  {d}", markup=False)
            else:
                console.print(
                    f"[green]{o.store} generation {o.generation} equals the ledger[/] "
                    f"up to position {o.checkpoint.position:,} ({o.items:,} items)"
                )
        console.print(f"verified in {elapsed:.1f} s")
    if failed:
        raise typer.Exit(1)


@app.command("status")
def status_command(as_json: JsonOpt = False) -> None:
    """Per projection: generation, checkpoint, ledger head, lag, lease holder, held-back reader."""
    from projections.status import status

    report = asyncio.run(status(_settings()))
    for name, why in report.unreachable.items():
        err.print(f"[yellow]{name} unreachable:[/] {escape(why)}")
    rows = [dataclasses.asdict(r) for r in report.projections]
    held = report.oldest_open_transaction_seconds
    if as_json:
        print(json.dumps({"projections": rows, "oldest_open_transaction_seconds": held}))
        return
    table = Table("projection", "generation", "watermark", "head", "lag", "lag s", "lease holder")
    for r in report.projections:
        holder = f"{r.lease_holder or '-'} (fence {r.lease_fence})"
        table.add_row(
            r.projection, str(r.generation), f"{r.watermark}", f"{r.ledger_head}",
            f"{r.lag_events}", f"{r.lag_seconds:.1f}", holder,
        )  # fmt: skip
    console.print(table)
    warn = "[yellow]" if held > 5 else ""
    console.print(f"{warn}oldest open transaction: {held:.1f} s (it holds every projection back)")


@partitions_app.command("ensure")
def partitions_ensure(
    months_ahead: Annotated[int, typer.Option(min=0, max=36)] = 2,
    since: Annotated[str | None, typer.Option(help="Also create months from this date")] = None,
) -> None:
    """Create monthly partitions up to N months ahead (idempotent)."""
    with psycopg.connect(_settings().database_url, autocommit=True) as conn:
        created = partitions.ensure(conn, since, months_ahead)
    for name in created:
        console.print(f"created {name}")
    console.print(f"{len(created)} partition(s) created")


def _partitions_failed(action: str, exc: psycopg.Error) -> NoReturn:
    err.print(f"[red]{action} failed:[/] {escape(str(exc).strip())}")
    raise typer.Exit(1)


@partitions_app.command("list")
def partitions_list(as_json: JsonOpt = False) -> None:
    """List live and archived event partitions with their ranges, row counts and sizes."""
    try:
        with psycopg.connect(_settings().database_url, autocommit=True) as conn:
            rows = partitions.list_partitions(conn)
    except psycopg.Error as exc:
        _partitions_failed("listing partitions", exc)
    if as_json:
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
        return
    table = Table("partition", "where", "range", "rows", "size")
    for row in rows:
        size = f"{row.bytes / 1024:,.0f} KiB"
        table.add_row(row.name, row.where, row.range, f"{row.rows:,}", size)
    console.print(table)


@partitions_app.command("archive")
def partitions_archive(
    older_than_months: Annotated[
        int, typer.Option(min=1, help="Archive the months before the one N months back")
    ] = 12,
    as_json: JsonOpt = False,
) -> None:
    """Move old month partitions into the archive, where replay and verify still read them."""
    try:
        with psycopg.connect(_settings().database_url, autocommit=True) as conn:
            done = partitions.archive(conn, older_than_months)
    except psycopg.errors.LockNotAvailable:
        err.print(
            "[red]archiving failed:[/] another session held the events table too long; "
            "nothing was archived, try again"
        )
        raise typer.Exit(1)
    except psycopg.Error as exc:
        _partitions_failed("archiving", exc)
    if as_json:
        print(json.dumps({"before": done.before.isoformat(), "archived": done.names}))
        return
    for name in done.names:
        console.print(f"archived {name}")
    console.print(f"{len(done.names)} partition(s) archived (months before {done.before:%Y-%m})")


@agents_app.command("create")
def agents_create(name: str = "", as_json: JsonOpt = False) -> None:
    """Register an agent and print its API key (shown only once)."""
    from commands.agents import register_agent

    agent = _with_command_pool(lambda pool: register_agent(pool, name))
    if as_json:
        print(json.dumps({"agent_id": str(agent.agent_id), "api_key": agent.api_key}))
    else:
        console.print(f"agent_id: {agent.agent_id}\napi_key:  {agent.api_key}  (shown only once)")


@agents_app.command("revoke")
def agents_revoke(agent_id: uuid.UUID) -> None:
    """Revoke an agent's API key. Its votes stand."""
    from commands.agents import NotFound, revoke_agent

    try:
        position = _with_command_pool(lambda pool: revoke_agent(pool, agent_id))
    except NotFound:
        err.print(f"[red]no agent {agent_id}[/]")
        raise typer.Exit(1)
    console.print("revoked" if position is not None else "already revoked")


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """List agents (never their keys)."""
    with psycopg.connect(_settings().database_url) as conn:
        rows = conn.execute(
            "SELECT agent_id, name, created_at, revoked_at FROM agents ORDER BY created_at"
        ).fetchall()
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "agent_id": str(a),
                        "name": n,
                        "created_at": c.isoformat(),
                        "revoked_at": r.isoformat() if r else None,
                    }
                    for a, n, c, r in rows
                ]
            )
        )
        return
    table = Table("agent_id", "name", "created", "revoked")
    for agent_id, name, created, revoked in rows:
        table.add_row(str(agent_id), name, f"{created:%Y-%m-%d %H:%M}", f"{revoked or ''}")
    console.print(table)


@items_app.command("add")
def items_add(item_id: str, item_type: str, title: str) -> None:
    """List one item in the catalogue."""
    from commands.catalogue import AlreadyExists, list_item

    if item_type not in ("song", "tool"):
        err.print("[red]item_type must be song or tool[/]")
        raise typer.Exit(2)
    try:
        position = _with_command_pool(
            lambda pool: list_item(pool, item_id, item_type, title)  # type: ignore[arg-type]
        )
    except AlreadyExists:
        err.print(f"[red]item {item_id!r} already exists[/]")
        raise typer.Exit(1)
    console.print(f"listed {item_id} at position {position}")


# `items import` shows this many rejected rows; --json lists them all.
_SHOWN_REJECTIONS = 50


@items_app.command("import")
def items_import(
    file: Annotated[Path, typer.Argument(help="CSV (item_id,item_type,title) or JSON lines")],
    fmt: Annotated[
        catalogue.Format | None,
        typer.Option("--format", help="Default: by extension (.csv, .jsonl, .ndjson)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List many items from a file. Bad rows are reported by line; the good ones still go in.

    Exit codes: 0 all imported, 1 some rows rejected, 2 unreadable file, 3 PostgreSQL failed.
    """
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from commands.catalogue import AlreadyExists, list_item

    try:
        chosen = catalogue.format_for(file, fmt)
        parsed = catalogue.parse(file.read_text(encoding="utf-8-sig"), chosen)
    except (OSError, UnicodeDecodeError, catalogue.CatalogueError) as exc:
        err.print(f"[red]cannot read {escape(str(file))}:[/] {escape(str(exc))}")
        raise typer.Exit(2)
    rejected = list(parsed.rejected)
    imported = 0
    columns = (
        TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(),
    )  # fmt: skip

    # One transaction per row through the command handler, exactly as POST /api/v1/items does:
    # each good row becomes an items row and an ItemListed event, and a clash with an existing
    # item (even one listed concurrently) is that row's rejection, not the file's.
    async def run(pool: AsyncConnectionPool) -> None:
        nonlocal imported
        started = time.perf_counter()
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("import", total=len(parsed.rows), rate="-")
            for done, row in enumerate(parsed.rows, start=1):
                item = row.item
                try:
                    await list_item(pool, item.item_id, item.item_type, item.title)
                    imported += 1
                except AlreadyExists:
                    reason = f"duplicate item_id {item.item_id!r}: already in the catalogue"
                    rejected.append(catalogue.Rejected(row.line, reason))
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=1, rate=f"{rate:,.0f}")

    try:
        _with_command_pool(run)
    except psycopg.Error as exc:
        err.print(f"[red]import stopped:[/] {escape(str(exc))}\n{imported} row(s) imported before")
        raise typer.Exit(3)
    rejected.sort(key=lambda r: r.line)
    if as_json:
        lines = [{"line": r.line, "reason": r.reason} for r in rejected]
        print(json.dumps({"imported": imported, "rejected": len(rejected), "rejections": lines}))
    else:
        console.print(f"imported {imported}, rejected {len(rejected)}")
        if rejected:
            table = Table("line", "reason")
            for r in rejected[:_SHOWN_REJECTIONS]:
                table.add_row(str(r.line), escape(r.reason))
            console.print(table)
        if len(rejected) > _SHOWN_REJECTIONS:
            more = len(rejected) - _SHOWN_REJECTIONS
            console.print(f"... and {more} more rejected rows (--json lists them all)")
    if rejected:
        raise typer.Exit(1)


@app.command("seed")
def seed_command(
    agents: Annotated[int, typer.Option(min=1, help="Agents to register")] = 100,
    items: Annotated[int, typer.Option(min=1, help="Items to list (3 songs to 1 tool)")] = 1000,
    votes: Annotated[int, typer.Option(min=0, help="Vote events to record")] = 10_000,
    days: Annotated[float, typer.Option(min=0.0, help="Spread vote times over this many days")] = 7,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data)")] = 0,
) -> None:
    """Write demo/benchmark data as real ledger events (bulk, in one transaction)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from infra.seed import SeedPlan, write

    plan = SeedPlan(agents=agents, items=items, votes=votes, days=days, seed=seed)
    total = agents + items + votes
    columns = (
        TextColumn("seeding"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"), TimeRemainingColumn(),
    )  # fmt: skip
    started = time.perf_counter()
    with psycopg.connect(_settings().database_url) as conn, Progress(*columns, console=err) as bar:
        task = bar.add_task("seed", total=total, rate="-")

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=n, rate=f"{rate:,.0f}")

        count = write(conn, plan, progress=advance)
    elapsed = time.perf_counter() - started
    console.print(
        f"seeded {count:,} events ({agents:,} agents, {items:,} items, {votes:,} votes over "
        f"{days:g} days) in {elapsed:.1f} s, {count / max(elapsed, 1e-9):,.0f} events/s"
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
