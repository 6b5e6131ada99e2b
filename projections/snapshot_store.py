"""The daily chart snapshots in PostgreSQL: their SQL, for the projector, rebuild, verify and the
query API. Tables per generation (0012_snapshots.sql): `snapshot_rows`, `snapshot_days` (the
chain) and `snapshot_clock` (the open day). What they hold is projections.snapshots'.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date
from typing import IO, Any

import psycopg
from psycopg import sql

from events.store import Checkpoint
from projections import snapshots
from projections.model import Changes, fold
from projections.readmodel import State, Step
from projections.snapshots import Closed, Row, Standing

CREATE = "SELECT create_snapshot_tables(%s)"  # in a new generation's schema, with its tables
_TEXT = {
    "open_day": "SELECT open_day FROM {schema}.snapshot_clock",
    "set_open_day": "UPDATE {schema}.snapshot_clock SET open_day = %s",
    "last": "SELECT digest FROM {schema}.snapshot_days ORDER BY day DESC LIMIT 1",
    "standings": "SELECT item_id, item_type, up, down, trend, independent FROM {schema}.items",
    "copy_rows": """
COPY {schema}.snapshot_rows (day, chart, item_type, rank, item_id, score) FROM STDIN
""",
    "add_day": """
INSERT INTO {schema}.snapshot_days (day, digest, previous, position, tx_id)
VALUES (%s, %s, %s, %s, %s::text::xid8)
""",
    "days": """
SELECT day, digest, previous, position, tx_id::text FROM {schema}.snapshot_days ORDER BY day
""",
    "day": """
SELECT day, digest, previous, position, tx_id::text FROM {schema}.snapshot_days WHERE day = %s
""",
    "rows": """
SELECT day, chart, item_type, rank, item_id, score FROM {schema}.snapshot_rows WHERE day = %s
""",
    "page": """
SELECT s.rank, s.item_id, s.item_type, coalesce(i.title, ''), coalesce(i.up, 0),
       coalesce(i.down, 0), s.score
FROM {schema}.snapshot_rows AS s LEFT JOIN {schema}.items AS i USING (item_id)
WHERE s.day = %(day)s AND s.chart = %(chart)s AND s.item_type = %(item_type)s
  AND s.rank > %(after)s
ORDER BY s.rank
LIMIT %(limit)s
""",
    "history": """
SELECT day, chart, rank, score FROM {schema}.snapshot_rows
WHERE item_id = %(item_id)s AND day BETWEEN %(from)s AND %(to)s
ORDER BY day, chart
""",
    "known": "SELECT 1 FROM {schema}.items WHERE item_id = %s",
    "position_within": """
SELECT position FROM {schema}.snapshot_days WHERE day BETWEEN %s AND %s ORDER BY day DESC LIMIT 1
""",
}


@functools.lru_cache(maxsize=16)
def statements(generation: int) -> dict[str, sql.Composed]:
    ident = sql.Identifier(f"rm_g{generation}")
    return {key: sql.SQL(text).format(schema=ident) for key, text in _TEXT.items()}


@dataclass(frozen=True, slots=True)
class Day:
    """A stored link of the chain."""

    day: date
    digest: str
    previous: str
    position: int
    checkpoint: Checkpoint


def _day(row: tuple[Any, ...]) -> Day:
    day, digest, previous, position, tx_id = row
    return Day(day, digest, previous, position, Checkpoint(int(tx_id), position))


# --- the projector ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a batch: the days it closes first (after the event at `checkpoint`), then its
    changes."""

    closes: tuple[date, ...]
    checkpoint: Checkpoint
    changes: Changes


async def pieces(
    conn: psycopg.AsyncConnection, generation: int, state: State, step: Step, half_life: float
) -> list[Piece]:
    """The batch of `step` split where days close (the fold is split-invariant); records the new
    open day. One piece, the step's own changes, when no day closes (the usual case)."""
    q = statements(generation)
    row = await (await conn.execute(q["open_day"])).fetchone()
    open_day = row[0] if row else None
    events = step.recorded if isinstance(step, snapshots.DatedStep) else ()
    if events:
        segments, new_open = snapshots.split(events, open_day)
    elif step.last_event_at is not None:  # no events at hand: the batch is taken as one day
        day = step.last_event_at.astimezone(UTC).date()
        closes = snapshots.closing(open_day, day) if open_day else ()
        segments = [snapshots.Segment(closes, [])]
        new_open = max(day, open_day) if open_day else day
    else:
        return [Piece((), state.checkpoint, step.changes)]
    if new_open != open_day:
        await conn.execute(q["set_open_day"], (new_open,))
    if len(segments) == 1:
        return [Piece(segments[0].closes, state.checkpoint, step.changes)]
    found, epoch, checkpoint = [], state.epoch, state.checkpoint
    for segment in segments:
        changes = fold(segment.events, epoch, half_life) if segment.events else Changes(epoch)
        found.append(Piece(segment.closes, checkpoint, changes))
        epoch = changes.epoch if changes.epoch is not None else epoch
        if segment.events:
            last = segment.events[-1]
            checkpoint = Checkpoint(last.tx_id, last.position)
    return found


