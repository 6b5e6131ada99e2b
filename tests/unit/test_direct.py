"""Which item reads are answered before routing (queries.direct.parse): only those it can parse
completely; everything else takes the route, which validates and documents the endpoint."""

from __future__ import annotations

import pytest

from queries.direct import parse


def scope(path: str, query: bytes = b"", method: str = "GET", headers: list | None = None) -> dict:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
    }


def test_a_plain_read_is_answered_directly() -> None:
    parsed = parse(scope("/api/v1/items/song-1"))
    assert parsed is not None
    item_id, ask = parsed
    assert item_id == "song-1"
    assert (ask.min_position, ask.wait_ms, ask.if_none_match) == (None, 1000, None)
    assert ask.url == ("/api/v1/items/song-1", b"")


def test_read_your_writes_parameters_and_revalidation_are_taken() -> None:
    headers = [(b"if-none-match", b'"abc"'), (b"if-none-match", b'"later"')]
    parsed = parse(
        scope("/api/v1/items/a.b:c~d", b"min_position=0042&wait_ms=5000", headers=headers)
    )
    assert parsed is not None
    _, ask = parsed
    assert (ask.min_position, ask.wait_ms, ask.if_none_match) == (42, 5000, '"abc"')


@pytest.mark.parametrize(
    ("path", "query", "method"),
    [
        ("/api/v1/items/", b"", "GET"),  # no id
        ("/api/v1/items/song-1/", b"", "GET"),  # a slash: another path
        ("/api/v1/items/a/b", b"", "GET"),
        ("/api/v1/items/-starts-with-dash", b"", "GET"),
        ("/api/v1/items/ends-with-newline\n", b"", "GET"),
        ("/api/v1/items/" + "x" * 129, b"", "GET"),  # too long
        ("/api/v1/items/song-1", b"", "HEAD"),
        ("/api/v1/items/song-1", b"", "POST"),
        ("/api/v1/items/song-1", b"min_position=-1", "GET"),
        ("/api/v1/items/song-1", b"min_position=%2B5", "GET"),  # +5
        ("/api/v1/items/song-1", b"min_position=", "GET"),
        ("/api/v1/items/song-1", b"min_position=1.0", "GET"),
        ("/api/v1/items/song-1", b"min_position=4611686018427387905", "GET"),  # 2**62 + 1
        ("/api/v1/items/song-1", b"wait_ms=5001", "GET"),
        ("/api/v1/items/song-1", b"wait_ms=1&wait_ms=2", "GET"),  # repeated
        ("/api/v1/items/song-1", b"other=1", "GET"),  # unknown: the route decides
        ("/api/v1/itemsx/song-1", b"", "GET"),
    ],
)
def test_anything_else_takes_the_route(path: str, query: bytes, method: str) -> None:
    assert parse(scope(path, query, method)) is None


def test_only_http_is_taken() -> None:
    assert parse({**scope("/api/v1/items/song-1"), "type": "websocket"}) is None
