"""Archiving old event partitions: the ledger stays whole, immutable and closed to the query side.

Archiving changes partitions, so these tests work in databases of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

import psycopg
import pytest

from events import partitions, store
from events.store import Checkpoint
from events.types import AgentRegistered, Event, ItemListed, Recorded, VoteCast
from infra.migrate import ensure_partitions
from infra.settings import Role, Settings
from projections import verify
from projections.model import Changes
from tests.conftest import fresh_database

HALF_LIFE = 6 * 3600.0


def _month(offset: int) -> date:
    """The first day of the UTC month `offset` months from this one."""
    today = datetime.now(UTC)
    index = today.year * 12 + today.month - 1 + offset
    return date(index // 12, index % 12 + 1, 1)


def _partition(month: date) -> str:
    return f"events_{month:%Y_%m}"


def _at(month: date, day: int) -> datetime:
    return datetime(month.year, month.month, day, 12, tzinfo=UTC)


# Two months past the 12-month retention window, and one inside it.
OLDEST, OLDER, KEPT = _month(-14), _month(-13), _month(-12)


def _role_url(url: str, role: Role) -> str:
    return Settings.from_env({"DATABASE_URL": url, "VOTELEDGER_ENV": "test"}).url_for(role)


def _append(url: str, events: list[tuple[Event, datetime | None]]) -> None:
    """Append events in one transaction of their own, as the owner, through the events table."""
    with psycopg.connect(url) as conn:
        store.append_many_sync(conn, events)


def _populate(url: str) -> int:
    """A small ledger spread over old and current months; returns its number of events.

    Transactions alternate between old and current months, so read order (transaction order)
    interleaves rows that end up in the archive with rows that stay live.
    """
    agent, song, tool = uuid.uuid4(), "song-archived", "tool-live"
    first_vote = _at(OLDEST, 10)
    batches: list[list[tuple[Event, datetime | None]]] = [
        [
            (AgentRegistered(agent_id=agent, name="old"), _at(OLDEST, 2)),
            (ItemListed(item_id=song, item_type="song", title="Old song"), _at(OLDEST, 3)),
            (VoteCast(agent, song, "song", "up", "none"), first_vote),
        ],
        [(ItemListed(item_id=tool, item_type="tool", title="New tool"), None)],
        [(VoteCast(agent, song, "song", "down", "up", first_vote), _at(OLDER, 20))],
        [(VoteCast(agent, tool, "tool", "up", "none"), None)],
        [(VoteCast(agent, song, "song", "none", "down", _at(OLDER, 20)), _at(KEPT, 5))],
    ]
    for batch in batches:
        _append(url, batch)
    return sum(len(batch) for batch in batches)


async def _replay(url: str, expected: int) -> list[Recorded]:
    """The whole ledger through the gap-safe reader, as the projector role, in small batches.

    Snapshots are cluster-wide, so another session's open transaction may hold recent events
    back for a moment; the replay is repeated until every expected event is readable.
    """
    async with await psycopg.AsyncConnection.connect(
        _role_url(url, "projector"), autocommit=True
    ) as conn:
        for _ in range(100):
            events: list[Recorded] = []
            checkpoint = Checkpoint()
            while True:
                batch = await store.read_batch(conn, checkpoint, 2)
                events += batch.events
                checkpoint = batch.checkpoint or checkpoint
                if batch.complete:
                    break
            if len(events) == expected:
                return events
            await asyncio.sleep(0.1)
    raise AssertionError(f"read {len(events)} of {expected} events")


async def _fold(url: str, upto: Checkpoint) -> Changes:
    async with await psycopg.AsyncConnection.connect(_role_url(url, "projector")) as conn:
        return await verify.ledger_fold(conn, upto, HALF_LIFE)


@dataclass(frozen=True)
class Archive:
    url: str
    archived: partitions.Archived
    replay_before: list[Recorded]
    replay_after: list[Recorded]
    fold_before: Changes
    fold_after: Changes


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    """A database whose two oldest months were archived, with the ledger read before and after."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn, OLDEST.isoformat(), 0)
        total = _populate(url)
        replay_before = asyncio.run(_replay(url, total))
        upto = Checkpoint(replay_before[-1].tx_id, replay_before[-1].position)
        fold_before = asyncio.run(_fold(url, upto))
        with psycopg.connect(url, autocommit=True) as conn:
            archived = partitions.archive(conn, 12)
        yield Archive(
            url,
            archived,
            replay_before,
            asyncio.run(_replay(url, total)),
            fold_before,
            asyncio.run(_fold(url, upto)),
        )


