"""Stream the entries of a HAR file without loading the file.

HAR exports reach hundreds of megabytes, almost all of it response bodies. This scanner walks
the JSON at byte level to `log.entries`, then cuts out one entry at a time and decodes only that
(with the C json decoder). A string longer than LONG_STRING (a body, in practice) is never held:
it is skipped as it streams past and replaced by {"$omitted_bytes": N}, because the audit needs
its size, not its text; the first PREFIX bytes are kept as {"$prefix": ...}, enough to tell a
`data:` URL from an `https:` one and to read a host. So memory is bounded by the largest entry
without its bodies.

Working on bytes is safe for UTF-8: every byte of a multi-byte character is >= 0x80, so it can
never be mistaken for a quote, a backslash or a bracket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import BinaryIO
from typing import Literal
from typing import overload

CHUNK = 1 << 16
LONG_STRING = 1 << 16
OMITTED = "$omitted_bytes"
PREFIX_KEY = "$prefix"
PREFIX = 512

_NON_WS = re.compile(rb"[^ \t\r\n]")
_STRUCT = re.compile(rb'[][{}"]')
_STRING_STOP = re.compile(rb'["\\]')
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_BOM = b"\xef\xbb\xbf"


class HarSyntaxError(ValueError):
    """The file is not well-formed JSON at `offset`."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class NotHar(ValueError):
    """Well-formed so far, but not shaped like a HAR file (no log.entries array)."""


def _json_safe_prefix(raw: bytes) -> bytes:
    """The longest start of `raw` (the inside of a JSON string) that is itself valid inside a
    JSON string: not ending in the middle of an escape or of a UTF-8 character."""
    for cut in range(len(raw), max(len(raw) - 8, -1), -1):
        try:
            json.loads(b'"' + raw[:cut] + b'"')
            return raw[:cut]
        except ValueError:
            continue
    return b""


_CLOSERS = {0x7B: 0x7D, 0x5B: 0x5D}  # { -> }, [ -> ]


@dataclass(slots=True)
class _Scan:
    """Where HarScanner._composite is inside one value. `out` collects the kept bytes; `seg` is
    where the bytes of the current buffer not yet copied to `out` begin."""

    keep: bool
    start: int  # file offset of the value
    seg: int = 0
    out: bytearray = field(default_factory=bytearray)
    stack: list[int] = field(default_factory=list)
    in_string: bool = False
    skipping: bool = False  # inside a long string whose bytes are being dropped
    string_start: int = 0  # file offset of the opening quote
    string_out: int = 0  # len(out) + bytes of this buffer before the quote, to drop it again
    prefix: bytes = b""  # the start of a long string being dropped
    escape_pending: bool = False  # a backslash ended the previous buffer


