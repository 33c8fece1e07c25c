"""Read mitmproxy flow files (.mitm, `mitmdump -w`) one record at a time, as flow *states*.

Why not `mitmproxy.io.FlowReader`: after parsing a record it builds a full Flow object from it
(`Flow.from_state`, with type checks on every field), and its tnetstring parser reads the length
prefix a byte at a time; together that is more than half of what auditing a large capture costs.
The audit reads a handful of fields from the state dict, so it parses each record itself and
hands the state to mitmproxy's own `compat.migrate_flow`, exactly as FlowReader does: every
format version FlowReader can upgrade is read here too. tests/test_audit_readers.py checks the
result against FlowReader's flows and mitmproxy's tnetstring parser for every fixture.

A flow file is a plain concatenation of tnetstrings, so a record's offset and size are known
before it is parsed: a truncated or corrupt record is reported with its byte offset, and
everything before it has already been yielded.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Iterator
from typing import Any
from typing import BinaryIO

from mitmproxy.io import compat
from mitmproxy.version import FLOW_FORMAT_VERSION

MAX_LENGTH_DIGITS = 12  # the limit mitmproxy's tnetstring.load enforces
_CHUNK = 1 << 24  # largest single read of a record body


class RecordError(ValueError):
    """A record that is not a valid flow; the message says why, `offset` where the record starts."""

    offset: int | None = None


class UnsupportedVersion(RecordError):
    """A well-formed record in a flow format version the audit does not read."""


OLDEST_FORMAT = 11  # the oldest format tested (tests/data/audit/legacy-v11.mitm)
SUPPORTED = f"geogate audit reads flow format versions {OLDEST_FORMAT} to {FLOW_FORMAT_VERSION}"


# -- tnetstring ---------------------------------------------------------------------------------

_NO_KEY = object()


def _container(data: bytes, start: int, stop: int, is_dict: bool) -> Any:
    """The dict or list whose items lie in data[start:stop]. Leaves are decoded inline: most
    elements of a flow are short byte strings, and a call per element would double the cost.
    Malformed input surfaces as ValueError/IndexError, which the callers turn into RecordError."""
    out: Any = {} if is_dict else []
    key: Any = _NO_KEY
    v: Any
    p = start
    while p < stop:
        colon = data.index(b":", p, p + MAX_LENGTH_DIGITS + 1)
        s = colon + 1
        e = s + int(data[p:colon])
        tag = data[e]
        if tag == 0x2C:  # , bytes
            v = data[s:e]
        elif tag == 0x3B:  # ; str
            v = data[s:e].decode("utf-8")
        elif tag == 0x7D or tag == 0x5D:  # } dict, ] list
            v = _container(data, s, e, tag == 0x7D)
        elif tag == 0x23:  # # int
            v = int(data[s:e])
        else:
            v = _rare_leaf(data, s, e, p)
        p = e + 1
        if not is_dict:
            out.append(v)
        elif key is _NO_KEY:
            key = v
        else:
            out[key] = v
            key = _NO_KEY
    if p != stop or key is not _NO_KEY:
        raise RecordError(f"malformed {'dictionary' if is_dict else 'list'} at {start}")
    return out


def _rare_leaf(data: bytes, s: int, e: int, p: int) -> Any:
    """A null, boolean or float (tag at data[e]): kept out of _container, whose inline cases are
    the leaves flows hold most of."""
    tag = data[e]
    if tag == 0x7E:  # ~ null
        if e != s:
            raise RecordError(f"invalid null at {p}")
        return None
    if tag == 0x21:  # ! bool
        if data[s:e] not in (b"true", b"false"):
            raise RecordError(f"invalid boolean at {p}")
        return data[s:e] == b"true"
    if tag == 0x5E:  # ^ float
        return float(data[s:e])
    raise RecordError(f"unknown type tag {chr(tag)!r} at {e}")


def _parse(data: bytes, pos: int) -> tuple[Any, int]:
    """The tnetstring value starting at data[pos], and the position after it."""
    colon = data.index(b":", pos, pos + MAX_LENGTH_DIGITS + 1)
    stop = colon + 1 + int(data[pos:colon])
    return _container(data, pos, stop + 1, False)[0], stop + 1


def _guarded(fn, *args):
    try:
        return fn(*args)
    except RecordError:
        raise
    except (ValueError, UnicodeDecodeError, IndexError, RecursionError, TypeError) as e:  # TypeError: a list or dict as a key
        raise RecordError(f"malformed value ({type(e).__name__}: {e})") from None


def parse_record(raw: bytes) -> Any:
    """One complete tnetstring (as read by `read_record`) -> Python value, like tnetstring.loads."""
    value, end = _guarded(_parse, raw, 0)
    if end != len(raw):
        raise RecordError("trailing bytes inside the record")
    return value


def parse_flow_record(raw: bytes) -> tuple[dict, Any]:
    """A flow record -> (state in the current format, the version it was written in)."""
    return migrate(parse_record(raw))


def read_record(fo: BinaryIO) -> bytes | None:
    """The raw bytes of the next tnetstring in `fo`, or None at a clean end of file."""
    first = fo.read(1)
    if not first:
        return None
    prefix = first
    while prefix[-1:].isdigit():
        if len(prefix) > MAX_LENGTH_DIGITS:
            raise RecordError("absurdly large length prefix")
        c = fo.read(1)
        if not c:
            raise RecordError("file ends inside a length prefix")
        prefix += c
    if prefix[-1:] != b":" or len(prefix) == 1:
        raise RecordError("missing or invalid length prefix (not a tnetstring)")
    length = int(prefix[:-1])
    # Read at most what the file holds: read(n) allocates n bytes first, and a damaged prefix
    # may announce up to a terabyte (MemoryError). One read for every record under _CHUNK.
    body = fo.read(min(length + 1, _CHUNK))
    if len(body) == _CHUNK and length + 1 > _CHUNK:
        parts = [body]
        got = len(body)
        while got < length + 1:
            part = fo.read(min(length + 1 - got, _CHUNK))
            if not part:
                break
            parts.append(part)
            got += len(part)
        body = b"".join(parts)
    if len(body) < length + 1:
        raise RecordError(f"file ends inside a record: {length + 1} bytes announced, {len(body)} present")
    return prefix + body


# -- flow states --------------------------------------------------------------------------------

def _check_version(version: Any) -> None:
    """Refuse formats older than the oldest the audit is tested against, before mitmproxy's
    upgrade code, which would otherwise fail on them as if the record were damaged."""
    if isinstance(version, bool):
        return
    if isinstance(version, int):
        shown = str(version)
    elif isinstance(version, (list, tuple)) and version and all(isinstance(p, int) for p in version):
        shown = ".".join(map(str, version))  # before format 4, mitmproxy's own version number
    else:
        return
    if isinstance(version, int) and version >= OLDEST_FORMAT:
        return
    raise UnsupportedVersion(f"unsupported flow format version {shown}, older than the audit reads; {SUPPORTED} "
                             "(`mitmdump -nr OLD -w NEW` may rewrite it in the current format)")


def migrate(state: Any) -> tuple[dict, int | tuple]:
    """The state upgraded to the current flow format by mitmproxy itself, and its original version."""
    if not isinstance(state, dict):
        raise RecordError(f"a flow record must be a dictionary, not {type(state).__name__}")
    version = state.get(b"version", state.get("version"))
    if version is None:
        raise RecordError("record has no flow format version")
    _check_version(version)
    try:
        upgraded = compat.migrate_flow(state)
    except ValueError as e:
        if isinstance(version, int) and version > FLOW_FORMAT_VERSION:  # mitmproxy's message says which
            raise UnsupportedVersion(f"unsupported flow format version {version}, newer than this mitmproxy "
                                     f"reads ({str(e).rstrip('.')}); {SUPPORTED}") from None
        raise RecordError(str(e)) from None
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise RecordError(f"flow format version {version!r} record is malformed ({type(e).__name__}: {e})") from None
    if upgraded.get("version") != FLOW_FORMAT_VERSION:
        raise RecordError(f"record could not be upgraded from flow format version {version!r}")
    return upgraded, version if isinstance(version, int) else tuple(version)


def states(fo: BinaryIO) -> Iterator[tuple[int, dict]]:
    """(offset, current-format state) for each flow record in `fo`.

    Raises RecordError, with `offset` set to where the bad record starts, at the first record
    that cannot be read; everything before it has been yielded.
    """
    pending: dict[Hashable, dict] = {}  # by the flow's id, as recorded (a file may hold any value there)
    while True:
        offset = fo.tell()
        try:
            raw = read_record(fo)
            if raw is None:
                break
            state, version = parse_flow_record(raw)
        except RecordError as e:
            e.offset = offset
            yield from _flush(pending)  # read before the damage, so still evidence
            raise
        # Before format 12 a WebSocket was two records: the handshake, then the messages.
        # mitmproxy's upgrade turns the second into a copy of the handshake that carries the
        # messages (marked "duplicated"), so counting both would count the handshake twice.
        # Hold old handshakes back until their messages arrive; unmatched ones still count.
        if _older_than_12(version):
            meta = state.get("metadata") or {}
            if meta.get("websocket") is True and state.get("websocket") is None:
                pending[state.get("id")] = {"offset": offset, "state": state}
                continue
            if "duplicated" in meta:
                held = pending.pop(state.get("id"), None)
                if held is not None:
                    offset = held["offset"]
        yield offset, state
    yield from _flush(pending)


def _flush(pending: dict[Hashable, dict]) -> Iterator[tuple[int, dict]]:
    for held in pending.values():
        yield held["offset"], held["state"]
    pending.clear()


def _older_than_12(version: int | tuple) -> bool:
    return isinstance(version, tuple) or version < 12
