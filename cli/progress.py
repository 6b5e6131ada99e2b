"""Progress display for long commands: rate and ETA on standard error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.common import err


class Phases:
    """Phases of a long operation, each with a bar (rate and ETA) when its size is known; what
    projections.rebuild reports its progress to."""

    def __init__(self) -> None:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
        more = (MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        self.bar = Progress(*columns, *more, TimeRemainingColumn(), console=err)
        self.task: TaskID | None = None
        self.started = 0.0

    def phase(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[-1].total or 0)
        self.task = self.bar.add_task(name, total=total, rate="")
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        if self.task is None or n == 0:
            return
        self.bar.advance(self.task, n)
        rate = self.bar.tasks[-1].completed / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, rate=f"{rate:,.0f} events/s")


class Counter:
    """One bar counting things done, with their rate."""

    def __init__(self, bar: Progress, task: TaskID) -> None:
        self.bar, self.task = bar, task
        self.started = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{rate:,.0f}")


@contextmanager
def counting(label: str, unit: str, total: int) -> Iterator[Counter]:
    """A bar for `total` things (`unit` names them in the rate) while the block runs."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    rate = TextColumn(f"{{task.fields[rate]}} {unit}/s")
    with Progress(*columns, rate, TimeRemainingColumn(), console=err) as bar:
        yield Counter(bar, bar.add_task(label, total=total, rate="-"))
