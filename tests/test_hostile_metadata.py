"""Database metadata is untrusted input: a build_epoch past the end of the calendar (UINT64_MAX),
zero or in the future, a database_type or description with terminal escapes, huge or of the wrong
type. `db info`, `explain`, `audit` and the decision record must show such a database (or refuse it
in one line), never crash, and never pass a control character through unescaped.

The files are real MMDBs whose metadata map tests/mmdbs.rewrite_metadata re-encodes.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import maxminddb
import pytest

import audit_fixtures as af
from geogate.cli.main import main
from geogate.core import bundled
from geogate.core import databases
from geogate.core.databases import Database
from geogate.core.databases import DatabaseError
from geogate.core.errors import GeogateError
from geogate.core.geo import build_text
from geogate.core.geo import clean_text
from mmdbs import I32
from mmdbs import U16
from mmdbs import U32
from mmdbs import rewrite_metadata
from mmdbs import write_flat

UINT64_MAX = 2**64 - 1
EVIL = "evil\x1b[2J\x1b]0;owned\x07\nsecond line\r\u202egnp.exe\x9b31m\x00"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flat(tmp_path_factory.mktemp("hostile") / "base.mmdb", af.TEST_NETWORKS)


@pytest.fixture
def hostile(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """hostile(name, **metadata) -> path of a copy of the base database with that metadata."""
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))  # db info keeps network counts there

    def make(name: str, **changes) -> str:
        return str(rewrite_metadata(base, tmp_path / f"{name}.mmdb", **changes))

    return make


def no_control(text: str) -> bool:
    """Nothing a terminal would act on: newlines between lines are all that is allowed."""
    return not any(unicodedata.category(c) in ("Cc", "Cf") and c != "\n" for c in text)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the reported crash: build_epoch = UINT64_MAX ------------------------------------------------

def test_db_info_with_uint64_max_build_epoch(capsys, hostile) -> None:
    path = hostile("huge", build_epoch=UINT64_MAX)
    code, out, err = run(capsys, "db", "info", "--db", path)
    assert code == 0, err
    assert f"built        invalid (build_epoch {UINT64_MAX})" in out
    assert "its age cannot be told" in out and "Traceback" not in err
    code, out, _err = run(capsys, "db", "info", "--db", path, "--json")
    entry = json.loads(out)[0]
    assert (entry["build_epoch"], entry["built"], entry["age_days"], entry["stale"]) == (UINT64_MAX, None, None, False)
    assert entry["problems"]


def test_explain_with_uint64_max_build_epoch(capsys, hostile) -> None:
    path = hostile("huge", build_epoch=UINT64_MAX)
    code, out, err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--db", path,
                         "--policy", str(af.DATA / "policy.yaml"))
    assert code == 0, err
    assert f"built invalid (build_epoch {UINT64_MAX})" in out
    assert "decision   BLOCK" in out  # the database still answers: only its build time is nonsense
    code, out, _err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--json", "--db", path)
    assert json.loads(out)["databases"][0]["build_epoch"] == UINT64_MAX  # the raw number, in the record


@pytest.mark.parametrize("fmt", ["text", "json", "csv", "html"])
def test_audit_with_uint64_max_build_epoch(capsys, hostile, tmp_path: Path, fmt: str) -> None:
    path = hostile("huge", build_epoch=UINT64_MAX)
    out_file = tmp_path / f"report.{fmt}"
    code, _out, err = run(capsys, "audit", str(af.DATA / "flows.mitm"), "--policy", str(af.DATA / "policy.yaml"),
                          "--db", path, "--format", fmt, "-o", str(out_file))
    assert code == 0, err
    report = out_file.read_text()
    if fmt in ("text", "html"):
        assert f"invalid (build_epoch {UINT64_MAX})" in report
    if fmt == "json":
        summary = json.loads(report.splitlines()[-1])
        assert UINT64_MAX in [d["build_epoch"] for d in summary["databases"]]


# -- every build time ----------------------------------------------------------------------------

@pytest.mark.parametrize(("epoch", "shown"), [
    (1780000000, "2026-05-28"),
    (0, "unknown (build_epoch 0)"),  # unset
    (UINT64_MAX, f"invalid (build_epoch {UINT64_MAX})"),  # past the end of the calendar
    (253402300800, "invalid (build_epoch 253402300800)"),  # 10000-01-01: one second too far
    (253402300799, "9999-12-31 (in the future)"),  # the last second a date can hold
    (10**11, "5138-11-16 (in the future)"),  # absurd, but a date
    (-5, "invalid (build_epoch -5)"),  # not a uint64 (the pure-Python reader allows an int32)
    ("yesterday", "invalid (build_epoch 'yesterday')"),
    (True, "invalid (build_epoch True)"),
    (1.5e9, "invalid (build_epoch 1500000000.0)"),
    (None, "invalid (build_epoch None)"),
])
def test_build_text(epoch, shown: str) -> None:
    assert build_text(epoch) == shown


@pytest.mark.parametrize(("value", "shown"), [
    ("GeoLite2-Country", "GeoLite2-Country"),
    ("Ünïcödé 中文", "Ünïcödé 中文"),  # printable text stays as it is
    ("a\x1b[31mb\x07c\nd", "a\\x1b[31mb\\x07c\\x0ad"),  # C0 controls
    ("x\x9by\x7f", "x\\x9by\\x7f"),  # C1 (CSI) and DEL
    ("abc\u202efed", "abc\\u202efed"),  # bidi override (format character)
    ("line\u2028sep", "line\\u2028sep"),
    (42, "42"),  # not a string: its repr
    ({"en": "x"}, "{'en': 'x'}"),
    ("y" * 300, "y" * 200 + "…"),  # huge: cut
])
def test_clean_text(value, shown: str) -> None:
    assert clean_text(value) == shown
    assert no_control(clean_text(value))


# -- control characters and sizes ----------------------------------------------------------------

def test_control_characters_never_reach_the_terminal_or_the_log(capsys, hostile, tmp_path: Path) -> None:
    path = hostile("evil", database_type=EVIL + "x" * 5000, description={"en": EVIL * 1000, "de": "ok"},
                   languages=[EVIL])
    db = Database(path)
    assert no_control(db.info.type) and len(db.info.type) < 1000
    assert no_control(db.info.description) and len(db.info.description) < 2000
    db.close()
    code, out, err = run(capsys, "db", "info", "--db", path)
    assert code == 0 and no_control(out) and no_control(err)
    code, out, _err = run(capsys, "db", "info", "--db", path, "--json")
    entry = json.loads(out)[0]
    assert no_control(entry["type"]) and no_control(entry["description"])
    code, out, _err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--db", path)
    assert code == 0 and no_control(out)
    code, out, _err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--json", "--db", path)
    assert no_control(out) and no_control(json.loads(out)["databases"][0]["type"])
    report = tmp_path / "audit.txt"
    assert main(["audit", str(af.DATA / "flows.mitm"), "--db", path, "-o", str(report)]) == 0
    assert no_control(report.read_text())


def test_a_file_name_with_control_characters_is_shown_escaped(capsys, base: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "bad\x1b[31mname.mmdb"
    path.write_bytes(base.read_bytes())
    code, out, _err = run(capsys, "db", "info", "--db", str(path))
    assert code == 0 and no_control(out) and "bad\\x1b[31mname" in out


# -- what the pure-Python reader lets through (no type checks on metadata) -------------------------

@pytest.fixture
def python_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader maxminddb falls back to without its C extension: it does not check metadata types."""
    real = maxminddb.open_database
    monkeypatch.setattr(databases.maxminddb, "open_database", lambda path, mode=0: real(path, maxminddb.MODE_MMAP))


