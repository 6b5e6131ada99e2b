"""Numbered .sql migrations, applied once each, under an advisory lock, with checksums.

A migration that was applied and then edited is refused: the database would no longer match the
files, and silently moving on would hide that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

# Any constant works; it only has to be the same for every process migrating this database.
_LOCK_KEY = 0x766F74656C6564  # "voteled"
PARTITION_MONTHS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database and the migration files disagree."""


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("infra.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers: {versions}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def migrate(database_url: str, db_password: str | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run concurrently."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            done = {
                version: checksum
                for version, checksum in conn.execute(
                    "SELECT version, checksum FROM schema_migrations"
                )
            }
            for migration in load_migrations():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.text.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
            if db_password:
                for role in ("voteledger_command", "voteledger_projector", "voteledger_query"):
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            sql.Identifier(role), sql.Literal(db_password)
                        )
                    )
            ensure_partitions(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def ensure_partitions(
    conn: psycopg.Connection,
    start_at: str | None = None,
    months_ahead: int = PARTITION_MONTHS_AHEAD,
) -> list[str]:
    """Create monthly event partitions from `start_at` (default: this month) to months ahead."""
    rows = conn.execute(
        "SELECT ensure_event_partitions(coalesce(%s::timestamptz, now()), %s)",
        (start_at, months_ahead),
    ).fetchall()
    return [name for (name,) in rows]
