"""Address facts that need no database: canonical forms, embedded IPv4, special-purpose ranges.

Everything a policy decides on is an address that will really be dialled, so this module is
strict: host strings are normalised once (IDNA UTS 46, lower case, no trailing dot), anything
that glibc would dial as an IPv4 literal (`0x7f.1`, `2130706433`, `0177.0.0.1`) is read as that
address rather than handed to DNS, and IPv6 forms that carry an IPv4 address expose it so the
caller can check both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import idna

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
# (first, last, name) as integers per IP version: a lookup on every decision must be cheap.
_SPECIAL: dict[int, tuple[tuple[int, int, str], ...]] = {
    version: tuple(
        (int(net.network_address), int(net.broadcast_address), name)
        for net, name in ((ipaddress.ip_network(n), name) for n, name in table)
    )
    for version, table in ((4, _SPECIAL_V4), (6, _SPECIAL_V6))
}

# IPv6 forms that carry an IPv4 address, and where it sits.
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64_WKP = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


@dataclass(slots=True)
class Address:
    """One address as it will be dialled, with what can be known about it without a database."""

    ip: IPAddress
    embedded_ipv4: ipaddress.IPv4Address | None = None
    embedding: str | None = None  # ipv4-mapped, ipv4-compatible, nat64, 6to4, teredo, ...
    special: str | None = None  # name of the special-purpose range of the address that decides

    @property
    def text(self) -> str:
        return str(self.ip)


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 transition form carries, and the form's name."""
    if ip in _MAPPED:
        return _low32(ip), "ipv4-mapped"
    if ip in _TRANSLATED:
        return _low32(ip), "ipv4-translated"
    if ip in _COMPATIBLE and int(ip) > 1:  # :: and ::1 are not IPv4-compatible addresses
        return _low32(ip), "ipv4-compatible"
    if ip in _NAT64_WKP:
        return _low32(ip), "nat64"
    if ip in _NAT64_LOCAL:
        # RFC 8215 leaves the prefix length to the operator; /96 is the common deployment.
        return _low32(ip), "nat64"
    if ip in _SIXTOFOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF), "6to4"
    if ip in _TEREDO:
        # The client address is stored inverted (RFC 4380 section 4).
        return ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF), "teredo"
    return None


def special_range(ip: IPAddress) -> str | None:
    """Name of the special-purpose range holding `ip`, or None for a global unicast address."""
    value = int(ip)
    for first, last, name in _SPECIAL[ip.version]:
        if first <= value <= last:
            return name
    if ip.version == 6 and value >> 125 != 1:  # outside 2000::/3, the global unicast space
        return "reserved"
    return None


@lru_cache(maxsize=65536)
def classify(ip: IPAddress) -> Address:
    """Canonical Address for an already parsed IP: embedded IPv4 unwrapped, special range named.

    For a transition form the special range is the embedded IPv4's: `::ffff:127.0.0.1` is loopback
    whatever the IPv6 registry says about `::ffff:0:0/96`.
    """
    if ip.version == 6:
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        carried = embedded_ipv4(ip)
        if carried is not None:
            v4, form = carried
            return Address(ip, v4, form, special_range(v4))
    return Address(ip, None, None, special_range(ip))


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """Read `text` the way glibc's inet_aton does (1-4 parts, decimal/octal/hex), else None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if not part:
            return None
        try:
            if part[:2].lower() == "0x":
                value = int(part[2:], 16) if len(part) > 2 else 0
            elif len(part) > 1 and part[0] == "0":
                value = int(part[1:], 8)
            elif part.isdigit():
                value = int(part)
            else:
                return None
        except ValueError:
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
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise AddressError(f"{target!r}: port must be a number from 1 to 65535")
    return host, int(port_text)
