"""What every command shares: the consoles, the settings, options, and running async work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console

from infra import heap
from infra.db import pool_for
from infra.settings import Settings, SettingsError, get_settings
from projections.stores import NAMES

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ProjectionArgs = Annotated[
    list[str] | None, typer.Argument(help="postgres and/or redis (default: both)")
]


def settings() -> Settings:
    """The settings, or exit 2 with what is wrong with them."""
    try:
        return get_settings()
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)


def projections(chosen: list[str] | None) -> tuple[str, ...]:
    """The projections named (all by default), or exit 2 for an unknown one."""
    names = tuple(chosen or NAMES)
    unknown = set(names) - set(NAMES)
    if unknown:
        err.print(f"[red]unknown projection(s):[/] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    return names


def tune_gc_for_bulk_work() -> None:
    """Fewer cyclic-GC passes: replays allocate millions of short-lived, cycle-free objects, and
    with the default thresholds the collector rescans them over and over (measured: about 30%
    of a 1M-event fold)."""
    heap.settle(young=100_000, middle=50, old=100)


def with_command_pool(action: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    """Run `action` with a pool of the command role's connections, as the command API would."""

    async def run() -> T:
        async with pool_for(settings(), "command") as pool:
            return await action(pool)

    return asyncio.run(run())
