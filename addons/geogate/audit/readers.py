"""Input files -> a stream of RecordedFlow (and Problems), one flow in memory at a time.

`open_input` tells a mitmproxy flow file from a HAR file by its first bytes and checks that it
can be read at all, so that a wrong path or a wrong file is a user error reported before any
work starts. Damage found later (a truncated capture, garbage appended) becomes a fatal Problem
with file and position: the flows before it have been delivered and stay in the report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from geogate.audit import extract
from geogate.audit.flowfile import MAX_LENGTH_DIGITS
from geogate.audit.flowfile import RecordError
from geogate.audit.flowfile import UnsupportedVersion
from geogate.audit.flowfile import states
from geogate.audit.harstream import HarScanner
from geogate.audit.harstream import HarSyntaxError
from geogate.audit.harstream import NotHar
from geogate.audit.model import NotSent
from geogate.audit.model import Problem
from geogate.audit.model import RecordedFlow
from geogate.core.errors import GeogateError

_LENGTH_PREFIX = re.compile(rb"[0-9]{1,12}:")  # how every tnetstring record starts
_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz", b"BZh": "bzip2", b"PK\x03\x04": "zip"}


class InputError(GeogateError):
    """An input that cannot be audited at all: missing, unreadable, or not a flow file or HAR."""


class _Input:
    """What both readers share; each adds `check()` and `flows()`."""

    format = ""
    unit = "flow"

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self.position = 0  # bytes consumed, for progress
        self.ignored = 0  # entries that name no destination (data:, blob: URLs); NotSent ones are yielded


class FlowFileInput(_Input):
    format = "mitmproxy"
    unit = "flow"

    def check(self) -> None:
        with open(self.path, "rb") as fo:
            try:
                next(states(fo), None)
            except UnsupportedVersion as e:
                raise InputError(f"{self.path}: {e}") from None
            except RecordError as e:
                fo.seek(0)
                if _LENGTH_PREFIX.match(fo.read(MAX_LENGTH_DIGITS + 1)):
                    raise InputError(f"{self.path}: damaged mitmproxy flow file: its first flow (at byte 0) "
                                     f"cannot be read: {e}") from None
                raise InputError(f"{self.path}: not a mitmproxy flow file or HAR: {e}") from None

    def flows(self) -> Iterator[RecordedFlow | Problem]:
        with open(self.path, "rb") as fo:
            index = 0
            it = states(fo)
            while True:
                try:
                    item = next(it, None)
                except RecordError as e:
                    yield Problem(self.path, self.unit, index, e.offset or 0, str(e), fatal=True)
                    return
                except OSError as e:  # the disk, not the data: still keep what was read
                    yield Problem(self.path, self.unit, index, self.position, f"read error: {e.strerror or e}", fatal=True)
                    return
                if item is None:
                    return
                offset, state = item
                self.position = fo.tell()
                try:
                    flow = extract.from_state(state, self.path, index)
                except extract.ExtractError as e:
                    yield Problem(self.path, self.unit, index, offset, str(e), fatal=False)
                except extract.MALFORMED_STATE as e:
                    yield Problem(self.path, self.unit, index, offset,
                                  f"malformed flow ({type(e).__name__}: {e})", fatal=False)
                else:
                    yield flow
                index += 1


class HarInput(_Input):
    format = "har"
    unit = "entry"

    def check(self) -> None:
        with open(self.path, "rb") as fo:
            scanner = HarScanner(fo)
            try:
                # Walk to the first entry: what stops before it is not a usable HAR file.
                for _offset, _entry in scanner.entries():
                    break
            except NotHar as e:
                raise InputError(f"{self.path}: not a HAR file: {e}") from None
            except HarSyntaxError as e:
                if not scanner.in_entries:
                    raise InputError(f"{self.path}: not valid JSON at byte offset {e.offset}: {e}") from None

    def flows(self) -> Iterator[RecordedFlow | NotSent | Problem]:
        name = Path(self.path).name
        with open(self.path, "rb") as fo:
            scanner = HarScanner(fo)
            index = 0
            try:
                for offset, entry in scanner.entries():
                    self.position = scanner.offset
                    if isinstance(entry, HarSyntaxError):
                        yield Problem(self.path, self.unit, index, offset, str(entry), fatal=False)
                    else:
                        try:
                            flow = extract.from_har_entry(entry, self.path, index, name)
                        except extract.NotTraffic:
                            self.ignored += 1
                        except extract.ExtractError as e:
                            yield Problem(self.path, self.unit, index, offset, str(e), fatal=False)
                        else:
                            yield flow
                    index += 1
            except (HarSyntaxError, NotHar) as e:
                offset = getattr(e, "offset", scanner.offset)
                yield Problem(self.path, self.unit, index, offset, str(e), fatal=True)
            except OSError as e:  # the disk, not the data: still keep what was read
                yield Problem(self.path, self.unit, index, scanner.offset, f"read error: {e.strerror or e}", fatal=True)
            self.position = self.size


def open_input(path: str) -> FlowFileInput | HarInput:
    """The reader for `path`, checked to be readable. Raises InputError (one line) if not."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, not a flow file or HAR")
    try:
        with open(p, "rb") as fo:
            head = fo.read(64)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            raise InputError(f"{path}: {name}-compressed; decompress it first (geogate reads .mitm flow files and HAR)")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    reader: FlowFileInput | HarInput = HarInput(path) if text.startswith(b"{") else FlowFileInput(path)
    try:
        reader.check()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    return reader
