"""Address facts that need no database: canonical forms, embedded IPv4, special-purpose ranges.

Everything a policy decides on is an address that will really be dialled, so this module is
strict: host strings are normalised once (IDNA UTS 46, lower case, no trailing dot), anything
that glibc would dial as an IPv4 literal (`0x7f.1`, `2130706433`, `0177.0.0.1`) is read as that
address rather than handed to DNS, and IPv6 forms that carry an IPv4 address expose it so the
caller can check both.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import idna

from geogate.core.ipaddress_private import int_and_version
from geogate.core.ipaddress_private import ip_key  # noqa: F401  (the key the address caches use)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class AddressError(ValueError):
    """A host or address string that cannot be used; the message says why."""


# Special-purpose ranges (IANA registries, RFC 6890 and successors). Order matters only where
# ranges nest: the more specific name must come first.
_SPECIAL_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4-relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmark"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_SPECIAL_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard"),
    ("2001:2::/48", "benchmark"),
    ("2001:10::/28", "orchid"),
    ("2001:20::/28", "orchid"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "ietf-protocol"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "srv6"),
    ("fc00::/7", "ula"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)


def _flatten(
    table: tuple[tuple[str, str], ...], rest: tuple[tuple[str, str], ...] = (),
) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """The table (first match wins) as sorted, disjoint runs: (starts, names), for bisect.

    A decision needs the range of every address it has not seen before, so the lookup is one
    bisect on integers instead of a scan of the table; `rest` ranges match only after all of
    `table` (the catch-all "reserved" parts of IPv6).
    """
    ranges = [
        (int(net.network_address), int(net.broadcast_address), name)
        for net, name in ((ipaddress.ip_network(n), name) for n, name in table + rest)
    ]
    top = max(last for _f, last, _n in ranges)
    cuts = sorted({0} | {first for first, _l, _n in ranges} | {last + 1 for _f, last, _n in ranges if last < top})
    starts: list[int] = []
    names: list[str | None] = []
    for cut in cuts:
        # every range begins and ends on a cut, so the run from `cut` is wholly in or out of it
        name = next((n for first, last, n in ranges if first <= cut <= last), None)
        if not names or names[-1] != name:
            starts.append(cut)
            names.append(name)
    return tuple(starts), tuple(names)


# Outside 2000::/3, the global unicast space, every IPv6 address not named above is reserved.
_V6_RESERVED = (("::/3", "reserved"), ("4000::/2", "reserved"), ("8000::/1", "reserved"))
_V4_STARTS, _V4_NAMES = _flatten(_SPECIAL_V4)
_V6_STARTS, _V6_NAMES = _flatten(_SPECIAL_V6, _V6_RESERVED)


def _prefix(text: str) -> tuple[int, int]:
    """(prefix, shift): an IPv6 address `value` is in the network when value >> shift == prefix."""
    net = ipaddress.IPv6Network(text)
    return int(net.network_address) >> (128 - net.prefixlen), 128 - net.prefixlen


# IPv6 forms that carry an IPv4 address, as integers: recognising one is a shift and a comparison,
# not an `ip in network` test (which builds objects) per form.
_MAPPED = _prefix("::ffff:0:0/96")
_TRANSLATED = _prefix("::ffff:0:0:0/96")
_COMPATIBLE = _prefix("::/96")
_NAT64_WKP = _prefix("64:ff9b::/96")
_NAT64_LOCAL = _prefix("64:ff9b:1::/48")
_SIXTOFOUR = _prefix("2002::/16")
_TEREDO = _prefix("2001::/32")
_LOW32 = 0xFFFFFFFF
# The first 16 bits of every form above: any other address (nearly all traffic) is rejected with
# one shift and one set lookup.
_CARRIER_TOPS = frozenset(
    prefix >> (112 - shift)
    for prefix, shift in (_MAPPED, _TRANSLATED, _COMPATIBLE, _NAT64_WKP, _NAT64_LOCAL, _SIXTOFOUR, _TEREDO)
)

# NAT64 (RFC 6052). The well-known prefix is always /96. Any other prefix (the RFC 8215 local-use
# 64:ff9b:1::/48 or an operator's own) may use any of these layouts, which only the operator knows:
# a policy declares them (`nat64:`), and an address in 64:ff9b:1::/48 outside every declared prefix
# is never guessed at.
NAT64_LENGTHS = (32, 40, 48, 56, 64, 96)
NAT64_WELL_KNOWN = "64:ff9b::/96"
NAT64_LOCAL_USE = "64:ff9b:1::/48"
# Special range names of NAT64 addresses that carry no IPv4 address geogate can trust: the engine
# blocks them whatever the policy says about special ranges (decide.py).
NAT64_UNDECLARED = "nat64-local-undeclared"
NAT64_BAD_U_OCTET = "nat64-nonzero-u-octet"
NAT64_UNDECODED = frozenset({NAT64_UNDECLARED, NAT64_BAD_U_OCTET})
# Built-in transition forms a declared NAT64 prefix must not overlap (it would be read two ways).
BUILTIN_CARRIERS = (
    ("::ffff:0:0/96", "ipv4-mapped"), ("::ffff:0:0:0/96", "ipv4-translated"), ("::/96", "ipv4-compatible"),
    (NAT64_WELL_KNOWN, "nat64 (well-known prefix)"), ("2002::/16", "6to4"), ("2001::/32", "teredo"),
)  # fmt: skip


def nat64_decode(value: int, length: int) -> int | None:
    """The IPv4 address (as an integer) that the IPv6 address `value` carries in the RFC 6052
    layout for a prefix of `length` bits, or None when bits 64-71 (the u-octet) are not zero.

    For /32 to /64 the 32 IPv4 bits start right after the prefix and skip the u-octet; the suffix
    after them is ignored (RFC 6052 section 2.2). For /96 they are the last 32 bits.
    """
    if length == 96:
        return value & _LOW32
    if (value >> 56) & 0xFF:
        return None
    before = 64 - length  # IPv4 bits between the prefix and the u-octet
    after = 32 - before  # IPv4 bits after the u-octet, from bit 72
    return ((value >> 64) & ((1 << before) - 1)) << after | (value >> (56 - after)) & ((1 << after) - 1)


class Nat64Prefixes:
    """The NAT64 prefixes a policy declares (RFC 6052 layouts), ready for classify.

    `tops` is the set of first 16 bits that may carry an IPv4 address at all: the built-in forms
    and the declared prefixes, so an address outside them (nearly all traffic) still costs one
    set lookup. Declared prefixes never overlap each other or a built-in form (the policy loader
    refuses that), so at most one matches.
    """

    __slots__ = ("networks", "tops", "table")

    def __init__(self, networks: tuple[ipaddress.IPv6Network, ...] = ()) -> None:
        self.networks = tuple(networks)
        self.table = tuple(
            (int(n.network_address) >> (128 - n.prefixlen), 128 - n.prefixlen, n.prefixlen, str(n))
            for n in self.networks
        )
        self.tops = _CARRIER_TOPS | frozenset(int(n.network_address) >> 112 for n in self.networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Nat64Prefixes) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def __repr__(self) -> str:
        return f"Nat64Prefixes({[str(n) for n in self.networks]})"

    def __bool__(self) -> bool:
        return bool(self.networks)


NO_NAT64 = Nat64Prefixes()


@dataclass(slots=True)
class Address:
    """One address as it will be dialled, with what can be known about it without a database."""

    ip: IPAddress
    embedded_ipv4: ipaddress.IPv4Address | None = None
    embedding: str | None = None  # ipv4-mapped, ipv4-compatible, nat64, 6to4, teredo, ...
    special: str | None = None  # name of the special-purpose range of the address that decides
    # the NAT64 prefix the address is in, e.g. "64:ff9b:1::/48"; set whether or not it was decoded
    nat64_prefix: str | None = None

    @property
    def text(self) -> str:
        return str(self.ip)


def _embedded(value: int, nat64: Nat64Prefixes = NO_NAT64) -> tuple[int | None, str, str | None] | None:
    """(IPv4 as an integer, form, NAT64 prefix) carried by the IPv6 address `value`, or None.

    A NAT64 address whose IPv4 cannot be read (an undeclared local-use prefix, a u-octet that is
    not zero) gives (None, name of its special range, prefix).
    """
    if value >> 112 not in nat64.tops:
        return None
    for prefix, shift, length, text in nat64.table:  # declared prefixes, before the local-use /48
        if value >> shift == prefix:
            v4 = nat64_decode(value, length)
            return (None, NAT64_BAD_U_OCTET, text) if v4 is None else (v4, "nat64", text)
    if value >> _MAPPED[1] == _MAPPED[0]:
        return value & _LOW32, "ipv4-mapped", None
    if value >> _TRANSLATED[1] == _TRANSLATED[0]:
        return value & _LOW32, "ipv4-translated", None
    if value >> _COMPATIBLE[1] == _COMPATIBLE[0] and value > 1:  # :: and ::1 are not IPv4-compatible
        return value & _LOW32, "ipv4-compatible", None
    if value >> _NAT64_WKP[1] == _NAT64_WKP[0]:
        return value & _LOW32, "nat64", NAT64_WELL_KNOWN
    if value >> _NAT64_LOCAL[1] == _NAT64_LOCAL[0]:
        # RFC 8215 leaves the prefix length (and so the layout) to the operator: never guess it.
        return None, NAT64_UNDECLARED, NAT64_LOCAL_USE
    if value >> _SIXTOFOUR[1] == _SIXTOFOUR[0]:
        return (value >> 80) & _LOW32, "6to4", None
    if value >> _TEREDO[1] == _TEREDO[0]:
        # The client address is stored inverted (RFC 4380 section 4).
        return ~value & _LOW32, "teredo", None
    return None


def embedded_ipv4(
    ip: ipaddress.IPv6Address, nat64: Nat64Prefixes = NO_NAT64,
) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 transition form carries, and the form's name."""
    carried = _embedded(int(ip), nat64)
    if carried is None or carried[0] is None:
        return None
    return ipaddress.IPv4Address(carried[0]), carried[1]


