"""The replicas drill's checks after the load: the ledger against every acknowledged vote, the
projections against the ledger (`voteledger verify`), and what the clients saw."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg

from devtools.replicas_load import Ack, Tally

_EVENTS = """
SELECT position, agent_id::text, item_id, payload->>'direction' FROM events
WHERE event_type = 'VoteCast' AND agent_id = ANY(%s::uuid[])
"""
_SLOTS = """
SELECT agent_id::text, item_id, direction, last_position FROM vote_slots
WHERE agent_id = ANY(%s::uuid[])
"""
_KEYS = """
SELECT agent_id::text, key, status, response FROM idempotency_keys
WHERE agent_id = ANY(%s::uuid[])
"""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


def _some(items: list[Any], n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (
        f" (and {len(items) - n} more)" if len(items) > n else ""
    )


def answers(tally: Tally) -> list[Check]:
    """Every vote acknowledged; no 5xx; nothing but 201 for votes and 200 for reads."""
    unanswered = tally.votes_sent - len(tally.acks)
    server_errors = [o for o in tally.oddities if o.status >= 500]
    detail = f"{len(tally.acks)}/{tally.votes_sent} votes acknowledged"
    if tally.unanswered_votes:
        detail += f"; no answer after every retry: {_some(tally.unanswered_votes)}"
    checks = [Check("every vote acknowledged (2xx)", unanswered == 0, detail)]
    errors = "; ".join(
        f"{o.what} {o.status} from {o.replica} at {o.at:.2f} s: {o.body}" for o in server_errors
    )
    checks.append(Check("no client saw a 5xx", not server_errors, errors or "none"))
    others = [o for o in tally.oddities if o.status < 500]
    listed = "; ".join(
        f"{o.what} {o.status} from {o.replica} at {o.at:.2f} s: {o.body}" for o in others
    )
    # Votes with no answer fail the first check; here reads with none, and clients cut short.
    gave_up = {what: n for what, n in tally.gave_up.items() if what != "vote"}
    fine = not others and not gave_up
    detail = listed or "votes 201, reads 200"
    if gave_up:
        detail += f"; no answer after every retry: {gave_up}"
    checks.append(Check("every other answer as expected", fine, detail))
    return checks


def ledger(database_url: str, agent_ids: list[str], tally: Tally) -> list[Check]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        events = conn.execute(_EVENTS, (agent_ids,)).fetchall()
        slots = conn.execute(_SLOTS, (agent_ids,)).fetchall()
        keys = conn.execute(_KEYS, (agent_ids,)).fetchall()
    return [
        recorded_once(tally.acks, events),
        final_slots(tally, slots),
        stored_answers(tally.acks, keys),
    ]


def recorded_once(acks: list[Ack], events: list[tuple[Any, ...]]) -> Check:
    """Each acknowledged vote is one event, at the position it was told, with its agent, item and
    direction; no two keys share an event; and the agents have no event no vote was told of."""
    ledger = {int(pos): (agent, item, direction) for pos, agent, item, direction in events}
    unchanged = [a.key for a in acks if a.status != 201 or not a.changed or a.position is None]
    told = Counter(a.position for a in acks)
    shared = [p for p, n in told.items() if n > 1]
    wrong = [
        a.key
        for a in acks
        if a.position is not None and ledger.get(a.position) != (a.agent_id, a.item_id, a.direction)
    ]
    extra = sorted(set(ledger) - set(told))
    replayed = sum(a.replayed for a in acks)
    detail = f"{len(ledger)} events for {len(acks)} acknowledged keys, {replayed} replayed"
    problems: dict[str, list[Any]] = {
        "not 201 changed": unchanged,
        "one event for two keys": shared,
        "not in the ledger as told": wrong,
        "events no vote was told of": extra,
    }
    for label, found in problems.items():
        if found:
            detail += f"; {label}: {_some(found)}"
    passed = bool(acks) and not any(problems.values()) and len(ledger) == len(acks)
    return Check("each acknowledged vote recorded exactly once", passed, detail)


def final_slots(tally: Tally, rows: list[tuple[Any, ...]]) -> Check:
    """Each (agent, item) slot holds the direction and position last acknowledged on it (slots
    whose last vote got no answer are left out: their outcome is unknown)."""
    expected: dict[tuple[str, str], tuple[str, int | None]] = {}
    for a in tally.acks:  # in each agent's order: one voter per agent, one vote at a time
        expected[(a.agent_id, a.item_id)] = (a.direction, a.position)
    actual = {(agent, item): (d, pos) for agent, item, d, pos in rows}
    slots = (set(expected) | set(actual)) - tally.uncertain
    differ = [s for s in sorted(slots) if actual.get(s) != expected.get(s)]
    detail = f"{len(slots) - len(differ)}/{len(slots)} slots as last acknowledged"
    if tally.uncertain:
        detail += f", {len(tally.uncertain)} left out (last vote unanswered)"
    if differ:
        shown = [f"{s}: {actual.get(s)} != {expected.get(s)}" for s in differ]
        detail += "; " + _some(shown)
    return Check("final vote per (agent, item) = last acknowledged", not differ, detail)


def stored_answers(acks: list[Ack], rows: list[tuple[Any, ...]]) -> Check:
    """Each acknowledged key is stored with the answer the client got."""
    stored = {(agent, key): (status, response) for agent, key, status, response in rows}
    differ = []
    for a in acks:
        status, response = stored.get((a.agent_id, a.key), (None, None))
        position = json.loads(bytes(response)).get("position") if response else None
        if status != a.status or position != a.position:
            differ.append(a.key)
    detail = f"{len(acks) - len(differ)}/{len(acks)} keys store the acknowledged answer"
    if differ:
        detail += f"; differ: {_some(differ)}"
    return Check("idempotency keys hold the acknowledged answers", not differ, detail)


async def caught_up(env: dict[str, str], within: float = 60.0) -> tuple[Check, float]:
    """Wait until every projection's watermark reaches the ledger's head; how long it took."""
    from infra.settings import Settings  # the product's own view of where projections stand
    from projections.status import status

    settings = Settings.from_env(env)
    started = time.monotonic()
    while True:
        report = await status(settings)
        rows = report.projections
        behind = {r.projection: (r.watermark, r.ledger_head) for r in rows}
        done = all(r.watermark is not None and r.watermark >= r.ledger_head for r in rows)
        waited = time.monotonic() - started
        if (done and not report.unreachable) or waited > within:
            shown = ", ".join(f"{p} {w}/{h}" for p, (w, h) in behind.items())
            detail = f"watermark/head: {shown} after {waited:.1f} s"
            if report.unreachable:
                detail += f"; unreachable: {report.unreachable}"
            name = "projections reached the ledger's head"
            return Check(name, done and not report.unreachable, detail), waited
        await asyncio.sleep(0.2)


def verify(env: dict[str, str]) -> Check:
    """`voteledger verify`: the read models equal a fresh fold of the ledger (exit code 0)."""
    name = "voteledger verify: read models equal a fresh fold"
    argv = [sys.executable, "-m", "cli", "verify", "--json"]
    try:
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return Check(name, False, "did not finish within 120 s")
    try:
        outcomes = json.loads(run.stdout)
    except ValueError:
        outcomes = None
    if run.returncode != 0 or not isinstance(outcomes, list):
        shown = (run.stdout + run.stderr).strip()[-1500:]
        return Check(name, False, f"exit code {run.returncode}: {shown}")
    equal = {o["projection"]: o["equal"] for o in outcomes}
    detail = "; ".join(
        f"{o['projection']} generation {o['generation']} equal up to {o['position']} "
        f"({o['items']} items)"
        if o["equal"]
        else f"{o['projection']} differs: {o['differences'][:3]}"
        for o in outcomes
    )
    passed = set(equal) == {"postgres", "redis"} and all(equal.values())
    return Check(name, passed, f"exit code 0; {detail}")
