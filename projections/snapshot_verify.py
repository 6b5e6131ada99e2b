"""verify for the daily chart snapshots: the hash chain, and the rows against a fold of the ledger.

1. The chain: each stored day's digest is recomputed from its stored rows and the previous day's
   digest, and each names the day stored before it. An edited row breaks the chain at its day.
2. The rows: the ledger is folded in read order up to the checkpoint of the last stored day,
   closing days as the projector does (projections.snapshots.DayFold), and every stored day's
   rows are compared with the charts of that fold (trending within a relative 1e-9).
"""

from __future__ import annotations

import math
from datetime import date

import psycopg

from events.types import Recorded
from projections import snapshot_store, snapshots
from projections.model import Changes
from projections.postgres_store import PostgresStore
from projections.readmodel import Difference, ReadModelStore
from projections.snapshots import Closed, Row

_STORE = "postgres"


async def start(
    target: ReadModelStore, generation: int, half_life: float, limit: int = 20
) -> tuple[list[Difference], LedgerCheck | None]:
    """The chain's differences, and the comparison with the ledger still to be fed the ledger
    (None when there is nothing to compare: no snapshots, or the chain alone fills `limit`).
    verify feeds it from the same read of the ledger as its own fold."""
    if not isinstance(target, PostgresStore):
        return [], None
    conn = target.conn
    stored = await snapshot_store.days(conn, generation)
    if not stored:
        return [], None
    found = await chain(conn, generation, stored)
    if len(found) >= limit:
        return found[:limit], None
    return found, LedgerCheck(conn, generation, stored, half_life, limit)


async def chain(
    conn: psycopg.AsyncConnection, generation: int, stored: list[snapshot_store.Day]
) -> list[Difference]:
    """Where the stored chain breaks: a digest its rows and predecessor do not give, or a link
    naming another predecessor than the day stored before it (a day removed from the middle)."""
    found: list[Difference] = []
    for link, previous in snapshot_store.iter_chain(stored):
        key = f"snapshot {link.day}"
        if link.previous != previous:
            found.append(Difference(_STORE, key, "previous", previous, link.previous))
        rows = await snapshot_store.rows(conn, generation, link.day)
        recomputed = snapshots.digest(link.day, rows, link.previous)
        if recomputed != link.digest:
            found.append(Difference(_STORE, key, "digest", recomputed, link.digest))
    return found


class LedgerCheck:
    """Stored rows against the charts of a fold of the ledger up to each day's close: fed the
    ledger in read order up to `upto` (the last stored day's checkpoint), in chunks (`add`),
    then the rest (`finish`); the differences, at most `limit`, gather in `found`."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection,
        generation: int,
        stored: list[snapshot_store.Day],
        half_life: float,
        limit: int,
    ) -> None:
        self.conn, self.generation, self.limit = conn, generation, limit
        self.upto, self.last_day = stored[-1].checkpoint, stored[-1].day
        self.wanted = {link.day for link in stored}
        self.closed: list[Closed] = []
        self.days = snapshots.DayFold(half_life, self.closed.append, Changes())
        self.found: list[Difference] = []

    async def add(self, chunk: list[Recorded]) -> None:
        self.days.add(chunk)
        await self._compare()

    async def finish(self, chunk: list[Recorded]) -> None:
        self.days.add(chunk)
        self.days.close_through(self.last_day)
        await self._compare()

    async def _compare(self) -> None:
        for day in self.closed:
            if day.day in self.wanted and len(self.found) < self.limit:
                rows = await snapshot_store.rows(self.conn, self.generation, day.day)
                self.found.extend(differences(day.day, day.rows, rows))
        self.closed.clear()


def differences(day: date, expected: list[Row], actual: list[Row]) -> list[Difference]:
    """Rows of one day that differ: placement (rank) and score, by chart, type and item."""
    want = {(r.chart, r.item_type, r.item_id): r for r in expected}
    got = {(r.chart, r.item_type, r.item_id): r for r in actual}
    found = []
    for key in sorted(want.keys() | got.keys()):
        w, g = want.get(key), got.get(key)
        label = f"snapshot {day} {key[0]} {key[1]} {key[2]}"
        if w is None or g is None:
            found.append(Difference(_STORE, label, "presence", w is not None, g is not None))
            continue
        if w.rank != g.rank:
            found.append(Difference(_STORE, label, "rank", w.rank, g.rank))
        if not _same(w.chart, w.score, g.score):
            found.append(Difference(_STORE, label, "score", w.score, g.score))
    return found


def _same(chart: str, want: float, got: float) -> bool:
    if chart == "trending":
        return math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-12)
    return want == got
