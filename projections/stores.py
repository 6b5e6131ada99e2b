"""Opening the read-model stores: the one place that knows which stores exist and how each is
reached from the settings."""

from __future__ import annotations

import contextlib

import psycopg

from infra import redis_client
from infra.settings import Settings
from projections import generations
from projections.postgres_store import PostgresStore
from projections.readmodel import ReadModelStore
from projections.redis_store import RedisStore

NAMES = ("postgres", "redis")


async def connect(stack: contextlib.AsyncExitStack, url: str) -> psycopg.AsyncConnection:
    """An autocommit connection, closed with `stack`."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return await stack.enter_async_context(conn)


async def open_store(
    name: str,
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    url: str,
    *,
    redis_timeout: float = 30.0,
) -> ReadModelStore:
    """The store called `name`, with connections of its own (as the role of `url`) that close
    with `stack`."""
    if name == "postgres":
        return PostgresStore(await connect(stack, url))
    if name != "redis":
        raise ValueError(f"unknown read-model store {name!r}")
    client = redis_client.connect(settings, socket_timeout=redis_timeout)
    stack.push_async_callback(client.aclose)
    pointer = await connect(stack, url)
    return RedisStore(
        client,
        settings.redis_prefix,
        retention_days=settings.daily_retention_days,
        stream_max=settings.changes_stream_max,
        fallback=lambda: generations.postgres(pointer),
        ledger=lambda: generations.ledger_id(pointer),
    )
