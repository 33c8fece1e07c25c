"""Databases that would crash maxminddb's C extension are refused (geogate.core.dbcheck).

The damaged files of tests/mmdb_crashes.py kill a process that reads them with the C extension
(SIGABRT, SIGSEGV). geogate walks a database it has not seen before in a separate process first,
so they are refused with a DatabaseError: at Database(), in the CLI, and at a reload, which keeps
the last good state.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geogate.core import dbcheck
from geogate.core.databases import Database
from geogate.core.databases import DatabaseError
from geogate.proxy.reload import LiveState
from geogate.proxy.reload import Source
from mmdb_crashes import CRASHES
from mmdb_crashes import MAXMIND
from mmdb_crashes import write_crash
from mmdbs import write_flat
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import write_db
from proxy_support import write_policy
from test_reload import FakeClock
from test_reload import blocked

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dbcheck.has_extension(), reason="maxminddb has no C extension here")


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The children dbcheck starts, in a process that has seen no database (fresh caches)."""
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dbcheck, "_memory", {})
    calls: list[Path] = []
    real = dbcheck._run_child

    def counting(snapshot: Path, timeout: float):
        calls.append(Path(snapshot))
        return real(snapshot, timeout)

    monkeypatch.setattr(dbcheck, "_run_child", counting)
    return calls


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_the_reproducers_really_crash_the_c_extension(tmp_path: Path, name: str) -> None:
    """What the rest of this file guards against: the recipe still kills a process."""
    path = write_crash(tmp_path, name)
    code = ("import sys, maxminddb\nr = maxminddb.open_database(sys.argv[1], maxminddb.MODE_MMAP_EXT)\n"
            "for _ in r: pass\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == -getattr(signal, CRASHES[name][2])


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_a_crashing_database_is_refused_in_one_line(tmp_path: Path, spawns: list[Path], name: str) -> None:
    path = write_crash(tmp_path, name)
    with pytest.raises(DatabaseError) as err:
        Database(path)
    message = str(err.value)
    assert message == (f"{path}: reading it crashed the MaxMind reader ({CRASHES[name][2]}) in a separate "
                       "check; the file is damaged: replace it")
    assert err.value.__cause__ is None
    assert len(spawns) == 1
    with pytest.raises(DatabaseError, match="crashed the MaxMind reader"):
        Database(path)  # the verdict is kept: refused again without a walk
    assert len(spawns) == 1


@pytest.mark.parametrize("command", [("explain", "8.8.8.8"), ("db", "info")])
@pytest.mark.parametrize("name", ["city-segv", "asn-abrt"])
def test_the_cli_refuses_a_crashing_database_in_one_line(tmp_path: Path, name: str, command) -> None:
    path = write_crash(tmp_path, name)
    env = {**os.environ, "GEOGATE_CACHE_DIR": str(tmp_path / "cache")}
    verb, rest = command
    args = [verb, "--db", str(path), rest] if verb == "explain" else [verb, rest, "--db", str(path)]
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # the usual error code, not a signal
    assert proc.stderr == f"geogate: {path}: reading it crashed the MaxMind reader ({CRASHES[name][2]}) " \
                          "in a separate check; the file is damaged: replace it\n"
    assert proc.stdout == ""


def test_a_reload_to_a_crashing_database_keeps_the_last_good_state(tmp_path: Path, spawns, caplog) -> None:
    policy, db = write_policy(tmp_path / "policy.yaml"), write_db(tmp_path / "geo.mmdb")
    clock = FakeClock()
    live = LiveState(Source(str(policy), (str(db),)), clock=clock)
    try:
        good = live.state
        assert not blocked(live, ALLOWED_IP) and blocked(live, BLOCKED_IP)
        write_crash(tmp_path, "city-segv").replace(db)
        with caplog.at_level("ERROR", logger="geogate"):
            for _ in range(6):
                clock.now += max(live.settle, live.poll_settle) + 0.1
                assert not live.poll()
        assert live.state is good
        assert not blocked(live, ALLOWED_IP) and blocked(live, BLOCKED_IP)
        errors = [r.getMessage() for r in caplog.records if "reload failed" in r.getMessage()]
        assert len(errors) == 1 and "crashed the MaxMind reader (SIGSEGV)" in errors[0], errors
    finally:
        live.stop()


@pytest.mark.parametrize("name", sorted(p.name for p in MAXMIND.glob("*.mmdb")))
def test_good_databases_load_after_one_walk(tmp_path: Path, spawns: list[Path], name: str) -> None:
    db = Database(MAXMIND / name)
    db.close()
    assert len(spawns) == 1
    Database(MAXMIND / name).close()
    assert len(spawns) == 1  # the second open of the same content starts no child


def test_the_verdict_is_kept_on_disk_and_a_damaged_cache_is_ignored(tmp_path: Path, spawns, monkeypatch) -> None:
    path = write_flat(tmp_path / "fresh.mmdb", {"198.51.100.0/24": "NZ"})
    Database(path).close()
    assert len(spawns) == 1
    monkeypatch.setattr(dbcheck, "_memory", {})  # as a new process
    Database(path).close()
    assert len(spawns) == 1
    verified = tmp_path / "cache" / "verified.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() in json.loads(verified.read_text())["verdicts"]
    verified.write_text("{not json")
    monkeypatch.setattr(dbcheck, "_memory", {})
    Database(path).close()  # walks again
    assert len(spawns) == 2
    assert json.loads(verified.read_text())["verdicts"]  # and rewrites it whole


def test_the_check_walks_the_snapshot_that_is_opened(tmp_path: Path, spawns, monkeypatch) -> None:
    path = write_flat(tmp_path / "snap.mmdb", {"198.51.100.0/24": "FJ"})
    seen = []
    real = dbcheck._run_child
    monkeypatch.setattr(dbcheck, "_run_child", lambda snapshot, timeout: (
        seen.append((snapshot, hashlib.sha256(Path(snapshot).read_bytes()).hexdigest())), real(snapshot, timeout))[1])
    db = Database(path)
    db.close()
    (snapshot, sha), = seen
    assert snapshot != path and sha == db.info.sha256
    assert not Path(snapshot).exists()  # the private copy is gone once opened


def test_databases_in_geogates_provenance_are_trusted_without_a_walk(tmp_path: Path, spawns, monkeypatch) -> None:
    path = MAXMIND / "GeoIP2-Country-Test.mmdb"
    geoip = tmp_path / "geoip"
    geoip.mkdir()
    entry = {"name": "test", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "build_epoch": 0}
    (geoip / "provenance.json").write_text(json.dumps({"databases": [entry]}))
    monkeypatch.setenv("GEOGATE_GEOIP_DIR", str(geoip))
    Database(path).close()
    assert spawns == []


def test_a_check_that_cannot_finish_refuses_and_is_tried_again(tmp_path: Path, spawns, monkeypatch) -> None:
    path = write_flat(tmp_path / "slow.mmdb", {"198.51.100.0/24": "WS"})

    def timeout(snapshot: Path, seconds: float):
        spawns.append(snapshot)
        raise subprocess.TimeoutExpired("check", seconds)

    monkeypatch.setattr(dbcheck, "_run_child", timeout)
    with pytest.raises(DatabaseError, match=r"slow\.mmdb: checking every record in a separate process took over"):
        Database(path)
    monkeypatch.undo()
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))
    Database(path).close()  # not remembered as bad


def test_a_walk_error_past_the_sample_is_refused(tmp_path: Path, spawns) -> None:
    """Damage the schema sample never reaches, where a walk raises (a Python error, no crash): it
    used to load and fail only the lookups that reached it; the full walk now refuses it."""
    data = bytearray((MAXMIND / "GeoLite2-ASN-Test.mmdb").read_bytes())
    data[6100] = 0xFF  # a search tree node past the first 64 networks
    path = tmp_path / "walk-error.mmdb"
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseError) as err:
        Database(path)
    assert str(err.value) == (f"{path}: corrupt MaxMind DB file (InvalidDatabaseError: Error reading node: The "
                              "MaxMind DB file's search tree is corrupt), found by a separate check of every "
                              "record; the file is damaged: replace it")
