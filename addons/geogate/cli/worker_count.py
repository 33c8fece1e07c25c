"""`--workers N|auto`: how many proxy processes share the listening address."""

from __future__ import annotations

import os

from geogate.core.errors import GeogateError

MAX_WORKERS = 256  # far above any core count geogate runs on; a typo like 1000 is refused


def cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset
    narrow), not merely the cores the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(text: str | int, available: int | None = None) -> int:
    """The number of workers `--workers TEXT` asks for: a whole number from 1, or `auto` (one per core)."""
    value = str(text).strip()
    if value.lower() == "auto":
        return max(1, available if available is not None else cores())
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_WORKERS:
        raise GeogateError(f"--workers {text}: write a whole number from 1 to {MAX_WORKERS}, or auto (one per core)")
    return int(value)
