"""Shared pytest configuration: the Hypothesis profiles of the property-based tests.

- `ci` (the default, used by `make test`): bounded and derandomized, so a run is reproducible
  and the whole tests/test_fuzz_*.py set stays well under a minute on a 2-core machine.
- `fuzz` (`make fuzz`, or HYPOTHESIS_PROFILE=fuzz): many more examples, random seeds, for a
  long hunt. Nothing is written into the repository: the example database is off in both.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck
from hypothesis import settings

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("ci", max_examples=60, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("fuzz", max_examples=4000, derandomize=False, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
