"""The vote batch planner: pure, no I/O, no clock.

A batch of vote requests is decided here from what its transaction read (`Found`): `plan_batch`
runs `decide` request by request on the slots as the batch leaves them and says which events to
append; once they have positions, `Plan.answer` gives every request its outcome and the slot and
idempotency-key rows to write. Also the request and reply types of a vote.

Within a batch, the first request with an idempotency key does the work and later ones with the
same key share its outcome (as replays); a request with a key used before replays the stored reply
(or is refused when the stored request differs). A refused request leaves its key free.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

import msgspec

from commands.decide import CastVote, ItemTypeMismatch, Slot, UnknownItem, decide, evolve
from commands.models import VoteOut
from events.types import Direction, ItemType, VoteCast

SlotKey = tuple[uuid.UUID, str]  # (agent, item)
KeyId = tuple[uuid.UUID, str]  # (agent, idempotency key)


@dataclass(frozen=True, slots=True)
class Reply:
    """A status and body, exactly as sent and, with an idempotency key, as replayed."""

    status: int
    body: bytes
    replayed: bool = False
    # For log lines only (a replay from storage does not know it): not part of the answer.
    position: int | None = field(default=None, compare=False)


class KeyReuseMismatch(Exception):
    """An idempotency key was reused with a different request."""


class Revoked(Exception):
    """The agent's key was revoked."""


@dataclass(frozen=True, slots=True)
class VoteRequest:
    command: CastVote
    idempotency_key: str | None = None

    @property
    def slot(self) -> SlotKey:
        return self.command.agent_id, self.command.item_id

    @property
    def key(self) -> KeyId | None:
        if self.idempotency_key is None:
            return None
        return self.command.agent_id, self.idempotency_key


Outcome = Reply | Exception  # what one vote request gets: its reply, or why it was refused


@dataclass(frozen=True, slots=True)
class Pending:
    """An outcome known once the events have positions: the reply to request `owner`'s event
    (the request itself, or the first request of the batch with its idempotency key)."""

    owner: int


@dataclass(frozen=True, slots=True)
class Stored:
    """The response stored with an idempotency key, and the hash of the request that made it."""

    request_hash: bytes
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Found:
    """What a batch's transaction read before deciding."""

    slots: Mapping[SlotKey, tuple[Slot, int | None]]  # slots with a row: state, last position
    revoked: Set[uuid.UUID] = frozenset()
    owners: Mapping[uuid.UUID, str] = field(default_factory=dict)  # each agent's owner
    item_types: Mapping[str, ItemType] = field(default_factory=dict)
    claimed: Set[KeyId] = frozenset()  # idempotency keys this batch claimed
    stored: Mapping[KeyId, Stored] = field(default_factory=dict)  # keys used before


@dataclass(frozen=True, slots=True)
class Answer:
    """A batch's final outcomes (one per request, in order) and the rows its commit writes."""

    outcomes: list[Outcome]
    slots: list[tuple[uuid.UUID, str, Direction, int, int]]  # agent, item, direction, version, p
    stored: list[tuple[uuid.UUID, str, int, bytes]]  # agent, key, status, body
    released: list[KeyId]


def request_hash(command: CastVote) -> bytes:
    canonical = msgspec.json.encode(
        [str(command.agent_id), command.item_id, command.direction, command.claimed_item_type]
    )
    return hashlib.sha256(canonical).digest()


def _owners(requests: Sequence[VoteRequest]) -> dict[KeyId, int]:
    """Each idempotency key's first request, in order of first use."""
    owners: dict[KeyId, int] = {}
    for n, request in enumerate(requests):
        if request.key is not None:
            owners.setdefault(request.key, n)
    return owners


def claims(requests: Sequence[VoteRequest]) -> dict[KeyId, bytes]:
    """The idempotency keys a batch claims, each with the hash of its first request."""
    return {key: request_hash(requests[n].command) for key, n in _owners(requests).items()}


