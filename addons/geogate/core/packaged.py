"""Where the files shipped inside the package live: the policies and the bundled databases.

In a checkout `geogate/data/policies` and `geogate/data/geoip` are links to the top-level
`policies/` and `geoip/`; a wheel holds copies. Either way the paths below are the ones to read.
"""

from __future__ import annotations

from pathlib import Path

_DATA = Path(__file__).resolve().parents[1] / "data"


def policies_dir() -> Path:
    return (_DATA / "policies").resolve()


def default_policy() -> Path:
    return policies_dir() / "default.yaml"


def geoip_dir() -> Path:
    return (_DATA / "geoip").resolve()
