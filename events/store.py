"""The event store: the only code that appends to the ledger, and every way of reading it.

Every statement on `events` and the `ledger` view (live and archived months) is here, except
partition maintenance (events/partitions.py) and the schema itself (infra/migrations).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from events.codec import DecodeError, decode, encode, encode_all, event_type
from events.types import AgentRegistered, AgentRevoked, Event, ItemListed, Recorded, VoteCast


class Undecodable(Exception):
    """An event in the ledger that cannot be read as an event: the reader stops just before it."""

    def __init__(self, position: int, tx_id: int, reason: str) -> None:
        super().__init__(f"position {position}: {reason}")
        self.position = position
        self.tx_id = tx_id
        self.reason = reason


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    """Where a reader stands in the ledger's read order, (tx_id, position)."""

    tx_id: int = 0
    position: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """One read: the events, and what the reader learned about the ledger while reading.

    `snapshot_xmin`: every transaction with a smaller id had finished when the batch was read.
    `allocated`: the last position drawn just before the read (read before the snapshot was taken).
    `bound`: a transaction id above that of every transaction that had drawn a position by the
    time `allocated` was read.
    `complete`: the batch holds every committed event below `snapshot_xmin` after the checkpoint.
    """

    events: list[Recorded]
    snapshot_xmin: int
    bound: int
    allocated: int
    complete: bool

    @property
    def checkpoint(self) -> Checkpoint | None:
        if not self.events:
            return None
        last = self.events[-1]
        return Checkpoint(last.tx_id, last.position)


def _keys(event: Event) -> tuple[object, str | None]:
    match event:
        case VoteCast(agent_id=agent_id, item_id=item_id):
            return agent_id, item_id
        case ItemListed(item_id=item_id):
            return None, item_id
        case AgentRegistered(agent_id=agent_id) | AgentRevoked(agent_id=agent_id):
            return agent_id, None
    raise TypeError(f"not an event: {event!r}")


_APPEND = """
INSERT INTO events (event_type, agent_id, item_id, payload)
VALUES (%s, %s, %s, %s::jsonb)
RETURNING position, recorded_at
"""


async def append(conn: psycopg.AsyncConnection, event: Event) -> tuple[int, datetime]:
    """Append one event inside the caller's transaction; returns its position and time."""
    agent_id, item_id = _keys(event)
    cursor = await conn.execute(
        _APPEND, (event_type(event), agent_id, item_id, encode(event).decode())
    )
    row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1]


# Several events in one statement, in the order given: one JSON array of their payloads, whose
# fields fill the key columns as `_keys` does (no agent_id or item_id field gives NULL).
_APPEND_ALL = """
INSERT INTO events (event_type, agent_id, item_id, payload)
SELECT e->>'type', (e->>'agent_id')::uuid, e->>'item_id', e
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(e, n)
ORDER BY n
RETURNING position
"""


async def append_all_later(
    conn: psycopg.AsyncConnection, events: list[Event]
) -> psycopg.AsyncCursor[Any]:
    """Send the appends of `events` as one statement without waiting for the result (for
    pipeline mode); `positions` reads their positions."""
    return await conn.execute(_APPEND_ALL, (encode_all(events).decode(),))


async def positions(cursor: psycopg.AsyncCursor[Any]) -> list[int]:
    """The positions of the events sent with `append_all_later`, in the order given.

    The rows are inserted in that order (ORDER BY n) and one transaction draws increasing
    positions, so the sorted positions are the events' own."""
    return sorted(row[0] for row in await cursor.fetchall())


# Bulk appends. The transaction id must exist before the first position is drawn (see
# 0002_events.sql), hence the explicit pg_current_xact_id() first.
_START_APPEND = "SELECT pg_current_xact_id()"
_COPY_EVENTS = "COPY events (event_type, agent_id, item_id, recorded_at, payload) FROM STDIN"


def _copy_row(event: Event, recorded_at: datetime | None) -> tuple[object, ...]:
    agent_id, item_id = _keys(event)
    return (event_type(event), agent_id, item_id, recorded_at or "now", encode(event).decode())


