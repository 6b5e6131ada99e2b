"""Hostile or malformed input to the operator CLI: strict CSV, bounded JSON lines, `items add`
validated as the API validates, and names printed as they are."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from commands.agents import register_agent
from infra.db import pool_for
from infra.settings import Settings
from tests.servers import settings_env


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`voteledger <args>` in a child process with the test's settings."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**settings_env(settings), "COLUMNS": "200"},  # fewer wrapped messages
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def prefix() -> str:
    """Item ids of this test only: the session database is shared."""
    return f"cli{uuid.uuid4().hex[:8]}"


def _titles(conn: psycopg.Connection, prefix: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT item_id, title FROM items WHERE item_id LIKE %s", (f"{prefix}%",)
    ).fetchall()
    return dict(rows)


def _import(settings: Settings, tmp_path: Path, name: str, text: str) -> dict[str, Any]:
    """`items import --json` of `text`; its report."""
    path = tmp_path / name
    path.write_text(text)
    result = cli(settings, "items", "import", str(path), "--json")
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# CSV shapes: (lines after the header, the rejected line numbers, the titles imported by suffix).
CSV_SHAPES = {
    "a quote never closed": (
        ['{p}-a,song,"Never closed', "{p}-b,song,Second", "{p}-c,tool,Third"],
        [2],
        {"b": "Second", "c": "Third"},
    ),
    "a quote closed by a later row's quote": (
        ['{p}-a,song,"Not closed here', "{p}-b,song,Second", '{p}-c,tool,"Third"', "{p}-d,song,D"],
        [2],
        {"b": "Second", "c": "Third", "d": "D"},
    ),
    "a multi-line title, closed": (
        ['{p}-a,song,"Two', 'lines, legitimately"', "{p}-b,song,Second"],
        [],
        {"a": "Two\nlines, legitimately", "b": "Second"},
    ),
    "a stray quote inside a field": (
        ['{p}-a,song,Say "hi"', '{p}-b,song,"Quoted" then text', "{p}-c,song,C"],
        [3],
        {"a": 'Say "hi"', "c": "C"},
    ),
}


@pytest.mark.parametrize("shape", CSV_SHAPES)
def test_csv_rejects_the_malformed_row_and_imports_the_rest(
    settings: Settings, admin_conn: psycopg.Connection, tmp_path: Path, prefix: str, shape: str
) -> None:
    """A quote that is never closed (or closed only by a later row's quote) is rejected at the
    line it opens on, and every later row is still imported; valid multi-line titles import."""
    lines, rejected, titles = CSV_SHAPES[shape]
    text = "\n".join(["item_id,item_type,title", *lines]).replace("{p}", prefix) + "\n"
    report = _import(settings, tmp_path, "items.csv", text)
    assert [r["line"] for r in report["rejections"]] == rejected
    assert all("malformed CSV" in r["reason"] for r in report["rejections"])
    assert _titles(admin_conn, prefix) == {f"{prefix}-{k}": v for k, v in titles.items()}


def test_json_lines_beyond_the_bounds_are_rejected_per_line(
    settings: Settings, admin_conn: psycopg.Connection, tmp_path: Path, prefix: str
) -> None:
    """A line nested 100,000 deep, a 5,000-digit number or a huge line is one rejected line; the
    lines around them are imported."""

    def item(suffix: str) -> str:
        return json.dumps({"item_id": f"{prefix}-{suffix}", "item_type": "song", "title": "T"})

    lines = [
        item("a"),
        "[" * 100_000,
        item("b")[:-1] + ', "n": ' + "9" * 5000 + "}",
        '{"title": "' + "x" * 200_000 + '"}',
        item("c")[:-1] + ', "deep": ' + "[" * 21 + "]" * 21 + "}",
        item("d"),
    ]
    report = _import(settings, tmp_path, "items.jsonl", "\n".join(lines))
    reasons = {r["line"]: r["reason"] for r in report["rejections"]}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "nested 100000 levels" in reasons[2] and "5,000 digits" in reasons[3]
    assert "characters" in reasons[4] and "nested 22 levels" in reasons[5]
    assert set(_titles(admin_conn, prefix)) == {f"{prefix}-a", f"{prefix}-d"}


@pytest.mark.parametrize(
    ("item_id", "item_type", "title", "field"),
    [
        ("-starts-with-a-dash", "song", "T", "item_id"),
        ("has space", "song", "T", "item_id"),
        ("x" * 129, "song", "T", "item_id"),
        ("fine", "album", "T", "item_type"),
        ("fine", "song", "", "title"),
        ("fine", "song", "x" * 301, "title"),
    ],
)
def test_items_add_validates_as_the_api_does(
    settings: Settings,
    admin_conn: psycopg.Connection,
    prefix: str,
    item_id: str,
    item_type: str,
    title: str,
    field: str,
) -> None:
    """`items add` refuses what POST /api/v1/items refuses: exit 2 naming the field, nothing
    listed."""
    full_id = item_id if item_id.startswith("-") or " " in item_id else f"{prefix}{item_id}"
    result = cli(settings, "items", "add", "--", full_id, item_type, title)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{field}:" in result.stderr and "Traceback" not in result.stderr
    row = admin_conn.execute("SELECT count(*) FROM items WHERE item_id = %s", (full_id,))
    assert row.fetchone() == (0,)


def test_items_add_still_lists_a_valid_item(
    settings: Settings, admin_conn: psycopg.Connection, prefix: str
) -> None:
    """A valid item is listed (exit 0), and listing it again exits 1."""
    assert cli(settings, "items", "add", f"{prefix}-ok", "tool", "[b]Bold[/b]").returncode == 0
    assert cli(settings, "items", "add", f"{prefix}-ok", "tool", "Again").returncode == 1
    assert _titles(admin_conn, prefix) == {f"{prefix}-ok": "[b]Bold[/b]"}


MARKUP_NAMES = ["[/bold]", "[red", "[red]red[/red]", "back\\"]


async def test_agents_list_prints_names_as_they_are(settings: Settings) -> None:
    """Names holding rich markup are printed verbatim, and unchanged in the JSON output."""
    tag = uuid.uuid4().hex[:6]
    names = [f"{tag}{name}" for name in MARKUP_NAMES]
    async with pool_for(settings, "command") as pool:
        for name in names:
            await register_agent(pool, name)
    shown = cli(settings, "agents", "list")
    listed = cli(settings, "agents", "list", "--json")
    assert shown.returncode == listed.returncode == 0, shown.stderr + listed.stderr
    assert all(name in shown.stdout for name in names)
    assert {a["name"] for a in json.loads(listed.stdout)} >= set(names)
