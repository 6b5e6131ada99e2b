"""`voteledger items`: list one item, or import a catalogue file (cli/catalogue.py parses it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from cli import catalogue
from cli.common import JsonOpt, console, err, with_command_pool
from cli.progress import counting
from commands.catalogue import AlreadyExists, list_item
from commands.models import ItemIn

app = typer.Typer(help="The catalogue.", no_args_is_help=True)
# `items import` shows this many rejected rows; --json lists them all.
_SHOWN_REJECTIONS = 50


@app.command("add")
def items_add(item_id: str, item_type: str, title: str) -> None:
    """List one item in the catalogue. Exit codes: 0 listed, 1 it exists already, 2 invalid."""
    try:
        item = ItemIn.model_validate({"item_id": item_id, "item_type": item_type, "title": title})
    except ValidationError as exc:
        # The model of POST /api/v1/items, so the CLI lists nothing the API would refuse.
        err.print(f"[red]invalid item:[/] {escape(catalogue.describe(exc))}")
        raise typer.Exit(2)
    try:
        position = with_command_pool(
            lambda pool: list_item(pool, item.item_id, item.item_type, item.title)
        )
    except AlreadyExists:
        err.print(f"[red]item {escape(repr(item.item_id))} already exists[/]")
        raise typer.Exit(1)
    console.print(f"listed {escape(item.item_id)} at position {position}")


FileArg = Annotated[Path, typer.Argument(help="CSV (item_id,item_type,title) or JSON lines")]
FormatOpt = Annotated[
    catalogue.Format | None,
    typer.Option("--format", help="Default: by extension (.csv, .jsonl, .ndjson)"),
]


@app.command("import")
def items_import(file: FileArg, fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """List many items from a file. Bad rows are reported by line; the good ones still go in.

    Exit codes: 0 all imported, 1 some rows rejected, 2 unreadable file, 3 PostgreSQL failed.
    """
    try:
        chosen = catalogue.format_for(file, fmt)
        parsed = catalogue.parse(file.read_text(encoding="utf-8-sig"), chosen)
    except (OSError, UnicodeDecodeError, catalogue.CatalogueError) as exc:
        err.print(f"[red]cannot read {escape(str(file))}:[/] {escape(str(exc))}")
        raise typer.Exit(2)
    imported = _Imported(rejected=list(parsed.rejected))
    try:
        with_command_pool(lambda pool: imported.run(pool, parsed.rows))
    except psycopg.Error as exc:
        err.print(
            f"[red]import stopped:[/] {escape(str(exc))}\n{imported.count} row(s) imported before"
        )
        raise typer.Exit(3)
    imported.report(as_json)
    if imported.rejected:
        raise typer.Exit(1)


class _Imported:
    """What an import has done so far: rows listed, rows rejected."""

    def __init__(self, rejected: list[catalogue.Rejected]) -> None:
        self.count = 0
        self.rejected = rejected

    async def run(self, pool: AsyncConnectionPool, rows: list[catalogue.Row]) -> None:
        """One transaction per row through the command side, exactly as POST /api/v1/items
        does: each good row becomes an items row and an ItemListed event, and a clash with an
        existing item (even one listed concurrently) is that row's rejection, not the file's."""
        with counting("importing", "rows", len(rows)) as bar:
            for row in rows:
                item = row.item
                try:
                    await list_item(pool, item.item_id, item.item_type, item.title)
                    self.count += 1
                except AlreadyExists:
                    reason = f"duplicate item_id {item.item_id!r}: already in the catalogue"
                    self.rejected.append(catalogue.Rejected(row.line, reason))
                bar.advance()

    def report(self, as_json: bool) -> None:
        rejected = sorted(self.rejected, key=lambda r: r.line)
        if as_json:
            lines = [{"line": r.line, "reason": r.reason} for r in rejected]
            print(
                json.dumps({"imported": self.count, "rejected": len(rejected), "rejections": lines})
            )
            return
        console.print(f"imported {self.count}, rejected {len(rejected)}")
        if rejected:
            table = Table("line", "reason")
            for r in rejected[:_SHOWN_REJECTIONS]:
                table.add_row(str(r.line), escape(r.reason))
            console.print(table)
        if len(rejected) > _SHOWN_REJECTIONS:
            more = len(rejected) - _SHOWN_REJECTIONS
            console.print(f"... and {more} more rejected rows (--json lists them all)")
