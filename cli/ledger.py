"""Commands on the ledger itself: migrate the schema, and manage the monthly partitions."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, NoReturn

import psycopg
import typer
from rich.markup import escape
from rich.table import Table

from cli.common import JsonOpt, console, err, settings
from events import partitions, store
from infra.migrate import MigrationError, migrate

partitions_app = typer.Typer(help="Event table partitions.", no_args_is_help=True)


def migrate_command() -> None:
    """Apply pending schema migrations and create upcoming partitions."""
    config = settings()
    try:
        applied = migrate(config.database_url, config.db_password)
        with psycopg.connect(config.database_url) as conn:
            empty = store.is_empty(conn)
    except MigrationError as exc:
        err.print(f"[red]migration refused:[/] {exc}")
        raise typer.Exit(1)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot reach PostgreSQL:[/] {exc}")
        raise typer.Exit(3)
    for name in applied:
        console.print(f"applied {name}")
    console.print("schema is up to date" if not applied else f"{len(applied)} migration(s) applied")
    if empty:
        console.print(
            "the ledger is empty: `voteledger seed --demo` lists a demo catalogue with a vote "
            "history, and `make demo` also keeps live votes coming"
        )


@partitions_app.command("ensure")
def partitions_ensure(
    months_ahead: Annotated[int, typer.Option(min=0, max=36)] = 2,
    since: Annotated[str | None, typer.Option(help="Also create months from this date")] = None,
) -> None:
    """Create monthly partitions up to N months ahead (idempotent)."""
    with psycopg.connect(settings().database_url, autocommit=True) as conn:
        created = partitions.ensure(conn, since, months_ahead)
    for name in created:
        console.print(f"created {name}")
    console.print(f"{len(created)} partition(s) created")


def _failed(action: str, exc: psycopg.Error) -> NoReturn:
    err.print(f"[red]{action} failed:[/] {escape(str(exc).strip())}")
    raise typer.Exit(1)


@partitions_app.command("list")
def partitions_list(as_json: JsonOpt = False) -> None:
    """List live and archived event partitions with their ranges, row counts and sizes."""
    try:
        with psycopg.connect(settings().database_url, autocommit=True) as conn:
            rows = partitions.list_partitions(conn)
    except psycopg.Error as exc:
        _failed("listing partitions", exc)
    if as_json:
        print(json.dumps([dataclasses.asdict(row) for row in rows]))
        return
    table = Table("partition", "where", "range", "rows", "size")
    for row in rows:
        size = f"{row.bytes / 1024:,.0f} KiB"
        table.add_row(row.name, row.where, row.range, f"{row.rows:,}", size)
    console.print(table)


OlderThan = Annotated[
    int, typer.Option(min=1, help="Archive the months before the one N months back")
]


@partitions_app.command("archive")
def partitions_archive(older_than_months: OlderThan = 12, as_json: JsonOpt = False) -> None:
    """Move old month partitions into the archive, where replay and verify still read them."""
    try:
        with psycopg.connect(settings().database_url, autocommit=True) as conn:
            done = partitions.archive(conn, older_than_months)
    except psycopg.errors.LockNotAvailable:
        err.print(
            "[red]archiving failed:[/] another session held the events table too long; "
            "nothing was archived, try again"
        )
        raise typer.Exit(1)
    except psycopg.Error as exc:
        _failed("archiving", exc)
    if as_json:
        print(json.dumps({"before": done.before.isoformat(), "archived": done.names}))
        return
    for name in done.names:
        console.print(f"archived {name}")
    console.print(f"{len(done.names)} partition(s) archived (months before {done.before:%Y-%m})")