async def close_days(
    conn: psycopg.AsyncConnection,
    generation: int,
    piece: Piece,
    epoch: float | None,
    half_life: float,
) -> None:
    """Snapshot the charts as the read models hold them now, for each day `piece` closes."""
    if not piece.closes:
        return
    q = statements(generation)
    listed = [Standing(*row) for row in await (await conn.execute(q["standings"])).fetchall()]
    row = await (await conn.execute(q["last"])).fetchone()
    previous = row[0] if row else ""
    for day in piece.closes:
        closed = snapshots.close(day, listed, epoch, half_life, previous, piece.checkpoint)
        await write_closed(conn, generation, closed)
        previous = closed.digest


async def write_closed(conn: psycopg.AsyncConnection, generation: int, closed: Closed) -> None:
    q = statements(generation)
    if text := closed.copy_text():  # none when the rows were written in bulk (Spool)
        async with conn.cursor().copy(q["copy_rows"]) as copy:
            await copy.write(text)
    c = closed.checkpoint
    params = (closed.day, closed.digest, closed.previous, c.position, str(c.tx_id))
    await conn.execute(q["add_day"], params)


# --- the rebuild ------------------------------------------------------------------------------


@dataclass(slots=True)
class Spool:
    """Closed days of a rebuild's fold, kept on disk (COPY text) until the new generation exists:
    a year of days for thousands of items does not fit in memory as Python objects."""

    rows: IO[str] = field(default_factory=lambda: tempfile.TemporaryFile("w+"))  # noqa: SIM115
    days: list[Closed] = field(default_factory=list)
    open_day: date | None = None

    def add(self, closed: Closed) -> None:
        self.rows.write(closed.copy_text())
        self.days.append(Closed(closed.day, [], closed.digest, closed.previous, closed.checkpoint))

    async def write(self, conn: psycopg.AsyncConnection, generation: int) -> None:
        """Into a generation made by `write` (not live yet), in one transaction."""
        q = statements(generation)
        self.rows.seek(0)
        async with conn.transaction():
            async with conn.cursor().copy(q["copy_rows"]) as copy:
                while chunk := self.rows.read(1 << 20):
                    await copy.write(chunk)
            for closed in self.days:
                await write_closed(conn, generation, closed)
            await conn.execute(q["set_open_day"], (self.open_day,))
        self.rows.close()


# --- reading (verify and the query API) ---------------------------------------------------------


async def days(conn: psycopg.AsyncConnection, generation: int) -> list[Day]:
    rows = await (await conn.execute(statements(generation)["days"])).fetchall()
    return [_day(row) for row in rows]


async def day(conn: psycopg.AsyncConnection, generation: int, when: date) -> Day | None:
    row = await (await conn.execute(statements(generation)["day"], (when,))).fetchone()
    return _day(row) if row else None


async def rows(conn: psycopg.AsyncConnection, generation: int, when: date) -> list[Row]:
    found = await (await conn.execute(statements(generation)["rows"], (when,))).fetchall()
    return [Row(d, chart, t, rank, i, _score(chart, s)) for d, chart, t, rank, i, s in found]


def _score(chart: str, score: float) -> float | int:
    if chart in snapshots.INTEGER_CHARTS and float(score).is_integer():
        return int(score)
    return float(score)


async def page(
    conn: psycopg.AsyncConnection, generation: int, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Rows of one chart of one day after rank `after`: rank, item id and type, title, current
    up and down, score."""
    return await (await conn.execute(statements(generation)["page"], params)).fetchall()


async def history(
    conn: psycopg.AsyncConnection, generation: int, item_id: str, first: date, last: date
) -> list[tuple[Any, ...]] | None:
    """(day, chart, rank, score) of an item from `first` to `last`; None for an unknown item."""
    q = statements(generation)
    if await (await conn.execute(q["known"], (item_id,))).fetchone() is None:
        return None
    params = {"item_id": item_id, "from": first, "to": last}
    return await (await conn.execute(q["history"], params)).fetchall()


async def position_within(
    conn: psycopg.AsyncConnection, generation: int, first: date, last: date
) -> int:
    """The position of the latest closed day from `first` to `last` (0: none closed)."""
    q = statements(generation)["position_within"]
    row = await (await conn.execute(q, (first, last))).fetchone()
    return int(row[0]) if row else 0


def iter_chain(stored: list[Day]) -> Iterator[tuple[Day, str]]:
    """Each stored day with the digest the chain expects before it."""
    previous = stored[0].previous if stored else ""
    for link in stored:
        yield link, previous
        previous = link.digest
