"""The JSON-lines decision log: one line per decision, written whole at once, safe to rotate.

Every record is one os.write() of a whole line on a file opened with O_APPEND. The kernel
appends each such write at the end of the file as one piece, so several processes writing the
same file never interleave their lines, and after a `copytruncate` rotation the next line goes
to the new end of the file (offset 0), never past it (no hole of NUL bytes). A write that
writes less than the whole line failed: the piece is taken back where no one wrote after it,
and the caller refuses the connection (fail closed).

Rotation tools either move the file away and signal (SIGHUP), or just move it. Both are
handled: `reopen()` is what SIGHUP calls, and every write first checks that the path still
names the file being written (st_dev/st_ino), so lines never go to a file nobody reads.

When the log cannot be written (a full disk, a removed directory) every connection is refused
until it can; that is said in one line when it starts and one when it ends, not per request.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from geogate.core.errors import GeogateError
from geogate.core.record import to_json_line

logger = logging.getLogger("geogate")

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class LogUnwritable(GeogateError):
    """The decision log could not take a record; the connection is refused. Already said once
    by the log itself, so callers need not log it per request."""


class DecisionLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._reopen_requested = False
        self.failing: str | None = None  # why writes fail, while they do
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _FLAGS, 0o666)
        except OSError as e:
            raise GeogateError(f"cannot open decision log {self.path}: {e.strerror or e}") from None
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)

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
        """Append one record. Raises LogUnwritable when it cannot be written: callers fail closed."""
        data = (to_json_line(record) + "\n").encode("utf-8")
        try:
            if self._fd is None or self._reopen_requested or self._moved():
                self._reopen_requested = False
                self.close()
                self._open()
            assert self._fd is not None
            _write_whole(self._fd, data)
        except (OSError, GeogateError) as e:
            self._failed(e)
        if self.failing is not None:
            logger.warning(f"geogate: the decision log {self.path} is written again; connections are decided again")
            self.failing = None

    def _failed(self, error: Exception) -> None:
        why = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
        if self.failing is None:
            logger.error(f"geogate: cannot write the decision log {self.path}: {why}; every connection is refused "
                         "until it can be written (fail closed)")
        self.failing = why
        if isinstance(error, OSError) and error.errno in (errno.EBADF, errno.ESTALE):
            self._fd = None  # reopened on the next record
        raise LogUnwritable(f"decision log {self.path}: {why}") from None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _write_whole(fd: int, data: bytes) -> None:
    """One write of the whole line, or an OSError. A short write (the disk filled up within the
    line) is taken back if no one appended after it, so the file holds whole lines only."""
    while True:
        try:
            written = os.write(fd, data)
            break
        except InterruptedError:  # a signal before anything was written: nothing to take back
            continue
    if written == len(data):
        return
    end = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)
    except OSError:
        pass
    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of {len(data)} bytes)")
