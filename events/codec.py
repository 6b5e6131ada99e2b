"""The one codec for event payloads, built once."""

from __future__ import annotations

import msgspec

from events.types import Event

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def encode_all(events: list[Event]) -> bytes:
    """A JSON array of the events' payloads."""
    return _encoder.encode(events)


def decode(payload: bytes | str) -> Event:
    return _decoder.decode(payload)


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]
