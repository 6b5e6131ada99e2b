from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from events.codec import encode
from events.types import ItemListed
from infra.migrate import MigrationError, ensure_partitions, load_migrations, migrate
from infra.settings import Settings

APP_ROLES = ["command", "projector", "query"]


def probe() -> tuple[str, str]:
    """A valid event's item_id and payload: later readers of this session's ledger decode it."""
    item_id = f"probe-{uuid.uuid4().hex[:12]}"
    return item_id, encode(ItemListed(item_id=item_id, item_type="tool", title="probe")).decode()


@pytest.fixture
def one_event(admin_conn: psycopg.Connection) -> Iterator[int]:
    position = admin_conn.execute(
        "INSERT INTO events (event_type, item_id, payload) VALUES ('ItemListed', %s, %s) "
        "RETURNING position",
        probe(),
    ).fetchone()
    assert position is not None
    yield position[0]


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET event_type = 'x' WHERE position = %s",
        "DELETE FROM events WHERE position = %s",
        "TRUNCATE events",
        "TRUNCATE events_default",
    ],
)
def test_application_roles_cannot_rewrite_the_ledger(
    settings: Settings, one_event: int, role: str, statement: str
) -> None:
    """No application role may update, delete or truncate events."""
    with (
        psycopg.connect(settings.url_for(role)) as conn,  # type: ignore[arg-type]
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement, (one_event,) if "%s" in statement else None)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET event_type = 'x' WHERE position = %s",
        "DELETE FROM events WHERE position = %s",
        "TRUNCATE events",
    ],
)
def test_even_the_owner_cannot_rewrite_the_ledger(
    database_url: str, one_event: int, statement: str
) -> None:
    """The immutability triggers stop the table owner too."""
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"),
    ):
        conn.execute(statement, (one_event,) if "%s" in statement else None)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT event_type FROM events WHERE position = %s", (one_event,))
        assert row.fetchone() == ("ItemListed",)


def test_truncating_a_month_partition_is_refused(database_url: str) -> None:
    """TRUNCATE triggers are not inherited, so every month partition carries its own."""
    with psycopg.connect(database_url) as conn:
        partition = conn.execute(
            "SELECT to_char(now() AT TIME ZONE 'UTC', '\"events_\"YYYY_MM')"
        ).fetchone()
        assert partition is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"TRUNCATE {partition[0]}")


def test_query_role_cannot_read_the_ledger(settings: Settings) -> None:
    """The query side's role has no access to events or the write model."""
    with psycopg.connect(settings.url_for("query")) as conn:
        for table in ("events", "vote_slots", "agents", "idempotency_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
            conn.rollback()


def _partition_of(conn: psycopg.Connection, position: int) -> str:
    row = conn.execute(
        "SELECT tableoid::regclass::text FROM events WHERE position = %s", (position,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_events_land_in_their_month(settings: Settings, admin_conn: psycopg.Connection) -> None:
    """An event is stored in the partition of the month it was recorded in."""
    with psycopg.connect(settings.url_for("command")) as conn:
        row = conn.execute(
            "INSERT INTO events (event_type, item_id, payload) "
            "VALUES ('ItemListed', %s, %s) "
            "RETURNING position, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY_MM')",
            probe(),
        ).fetchone()
        conn.commit()
    assert row is not None
    assert _partition_of(admin_conn, row[0]) == f"events_{row[1]}"


def test_default_partition_catches_rows_outside_every_month(
    settings: Settings, admin_conn: psycopg.Connection
) -> None:
    """A row recorded far outside the created months is stored, in events_default."""
    # Only the owner sets recorded_at (application roles get the database clock).
    row = admin_conn.execute(
        "INSERT INTO events (event_type, item_id, recorded_at, payload) "
        "VALUES ('ItemListed', %s, '2099-06-15T00:00:00Z', %s) RETURNING position",
        probe(),
    ).fetchone()
    assert row is not None
    assert _partition_of(admin_conn, row[0]) == "events_default"
    # Partitions are only created within a window (0006_guards.sql), so that month never gets one.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        ensure_partitions(admin_conn, "2099-06-01", 0)


def test_partitions_are_created_ahead_and_idempotently(admin_conn: psycopg.Connection) -> None:
    """Ensuring partitions twice creates nothing the second time; two months ahead exist."""
    ensure_partitions(admin_conn, "2025-01-01", 2)
    assert ensure_partitions(admin_conn, "2025-01-01", 2) == []
    names = {
        name
        for (name,) in admin_conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        )
    }
    expected = admin_conn.execute(
        "SELECT array_agg(to_char(m, '\"events_\"YYYY_MM')) FROM generate_series("
        "date_trunc('month', '2025-01-01'::timestamptz AT TIME ZONE 'UTC'), "
        "date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months', interval '1 month') m"
    ).fetchone()
    assert expected is not None
    assert set(expected[0]) <= names


def test_migrate_is_idempotent_and_refuses_edited_migrations(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running migrate again applies nothing; a changed applied migration is refused."""
    assert migrate(database_url) == []
    edited = load_migrations()
    first = edited[0]
    tampered = [type(first)(first.version, first.name, first.text + "\n-- edited"), *edited[1:]]
    monkeypatch.setattr("infra.migrate.load_migrations", lambda: tampered)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(database_url)


def test_application_roles_time_out_idle_transactions(settings: Settings) -> None:
    """A forgotten open transaction of an application role is ended by the server."""
    for role in APP_ROLES:
        with psycopg.connect(settings.url_for(role)) as conn:  # type: ignore[arg-type]
            value = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
            assert value is not None and value[0] != "0"
