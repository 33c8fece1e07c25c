"""Check a database in a separate process before maxminddb's C extension reads it in this one.

maxminddb's C extension (3.2.0) kills the process on some damaged files: SIGABRT or SIGSEGV
while decoding a record, which no Python code can catch (docs/fuzzing.md). So before a file is
used with the C extension, a child process (`python -m geogate.core.dbcheck SNAPSHOT`) opens it the
same way and walks every record: iterating the reader visits every network of the search tree
and decodes every data record a lookup can reach, with the decoder lookups use. A child that
dies by a signal, exits non-zero, prints nothing usable or takes too long means the file is
refused with a DatabaseError (fail closed), never opened here.

Verdicts are kept by the sha256 of the bytes checked: in memory for this process and in
<cache_dir>/verified.json, so a file is walked once per content. The bundled databases (and
copies installed by `geogate db update`), whose sha256 geogate's own provenance records, are
trusted without a walk. A verdict that the check could not be made (timeout, no child) is not
kept, so the next load tries again.

The child imports nothing but maxminddb: it must not depend on the state of this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_VERIFIED = "verified.json"
_MAX_KEPT = 1024  # verdicts kept on disk (at most ~200 bytes each); the oldest go first
_MIN_TIMEOUT = 60.0  # seconds; plus _SECONDS_PER_MB for each MiB (a country DB walks in ~5-8 s)
_SECONDS_PER_MB = 10.0

_lock = threading.Lock()
_memory: dict[str, str] = {}  # sha256 -> "" (walked and fine) or the reason it was refused


def has_extension() -> bool:
    """True when maxminddb opens files with its C extension (MODE_AUTO's first choice)."""
    try:
        from maxminddb import extension
    except ImportError:
        return False
    return hasattr(extension, "Reader")


def verify(snapshot: Path, path: Path, sha256: str) -> None:
    """Raise DatabaseError (naming `path`) unless the bytes in `snapshot`, whose sha256 is
    `sha256`, were walked safely by a separate process, now or before, or are a database geogate
    ships. `snapshot` is the private copy the caller then opens, so what was checked is what is
    used."""
    from geogate.core.databases import DatabaseError

    with _lock:
        reason = _memory.get(sha256)
    if reason is None and sha256 in _trusted():
        reason = ""
    if reason is None:
        reason = _stored(sha256)
    if reason is None:
        reason, keep = _check(snapshot, os.path.getsize(snapshot))
        if keep:
            _store(sha256, reason)
        else:  # the check could not be made: try again next time
            raise DatabaseError(f"{path}: {reason}")
    with _lock:
        _memory[sha256] = reason
    if reason:
        raise DatabaseError(f"{path}: {reason}")


def _check(snapshot: Path, size: int) -> tuple[str, bool]:
    """(reason to refuse, or "" when fine; whether the verdict may be kept)."""
    timeout = _MIN_TIMEOUT + _SECONDS_PER_MB * size / (1 << 20)
    try:
        proc = _run_child(snapshot, timeout)
    except subprocess.TimeoutExpired:
        return (f"checking every record in a separate process took over {timeout:.0f} s (a damaged "
                "search tree can loop); refusing it: replace the file, or retry if the machine was busy"), False
    except OSError as e:
        return f"cannot run the separate check of the database ({e.strerror or e}); refusing it", False
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return (f"reading it crashed the MaxMind reader ({name}) in a separate check; "
                "the file is damaged: replace it"), True
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if proc.returncode or not isinstance(answer, dict):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        from geogate.core.geo import clean_text

        return (f"the separate check of the database failed (exit status {proc.returncode}: "
                f"{clean_text(last)}); refusing it"), False
    if answer.get("error") and answer.get("stage") == "open":
        # Not an MMDB file at all: nothing was read past the metadata, which the caller's own open
        # checks the same way and refuses with its usual message.
        return "", True
    if answer.get("error"):
        from geogate.core.geo import clean_text

        return (f"corrupt MaxMind DB file ({clean_text(answer['error'])}), found by a separate check "
                "of every record; the file is damaged: replace it"), True
    return "", True


def _run_child(snapshot: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the check (`main`) in a new interpreter; tests count the calls."""
    env = dict(os.environ)
    # the directory holding this package first, however this process found it (e.g. a mitmproxy -s addon)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, "-m", "geogate.core.dbcheck", str(snapshot)],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


# -- the verdicts kept on disk ---------------------------------------------------------------------


def _stored(sha256: str) -> str | None:
    reason = _read_verdicts().get(sha256)
    return reason if isinstance(reason, str) else None


def _read_verdicts() -> dict[str, Any]:
    from geogate.core import bundled

    try:
        data = json.loads((bundled.cache_dir() / _VERIFIED).read_text())
        verdicts = data["verdicts"]
        if data["reader"] != _reader_version() or not isinstance(verdicts, dict):
            return {}  # another maxminddb may crash on other files: walk again
        return verdicts
    except (OSError, ValueError, LookupError, TypeError):
        return {}  # no file, or a damaged one: it only costs walks again


def _store(sha256: str, reason: str) -> None:
    from geogate.core import bundled

    cache = bundled.cache_dir()
    with contextlib.suppress(OSError):  # a read-only cache only costs walks again
        cache.mkdir(parents=True, exist_ok=True)
        with bundled._locked(cache):
            verdicts = _read_verdicts()
            verdicts.pop(sha256, None)
            verdicts[sha256] = reason
            for old in list(verdicts)[: max(0, len(verdicts) - _MAX_KEPT)]:
                del verdicts[old]
            with bundled._atomic(cache / _VERIFIED) as f:
                f.write(json.dumps({"reader": _reader_version(), "verdicts": verdicts}, indent=0).encode() + b"\n")


def _reader_version() -> str:
    """What made the verdicts: the check's format and the maxminddb that was walked."""
    import maxminddb

    return f"1 maxminddb {getattr(maxminddb, '__version__', '?')}"


def _trusted() -> set[str]:
    """The sha256 of every database geogate's own provenance names (bundled, or installed by
    `geogate db update`, which checks the npm tarball's integrity)."""
    from geogate.core import bundled

    try:
        return {str(p.get("sha256")) for p in bundled.provenance()} | {str(e.get("sha256")) for e in bundled._bundled()}
    except Exception:  # a broken provenance file trusts nothing: every file is walked
        return set()


# -- the child -------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Open argv[0] as MODE_AUTO does and decode every record; print one JSON line:
    {"networks": N} or {"error": "..."}. Dying by a signal is the answer this guards against."""
    import maxminddb

    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash here is expected: no core file
    if len(argv) != 1:
        print("usage: python -m geogate.core.dbcheck FILE.mmdb", file=sys.stderr)
        return 2
    try:
        reader = maxminddb.open_database(argv[0], maxminddb.MODE_AUTO)
    except Exception as e:  # not an MMDB file at all: the caller says so as it would in-process
        print(json.dumps({"error": f"{type(e).__name__}: {e}"[:500], "stage": "open"}))
        return 0
    networks = 0
    try:
        with reader:
            reader.metadata()
            for _network, _record in reader:  # as databases._detect does for the first records
                networks += 1
    except Exception as e:  # any Python error is "corrupt"; only a signal is worse
        print(json.dumps({"error": f"{type(e).__name__}: {e}"[:500], "stage": "walk"}))
        return 0
    print(json.dumps({"networks": networks}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
