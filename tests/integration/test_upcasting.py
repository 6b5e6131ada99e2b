"""Events recorded before schema versions and owners (payloads with neither `v` nor `owner`, as
the ledger held them) read as v2, each agent its own owner, and fold exactly as the same events
written today without an owner; `voteledger rebuild` and `verify` pass over them."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg

from commands.decide import CastVote, Slot, decide, evolve
from events import store
from events.types import AgentRegistered, Direction, Event, ItemListed, Recorded, VoteCast
from infra.settings import Settings
from projections.model import fold_all, settle
from tests.integration.test_rebuild import cli

# (agent, vote) in order: first votes, changes of mind, a retraction, a vote again.
SCRIPT: list[tuple[int, Direction]] = [
    (0, "up"),
    (1, "down"),
    (2, "up"),
    (0, "down"),
    (2, "none"),
    (1, "up"),
    (2, "down"),
]
_INSERT = """
INSERT INTO events (event_type, agent_id, item_id, payload, recorded_at)
VALUES (%s, %s, %s, %s::jsonb, %s)
"""


def _votes(agents: list[uuid.UUID], item_id: str, start: datetime) -> list[tuple[Event, datetime]]:
    """SCRIPT's votes on `item_id`, as the command side decides them today, with no owner."""
    slots: dict[uuid.UUID, Slot] = {}
    votes: list[tuple[Event, datetime]] = []
    for n, (who, direction) in enumerate(SCRIPT):
        agent, at = agents[who], start + timedelta(minutes=n + 1)
        slot = slots.get(agent, Slot())
        [event] = decide(CastVote(agent, item_id, direction), "song", slot)
        slots[agent] = evolve(slot, event, at)
        votes.append((event, at))
    return votes


def _old_row(event: Event) -> tuple[str, uuid.UUID | None, str | None, str]:
    """(event_type, agent_id, item_id, payload) as written before versioning: the payload
    without `v` and `owner`."""
    payload: dict[str, Any] = msgspec.to_builtins(event)
    assert payload.pop("owner", None) is None and payload.pop("v") in (1, 2)
    agent = getattr(event, "agent_id", None)
    return (
        payload["type"],
        agent,
        getattr(event, "item_id", None),
        msgspec.json.encode(payload).decode(),
    )


def _ledger(url: str) -> list[Recorded]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT position, tx_id::text, recorded_at, payload::text FROM events "
            "ORDER BY tx_id, position"
        ).fetchall()
    return [store.recorded(position, int(tx), at, payload) for position, tx, at, payload in rows]


async def test_old_events_read_as_their_own_owners_and_fold_unchanged(isolated: Settings) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    agents = [uuid.uuid4() for _ in range(3)]
    old: list[tuple[Event, datetime]] = [(AgentRegistered(a, name="v1"), start) for a in agents]
    old += [(ItemListed(item, "song", item), start) for item in ("song-old", "song-new")]
    old += _votes(agents, "song-old", start)
    with psycopg.connect(isolated.database_url) as conn:
        for event, at in old:
            conn.execute(_INSERT, (*_old_row(event), at))
        # The same votes on another item, written today (with `v`, and no owner).
        store.append_many_sync(conn, _votes(agents, "song-new", start))
        stored = conn.execute(
            "SELECT count(*) FROM events WHERE payload ? 'v' OR payload ? 'owner'"
        ).fetchone()
    assert stored == (len(SCRIPT),)  # only today's rows have either

    ledger = _ledger(isolated.database_url)
    for recorded in ledger:
        event = recorded.event
        assert event.v == 2 if isinstance(event, (AgentRegistered, VoteCast)) else event.v == 1
        if isinstance(event, (AgentRegistered, VoteCast)):
            assert event.owned_by == str(event.agent_id)
            # Upcast rows name their owner; today's rows without one leave it to owned_by.
            is_old = not isinstance(event, VoteCast) or event.item_id == "song-old"
            assert event.owner == (str(event.agent_id) if is_old else None)

    model = settle(fold_all(ledger, isolated.trending_half_life_seconds))
    old_item, new_item = model.items["song-old"], model.items["song-new"]
    assert (old_item.up, old_item.down, old_item.owners, old_item.independent) == (1, 2, 3, -1)
    assert dataclasses.replace(old_item, title="") == dataclasses.replace(new_item, title="")
    for (item, owner), totals in model.owners.items():
        other = "song-new" if item == "song-old" else "song-old"
        assert model.owners[other, owner] == totals
    assert {day: t for (day, i), t in model.days.items() if i == "song-old"} == {
        day: t for (day, i), t in model.days.items() if i == "song-new"
    }

    rebuilt = cli(isolated, "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    verified = cli(isolated, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
