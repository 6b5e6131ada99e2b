"""`voteledger items import`: good rows listed as the HTTP edge lists them, bad ones reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cli import catalogue

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(database_url: str, redis_url: str) -> Run:
    """Run `voteledger` in a child process against the session database."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VOTELEDGER_ENV": "development",
        "COLUMNS": "200",  # fewer wrapped messages
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def prefix() -> str:
    """Item ids of this test only: the session database is shared."""
    return f"imp{uuid.uuid4().hex[:8]}"


def _listed(conn: psycopg.Connection, prefix: str) -> dict[str, tuple[str, str, int]]:
    """Items whose id starts with `prefix`: (type, title, ItemListed events for that id)."""
    rows = conn.execute(
        "SELECT i.item_id, i.item_type, i.title, "
        "       (SELECT count(*) FROM events e"
        "        WHERE e.item_id = i.item_id AND e.event_type = 'ItemListed') "
        "FROM items i WHERE i.item_id LIKE %s",
        (f"{prefix}%",),
    ).fetchall()
    return {item_id: (item_type, title, events) for item_id, item_type, title, events in rows}


def _csv(prefix: str) -> str:
    too_long = f"{prefix}-{'x' * 128}"
    return "\n".join(
        [
            "item_id,item_type,title",  # line 1
            f"{prefix}-a,song,First",  # 2
            f"{prefix}-b,album,Wrong type",  # 3
            f"{prefix}-c,song",  # 4: no title
            f"{too_long},tool,Too long",  # 5
            f'{prefix}-d,tool,"A title, with a comma',  # 6: a quoted title over two lines
            'and a newline"',  # 7
            f"{prefix}-a,song,Again",  # 8: repeats line 2
            f"{prefix}-old,song,Not the original",  # 9: already listed
            "",  # 10: blank, skipped
            f"{prefix}-e,song,Last",  # 11
        ]
    )


def _jsonl(prefix: str) -> str:
    def line(**fields: object) -> str:
        return json.dumps(fields)

    return "\n".join(
        [
            line(item_id=f"{prefix}-a", item_type="song", title="First"),  # 1
            '{"item_id": "oops", "item_type": "song",',  # 2: not JSON
            line(item_id=f"{prefix}-b", item_type="album", title="Wrong type"),  # 3
            line(item_id=f"{prefix}-c", item_type="song"),  # 4: no title
            line(item_id=f"{prefix}-{'x' * 128}", item_type="tool", title="Too long"),  # 5
            line(item_id=f"{prefix}-d", item_type="tool", title="Fine"),  # 6
            line(item_id=f"{prefix}-a", item_type="song", title="Again"),  # 7: repeats line 1
            line(item_id=f"{prefix}-old", item_type="song", title="Not the original"),  # 8
            "",  # 9: blank, skipped
            line(item_id=f"{prefix}-e", item_type="song", title="Last"),  # 10
        ]
    )


# Expected rejections: line -> a piece of the reason.
CSV_REJECTED = {
    3: "item_type: Input should be 'song' or 'tool'",
    4: "title: Field required",
    5: "item_id: String should have at most 128 characters",
    8: "duplicate item_id",
    9: "already in the catalogue",
}
JSONL_REJECTED = {
    2: "invalid JSON",
    3: "item_type: Input should be 'song' or 'tool'",
    4: "title: Field required",
    5: "item_id: String should have at most 128 characters",
    7: "duplicate item_id",
    8: "already in the catalogue",
}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [("items.csv", _csv, CSV_REJECTED), ("items.ndjson", _jsonl, JSONL_REJECTED)],
)
def test_mixed_file_imports_good_rows_and_reports_bad_ones(
    run_cli: Run,
    admin_conn: psycopg.Connection,
    tmp_path: Path,
    prefix: str,
    name: str,
    content: Callable[[str], str],
    expected: dict[int, str],
) -> None:
    """Good rows become items and ItemListed events; bad rows are reported by line; exit 1."""
    assert run_cli("items", "add", f"{prefix}-old", "song", "Original").returncode == 0
    path = tmp_path / name
    path.write_text(content(prefix))

    result = run_cli("items", "import", str(path), "--json")

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["imported"] == 3 and report["rejected"] == len(expected)
    assert [r["line"] for r in report["rejections"]] == sorted(expected)
    for rejection in report["rejections"]:
        assert expected[rejection["line"]] in rejection["reason"]
    listed = _listed(admin_conn, prefix)
    titles = {"a": "First", "d": "Fine", "e": "Last"}
    if name.endswith(".csv"):
        titles["d"] = "A title, with a comma\nand a newline"
    assert listed == {
        f"{prefix}-a": ("song", titles["a"], 1),
        f"{prefix}-d": ("tool", titles["d"], 1),
        f"{prefix}-e": ("song", titles["e"], 1),
        f"{prefix}-old": ("song", "Original", 1),  # untouched by the clashing row
    }