class HarScanner:
    def __init__(self, fo: BinaryIO, chunk: int = CHUNK, long_string: int = LONG_STRING) -> None:
        self.fo = fo
        self.chunk = chunk
        self.long_string = long_string
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.in_entries = False

    # -- buffer -----------------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Bytes of the file consumed so far."""
        return self.base + self.pos

    def _more(self) -> bool:
        """Append the next chunk, dropping what has been consumed; False at end of file."""
        if self.eof:
            return False
        data = self.fo.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data
        self.base += self.pos
        self.pos = 0
        return True

    def _error(self, message: str, at: int | None = None) -> HarSyntaxError:
        return HarSyntaxError(message, self.offset if at is None else at)

    def _peek(self) -> int | None:
        """The next non-whitespace byte (not consumed), or None at end of file."""
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            self.pos = m.start() if m is not None else len(self.buf)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def _expect(self, char: bytes) -> None:
        c = self._peek()
        if c != char[0]:
            found = "end of file" if c is None else repr(chr(c))
            raise self._error(f"expected {char.decode()!r}, found {found}")
        self.pos += 1

    # -- values -----------------------------------------------------------------------------
    @overload
    def value(self, keep: Literal[True] = True) -> bytes: ...

    @overload
    def value(self, keep: Literal[False]) -> None: ...

    def value(self, keep: bool = True) -> bytes | None:
        """The raw JSON of the next value (long strings replaced), or None when not kept."""
        c = self._peek()
        if c is None:
            raise self._error("unexpected end of file, expected a value")
        if c in b"{[\"":
            return self._composite(keep)
        while True:
            m = _SCALAR.match(self.buf, self.pos)
            # A match that touches the end of the buffer may go on in the next chunk, and no
            # match may be a literal cut short ("fal"); anything else is decided already.
            if m is not None and m.end() < len(self.buf):
                break
            if m is None and len(self.buf) - self.pos > len(b"false"):
                raise self._error(f"unexpected {chr(c)!r}")
            if not self._more():
                break
        if m is None:
            raise self._error(f"unexpected {chr(c)!r}" if self.pos < len(self.buf) else "unexpected end of file")
        self.pos = m.end()
        return m.group() if keep else None

    def _composite(self, keep: bool) -> bytes | None:
        """An object, array or string, scanned to its end, a buffer at a time."""
        scan = _Scan(keep, self.offset, seg=self.pos)
        i = self.pos
        while True:
            end = self._scan(scan, self.buf, i)
            if end is not None:
                return self._finish(scan.out, scan.seg, end, keep)
            self._carry(scan)
            i = 0

    def _scan(self, scan: _Scan, buf: bytes, i: int) -> int | None:
        """Walk buf from i: the position after the value if it ends in buf, else None."""
        if scan.escape_pending:
            i += 1
            scan.escape_pending = False
        while i < len(buf):
            if scan.in_string:
                i = self._string_end(scan, buf, i)
                if i < 0:
                    return None
                if not scan.stack:
                    return i
                continue
            m = _STRUCT.search(buf, i)
            if m is None:
                return None
            j = m.start()
            ch = buf[j]
            i = j + 1
            if ch == 0x22:
                scan.in_string = True
                scan.string_start = self.base + j
                scan.string_out = len(scan.out) + (j - scan.seg)
            elif ch in b"{[":
                scan.stack.append(ch)
            elif not scan.stack or _CLOSERS[scan.stack.pop()] != ch:
                raise self._error(f"unexpected {chr(ch)!r}", self.base + j)
            elif not scan.stack:
                return i
        return None

    def _string_end(self, scan: _Scan, buf: bytes, i: int) -> int:
        """The position after the quote that closes the current string, or -1 when the string
        goes on past buf."""
        while True:
            m = _STRING_STOP.search(buf, i)
            if m is None:
                return -1
            j = m.start()
            if buf[j] != 0x5C:
                break
            if j + 1 >= len(buf):
                scan.escape_pending = True  # the escaped byte is the first of the next buffer
                return -1
            i = j + 2  # a backslash: skip the escaped byte
        scan.in_string = False
        if scan.skipping:
            scan.skipping = False
            if scan.keep:
                size = self.base + j - scan.string_start - 1
                scan.out += (b'{"' + OMITTED.encode() + b'":' + str(size).encode() + b',"'
                             + PREFIX_KEY.encode() + b'":"' + scan.prefix + b'"}')
            scan.seg = j + 1
        return j + 1

    def _carry(self, scan: _Scan) -> None:
        """The value goes on past this buffer: keep what is needed of it, then read the next."""
        buf = self.buf
        if scan.in_string and not scan.skipping and self.base + len(buf) - scan.string_start > self.long_string:
            scan.skipping = True
            if scan.keep:
                scan.out += buf[scan.seg:]
                scan.prefix = _json_safe_prefix(bytes(scan.out[scan.string_out + 1:scan.string_out + 1 + PREFIX]))
                del scan.out[scan.string_out:]
        elif scan.keep and not scan.skipping:
            scan.out += buf[scan.seg:]
        self.base += len(buf)
        self.buf, self.pos = b"", 0
        scan.seg = 0
        if not self._more():
            what = "string" if scan.in_string else "object or array"
            raise self._error(f"file ends inside a {what} that starts at byte {scan.start}")

    def _finish(self, out: bytearray, seg: int, end: int, keep: bool) -> bytes | None:
        if keep:
            out += self.buf[seg:end]
        self.pos = end
        return bytes(out) if keep else None

    def _key(self) -> str:
        if self._peek() != 0x22:
            raise self._error("expected a string (an object key)")
        raw = self.value()
        try:
            key = json.loads(raw)
        except (ValueError, TypeError):
            raise self._error("invalid object key") from None
        if not isinstance(key, str):  # a key so long it was omitted
            raise self._error("object key too long")
        self._expect(b":")
        return key

    def _members(self) -> Iterator[str]:
        """Keys of the object at the current position; the caller consumes each value."""
        self._expect(b"{")
        if self._peek() == 0x7D:
            self.pos += 1
            return
        while True:
            yield self._key()
            c = self._peek()
            if c == 0x2C:
                self.pos += 1
            elif c == 0x7D:
                self.pos += 1
                return
            else:
                raise self._error("expected ',' or '}' after an object member")

    # -- HAR --------------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[int, Any]]:
        """(byte offset, decoded entry) for each element of log.entries.

        An entry whose JSON is well-formed at the structural level but cannot be decoded (a bad
        escape, say) is yielded as a HarSyntaxError instead, so one bad entry does not end the
        file. Structural damage raises HarSyntaxError; a missing log.entries raises NotHar.
        """
        while len(self.buf) - self.pos < len(_BOM) and self._more():
            pass
        if self.buf.startswith(_BOM, self.pos):
            self.pos += len(_BOM)
        if self._peek() != 0x7B:
            raise NotHar("it does not start with a JSON object")
        found = False
        for key in self._members():
            if key == "log" and not found:
                if self._peek() != 0x7B:
                    raise NotHar('"log" is not an object')
                found = True
                yield from self._log()
            else:
                self.value(keep=False)
        if not found:
            raise NotHar('there is no "log" object')
        if self._peek() is not None:
            raise self._error("data after the end of the HAR document")

    def _log(self) -> Iterator[tuple[int, Any]]:
        found = False
        for key in self._members():
            if key == "entries" and not found:
                found = True
                yield from self._entries()
            else:
                self.value(keep=False)
        if not found:
            raise NotHar('"log" has no "entries" array')

    def _entries(self) -> Iterator[tuple[int, Any]]:
        if self._peek() != 0x5B:
            raise NotHar('"log.entries" is not an array')
        self.pos += 1
        self.in_entries = True
        if self._peek() == 0x5D:
            self.pos += 1
            self.in_entries = False
            return
        while True:
            self._peek()
            offset = self.offset
            raw = self.value()
            try:
                yield offset, json.loads(raw)
            except ValueError as e:
                yield offset, HarSyntaxError(f"entry is not valid JSON ({e})", offset)
            c = self._peek()
            if c == 0x2C:
                self.pos += 1
            elif c == 0x5D:
                self.pos += 1
                self.in_entries = False
                return
            else:
                found = "end of file" if c is None else repr(chr(c))
                raise self._error(f"expected ',' or ']' after an entry, found {found}")
