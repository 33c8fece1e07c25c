"""The private fields of ipaddress objects geogate reads, in one place.

IPv4Address and IPv6Address keep their integer in `_ip` and their version in `_version` (since
Python 3.3). int(ip) and ip.version are Python-level calls around them, and on the path of every
decision those calls cost more than the arithmetic around them. Python makes no promise about
these fields; tests/test_private_apis.py checks them against the public int() and .version and
names them when a new Python changes them.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from ipaddress import IPv6Address

_V6_KEY = 1 << 128


def ip_key(ip: IPv4Address | IPv6Address) -> int:
    """A cheap, exact dictionary key for an address: its integer, IPv6 above 2**128 (so that
    ::1.2.3.4 and 1.2.3.4 differ). Hashing an ipaddress object runs Python code and costs more
    than a cache probe; the zone id is left out, as addresses.classify drops it."""
    return ip._ip if ip._version == 4 else ip._ip | _V6_KEY  # type: ignore[union-attr, no-any-return]  # private


def int_and_version(ip: IPv4Address | IPv6Address) -> tuple[int, int]:
    """(int(ip), ip.version), read without the Python-level calls."""
    return ip._ip, ip._version  # type: ignore[union-attr]  # private, undeclared in the stubs
