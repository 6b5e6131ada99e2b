"""Shared fixtures. Integration tests run against real PostgreSQL and Redis.

`make test` provides DATABASE_URL (a role that may create databases) and REDIS_URL, starting
throwaway servers when none are given. Each test session works in a database of its own and under
a Redis key prefix of its own, and removes both at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.migrate import migrate
from infra.settings import Settings

OPERATOR_TOKEN = "test-operator-token-0123456789"


def _admin_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.exit("DATABASE_URL is not set: run the suite with `make test`", returncode=4)
    return url


def with_database(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A newly created and migrated database, dropped afterwards."""
    admin = _admin_url()
    name = f"vl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin, name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The database shared by this test session."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.exit("REDIS_URL is not set: run the suite with `make test`", returncode=4)
    return url


@contextlib.contextmanager
def fresh_redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of its own; its keys are deleted afterwards."""
    prefix = f"vltest{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    with fresh_redis_prefix(redis_url) as prefix:
        yield prefix


def make_settings(
    database_url: str, redis_url: str, redis_prefix: str, **overrides: str
) -> Settings:
    env = {
        "VOTELEDGER_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VOTELEDGER_REDIS_PREFIX": redis_prefix,
        "VOTELEDGER_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "VOTELEDGER_POOL_MAX_SIZE": "30",
        # High enough that only the rate-limit tests (which lower it) ever meet the limit.
        "VOTELEDGER_RATE_LIMIT_BURST": "100000",
        "VOTELEDGER_RATE_LIMIT_PER_SECOND": "100000",
    }
    env.update(overrides)
    return Settings.from_env(env)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return make_settings(database_url, redis_url, redis_prefix)


@pytest.fixture
def admin_conn(database_url: str) -> Iterator[psycopg.Connection]:
    """An owner connection to the test database, for setting up and inspecting."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn
