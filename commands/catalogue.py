"""The catalogue: listing items and looking up their types.

Owns the `items` table; an item's type never changes once listed (so `Known` may cache it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from events import store
from events.types import ItemListed, ItemType
from infra.metrics import EVENTS_APPENDED

_INSERT_ITEM = """
INSERT INTO items (item_id, item_type, title) VALUES (%s, %s, %s)
ON CONFLICT (item_id) DO NOTHING RETURNING item_id
"""
_ITEM_TYPES = "SELECT item_id, item_type FROM items WHERE item_id = ANY(%s)"
_COPY_ITEMS = "COPY items (item_id, item_type, title) FROM STDIN"


class AlreadyExists(Exception):
    pass


async def list_item(
    pool: AsyncConnectionPool, item_id: str, item_type: ItemType, title: str
) -> int:
    """Add an item to the catalogue; returns the event position."""
    async with pool.connection() as conn, conn.transaction():
        if await (await conn.execute(_INSERT_ITEM, (item_id, item_type, title))).fetchone() is None:
            raise AlreadyExists(item_id)
        position, _ = await store.append(
            conn, ItemListed(item_id=item_id, item_type=item_type, title=title)
        )
    EVENTS_APPENDED.labels("ItemListed").inc()
    return position


async def item_types_later(
    conn: psycopg.AsyncConnection, item_ids: list[str]
) -> psycopg.AsyncCursor[Any]:
    """Send the lookup of the items' types without waiting (for pipeline mode); the cursor
    yields (item_id, item_type) for those listed."""
    return await conn.execute(_ITEM_TYPES, (item_ids,))


def copy_items(conn: psycopg.Connection, items: Iterable[tuple[str, ItemType, str]]) -> None:
    """Bulk-insert (item_id, item_type, title) rows (no events: the caller appends those)."""
    with conn.cursor().copy(_COPY_ITEMS) as copy:
        for item in items:
            copy.write_row(item)
