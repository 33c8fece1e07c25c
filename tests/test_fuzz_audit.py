"""Property-based tests of `geogate audit` on damaged recordings (addons/geogate/audit/).

The real recordings in tests/data/audit are mutated (bytes flipped, inserted and deleted, the
file truncated, two files spliced, HAR entries changed at the JSON level) and audited in-process
through the CLI entry point. Whatever the damage: no traceback, and the exit status is one the
README documents (0 done, 1 --fail-on-block found a block, 2 incomplete input or a user error).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import audit_fixtures as af
from geogate.cli.main import main
from mmdbs import write_flat

DATA = af.DATA
POLICY = str(DATA / "policy.yaml")
HARS = sorted(DATA.glob("*.har"))
FLOW_FILES = sorted(DATA.glob("*.mitm"))
ORIGINALS = {p.name: p.read_bytes() for p in HARS + FLOW_FILES}
EXIT_CODES = {0, 1, 2}
# Each example runs a whole audit (policy and database loaded, report rendered): fewer of them.
FEW = settings(max_examples=max(10, settings.default.max_examples // 3))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_flat(tmp_path_factory.mktemp("fuzz-audit-db") / "audit-test.mmdb", af.TEST_NETWORKS))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-audit")


def _audit(path: Path, db: str, fmt: str = "text", fail_on_block: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["audit", str(path), "--policy", POLICY, "--db", db, "--format", fmt]
    if fail_on_block:
        argv.append("--fail-on-block")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)  # anything but a return here is a traceback for the user
    return code, out.getvalue(), err.getvalue()


def _check(path: Path, data: bytes, db: str, fmt: str, fail_on_block: bool) -> None:
    path.write_bytes(data)
    code, out, err = _audit(path, db, fmt, fail_on_block)
    assert code in EXIT_CODES, (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip(), "exit 2 always says why on stderr"
        assert all(line.startswith("geogate: ") for line in err.splitlines() if line.strip()), err
    if code == 1:
        assert fail_on_block


# -- byte-level mutations ---------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw, names: list[str]) -> tuple[str, bytes]:
    """(name of the original, its bytes after 1-8 random mutations)."""
    name = draw(st.sampled_from(names))
    data = bytearray(ORIGINALS[name])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "splice", "repeat")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from(b'0123456789:,;]}~^!{["\\\x00\xff '))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = ORIGINALS[draw(st.sampled_from(sorted(ORIGINALS)))]
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:]
        elif kind == "repeat":
            length = draw(st.integers(1, 512))
            data[at:at] = data[at : at + length]
    return name, bytes(data)


FORMATS = st.sampled_from(("text", "json", "csv", "html"))


@FEW
@given(mutated_bytes(sorted(p.name for p in FLOW_FILES)), FORMATS, st.booleans())
def test_mutated_flow_files_give_a_documented_exit_code(workdir: Path, db: str, case, fmt: str, fail: bool) -> None:
    name, data = case
    _check(workdir / f"m-{name}", data, db, fmt, fail)


@FEW
@given(mutated_bytes(sorted(p.name for p in HARS)), FORMATS, st.booleans())
def test_mutated_har_files_give_a_documented_exit_code(workdir: Path, db: str, case, fmt: str, fail: bool) -> None:
    name, data = case
    _check(workdir / f"m-{name}", data, db, fmt, fail)


@FEW
@given(st.sampled_from(sorted(ORIGINALS)), st.data())
def test_every_truncation_gives_a_documented_exit_code(workdir: Path, db: str, name: str, data) -> None:
    original = ORIGINALS[name]
    cut = data.draw(st.integers(0, len(original)))
    _check(workdir / f"t-{name}", original[:cut], db, "json", False)


# -- JSON-level mutations of HAR entries ------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
        st.text(max_size=30),
        st.sampled_from(("", "http://", "https://[::1", "http://a:99999/", "ws://x", "data:,x", "1.2.3.4",
                         "::ffff:1.2.3.4", "[::1]", "0x-1", "not a date", "2026-12-03T00:00:00Z", "CONNECT", "\x00")),
    ),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=10), c, max_size=3)),
    max_leaves=10,
)


def _paths(node, prefix=()):
    """Every (path, value) below `node`, paths as tuples of keys and indexes."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_har(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from([p.name for p in HARS]))
    doc = json.loads(ORIGINALS[name])
    entries = doc["log"]["entries"]
    for _ in range(draw(st.integers(1, 6))):
        if not entries:
            break
        entry = entries[draw(st.integers(0, len(entries) - 1))]
        paths = [p for p, _ in _paths(entry) if p]
        kind = draw(st.sampled_from(("replace", "delete", "retype", "entry")))
        if kind == "entry":
            entries[draw(st.integers(0, len(entries) - 1))] = draw(JSON_VALUES)
            continue
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        parent = entry
        for step in path[:-1]:
            parent = parent[step]
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "retype":
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else {"x": value}
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    if draw(st.booleans()):
        doc["log"] = draw(st.one_of(st.just(doc["log"]), JSON_VALUES)) if draw(st.booleans()) else doc["log"]
    return name, json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


@FEW
@given(mutated_har(), FORMATS, st.booleans())
def test_json_mutated_har_entries_give_a_documented_exit_code(workdir: Path, db: str, case, fmt: str, fail: bool) -> None:
    name, data = case
    _check(workdir / f"j-{name}", data, db, fmt, fail)


@FEW
@given(st.binary(max_size=200), FORMATS)
@example(b"", "text")
@example(b"{", "json")
@example(b"\xef\xbb\xbf{\"log\": {\"entries\": [", "json")
@example(b"1:", "text")
@example(b"999999999999:", "text")
def test_arbitrary_bytes_give_a_documented_exit_code(workdir: Path, db: str, data: bytes, fmt: str) -> None:
    _check(workdir / "random.bin", data, db, fmt, False)


def test_the_originals_are_clean(workdir: Path, db: str) -> None:
    """The property above is about damage: the undamaged recordings audit to 0."""
    for name, data in ORIGINALS.items():
        (workdir / name).write_bytes(data)
        code, _out, err = _audit(workdir / name, db)
        assert code == 0, (name, err)
