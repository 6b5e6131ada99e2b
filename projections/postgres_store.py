"""The PostgreSQL read models: their tables, their SQL, and every operation on them.

Generation N lives in schema `rm_g<N>` (created by the `create_read_models` function of
0004_read_models.sql): `items`, `daily` and the `checkpoint` row that commits with them.
"""

from __future__ import annotations

from psycopg import sql


def schema(generation: int) -> sql.Identifier:
    """The schema of one generation of the read models."""
    return sql.Identifier(f"rm_g{generation}")
