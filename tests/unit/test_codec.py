from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.codec import CURRENT, DecodeError, decode, encode, event_type
from events.types import AgentRegistered, AgentRevoked, ItemListed, VoteCast

uuids = st.uuids()
texts = st.text(max_size=40)
directions = st.sampled_from(["up", "down", "none"])
item_types = st.sampled_from(["song", "tool"])
times = st.datetimes(timezones=st.just(__import__("datetime").UTC))

events = st.one_of(
    st.builds(AgentRegistered, agent_id=uuids, name=texts, owner=st.none() | texts),
    st.builds(AgentRevoked, agent_id=uuids),
    st.builds(ItemListed, item_id=texts, item_type=item_types, title=texts),
    st.builds(
        VoteCast,
        agent_id=uuids,
        item_id=texts,
        item_type=item_types,
        direction=directions,
        previous=directions,
        previous_cast_at=st.none() | times,
        owner=st.none() | texts,
    ),
)


@given(events)
def test_decode_inverts_encode(event: object) -> None:
    """Every event survives a round trip through the codec unchanged."""
    assert decode(encode(event)) == event  # type: ignore[arg-type]


def test_payload_names_its_type() -> None:
    """The stored payload carries the tag the event_type column repeats."""
    event = AgentRevoked(agent_id=uuid.UUID(int=7))
    assert b'"type":"AgentRevoked"' in encode(event)
    assert event_type(event) == "AgentRevoked"


def test_old_payload_without_optional_field_decodes() -> None:
    """A payload written before an optional field existed still decodes, with the default."""
    payload = (
        '{"type":"VoteCast","agent_id":"00000000-0000-0000-0000-000000000001",'
        '"item_id":"s","item_type":"song","direction":"up","previous":"none"}'
    )
    event = decode(payload)
    assert isinstance(event, VoteCast) and event.previous_cast_at is None


def test_a_payload_without_a_version_is_raised_to_the_current_one() -> None:
    """A v1 payload (no `v`, no `owner`) reads as the current version, the agent its own owner."""
    payload = '{"type":"AgentRegistered","agent_id":"00000000-0000-0000-0000-000000000002"}'
    event = decode(payload)
    assert isinstance(event, AgentRegistered)
    assert (event.v, event.owner) == (CURRENT["AgentRegistered"], str(event.agent_id))


def test_a_version_this_release_does_not_know_is_refused() -> None:
    """A later version than the type's current one is not read as if it were the current one."""
    event = AgentRevoked(agent_id=uuid.UUID(int=7))
    later = encode(event).replace(b'"v":1', b'"v":%d' % (CURRENT["AgentRevoked"] + 1))
    assert later != encode(event)
    with pytest.raises(DecodeError, match="no upcaster"):
        decode(later)
