"""Whether a process is running: for state files and shared directories that name processes."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: object) -> bool:
    """True while `pid` names a running process (another user's counts); False for a bad pid, a
    process that is gone, or one that has exited but is not reaped yet (a zombie)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