def _where(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {p.name: p.where for p in partitions.list_partitions(conn)}


def test_cutoff_is_the_first_instant_of_the_month_n_months_back() -> None:
    """The cutoff is a UTC month boundary, across year ends and from any time zone."""
    new_year_in_moscow = datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    assert partitions.cutoff(new_year_in_moscow, 1) == datetime(2025, 11, 1, tzinfo=UTC)
    assert partitions.cutoff(datetime(2026, 11, 25, tzinfo=UTC), 12) == datetime(
        2025, 11, 1, tzinfo=UTC
    )
    assert partitions.cutoff(datetime(2026, 3, 31, 23, 59, tzinfo=UTC), 3) == datetime(
        2025, 12, 1, tzinfo=UTC
    )


def test_months_past_the_window_move_to_the_archive(archive: Archive) -> None:
    """Exactly the months that ended before the cutoff are archived; the rest stay live."""
    assert archive.archived.before == datetime(KEPT.year, KEPT.month, 1, tzinfo=UTC)
    assert archive.archived.names == [_partition(OLDEST), _partition(OLDER)]
    where = _where(archive.url)
    assert where[_partition(OLDEST)] == where[_partition(OLDER)] == "archive"
    assert where[_partition(KEPT)] == where[_partition(_month(0))] == "live"
    assert where["events_default"] == "default"


def test_archived_partitions_keep_their_rows_and_indexes(archive: Archive) -> None:
    """ATTACH adopted the partitions' own (tx_id, position) indexes; list counts their rows."""
    with psycopg.connect(archive.url, autocommit=True) as conn:
        listed = {p.name: p for p in partitions.list_partitions(conn)}
        parents = dict(
            conn.execute(
                "SELECT i.inhrelid::regclass::text, i.inhparent::regclass::text "
                "FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
                "WHERE x.indrelid = %s::regclass",
                (_partition(OLDEST),),
            ).fetchall()
        )
    assert listed[_partition(OLDEST)].rows == 3 and listed[_partition(OLDER)].rows == 1
    assert "ledger_archive.events_tx_position" in parents.values()


def test_replay_reads_the_same_events_in_the_same_order(archive: Archive) -> None:
    """The gap-safe reader returns every event, in the same order, before and after archiving."""
    assert archive.replay_after == archive.replay_before
    assert {r.recorded_at.date().replace(day=1) for r in archive.replay_after} >= {OLDEST, OLDER}


def test_verify_folds_the_same_model(archive: Archive) -> None:
    """verify's independent fold of the ledger gives the same model before and after."""
    assert archive.fold_after == archive.fold_before
    assert archive.fold_after.items["song-archived"].title == "Old song"


def test_new_events_land_in_live_partitions(archive: Archive) -> None:
    """Appends go to the live month; one dated in an archived month falls to the DEFAULT."""
    event = ItemListed(item_id=f"song-{uuid.uuid4().hex[:8]}", item_type="song", title="t")
    with psycopg.connect(archive.url) as conn:  # only the owner sets recorded_at
        store.append_many_sync(conn, [(event, None), (event, _at(OLDEST, 15))])
    with psycopg.connect(archive.url) as conn:
        rows = conn.execute(
            "SELECT tableoid::regclass::text FROM ledger_archive.events WHERE item_id = %s "
            "UNION ALL SELECT tableoid::regclass::text FROM events WHERE item_id = %s",
            (event.item_id, event.item_id),
        ).fetchall()
    assert sorted(name for (name,) in rows) == sorted([_partition(_month(0)), "events_default"])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_archive.events SET event_type = 'x'",
        "DELETE FROM ledger_archive.events",
        "UPDATE {partition} SET event_type = 'x'",
        "DELETE FROM {partition}",
        "TRUNCATE ledger_archive.events",
        "TRUNCATE {partition}",
    ],
)
def test_archived_events_stay_immutable(archive: Archive, statement: str) -> None:
    """The immutability triggers stop even the owner in the archive and its partitions."""
    with (
        psycopg.connect(archive.url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"),
    ):
        conn.execute(statement.format(partition=_partition(OLDEST)))


@pytest.mark.parametrize("role", ["command", "query"])
@pytest.mark.parametrize("relation", ["ledger", "ledger_archive.events", "{partition}"])
def test_command_and_query_roles_cannot_read_the_archive(
    archive: Archive, role: Role, relation: str
) -> None:
    """Neither the command nor the query role may read the ledger view or archived events."""
    table = relation.format(partition=_partition(OLDEST))
    with (
        psycopg.connect(_role_url(archive.url, role)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"SELECT 1 FROM {table} LIMIT 1")


def test_projector_reads_the_archive(archive: Archive) -> None:
    """The projector role reads archived events through the ledger view and the archive table."""
    with psycopg.connect(_role_url(archive.url, "projector")) as conn:
        # song-archived: listed and voted on in the archived months, the vote withdrawn since.
        for table, events in (("ledger", 4), ("ledger_archive.events", 3)):
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE item_id = 'song-archived'")
            assert row.fetchone() == (events,)


def test_archiving_again_changes_nothing(archive: Archive) -> None:
    """A second run archives nothing and leaves every partition where it was."""
    where = _where(archive.url)
    with psycopg.connect(archive.url, autocommit=True) as conn:
        assert partitions.archive(conn, 12).names == []
        # An archived month is never given a second, live partition: its name is taken.
        assert _partition(OLDEST) not in ensure_partitions(conn, OLDEST.isoformat(), 0)
    assert _where(archive.url) == where


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "VOTELEDGER_ENV": "development"}
    return subprocess.run(
        [sys.executable, "-m", "cli", "partitions", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_archives_and_lists_as_json() -> None:
    """`partitions archive --json` and `partitions list --json` report moves and locations."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn, OLDEST.isoformat(), 0)
        _append(url, [(ItemListed(item_id="song-1", item_type="song", title="t"), _at(OLDEST, 4))])

        done = _cli(url, "archive", "--older-than-months", "12", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "before": datetime(KEPT.year, KEPT.month, 1, tzinfo=UTC).isoformat(),
            "archived": [_partition(OLDEST), _partition(OLDER)],
        }

        listed = _cli(url, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows[_partition(OLDEST)]["where"] == "archive"
        assert rows[_partition(OLDEST)]["rows"] == 1 and rows[_partition(OLDEST)]["bytes"] > 0
        assert rows[_partition(KEPT)]["where"] == "live"
        assert rows["events_default"]["where"] == "default"

        again = _cli(url, "archive", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["archived"] == []


def test_archive_gives_up_behind_a_long_reader() -> None:
    """While a transaction holds the ledger, archiving times out, exits 1 and moves nothing."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_partitions(conn, OLDEST.isoformat(), 0)
        with psycopg.connect(url) as reader:
            reader.execute("SELECT count(*) FROM ledger")  # holds its locks until rollback
            blocked = _cli(url, "archive")
            reader.rollback()
        assert blocked.returncode == 1
        assert "nothing was archived" in " ".join(blocked.stderr.split())
        assert _where(url)[_partition(OLDEST)] == "live"


def test_cli_reports_a_failure_with_exit_code_1(database_url: str) -> None:
    """An unreachable database is a clear one-line error and exit code 1, not a traceback."""
    missing = database_url.replace("dbname=", "dbname=missing_")
    for args in (("archive",), ("list", "--json")):
        result = _cli(missing, *args)
        assert result.returncode == 1
        assert "failed" in result.stderr and "Traceback" not in result.stderr
