"""Memory stays bounded: auditing 100,000 flows needs about as much memory as auditing 2,000.

Behavioural, not a timing test: the audit runs as a child process and its peak resident set
size (from wait4) is compared between a small and a 50x larger capture of the same traffic.
Holding the flows (or the JSON records) would add well over 100 MB for 100k flows; streaming
and aggregating keeps the difference to a few MB. Runs in the normal suite (about 30-40 s here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import audit_fixtures as af
from mmdbs import write_flat

SMALL, LARGE = 2_000, 100_000
GROWTH_LIMIT_KB = 24 * 1024


def audit_child(capture: Path, db: Path) -> tuple[int, dict]:
    """Run `geogate audit --format json` on `capture`; (peak RSS in kB, summary line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geogate.cli", "audit", str(capture), "--policy", str(af.DATA / "policy.yaml"),
         "--db", str(db), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = b""
    for line in proc.stdout:  # every decision record streams through; keep only the summary
        last = line
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()[-2000:]
    return usage.ru_maxrss, json.loads(last)


@pytest.mark.e2e
def test_peak_memory_does_not_grow_with_the_number_of_flows(tmp_path: Path) -> None:
    db = write_flat(tmp_path / "audit-test.mmdb", af.TEST_NETWORKS)
    small = af.write_many(tmp_path / "small.mitm", SMALL)
    large = af.write_many(tmp_path / "large.mitm", LARGE)
    assert large.stat().st_size > 100 * 1024 * 1024  # a real 100k-flow capture, ~170 MB

    small_rss, small_summary = audit_child(small, db)
    large_rss, large_summary = audit_child(large, db)

    assert small_summary["totals"]["flows"] == SMALL and large_summary["totals"]["flows"] == LARGE
    assert large_summary["complete"] is True
    # the same 16 destinations whatever the size: aggregation is per destination, not per flow
    assert len(large_summary["destinations"]) == len(small_summary["destinations"])
    assert large_rss - small_rss < GROWTH_LIMIT_KB, (
        f"peak RSS grew from {small_rss} kB ({SMALL} flows) to {large_rss} kB ({LARGE} flows)")