async def append_many(
    conn: psycopg.AsyncConnection, events: Iterable[tuple[Event, datetime | None]]
) -> int:
    """Bulk-append (event, recorded_at) pairs with COPY inside the caller's transaction.

    A None time means "now". Returns the number of rows written.
    """
    await conn.execute(_START_APPEND)
    count = 0
    async with conn.cursor().copy(_COPY_EVENTS) as copy:
        for event, recorded_at in events:
            await copy.write_row(_copy_row(event, recorded_at))
            count += 1
    return count


def append_many_sync(
    conn: psycopg.Connection, events: Iterable[tuple[Event, datetime | None]]
) -> int:
    """`append_many` for synchronous callers (the CLI's bulk commands)."""
    conn.execute(_START_APPEND)
    count = 0
    with conn.cursor().copy(_COPY_EVENTS) as copy:
        for event, recorded_at in events:
            copy.write_row(_copy_row(event, recorded_at))
            count += 1
    return count


# Why this order and this filter: a position is drawn at INSERT but becomes visible at COMMIT, so
# transactions commit out of position order and "everything after the last position seen" skips
# events that commit late. Every event records the id of its transaction; a transaction id below
# the snapshot's xmin belongs to a transaction that has finished, and no transaction that is still
# running or yet to start can get an id below it. Reading only those, in (tx_id, position) order,
# means nothing can ever appear behind the checkpoint. Writers never wait for readers or each other.
# A timestamptz may lie outside what Python's datetime holds (years 1 to 9999): such a time reads
# as NULL, so that one event is reported as undecodable instead of the whole batch failing.
_READ_BATCH = """
SELECT s.xmin::text, e.position, e.tx_id::text, e.recorded_at, e.payload::text
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS s
LEFT JOIN LATERAL (
    SELECT position, tx_id, payload, CASE WHEN recorded_at >= '0001-01-01 00:00:00+00'
        AND recorded_at < '9999-12-31 00:00:00+00' THEN recorded_at END AS recorded_at
    FROM ledger
    WHERE (tx_id, position) > (%(tx_id)s::text::xid8, %(position)s)
      AND tx_id < s.xmin
    ORDER BY tx_id, position
    LIMIT %(limit)s
) AS e ON true
"""

# The last position drawn, then (evaluated left to right) a new transaction id, which is above
# the id of every transaction that drew a position before: writers get their id before they draw
# (see 0002_events.sql). pg_snapshot_xmax() is no such bound: it is one past the latest
# *completed* id, and a transaction still running may hold an id above it. The price is one
# transaction id per read; the reader commits asynchronously, so it costs no WAL flush.
_LAST_ALLOCATED = """
SELECT coalesce(pg_sequence_last_value('events_position_seq'), 0), pg_current_xact_id()::text
"""


_HEAD = "SELECT coalesce(pg_sequence_last_value('events_position_seq'), 0)"


def is_empty(conn: psycopg.Connection) -> bool:
    """No event was ever appended (the CLI's hint to seed a demo)."""
    row = conn.execute(_HEAD).fetchone()
    return not row or int(row[0]) == 0


async def head(conn: psycopg.AsyncConnection) -> int:
    """The last position drawn (committed or not): the head of the ledger."""
    row = await (await conn.execute(_HEAD)).fetchone()
    return int(row[0]) if row else 0


async def configure_reader(conn: psycopg.AsyncConnection) -> None:
    """Session settings for a connection that reads batches with `read_batch`."""
    await conn.execute("SET TIME ZONE 'UTC'")
    # Each read takes a transaction id (see _LAST_ALLOCATED): nothing to make durable.
    await conn.execute("SET synchronous_commit = off")
    # A batch must come from the (tx_id, position) indexes in order (a Merge Append over the
    # partitions). After a bulk load in one transaction every row has the same tx_id; estimating
    # the row comparison by that column alone, the planner then expects one row and sorts
    # instead: all of the rest of the ledger, on disk, for every batch (measured after a VACUUM
    # ANALYZE of 1M seeded events: 535 ms a batch of 20,000 instead of 11 ms). With sorts off the
    # ordered index scans are the plan left; no other statement of a reader sorts.
    await conn.execute("SET enable_sort = off")


