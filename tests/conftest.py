"""Shared pytest configuration: every decision-log record is checked against the documented
schema, and the Hypothesis profiles of the property-based tests.

- `ci` (the default, used by `make test`): bounded and derandomized, so a run is reproducible
  and the whole tests/test_fuzz_*.py set stays well under a minute on a 2-core machine.
- `fuzz` (`make fuzz`, or HYPOTHESIS_PROFILE=fuzz): many more examples, random seeds, for a
  long hunt. Nothing is written into the repository: the example database is off in both.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck
from hypothesis import settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("ci", max_examples=60, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("fuzz", max_examples=4000, derandomize=False, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def decision_records_match_the_schema(request):
    """Every record any test makes the decision log write must match docs/decision-record.schema.json.
    A mismatch fails the test at its end (raising inside the write would turn into a fail-closed
    refusal, which some tests expect anyway)."""
    if request.node.get_closest_marker("any_records"):
        yield
        return
    from geogate.proxy.decision_log import DecisionLog
    from record_schema import check_record

    write = DecisionLog.write
    mismatches: list[str] = []

    def checked_write(self, record):
        try:
            check_record(record)
        except AssertionError as e:
            mismatches.append(f"{e}\nrecord: {record!r}")
        return write(self, record)

    # set by hand, not with `monkeypatch`: sharing the test's own monkeypatch would change the
    # order in which its patches are undone
    DecisionLog.write = checked_write
    try:
        yield
    finally:
        DecisionLog.write = write
    assert not mismatches, mismatches[0]


def pytest_terminal_summary(terminalreporter):
    """Say how many tests skipped because a system package is missing, and which (system_deps.py)."""
    from system_deps import summary

    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.append(str(longrepr[2]))
    if line := summary(reasons):
        terminalreporter.write_line(line, yellow=True)
