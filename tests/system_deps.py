"""The system programs some tests drive, each with the Debian package that provides it.

A test that needs one says so with `needs(...)` (a mark) or `skip_unless(...)` (in a fixture); it
then skips with a reason that names the package, and the end of the pytest run says how many tests
skipped for which missing packages (tests/conftest.py, `summary`). tools/install-system-deps
installs the same packages (tests/test_system_deps.py keeps the two lists the same).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

# program -> (Debian package, other names or paths the program goes by)
PROGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "curl": ("curl", ()),
    "chromium": ("chromium", ("/usr/bin/chromium", "chromium-browser")),
    "wrk": ("wrk", ()),
    "ip": ("iproute2", ()),
    "nft": ("nftables", ()),
    "iperf3": ("iperf3", ()),
    "unshare": ("util-linux", ()),
    "prometheus": ("prometheus", ()),
    "squid": ("squid", ("/usr/sbin/squid",)),
    "keepalived": ("keepalived", ("/usr/sbin/keepalived",)),
}
REASON = "missing system package"


def path(program: str) -> str | None:
    """Where `program` is, or None."""
    _package, others = PROGRAMS[program]
    for name in (program, *others):
        found = name if name.startswith("/") and Path(name).exists() else shutil.which(name)
        if found:
            return found
    return None


def missing_reason(*programs: str) -> str | None:
    """The skip reason when any of `programs` is missing, else None."""
    gone = [p for p in programs if path(p) is None]
    if not gone:
        return None
    packages = " ".join(PROGRAMS[p][0] for p in gone)
    return f"{REASON}: {packages} (for {', '.join(gone)}); `make system-deps` installs it as root"


def needs(*programs: str) -> pytest.MarkDecorator:
    reason = missing_reason(*programs)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_unless(*programs: str) -> None:
    if reason := missing_reason(*programs):
        pytest.skip(reason)


def summary(reasons: Iterable[str]) -> str | None:
    """One line for the end of the run: how many tests skipped for which missing packages."""
    per_package: Counter[str] = Counter()
    tests = 0
    for reason in reasons:
        if REASON not in reason:
            continue
        tests += 1
        packages = reason.split(f"{REASON}: ", 1)[1].split(" (", 1)[0].split()
        per_package.update(packages)
    if not tests:
        return None
    listed = ", ".join(f"{pkg} ({n})" for pkg, n in sorted(per_package.items()))
    return (f"{tests} test{'s' if tests != 1 else ''} skipped for missing system packages: {listed}; "
            "`make system-deps` (as root) installs them")