def test_clean_file_exits_0_with_a_summary(
    run_cli: Run, admin_conn: psycopg.Connection, tmp_path: Path, prefix: str
) -> None:
    """A file whose rows are all good imports them all and exits 0; --format overrides .txt."""
    path = tmp_path / "catalogue.txt"
    path.write_text(
        "\n".join(
            json.dumps({"item_id": f"{prefix}-{i}", "item_type": "tool", "title": f"T{i}"})
            for i in range(5)
        )
    )

    result = run_cli("items", "import", str(path), "--format", "jsonl")

    assert result.returncode == 0, result.stderr
    assert "imported 5, rejected 0" in result.stdout
    assert len(_listed(admin_conn, prefix)) == 5


def test_many_rejections_show_the_first_50(run_cli: Run, tmp_path: Path, prefix: str) -> None:
    """The human report lists 50 rejected rows and counts the rest; --json lists all."""
    path = tmp_path / "bad.csv"
    path.write_text(
        "item_id,item_type,title\n" + "".join(f"{prefix}-{i},album,T\n" for i in range(60))
    )

    shown = run_cli("items", "import", str(path))
    listed = run_cli("items", "import", str(path), "--json")

    assert shown.returncode == listed.returncode == 1
    assert "imported 0, rejected 60" in shown.stdout
    assert "and 10 more rejected rows" in shown.stdout
    assert len(json.loads(listed.stdout)["rejections"]) == 60


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "No such file"),
        ("items.xlsx", "item_id,item_type,title\n", "--format"),
        ("latin1.csv", b"item_id,item_type,title\nsong-\xe9,song,T\n", "utf-8"),
        ("header.csv", "id,type,title\nsong-1,song,T\n", "header"),
        ("empty.csv", "", "empty file"),
    ],
)
def test_unreadable_file_exits_2(
    run_cli: Run, tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    """A missing, undecodable or headerless file, or an unknown format, exits 2 untouched."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)

    result = run_cli("items", "import", str(path))

    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr


def test_csv_lines_count_from_the_header_and_across_quoted_newlines() -> None:
    """A row's line is where it starts, counting the header, blank lines and multi-line titles."""
    text = 'title,item_id,item_type\n"two\nlines",s-1,song\n\nthird,s-2,nope\n,s-3,tool'
    parsed = catalogue.parse(text, "csv")
    assert [(r.line, r.item.title) for r in parsed.rows] == [(2, "two\nlines")]
    assert [(r.line, r.reason.split(":")[0]) for r in parsed.rejected] == [
        (5, "item_type"),
        (6, "title"),
    ]


def test_rows_validate_exactly_as_the_http_edge_does() -> None:
    """Unknown fields, non-string ids and non-object lines are refused, as POST /items refuses."""
    text = "\n".join(
        [
            '{"item_id": "s-1", "item_type": "song", "title": "t", "extra": 1}',
            '{"item_id": 5, "item_type": "song", "title": "t"}',
            '["s-1", "song", "t"]',
            '{"item_id": "-s", "item_type": "song", "title": "t"}',
        ]
    )
    parsed = catalogue.parse(text, "jsonl")
    assert parsed.rows == []
    assert [r.line for r in parsed.rejected] == [1, 2, 3, 4]
    assert "extra: Extra inputs are not permitted" in parsed.rejected[0].reason
    assert "item_id: String should match pattern" in parsed.rejected[3].reason
