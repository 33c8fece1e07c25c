"""What a GeoIP database says, as plain values: GeoRecord, DatabaseInfo, and how to show them.

No database library here: the decision engine and the record work on these types alone.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from datetime import date
from datetime import datetime
from datetime import timezone
from typing import Any
from typing import Literal

from geogate.core.addresses import IPAddress


@dataclass(slots=True, eq=False)
class GeoRecord:
    """What one database says about an address; shared by every address with the same record.

    Shared, so never mutated. Compared by identity (eq=False): a cheap, exact dictionary key for
    the decision engine's memo of verdicts.
    """

    source: str
    country: str | None = None
    registered_country: str | None = None
    represented_country: str | None = None
    represented_type: str | None = None
    continent: str | None = None
    subdivisions: tuple[str, ...] = ()  # full ISO 3166-2 codes, largest first: ("GB-ENG",)
    asn: int | None = None
    as_org: str | None = None
    anycast: bool = False


def network_text(ip: IPAddress, prefix_len: int) -> str:
    """The network of a record found for `ip` with `prefix_len`, e.g. "1.2.3.0/24"."""
    return str(ipaddress.ip_network((ip, prefix_len), strict=False))


# -- metadata is untrusted input ------------------------------------------------------------------
# Every metadata field of a database is whatever its writer put there: a build time past the end
# of the calendar, a type string with terminal escapes, a description of megabytes, a field of the
# wrong type (the pure-Python reader does not check types). DatabaseInfo holds only cleaned values;
# build_epoch stays the raw number, and build_date/build_text say when it is not a usable time.

_TEXT_LIMIT = 200
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean_text(value: Any, limit: int = _TEXT_LIMIT) -> str:
    """`value` as one printable line: control, format (bidi) and unassigned characters escaped
    (\\x1b, \\u202e), anything but a string shown by its repr, at most `limit` characters kept."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable() or any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in text if not c.isascii()):
        text = "".join(_escape(c) for c in text)
    return text + ("…" if cut else "")


def _escape(c: str) -> str:
    if c.isascii() and c.isprintable() or not c.isascii() and unicodedata.category(c) not in _UNSAFE_CATEGORIES:
        return c
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def build_date(epoch: Any) -> date | None:
    """The UTC date of a build_epoch, or None when it is not a usable time (not an integer, zero,
    negative, or outside what a date can hold: UINT64_MAX is a valid uint64)."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= 0:
        return None
    try:
        return datetime.fromtimestamp(epoch, timezone.utc).date()
    except (OverflowError, OSError, ValueError):
        return None


def build_text(epoch: Any, today: date | None = None) -> str:
    """How to show a build_epoch: "2026-06-01", "2999-01-01 (in the future)", or "unknown
    (build_epoch 0)" / "invalid (build_epoch 18446744073709551615)" with the raw number."""
    built = build_date(epoch)
    if built is None:
        raw = clean_text(repr(epoch), 40)
        return f"unknown (build_epoch {raw})" if epoch == 0 else f"invalid (build_epoch {raw})"
    if built > (today or datetime.now(timezone.utc).date()):
        return f"{built} (in the future)"
    return str(built)


# How a database's records are laid out (see databases._detect), and what they are about.
DatabaseSchema = Literal["maxmind", "flat"]
DatabaseKind = Literal["country", "city", "asn", "anonymous-ip", "enterprise"]


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    name: str
    path: str
    schema: DatabaseSchema
    kind: DatabaseKind
    type: str  # metadata database_type
    build_epoch: int
    sha256: str
    ip_version: int
    node_count: int
    description: str
    has_country: bool
    has_subdivisions: bool
    has_asn: bool
