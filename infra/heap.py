"""Cyclic garbage collector settings for long-running processes.

Python's collector rescans every tracked object of a generation it collects. In a server, most of
the heap is allocated once at start-up (modules, the app, its OpenAPI schemas) and lives forever,
yet each full collection walks it again; under load those pauses were the vote path's p99 (about
45 ms against 18 ms without them, at 64 connections). Freezing the start-up heap hides it from the
collector, and a larger young generation means fewer passes over request garbage, which is
nearly all freed by reference counting anyway.
"""

from __future__ import annotations

import gc


def settle(young: int = 20_000, middle: int = 50, old: int = 10) -> None:
    """Freeze what exists now and collect the generations this often (allocations, passes)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, middle, old)