def special_runs(version: int) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """The special-purpose ranges of one family as sorted, disjoint runs (starts, names): the
    run from starts[i] to the next start is wholly in range names[i] (None: global unicast)."""
    return (_V4_STARTS, _V4_NAMES) if version == 4 else (_V6_STARTS, _V6_NAMES)


def special_range(ip: IPAddress) -> str | None:
    """Name of the special-purpose range holding `ip`, or None for a global unicast address."""
    starts, names = (_V4_STARTS, _V4_NAMES) if ip.version == 4 else (_V6_STARTS, _V6_NAMES)
    return names[bisect_right(starts, int(ip)) - 1]


def classify(ip: IPAddress, nat64: Nat64Prefixes = NO_NAT64) -> Address:
    """Canonical Address for an already parsed IP: embedded IPv4 unwrapped, special range named.

    For a transition form the special range is the embedded IPv4's: `::ffff:127.0.0.1` is loopback
    whatever the IPv6 registry says about `::ffff:0:0/96`. `nat64` is the policy's declared NAT64
    prefixes; an address in 64:ff9b:1::/48 outside them (or with a non-zero u-octet) carries no
    IPv4 and is in the special range NAT64_UNDECLARED (NAT64_BAD_U_OCTET).

    Not cached: it is integer arithmetic, cheaper than hashing an ipaddress object for a cache.
    """
    value, version = int_and_version(ip)
    if version == 4:
        return Address(ip, None, None, _V4_NAMES[bisect_right(_V4_STARTS, value) - 1])
    if ip.scope_id:  # type: ignore[union-attr]  # IPv6 here, which has one
        ip = ipaddress.IPv6Address(value)  # the zone id is the dialler's business, not the policy's
    carried = _embedded(value, nat64)
    if carried is not None:
        v4, form, prefix = carried
        if v4 is None:
            return Address(ip, None, None, form, prefix)
        return Address(ip, ipaddress.IPv4Address(v4), form, _V4_NAMES[bisect_right(_V4_STARTS, v4) - 1], prefix)
    return Address(ip, None, None, _V6_NAMES[bisect_right(_V6_STARTS, value) - 1])


