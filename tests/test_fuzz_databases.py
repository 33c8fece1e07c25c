"""Property-based tests of the MMDB reader (geogate.core.databases) on damaged databases.

MaxMind's test databases are mutated (bit flips and overwrites in the search tree, the data
section and the metadata; truncations anywhere). A damaged file either fails to load with
DatabaseError (a one-line user error), or loads and answers lookups; a lookup that hits the
damage raises only what FactsSource turns into a lookup error, and a lookup error blocks even
under a policy whose default is allow (fail closed).

The first two properties read the damaged files with maxminddb's pure-Python reader (MODE_MMAP),
which only ever raises. The third reads them as geogate does, with the C extension (maxminddb
3.2.0, MODE_AUTO's first choice), which aborts (SIGABRT) or segfaults (SIGSEGV) on some damaged
files; geogate walks every file it has not seen before in a separate process first
(geogate.core.dbcheck), so the property is that this test process never dies: every file loads and
answers, or is refused with DatabaseError. See docs/fuzzing.md.

Not generated: metadata whose build_epoch no longer fits a timestamp (OverflowError); that
metadata robustness fix is being made on another branch (see docs/fuzzing.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone
from pathlib import Path

import maxminddb
import pytest
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from maxminddb.errors import InvalidDatabaseError

from geogate.core import dbcheck
from geogate.core.addresses import canonical_host
from geogate.core.addresses import ip_key
from geogate.core.databases import Database
from geogate.core.databases import DatabaseError
from geogate.core.databases import DatabaseSet
from geogate.core.decide import Request
from geogate.core.lookup import FactsSource
from geogate.policy.loader import load_policy_text
from geogate.policy.state import GateState
from mmdb_crashes import CRASHES
from mmdb_crashes import write_crash

MAXMIND = Path(__file__).parent / "data" / "maxmind"
FILES = sorted(MAXMIND.glob("*.mmdb"))
METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
LOOKUP_ERRORS = (InvalidDatabaseError, ValueError, OSError)  # what lookup.FactsSource catches
ALLOW_ALL = load_policy_text(
    "version: 1\nname: allow-all\ndefault: allow\nspecial: lookup\ngeo:\n  unknown: allow\n", "allow-all.yaml"
)
NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)
FEW = settings(max_examples=max(10, settings.default.max_examples // 2))


def _layout(path: Path) -> dict:
    data = path.read_bytes()
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        tree = meta.node_count * meta.record_size * 2 // 8
        networks = [net for net, _rec in reader]
    meta_start = data.rindex(METADATA_MARKER) + len(METADATA_MARKER)
    # addresses inside networks the file really holds, so lookups walk into the data section
    probes = sorted({str(net.network_address) for net in networks[:: max(1, len(networks) // 24)]})
    return {"data": data, "tree": (0, tree), "records": (tree + 16, meta_start - len(METADATA_MARKER)),
            "metadata": (meta_start, len(data)), "probes": probes}


LAYOUTS = {p.name: _layout(p) for p in FILES}


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    layout = LAYOUTS[name]
    data = bytearray(layout["data"])
    for _ in range(draw(st.integers(1, 6))):
        region = draw(st.sampled_from(("tree", "records", "metadata", "anywhere")))
        lo, hi = layout[region] if region != "anywhere" else (0, len(data))
        hi = min(hi, len(data))
        if hi <= lo:
            continue
        at = draw(st.integers(lo, hi - 1))
        kind = draw(st.sampled_from(("flip", "overwrite", "truncate")))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(run)] = run
        else:
            del data[at:]
    return name, bytes(data)


EXTRA_PROBES = st.lists(
    st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)),
    max_size=4,
)


@contextlib.contextmanager
def pure_python_reader() -> Iterator[None]:
    """Open databases with the pure-Python reader, which cannot crash the process, and so without
    the separate check that guards the C extension (see the docstring)."""
    with pytest.MonkeyPatch.context() as mp:
        pure = maxminddb.open_database
        mp.setattr(maxminddb, "open_database", lambda database, mode=None: pure(database, maxminddb.MODE_MMAP))
        mp.setattr(dbcheck, "has_extension", lambda: False)
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-mmdb")


def _open(path: Path) -> Database | None:
    try:
        return Database(path)
    except DatabaseError as e:
        assert str(path) in str(e) and "\n" not in str(e), str(e)
        sig = re.search(r"crashed the MaxMind reader \((\w+)\)", str(e))
        event(f"refused: the separate check died by {sig[1]}" if sig else
              "refused: found by the separate check" if "separate check" in str(e) else "refused")
        return None


def _loads_and_answers_or_is_refused(path: Path, name: str, extra) -> None:
    db = _open(path)
    if db is None:
        return
    event("loaded")
    try:
        assert db.info.build_epoch is not None
        for ip in [ipaddress.ip_address(p) for p in LAYOUTS[name]["probes"]] + extra:
            try:
                db.find(ip)
                db.lookup(ip)
            except LOOKUP_ERRORS:
                pass  # a lookup error: FactsSource reports it and the decision blocks (below)
    finally:
        db.close()


@FEW
@given(damaged(), EXTRA_PROBES)
def test_damaged_database_loads_and_answers_or_is_refused(workdir: Path, case, extra) -> None:
    name, data = case
    path = workdir / name
    path.write_bytes(data)
    with pure_python_reader():
        _loads_and_answers_or_is_refused(path, name, extra)


@FEW
@given(damaged(), EXTRA_PROBES)
def test_damaged_database_through_the_c_extension_never_kills_the_process(workdir: Path, case, extra) -> None:
    """As above with the reader geogate really uses; a crash here would end pytest itself."""
    assert dbcheck.has_extension()
    name, data = case
    path = workdir / f"ext-{name}"
    path.write_bytes(data)
    _loads_and_answers_or_is_refused(path, name, extra)


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_known_crashes_through_the_c_extension_are_refused(tmp_path: Path, crash: str) -> None:
    with pytest.raises(DatabaseError, match="crashed the MaxMind reader"):
        Database(write_crash(tmp_path, crash))


@FEW
@given(damaged(), EXTRA_PROBES)
def test_a_lookup_error_never_allows(workdir: Path, case, extra) -> None:
    name, data = case
    path = workdir / f"set-{name}"
    path.write_bytes(data)
    try:
        with pure_python_reader():
            databases = DatabaseSet.open([path])
    except DatabaseError:
        return
    state = GateState(ALLOW_ALL, databases, FactsSource(databases))
    try:
        for ip in [ipaddress.ip_address(p) for p in LAYOUTS[name]["probes"]] + extra:
            host = canonical_host(str(ip))
            decision = state.decide(Request(host=host, port=443), [ip], now=NOW)
            facts = state.facts.facts_of(ip, ip_key(ip))
            if facts.error:
                assert decision.blocked, (facts.error, decision.reason)
                assert decision.rule == "error"
            else:
                assert not decision.blocked  # allow-all: only a read error can block
    finally:
        databases.close()


def test_an_undamaged_database_never_errors() -> None:
    """The properties above are about damage: the originals answer every probe."""
    for name, layout in LAYOUTS.items():
        db = Database(MAXMIND / name)
        try:
            for p in layout["probes"]:
                db.find(ipaddress.ip_address(p))
        finally:
            db.close()