@pytest.mark.parametrize(("changes", "type_", "build_epoch", "description"), [
    ({"build_epoch": 0}, "geogate-test-flat", 0, "geogate test database base.mmdb"),
    ({"build_epoch": "yesterday"}, "geogate-test-flat", 0, "geogate test database base.mmdb"),
    ({"build_epoch": I32(-5)}, "geogate-test-flat", -5, "geogate test database base.mmdb"),
    ({"database_type": U32(7)}, "7", None, "geogate test database base.mmdb"),
    ({"database_type": ["a", "b"]}, "['a', 'b']", None, "geogate test database base.mmdb"),
    ({"description": "plain"}, "geogate-test-flat", None, "plain"),
    ({"description": {"en": U16(4), "de": "deutsch"}}, "geogate-test-flat", None, "deutsch"),
    ({"description": [1, 2]}, "geogate-test-flat", None, ""),
    ({"languages": "en", "binary_format_minor_version": U16(999)}, "geogate-test-flat", None, "geogate test database base.mmdb"),
])
def test_wrongly_typed_metadata_is_read_safely(python_reader, hostile, capsys, changes, type_, build_epoch, description) -> None:
    path = hostile("typed", **changes)
    db = Database(path)
    assert (db.info.type, db.info.description) == (type_, description)
    if build_epoch is not None:
        assert db.info.build_epoch == build_epoch
    db.close()
    code, out, err = run(capsys, "db", "info", "--db", path)
    assert code == 0 and "Traceback" not in err and no_control(out)
    code, out, err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--db", path)
    assert code == 0, err


@pytest.mark.parametrize(("changes", "message"), [
    ({"ip_version": U16(5)}, "ip_version 5"),
    ({"ip_version": "6"}, "ip_version '6'"),
    ({"build_epoch": None}, "is not a MaxMind DB"),  # a required field missing
    ({"database_type": None}, "is not a MaxMind DB"),
    ({"node_count": U32(0)}, "holds no records"),
    ({"node_count": U32(2**32 - 1)}, "is not a MaxMind DB"),
    ({"record_size": U16(30)}, "is not a MaxMind DB"),
])
def test_impossible_metadata_is_refused_in_one_line(python_reader, hostile, capsys, changes, message) -> None:
    path = hostile("impossible", **changes)
    with pytest.raises(DatabaseError, match=message):
        Database(path)
    code, _out, err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--db", path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and path in err


@pytest.mark.parametrize("changes", [
    {"build_epoch": UINT64_MAX}, {"database_type": EVIL}, {"node_count": U32(0)}, {"record_size": U16(30)},
    {"binary_format_major_version": U16(3)}, {"ip_version": U16(4)},
])
def test_the_c_reader_either_opens_or_refuses_in_one_line(hostile, capsys, changes) -> None:
    """With the C extension (the default): whatever it accepts geogate shows, the rest is refused."""
    path = hostile("c-reader", **changes)
    code, out, err = run(capsys, "explain", "198.51.100.7", "--no-resolve", "--db", path)
    assert code in (0, 2) and "Traceback" not in err and no_control(out) and no_control(err)


# -- db update refuses a download with an impossible build time -----------------------------------

@pytest.mark.parametrize("epoch", [UINT64_MAX, 10**11])
def test_check_mmdb_refuses_an_impossible_build_time(tmp_path: Path, epoch: int) -> None:
    good = write_flat(tmp_path / "good.mmdb", {"8.8.8.0/24": "US", "1.1.1.0/24": "AU"})
    bad = rewrite_metadata(good, tmp_path / "bad.mmdb", build_epoch=epoch)
    bundled.check_mmdb(good, "good")
    with pytest.raises(GeogateError, match="impossible build time"):
        bundled.check_mmdb(bad, "pkg@1.0")
