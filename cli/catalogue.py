"""Catalogue files for `voteledger items import`: parsing and validation only, no I/O.

A file is CSV (a header naming item_id, item_type and title) or JSON lines (one object a line).
Every row is validated by the HTTP edge's own model, commands.models.ItemIn, so a file may list
exactly what POST /api/v1/items accepts. A bad row is reported with its line number and does not
stop the good ones: that holds for malformed rows too (a CSV quote never closed, a JSON line
nested too deeply or holding a huge number). A row repeating the item_id of an earlier good row is
rejected here; one repeating an item that already exists is rejected when it is listed (the
database decides that).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

from pydantic import ValidationError

from commands.models import ItemIn

Format = Literal["csv", "jsonl"]

_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CSV_COLUMNS = ("item_id", "item_type", "title")
# A valid row is an object of three short strings (ItemIn): these bounds only keep a hostile line
# from costing more than its rejection (the parser recurses once per level, and int() of a long
# digit string is quadratic, so Python refuses those past 4,300 digits with a ValueError).
MAX_JSON_DEPTH = 20
MAX_JSON_DIGITS = 100
MAX_LINE_CHARS = 100_000


class CatalogueError(ValueError):
    """The file as a whole cannot be read as a catalogue (nothing in it is imported)."""


@dataclass(frozen=True, slots=True)
class Row:
    """A valid row, and the line it starts on."""

    line: int
    item: ItemIn


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that is not imported, the line it starts on, and why."""

    line: int
    reason: str


@dataclass(slots=True)
class Parsed:
    """A file's valid rows and rejected rows, each in file order."""

    rows: list[Row] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def format_for(path: PurePath, chosen: Format | None = None) -> Format:
    """The format chosen, or else the one the file's extension names."""
    if chosen is not None:
        return chosen
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise CatalogueError(
            f"cannot tell the format of {path.name!r} from its extension "
            f"({', '.join(_EXTENSIONS)}); choose one with --format csv|jsonl"
        )


def parse(text: str, fmt: Format) -> Parsed:
    """The valid rows of a catalogue file's text, and the rejected ones, in file order."""
    return _validate(_csv_records(text) if fmt == "csv" else _jsonl_records(text))


def _validate(records: Iterable[tuple[int, object] | Rejected]) -> Parsed:
    parsed = Parsed()
    first_seen: dict[str, int] = {}
    for record in records:
        if isinstance(record, Rejected):
            parsed.rejected.append(record)
            continue
        line, data = record
        try:
            item = ItemIn.model_validate(data)
        except ValidationError as exc:
            parsed.rejected.append(Rejected(line, describe(exc)))
            continue
        earlier = first_seen.setdefault(item.item_id, line)
        if earlier != line:
            reason = f"duplicate item_id {item.item_id!r}: already on line {earlier}"
            parsed.rejected.append(Rejected(line, reason))
        else:
            parsed.rows.append(Row(line, item))
    return parsed


def describe(exc: ValidationError) -> str:
    """pydantic's errors, one `field: message` each, as the HTTP edge's 422 names them."""
    return "; ".join(
        f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"]
        for error in exc.errors(include_url=False)
    )


def _csv_records(text: str) -> Iterator[tuple[int, object] | Rejected]:
    records = _csv_lines(text)
    names = _header(next(records, None))
    for record in records:
        if isinstance(record, Rejected):
            yield record
            continue
        line, values = record
        if len(values) > len(names):
            yield Rejected(line, f"{len(values)} fields, but the header names {len(names)}")
        elif values:  # not a blank line
            # Missing trailing fields stay missing, so ItemIn reports them as the HTTP edge would.
            yield line, dict(zip(names, values, strict=False))


def _header(first: tuple[int, list[str]] | Rejected | None) -> list[str]:
    """The column names of a CSV catalogue's first record, or CatalogueError."""
    if first is None:
        raise CatalogueError(f"empty file: a CSV catalogue starts with {','.join(CSV_COLUMNS)}")
    values = [] if isinstance(first, Rejected) else first[1]
    names = [name.strip() for name in values]
    if sorted(names) != sorted(CSV_COLUMNS):
        got = first.reason if isinstance(first, Rejected) else ",".join(values)
        raise CatalogueError(
            f"line 1: the header must name the columns {','.join(CSV_COLUMNS)}, "
            f"in any order, got {got!r}"
        )
    return names


class _Lines:
    """A file's lines for csv.reader, counting how many it has taken (a record may span lines)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.taken = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.taken >= len(self.lines):
            raise StopIteration
        self.taken += 1
        return self.lines[self.taken - 1]


def _csv_lines(text: str) -> Iterator[tuple[int, list[str]] | Rejected]:
    """Each CSV record and the line it starts on.

    A quoted field may span lines, so a quote that is never closed would take the rest of the
    file as one field, silently. csv's strict mode raises instead (at the end of the file, or at
    the next quote, which then closes the field with text after it); the record is rejected at
    its first line and parsing starts again on the line after that one, so every later row
    still counts.
    """
    source = _Lines(io.StringIO(text).readlines())
    reader = csv.reader(source, strict=True)
    while True:
        start = source.taken
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(start + 1, _csv_reason(exc, start, source))
            source.taken = start + 1
            reader = csv.reader(source, strict=True)
            continue
        yield start + 1, values


def _csv_reason(exc: csv.Error, start: int, source: _Lines) -> str:
    if "end of data" in str(exc):
        return "malformed CSV: a quote opened in this row is never closed"
    if source.taken > start + 1:
        return f"malformed CSV: a quote opened in this row runs on to line {source.taken} ({exc})"
    return f"malformed CSV: {exc}"


def _jsonl_records(text: str) -> Iterator[tuple[int, object] | Rejected]:
    # Split on newlines only: str.splitlines() also splits on characters JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield number, _json_value(line)
            except json.JSONDecodeError as exc:
                yield Rejected(number, f"invalid JSON: {exc.msg} at column {exc.colno}")
            except (ValueError, RecursionError) as exc:
                yield Rejected(number, f"invalid JSON: {exc}")


# A JSON string, unrolled so that matching never backtracks; removed before counting brackets.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _json_value(line: str) -> object:
    """One line's JSON value; ValueError for a line beyond the bounds above."""
    if len(line) > MAX_LINE_CHARS:
        raise ValueError(f"a line of {len(line):,} characters (at most {MAX_LINE_CHARS:,})")
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", line)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(f"nested {deepest} levels deep (at most {MAX_JSON_DEPTH})")
    return json.loads(line, parse_int=_bounded_int)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_DIGITS:
        raise ValueError(f"an integer of {len(digits):,} digits (at most {MAX_JSON_DIGITS})")
    return int(digits)
