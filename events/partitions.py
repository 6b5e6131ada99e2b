"""Monthly event partitions: create them ahead, list them, archive the old ones.

Archiving detaches month partitions past a retention window from `events` and attaches them to
`ledger_archive.events` (0005_archive.sql): appends and their plans deal with fewer partitions,
while the `ledger` view, which replay and verify read, still holds every event ever recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import psycopg

from infra.migrate import ensure_partitions

Where = Literal["live", "archive", "default"]


@dataclass(frozen=True, slots=True)
class Partition:
    """One month partition (or the DEFAULT one) and where it lives."""

    name: str
    where: Where
    range: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Archived:
    """What one archive run moved: every month that ended at or before `before`."""

    before: datetime
    names: list[str]


# Row counts come from one grouped scan of each parent: counting per partition through the parent
# would scan the whole ledger once for every partition.
_LIST = """
SELECT c.relname,
       CASE WHEN pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' THEN 'default'
            WHEN i.inhparent = 'public.events'::regclass THEN 'live'
            ELSE 'archive' END,
       pg_get_expr(c.relpartbound, c.oid),
       coalesce(n.rows, 0),
       pg_total_relation_size(c.oid)
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN (
    SELECT tableoid, count(*) AS rows FROM public.events GROUP BY tableoid
    UNION ALL
    SELECT tableoid, count(*) AS rows FROM ledger_archive.events GROUP BY tableoid
) AS n ON n.tableoid = c.oid
WHERE i.inhparent IN ('public.events'::regclass, 'ledger_archive.events'::regclass)
ORDER BY c.relname
"""

_ARCHIVE = "SELECT archive_event_partitions(%s)"

# The upper bound of the newest month partition (the DEFAULT partition has none).
_READY_UNTIL = r"""
SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid),
                         'TO \(''([^'']+)''\)'))[1]::timestamptz)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'public.events'::regclass
"""


def ensure(conn: psycopg.Connection, since: str | None, months_ahead: int) -> list[str]:
    """Create the month partitions from `since` (default: this month) to `months_ahead` ahead."""
    return ensure_partitions(conn, since, months_ahead)


async def ensure_ahead(conn: psycopg.AsyncConnection, months_ahead: int) -> datetime:
    """Create the month partitions from this month to `months_ahead` ahead (as any role: the
    function runs as the schema owner); returns until when events can now be recorded."""
    await conn.execute("SELECT ensure_event_partitions(now(), %s)", (months_ahead,))
    row = await (await conn.execute(_READY_UNTIL)).fetchone()
    return row[0] if row and row[0] else datetime.fromtimestamp(0, UTC)


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """Every partition of the live table and of the archive, by name (so by month)."""
    return [Partition(*row) for row in conn.execute(_LIST)]


def cutoff(now: datetime, older_than_months: int) -> datetime:
    """The first instant of the UTC month `older_than_months` months before the month of `now`."""
    month = now.astimezone(UTC)
    index = month.year * 12 + month.month - 1 - older_than_months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def archive(conn: psycopg.Connection, older_than_months: int) -> Archived:
    """Archive every month before the UTC month `older_than_months` months back.

    With 12 in November 2026, that is October 2025 and every month before it.

    All of it commits in one transaction: a failure (such as the function's lock timeout while a
    long reader holds `events`) archives nothing.
    """
    if older_than_months < 1:
        raise ValueError(f"older_than_months must be at least 1, not {older_than_months}")
    before = cutoff(datetime.now(UTC), older_than_months)
    with conn.transaction():
        names = [name for (name,) in conn.execute(_ARCHIVE, (before,))]
    return Archived(before, names)
