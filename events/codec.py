"""The one codec for event payloads, built once.

Schema versions: every payload names its type (`type`) and schema version (`v`; a payload without
one is version 1, as every payload before versioning was). A payload of the type's current
version decodes directly. An older one is raised one version at a time by the steps in
`UPCASTERS`, keyed by (type, version), then converted: every event ever recorded reads as the
current shape: the folds never see an old one. Peeking at (type, v) first costs one more
small decode per event, about half a direct decode (the peek still scans the whole object);
deciding from the direct decode instead cannot tell a payload without `v` from a current one
short of a text search, which costs about as much.

A stored payload that decodes neither way (a row written around the application) can be fixed by
an upcaster of a later release: `add_upcaster` registers a function that rewrites the payload's
JSON object into one that decodes; those run only when everything else failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import msgspec

from events.types import Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _owner_is_the_agent(raw: dict[str, Any]) -> dict[str, Any]:
    """v1 -> v2 of AgentRegistered and VoteCast: before owners, each agent was its own."""
    return {**raw, "owner": raw.get("agent_id"), "v": 2}


# (type, version) -> the step that raises a payload of that version by one.
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("AgentRegistered", 1): _owner_is_the_agent,
    ("VoteCast", 1): _owner_is_the_agent,
}
CURRENT: dict[str, int] = {
    str(t.__struct_config__.tag): next(
        f.default for f in msgspec.structs.fields(t) if f.name == "v"
    )
    for t in get_args(Event)
}


class _Envelope(msgspec.Struct, gc=False):
    type: str = ""
    v: int = 1


_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_peek = msgspec.json.Decoder(_Envelope)
_upcasters: list[Upcaster] = []


class DecodeError(ValueError):
    """A payload that is no event, even after every upcaster."""


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_all(events: list[Event]) -> bytes:
    """A JSON array of the events' payloads."""
    return _encoder.encode(events)


def decode(payload: bytes | str) -> Event:
    try:
        envelope = _peek.decode(payload)
        if CURRENT.get(envelope.type) == envelope.v:
            return _decoder.decode(payload)
        return _raised(payload, envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
        if not _upcasters:
            raise DecodeError(str(exc)) from exc
        return _upcast(payload, exc)


def _raised(payload: bytes | str, envelope: _Envelope) -> Event:
    """An older version's payload, raised step by step to the current one and converted."""
    raw = msgspec.json.decode(payload)
    version = envelope.v
    while (step := UPCASTERS.get((envelope.type, version))) is not None:
        raw = step(raw)
        version += 1
    if version != CURRENT.get(envelope.type):
        raise ValueError(f"no upcaster from {envelope.type} v{version}")
    event: Event = msgspec.convert(raw, Event)
    return event


def _upcast(payload: bytes | str, first: Exception) -> Event:
    try:
        raw = msgspec.json.decode(payload)
        for upcaster in _upcasters:
            if isinstance(raw, dict):
                raw = upcaster(raw)
        envelope = msgspec.convert(raw, _Envelope)
        return _raised(msgspec.json.encode(raw), envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
        raise DecodeError(f"{first} (after upcasting: {exc})") from exc


def add_upcaster(upcaster: Upcaster) -> Callable[[], None]:
    """Register `upcaster`; returns a function that removes it again."""
    _upcasters.append(upcaster)
    return lambda: _upcasters.remove(upcaster)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]
