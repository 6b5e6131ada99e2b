"""The keyset cursor: it round-trips, and says why it cannot page a list."""

from __future__ import annotations

import pytest

from queries.shapes import BadCursor, Cursor, StaleCursor


def test_a_cursor_decodes_to_what_was_encoded() -> None:
    """encode then decode, for the same list and generation, gives the cursor back."""
    cursor = Cursor(3, "top:song", 0.1 + 0.2, "song-7", 50)
    assert Cursor.decode(cursor.encode(), 3, "top:song") == cursor


def test_a_cursor_of_an_earlier_generation_is_stale() -> None:
    """After a rebuild the cursor is stale (410), a kind of bad cursor."""
    text = Cursor(3, "top:song", 1.0, "song-7", 50).encode()
    with pytest.raises(StaleCursor):
        Cursor.decode(text, 4, "top:song")


@pytest.mark.parametrize(
    ("text", "list_key"),
    [("not-a-cursor", "top:song"), (Cursor(3, "trend:song", 1.0, "s", 1).encode(), "top:song")],
)
def test_malformed_or_foreign_cursors_are_bad_but_not_stale(text: str, list_key: str) -> None:
    """A malformed cursor, or one of another list, is a BadCursor (422), not a StaleCursor."""
    with pytest.raises(BadCursor) as raised:
        Cursor.decode(text, 3, list_key)
    assert not isinstance(raised.value, StaleCursor)
