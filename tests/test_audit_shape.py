"""The audit package's code stays in small pieces: no function past a McCabe complexity of 12,
counted as ruff's C901 counts it (branching statements, not expressions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import audit_fixtures as af

MAX_COMPLEXITY = 12
SOURCES = sorted((af.ROOT / "addons" / "geogate" / "audit").glob("*.py")) + [
    af.ROOT / "addons" / "geogate" / "cli" / "audit.py"]


def _branches(stmts: list[ast.stmt]) -> int:
    n = 0
    for s in stmts:
        if isinstance(s, ast.If):
            n += 1 + _branches(s.body)
            orelse = s.orelse
            while len(orelse) == 1 and isinstance(orelse[0], ast.If):  # elif
                n += 1 + _branches(orelse[0].body)
                orelse = orelse[0].orelse
            n += _branches(orelse)
        elif isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            n += 1 + _branches(s.body) + _branches(s.orelse)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            n += _branches(s.body)
        elif isinstance(s, ast.Match):
            n += sum(1 + _branches(c.body) for c in s.cases)
        elif isinstance(s, (ast.Try, ast.TryStar)):
            n += _branches(s.body) + (1 if s.orelse else 0) + _branches(s.orelse) + _branches(s.finalbody)
            n += sum(1 + _branches(h.body) for h in s.handlers)
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n += 1 + _branches(s.body)
        elif isinstance(s, ast.ClassDef):
            n += _branches(s.body)
    return n


def complexities(path: Path) -> dict[str, int]:
    out = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[f"{path.name}:{node.lineno} {node.name}"] = 1 + _branches(node.body)
    return out


def test_the_counter_counts_like_ruff() -> None:
    sample = ast.parse("def f(x):\n if x:\n  pass\n elif x > 1:\n  pass\n else:\n  for i in x:\n   pass\n"
                       " try:\n  pass\n except A:\n  pass\n except B:\n  pass\n while x:\n  x = x and y\n")
    assert 1 + _branches(sample.body[0].body) == 7


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_function_is_too_complex(path: Path) -> None:
    too_complex = {name: n for name, n in complexities(path).items() if n > MAX_COMPLEXITY}
    assert not too_complex


def test_extract_adds_no_cache_around_cached_functions() -> None:
    from geogate.audit import extract
    from geogate.core import addresses

    cached = {name for name, obj in vars(extract).items()
              if hasattr(obj, "cache_info") and getattr(obj, "__module__", "").startswith("geogate")}
    assert cached <= {"parse_ip", "canonical_host"}
    assert extract.parse_ip is addresses.parse_ip and extract.canonical_host is addresses.canonical_host


def test_an_audit_keeps_no_last_decision() -> None:
    from geogate.audit.auditor import Audit

    assert "last" not in Audit.__init__.__code__.co_names