async def read_batch(conn: psycopg.AsyncConnection, after: Checkpoint, limit: int) -> Batch:
    """Read up to `limit` events after `after` in gap-safe order.

    Run on an autocommit connection set up with `configure_reader`: the two statements must see
    two snapshots, the second taken after the first (see Batch).
    """
    cur = await conn.execute(_LAST_ALLOCATED)
    row = await cur.fetchone()
    assert row is not None
    allocated, bound = row[0], int(row[1])
    cur = await conn.execute(
        _READ_BATCH, {"tx_id": str(after.tx_id), "position": after.position, "limit": limit}
    )
    rows = await cur.fetchall()
    xmin = int(rows[0][0])
    events: list[Recorded] = []
    for _, position, tx_id, at, payload in rows:
        if position is None:
            break
        try:
            events.append(recorded(position, int(tx_id), at, payload))
        except Undecodable:
            if not events:
                raise
            # Cut just before the bad event: everything before it is still applied, and the
            # next read starts at it (and raises).
            return Batch(events, xmin, bound, allocated, complete=False)
    return Batch(events, xmin, bound, allocated, complete=len(events) < limit)


def recorded(position: int, tx_id: int, at: datetime | None, payload: str) -> Recorded:
    """One ledger row as a Recorded event; Undecodable when it is none."""
    if at is None:
        raise Undecodable(position, tx_id, "recorded_at is outside the years 1 to 9999")
    try:
        return Recorded(position=position, tx_id=tx_id, recorded_at=at, event=decode(payload))
    except DecodeError as exc:
        raise Undecodable(position, tx_id, f"payload does not decode: {exc}") from exc


# As the newest transaction id in the ledger, not as EXISTS (... tx_id >= xmin): the planner
# cannot know xmin, guesses that a third of the ledger matches and scans it all for a row that
# is almost never there (473 ms over 3M events, run every few milliseconds while writers are
# busy); max() is one backward step down each partition's (tx_id, position) index.
_HELD_BACK = """
SELECT coalesce(max(tx_id) >= pg_snapshot_xmin(pg_current_snapshot()), false) FROM ledger
"""


async def held_back(conn: psycopg.AsyncConnection) -> bool:
    """Whether committed events exist that an older, still open transaction keeps from readers."""
    row = await (await conn.execute(_HELD_BACK)).fetchone()
    return bool(row and row[0])


# Any transaction holding an xid or a snapshot holds every reader's snapshot xmin back.
_OLDEST_OPEN = """
SELECT extract(epoch FROM max(now() - xact_start)) FROM pg_stat_activity
WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL
"""


async def oldest_open_transaction(conn: psycopg.AsyncConnection) -> float:
    """Seconds the oldest open transaction has run (it holds every reader back)."""
    row = await (await conn.execute(_OLDEST_OPEN)).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


# Events up to a checkpoint in read order, (tx_id, position) <= the checkpoint's pair: a plain
# reading that shares nothing with the gap-safe reader but the order, which the trending clock
# is defined in (projections.model). COPY is the fastest way out of PostgreSQL; it takes no
# parameters, hence the literals. Times outside Python's range read as NULL (see _READ_BATCH).
_COPY_UPTO = """
COPY (
    SELECT position, tx_id::text, CASE WHEN recorded_at >= '0001-01-01 00:00:00+00'
        AND recorded_at < '9999-12-31 00:00:00+00' THEN recorded_at END, payload::text
    FROM ledger
    WHERE (tx_id, position) <= ({tx_id}::text::xid8, {position})
    ORDER BY tx_id, position
) TO STDOUT
"""


async def read_upto(conn: psycopg.AsyncConnection, upto: Checkpoint) -> AsyncIterator[Recorded]:
    """Every event up to `upto`, streamed in read order; Undecodable at an event that is none."""
    await conn.execute("SET TIME ZONE 'UTC'")
    statement = sql.SQL(_COPY_UPTO).format(tx_id=str(upto.tx_id), position=upto.position)
    async with conn.cursor().copy(statement) as copy:
        copy.set_types(["int8", "text", "timestamptz", "text"])
        async for position, tx_id, at, payload in copy.rows():
            yield recorded(position, int(tx_id), at, payload)
