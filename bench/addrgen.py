"""Deterministic "realistic" public destination addresses for the benchmarks.

IPv4: uniformly random global unicast addresses (`ipaddress.is_global`, not multicast); nearly all
of IPv4 is allocated, so this is what a crawler or a busy egress sees.
IPv6: random addresses inside the RIR allocation blocks (2001:200::/23 ... 2c00::/12), kept only if
the RIR-delegation database bundled with geogate (geo-whois-asn-country) has a record for them,
i.e. they lie in a delegated range. Each block gets an equal quota so the mix is not dominated by
the densest block. Without the bundled database (not importable), the RIR check is skipped.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Callable

RIR_V6_BLOCKS = (
    "2001:200::/23",   # APNIC
    "2001:400::/23",   # ARIN
    "2001:600::/23",   # RIPE NCC
    "2001:800::/22",   # RIPE NCC
    "2001:1200::/23",  # LACNIC
    "2001:4200::/23",  # AFRINIC
    "2400::/12",       # APNIC
    "2600::/12",       # ARIN
    "2800::/12",       # LACNIC
    "2a00::/12",       # RIPE NCC
    "2c00::/12",       # AFRINIC
)
MAX_TRIES_PER_ADDRESS = 400


def _delegated() -> Callable[[ipaddress.IPv6Address], bool] | None:
    try:
        import maxminddb

        from geogate.core.bundled import default_database_paths
    except Exception:
        return None
    paths = [p for p in default_database_paths() if "whois" in p.name] or list(default_database_paths())[-1:]
    if not paths:
        return None
    reader = maxminddb.open_database(str(paths[0]))
    return lambda ip: reader.get(ip) is not None


def public_addresses(n: int, seed: int = 1, v6_share: float = 0.3,
                     delegated: Callable[[ipaddress.IPv6Address], bool] | None | str = "auto"):
    """`n` distinct public addresses, IPv4 first then IPv6, shuffled together (deterministic)."""
    rng = random.Random(seed)
    check = _delegated() if delegated == "auto" else delegated
    n6 = int(n * v6_share)
    n4 = n - n6
    seen: set = set()
    v4: list[ipaddress.IPv4Address] = []
    while len(v4) < n4:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global and not ip.is_multicast and ip not in seen:
            seen.add(ip)
            v4.append(ip)
    blocks = [ipaddress.ip_network(b) for b in RIR_V6_BLOCKS]
    v6: list[ipaddress.IPv6Address] = []
    quota = [n6 // len(blocks) + (1 if i < n6 % len(blocks) else 0) for i in range(len(blocks))]
    deficit = 0
    for block, q in zip(blocks, quota, strict=True):
        got, tries = 0, 0
        base, bits = int(block.network_address), 128 - block.prefixlen
        while got < q + deficit and tries < (q + deficit) * MAX_TRIES_PER_ADDRESS:
            tries += 1
            ip = ipaddress.IPv6Address(base + rng.getrandbits(bits))
            if ip in seen or (check is not None and not check(ip)):
                continue
            seen.add(ip)
            v6.append(ip)
            got += 1
        deficit = q + deficit - got  # a sparse block hands its quota on to the next one
    while len(v6) < n6:  # last resort: unchecked addresses from the blocks
        block = blocks[rng.randrange(len(blocks))]
        ip = ipaddress.IPv6Address(int(block.network_address) + rng.getrandbits(128 - block.prefixlen))
        if ip not in seen:
            seen.add(ip)
            v6.append(ip)
    out = v4 + v6
    rng.shuffle(out)
    return out
