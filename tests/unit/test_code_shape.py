"""The shape the code keeps: small modules, short functions, the formatter's layout."""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "commands", "events", "infra", "mcp_tools", "projections", "queries")


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                name = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                lengths[name] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_module_exceeds_400_lines() -> None:
    """Every module of the package folders is under 400 lines."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_functions_are_short() -> None:
    """No function exceeds 60 lines, and the median stays at 8 or fewer."""
    lengths = _function_lengths()
    assert {name: n for name, n in lengths.items() if n > 60} == {}
    assert statistics.median(lengths.values()) <= 8


def test_the_formatter_has_the_last_word() -> None:
    """No source file keeps a hand layout against the formatter."""
    sources = [*_modules(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    marker = "fmt: " + "skip"
    assert [str(p.relative_to(ROOT)) for p in sources if marker in p.read_text()] == []
