"""The one codec for event payloads, built once.

A stored payload that no longer decodes (a row written around the application, or a type that
changed) is fixed by an upcaster of a later release: `add_upcaster` registers a function that
rewrites the payload's JSON object into one that decodes. Upcasters run only when the direct
decode fails, so they cost nothing for the payloads that decode as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from events.types import Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
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
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        if not _upcasters:
            raise DecodeError(str(exc)) from exc
        return _upcast(payload, exc)


def _upcast(payload: bytes | str, first: msgspec.DecodeError) -> Event:
    try:
        raw = msgspec.json.decode(payload)
        for upcaster in _upcasters:
            if isinstance(raw, dict):
                raw = upcaster(raw)
        event: Event = msgspec.convert(raw, Event)
        return event
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
        raise DecodeError(f"{first} (after upcasting: {exc})") from exc


def add_upcaster(upcaster: Upcaster) -> Callable[[], None]:
    """Register `upcaster`; returns a function that removes it again."""
    _upcasters.append(upcaster)
    return lambda: _upcasters.remove(upcaster)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]