@dataclass(frozen=True, slots=True)
class Plan:
    """A decided batch, waiting for its events' positions."""

    requests: Sequence[VoteRequest]
    events: list[tuple[int, VoteCast]]  # (request, event), in decision order
    outcomes: list[Outcome | Pending]
    slots: dict[SlotKey, Slot]  # every slot as the batch leaves it
    owners: dict[KeyId, int]
    claimed: Set[KeyId]

    def answer(self, positions: Sequence[int]) -> Answer:
        """The outcomes and rows to write, given the positions of `events`, in their order."""
        last: dict[SlotKey, int] = {}
        replies: dict[int, Reply] = {}
        for (n, event), position in zip(self.events, positions, strict=True):
            last[self.requests[n].slot] = position
            replies[n] = _reply(self.requests[n].command, event.previous, True, position)
        outcomes = [_final(n, o, replies) for n, o in enumerate(self.outcomes)]
        slots = [(*k, self.slots[k].direction, self.slots[k].version, p) for k, p in last.items()]
        mine = {k: outcomes[n] for k, n in self.owners.items() if k in self.claimed}
        # A refused request leaves its key free, as if it had never been made.
        released = [k for k, o in mine.items() if not isinstance(o, Reply)]
        stored = [(a, k, o.status, o.body) for (a, k), o in mine.items() if isinstance(o, Reply)]
        return Answer(outcomes, slots, stored, released)


def _final(n: int, outcome: Outcome | Pending, replies: dict[int, Reply]) -> Outcome:
    if not isinstance(outcome, Pending):
        return outcome
    reply = replies[outcome.owner]
    return reply if outcome.owner == n else replace(reply, replayed=True)


def plan_batch(requests: Sequence[VoteRequest], found: Found) -> Plan:
    """Decide a batch request by request, each on its slot as the batch has left it so far."""
    planner = _Planner(requests, found)
    for n, request in enumerate(requests):
        planner.outcomes.append(planner.outcome(n, request))
    slots = {k: slot for k, (slot, _) in planner.state.items()}
    return Plan(requests, planner.events, planner.outcomes, slots, planner.owners, found.claimed)


class _Planner:
    def __init__(self, requests: Sequence[VoteRequest], found: Found) -> None:
        self.requests = requests
        self.found = found
        self.owners = _owners(requests)
        self.state = dict(found.slots)
        self.events: list[tuple[int, VoteCast]] = []
        self.outcomes: list[Outcome | Pending] = []

    def outcome(self, n: int, request: VoteRequest) -> Outcome | Pending:
        key = request.key
        if key is not None and self.owners[key] != n:
            return self._repeat(request, self.owners[key])
        if key is not None and key in self.found.stored:
            return _replayed(request.command, self.found.stored[key])
        if request.command.agent_id in self.found.revoked:
            return Revoked(str(request.command.agent_id))
        return self._decide(n, request)

    def _decide(self, n: int, request: VoteRequest) -> Outcome | Pending:
        """Decide one request against its slot as the batch has left it so far."""
        command = request.command
        slot, last = self.state.get(request.slot, (Slot(), None))
        try:
            item_type = self.found.item_types.get(command.item_id)
            events = decide(command, item_type, slot, self.found.owners.get(command.agent_id))
        except (UnknownItem, ItemTypeMismatch) as exc:
            return exc
        if not events:
            return _reply(command, slot.direction, False, last)
        for event in events:
            slot = evolve(slot, event, None)
            self.events.append((n, event))
        self.state[request.slot] = (slot, last)
        return Pending(n)

    def _repeat(self, request: VoteRequest, owner: int) -> Outcome | Pending:
        """A request with the idempotency key of an earlier one in the batch."""
        if request_hash(request.command) != request_hash(self.requests[owner].command):
            return KeyReuseMismatch(str(request.command.agent_id))
        outcome = self.outcomes[owner]
        if isinstance(outcome, Reply):
            return replace(outcome, replayed=True)
        return outcome


def _replayed(command: CastVote, stored: Stored) -> Outcome:
    if stored.request_hash != request_hash(command):
        return KeyReuseMismatch(str(command.agent_id))
    return Reply(stored.status, stored.body, replayed=True)


def _reply(command: CastVote, previous: Direction, changed: bool, position: int | None) -> Reply:
    body = VoteOut(position, command.item_id, command.direction, previous, changed)
    return Reply(201 if changed else 200, msgspec.json.encode(body), position=position)
