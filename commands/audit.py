"""The operator's vote audit: who votes an item up or down right now, and on whose behalf.

Read from the command side's own tables (`vote_slots` and `agents`), not the projections: the
audit shows the authority itself. Paged in agent order by a keyset cursor (the last agent id of
a page), which the index `vote_slots_item` (0010_owners.sql) serves without a scan of the item's
earlier pages. `summarize` is pure: the per-owner view `voteledger audit` prints.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from psycopg_pool import AsyncConnectionPool

# Agent ids are version-4 uuids, so the nil uuid is below every one of them: the first page
# starts after it, and one statement serves every page.
_START = uuid.UUID(int=0)
_ITEM_EXISTS = "SELECT 1 FROM items WHERE item_id = %s"
_ITEM_VOTES = """
SELECT s.agent_id, a.owner, s.direction, s.cast_at, a.revoked_at IS NOT NULL
FROM vote_slots AS s JOIN agents AS a USING (agent_id)
WHERE s.item_id = %s AND s.agent_id > %s AND s.direction <> 'none'
ORDER BY s.agent_id
LIMIT %s
"""


@dataclass(frozen=True, slots=True)
class AuditedVote:
    """An agent's current vote on the item: a revoked agent's votes stand, so they are shown."""

    agent_id: uuid.UUID
    owner: str
    vote: Literal["up", "down"]
    cast_at: datetime | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class Page:
    votes: list[AuditedVote]
    next_cursor: uuid.UUID | None  # the last agent of this page, when more follow


@dataclass(frozen=True, slots=True)
class OwnerSummary:
    """One owner's agents voting on the item, and where the owner stands on it."""

    owner: str
    agents: int
    up: int
    down: int

    @property
    def sign(self) -> int:
        """+1, 0 or -1: the sign of the owner's agents' summed votes (its vote, counted once)."""
        return (self.up > self.down) - (self.up < self.down)


class UnknownItem(Exception):
    """No such item in the catalogue."""


async def item_votes(
    pool: AsyncConnectionPool, item_id: str, limit: int, after: uuid.UUID | None = None
) -> Page:
    """One page of the item's current up and down votes, in agent order, after agent `after`."""
    async with pool.connection() as conn:
        if await (await conn.execute(_ITEM_EXISTS, (item_id,))).fetchone() is None:
            raise UnknownItem(item_id)
        cursor = await conn.execute(_ITEM_VOTES, (item_id, after or _START, limit + 1))
        rows = await cursor.fetchall()
    votes = [AuditedVote(*row) for row in rows[:limit]]
    return Page(votes, votes[-1].agent_id if len(rows) > limit else None)


async def all_item_votes(
    pool: AsyncConnectionPool, item_id: str, page_size: int = 1000
) -> list[AuditedVote]:
    """Every current vote on the item, page by page (one short statement each)."""
    votes: list[AuditedVote] = []
    after: uuid.UUID | None = None
    while True:
        page = await item_votes(pool, item_id, page_size, after)
        votes += page.votes
        if page.next_cursor is None:
            return votes
        after = page.next_cursor


def summarize(votes: Iterable[AuditedVote]) -> list[OwnerSummary]:
    """Per owner: its agents with a vote, their ups and downs; owners with most agents first
    (then by owner, so the order is stable)."""
    counts: dict[str, list[int]] = {}
    for vote in votes:
        count = counts.setdefault(vote.owner, [0, 0, 0])
        count[0] += 1
        count[1 if vote.vote == "up" else 2] += 1
    summaries = [OwnerSummary(owner, *count) for owner, count in counts.items()]
    return sorted(summaries, key=lambda s: (-s.agents, s.owner))
