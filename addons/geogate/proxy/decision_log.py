"""The JSON-lines decision log: one line per decision, flushed at once, safe to rotate.

Rotation tools either move the file away and signal (SIGHUP), or just move it. Both are
handled: `reopen()` is what SIGHUP calls, and every write first checks that the path still
names the file being written (st_dev/st_ino), so lines never go to a file nobody reads.
"""

from __future__ import annotations

import errno
import os
from typing import Any
from typing import BinaryIO

from geogate.core.errors import GeogateError
from geogate.core.record import to_json_line


class DecisionLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._reopen_requested = False
        self._open()

    def _open(self) -> None:
        try:
            f = open(self.path, "ab", buffering=0)
        except OSError as e:
            raise GeogateError(f"cannot open decision log {self.path}: {e.strerror or e}") from None
        st = os.fstat(f.fileno())
        self._file, self._identity = f, (st.st_dev, st.st_ino)

    def reopen(self) -> None:
        """Ask for the file to be reopened before the next line (signal-safe: only sets a flag)."""
        self._reopen_requested = True

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def write(self, record: dict[str, Any]) -> None:
        """Append one record. Raises (OSError, GeogateError) when it cannot be written: callers fail closed."""
        if self._file is None or self._reopen_requested or self._moved():
            self._reopen_requested = False
            self.close()
            self._open()
        assert self._file is not None
        # one write(2) of the whole line on an O_APPEND file: lines from several processes (the
        # workers of `geogate run --workers N`) never interleave
        data = (to_json_line(record) + "\n").encode("utf-8")
        if os.write(self._file.fileno(), data) != len(data):
            raise OSError(errno.ENOSPC, f"short write to the decision log {self.path}")

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
