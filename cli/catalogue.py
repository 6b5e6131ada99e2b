"""Catalogue files for `voteledger items import`: parsing and validation only, no I/O.

A file is CSV (a header naming item_id, item_type and title) or JSON lines (one object a line).
Every row is validated by the HTTP edge's own model, commands.models.ItemIn, so a file may list
exactly what POST /api/v1/items accepts. A bad row is reported with its line number and does not
stop the good ones. A row repeating the item_id of an earlier good row is rejected here; one
repeating an item that already exists is rejected when it is listed (the database decides that).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

from pydantic import ValidationError

from commands.models import ItemIn

Format = Literal["csv", "jsonl"]

_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CSV_COLUMNS = ("item_id", "item_type", "title")


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
            parsed.rejected.append(Rejected(line, _reason(exc)))
            continue
        earlier = first_seen.setdefault(item.item_id, line)
        if earlier != line:
            reason = f"duplicate item_id {item.item_id!r}: already on line {earlier}"
            parsed.rejected.append(Rejected(line, reason))
        else:
            parsed.rows.append(Row(line, item))
    return parsed


def _reason(exc: ValidationError) -> str:
    """pydantic's errors, one `field: message` each, as the HTTP edge's 422 names them."""
    return "; ".join(
        f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"]
        for error in exc.errors(include_url=False)
    )


def _csv_records(text: str) -> Iterator[tuple[int, object] | Rejected]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise CatalogueError(f"empty file: a CSV catalogue starts with {','.join(CSV_COLUMNS)}")
    names = [name.strip() for name in header]
    if sorted(names) != sorted(CSV_COLUMNS):
        raise CatalogueError(
            f"line 1: the header must name the columns {','.join(CSV_COLUMNS)}, "
            f"in any order, got {','.join(header)!r}"
        )
    while True:
        # A quoted field may span lines: a record starts on the line after the previous one ended.
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(line, f"malformed CSV: {exc}")
            continue
        if not values:
            continue  # a blank line
        if len(values) > len(names):
            yield Rejected(line, f"{len(values)} fields, but the header names {len(names)}")
            continue
        # Missing trailing fields stay missing, so ItemIn reports them as the HTTP edge would.
        yield line, dict(zip(names, values, strict=False))


def _jsonl_records(text: str) -> Iterator[tuple[int, object] | Rejected]:
    # Split on newlines only: str.splitlines() also splits on characters JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejected(number, f"invalid JSON: {exc.msg} at column {exc.colno}")
