"""One read of the ledger for several folds of it (verify's fold and its snapshot check).

Each reader gets the events up to its own checkpoint in chunks of `CHUNK` from the start of the
ledger (`add`), then the rest (`finish`): exactly what a read of its own would give it, so that
sharing a read changes no fold's chunking (trending sums depend on it in their last bits).
"""

from __future__ import annotations

from typing import Protocol

import psycopg

from events import store
from events.store import Checkpoint
from events.types import Recorded

CHUNK = 20_000


class Reader(Protocol):
    async def add(self, chunk: list[Recorded]) -> None: ...

    async def finish(self, chunk: list[Recorded]) -> None: ...


async def feed(conn: psycopg.AsyncConnection, readers: list[tuple[Checkpoint, Reader]]) -> None:
    """Read the ledger once, up to the furthest of the readers' checkpoints, giving each reader
    the events up to its own. Raises events.store.Undecodable at an event that is none."""
    ends = [(upto.tx_id, upto.position) for upto, _ in readers]
    furthest = max(readers, key=lambda r: (r[0].tx_id, r[0].position))[0]
    chunks: list[list[Recorded]] = [[] for _ in readers]
    async for recorded in store.read_upto(conn, furthest):
        at = (recorded.tx_id, recorded.position)
        for i, (_, reader) in enumerate(readers):
            if at <= ends[i]:  # read order is (tx_id, position) order
                chunks[i].append(recorded)
                if len(chunks[i]) >= CHUNK:
                    await reader.add(chunks[i])
                    chunks[i] = []
    for (_, reader), chunk in zip(readers, chunks, strict=True):
        await reader.finish(chunk)