# One part of an inet_aton address: hex (at least one digit after 0x), octal, or decimal.
_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """Read `text` the way glibc's inet_aton does (1-4 parts, decimal/octal/hex), else None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        # ASCII digits only, no sign, '_' or spaces: int() accepts all of those, inet_aton none
        if not _ATON_PART.fullmatch(part):
            return None
        try:
            if part[:2].lower() == "0x":
                value = int(part[2:], 16)
            elif len(part) > 1 and part[0] == "0":
                value = int(part[1:], 8)
            else:
                value = int(part)
        except ValueError:  # more digits than int() reads
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(number)


@lru_cache(maxsize=8192)  # called for every request and connection, mostly with the same strings
def parse_ip(text: str) -> IPAddress | None:
    """The IP address `text` spells (brackets, zone id and lax IPv4 forms allowed), else None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        text = text.replace("%25", "%", 1).split("%", 1)[0]
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text.rstrip(".")) if text else None


@lru_cache(maxsize=8192)  # clients repeat names; IDNA encoding costs more than the decision
def canonical_host(host: str) -> str:
    """Lower-case, IDNA (UTS 46) encoded, trailing dots removed; IP literals in canonical form.

    Raises AddressError for a string that is neither an address nor a usable host name.
    """
    host = host.strip()
    if not host:
        raise AddressError("empty host name")
    ip = parse_ip(host)
    if ip is not None:
        return str(classify(ip).ip)
    try:
        name = idna.encode(host.rstrip(".。．｡"), uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as e:
        if host.isascii() and all(c.isalnum() or c in "-._" for c in host):
            name = host.lower()  # e.g. underscores in internal names: not IDNA, but dialable
        else:
            raise AddressError(f"{host!r} is not a valid host name ({e})") from None
    name = name.rstrip(".")
    if not name:
        raise AddressError(f"{host!r} is not a valid host name")
    # IDNA enforces these; the lenient path above must too (DNS: 63 per label, 253 in all)
    if len(name) > 253 or not all(0 < len(label) <= 63 for label in name.split(".")):
        raise AddressError(f"{host!r} is not a valid host name (an empty label, a label over 63 "
                           "characters, or over 253 characters in all)")
    # UTS 46 maps full-width digits and ideographic dots, so an IP literal may only appear now.
    ip = parse_ip(name)
    if ip is not None:
        return str(classify(ip).ip)
    return name


def is_localhost_name(name: str) -> bool:
    """RFC 6761: `localhost` and every name below it are loopback, never sent to DNS."""
    return name == "localhost" or name.endswith(".localhost")


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int | None]:
    """Split `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal."""
    target = target.strip()
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            raise AddressError(f"{target!r}: missing ']' after the IPv6 address")
        host, rest = target[1:end], target[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise AddressError(f"{target!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif target.count(":") == 1:
        host, port_text = target.split(":")
    else:
        return target, default_port  # a name, an IPv4 literal, or a bare IPv6 literal
    # ASCII digits only: str.isdigit() is also true for '²' (int() then raises) and '٨٠'.
    # At most 5 digits before int(): it refuses over 4300 (a plain ValueError, not AddressError).
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or not 0 < int(port_text) < 65536:
        raise AddressError(f"{target!r}: port must be a number from 1 to 65535")
    return host, int(port_text)
