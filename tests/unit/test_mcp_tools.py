"""The pure parts of the agents' MCP tools and what they rest on: the text a model reads for a
refused call, the query API request of a chart, the rate limit's peek, the API URLs."""

from __future__ import annotations

import json
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.server.mcpserver.exceptions import ToolError

from commands.ratelimit import gcra, gcra_peek
from infra.settings import SettingsError, api_url
from mcp_tools.tools import bearer_of, chart_query, read_after
from mcp_tools.upstream import READ_WAIT_MS, problem_text


def _problem(status: int, detail: str, **extra: object) -> bytes:
    body = {"type": "/problems/x", "title": "T", "status": status, "detail": detail, **extra}
    return json.dumps(body).encode()


def test_a_problem_reads_as_status_title_detail_and_a_hint() -> None:
    body = json.dumps({"title": "Not Found", "detail": "no item 'x' in the catalogue"}).encode()
    text = problem_text(404, {}, body)
    first, hint = text.split("\n")
    assert first == "404 Not Found: no item 'x' in the catalogue"
    assert "get_chart" in hint


def test_a_rate_limit_refusal_says_how_long_to_wait() -> None:
    text = problem_text(429, {"retry-after": "3"}, _problem(429, "too many votes; slow down"))
    assert "429 T: too many votes; slow down" in text
    assert "Retry after 3 s (Retry-After: 3)." in text


def test_validation_errors_name_the_arguments() -> None:
    errors = [{"location": ["body", "item_id"], "message": "too long"}] * 9
    text = problem_text(422, {}, _problem(422, "the request is not valid", errors=errors))
    assert text.count("- item_id: too long") == 5  # bounded


@given(st.binary(max_size=5000), st.integers(100, 599))
def test_any_body_gives_a_bounded_text(body: bytes, status: int) -> None:
    text = problem_text(status, {"retry-after": "soon"}, body)
    assert text.startswith(str(status)) and len(text) < 1000
    assert "Retry after" not in text


def test_chart_requests() -> None:
    assert chart_query("top", "song", 10, None, None) == (
        "/api/v1/top",
        {"item_type": "song", "limit": 10},
    )
    path, params = chart_query("daily", "tool", 5, date(2026, 1, 2), 7)
    assert path == "/api/v1/top/daily"
    assert params == {
        "item_type": "tool",
        "limit": 5,
        "date": "2026-01-02",
        "min_position": 7,
        "wait_ms": READ_WAIT_MS,
    }
    assert chart_query("trending", "song", 1, None, None)[0] == "/api/v1/trending"
    assert chart_query("independent", "song", 3, None, None) == (
        "/api/v1/top",
        {"item_type": "song", "limit": 3, "sort": "independent"},
    )
    with pytest.raises(ToolError, match="daily chart only"):
        chart_query("top", "song", 10, date(2026, 1, 2), None)
    assert read_after(None) == {}


def test_the_bearer_of_an_http_call() -> None:
    assert bearer_of({"authorization": "Bearer k"}) == "Bearer k"
    assert bearer_of({}) is None and bearer_of(None) is None


@given(
    st.floats(0, 100),
    st.floats(1000, 2000),
    st.floats(0.01, 2),
    st.integers(1, 50),
)
def test_peek_counts_what_gcra_would_allow(
    stored: float, now: float, interval: float, burst: int
) -> None:
    """A peek's `remaining` is how many requests in a row GCRA allows now; it charges nothing."""
    tolerance = interval * burst
    tat = now + stored * interval / 10  # somewhere between fresh and spent
    peeked = gcra_peek(tat, now, interval, tolerance)
    allowed, state = 0, tat
    for _ in range(burst + 2):
        decision, state = gcra(state, now, interval, tolerance)
        if not decision.allowed:
            break
        allowed += 1
    assert abs(peeked.remaining - allowed) <= 1  # floats at the very boundary
    assert peeked.allowed == (peeked.remaining > 0)
    assert gcra_peek(tat, now, interval, tolerance) == peeked


def test_peek_of_a_fresh_and_a_spent_agent() -> None:
    fresh = gcra_peek(0.0, 100.0, 0.5, 0.5 * 4)
    assert (fresh.remaining, fresh.reset, fresh.retry_after) == (4, 0.0, 0.0)
    spent = gcra_peek(102.0, 100.0, 0.5, 0.5 * 4)  # four requests just made
    assert (spent.allowed, spent.remaining, spent.reset) == (False, 0, 2.0)
    assert spent.retry_after == pytest.approx(0.5)


def test_api_urls() -> None:
    assert api_url({}, "U", "P", 8001) == "http://127.0.0.1:8001"
    assert api_url({"P": "9001"}, "U", "P", 8001) == "http://127.0.0.1:9001"
    assert api_url({"U": "https://q.example/ "}, "U", "P", 8001) == "https://q.example"
    for bad in ("ftp://q", "q:8001", "http://", "http://q/?x=1"):
        with pytest.raises(SettingsError, match="U"):
            api_url({"U": bad}, "U", "P", 8001)
