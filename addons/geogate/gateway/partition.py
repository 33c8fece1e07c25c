"""The address space cut into pieces on which every input of a decision is constant.

A decision about an address with no host name depends on the address only through: the record
each database holds for it, the special-purpose range it is in, the policy `networks` that hold
it, and, for an IPv6 form that carries an IPv4 address, the same facts about that IPv4 address.
Cutting each family at every boundary of those gives pieces whose addresses the engine cannot
tell apart; a piece's `signature` is the tuple of those facts. Two pieces with one signature get
one decision, so the engine is asked once per signature (sets.py), not once per address.

Integers throughout: an IPv4 piece is [start, next start) of 32-bit values, an IPv6 piece the same
of 128-bit values.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from typing import Callable
from typing import Iterable

from geogate.core.addresses import NAT64_LOCAL_USE
from geogate.core.addresses import NAT64_WELL_KNOWN
from geogate.core.addresses import special_runs
from geogate.core.databases import Database
from geogate.core.rules import Policy

TOP = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
TEREDO = ipaddress.IPv6Network("2001::/32")
SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
SIXTOFOUR_BASE = int(SIXTOFOUR.network_address)
LOW32 = (1 << 32) - 1

Run = tuple[int, int, Any]  # (first, last, key)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def record_key(record: Any) -> Any:
    """A hashable stand-in for a raw record: equal keys, equal records."""
    if type(record) is dict and len(record) == 1:
        ((k, v),) = record.items()
        if type(v) is str:  # the bundled databases: {"country_code": "DE"}
            return k, v
    return _freeze(record)


def database_runs(db: Database) -> dict[int, list[Run]]:
    """The networks of one database as runs per family, neighbours with the same record merged."""
    out: dict[int, list[Run]] = {4: [], 6: []}
    for net, record in db.networks():
        first = int(net.network_address)
        last = first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)
        key = record_key(record)
        runs = out[net.version]
        if runs and runs[-1][2] == key and runs[-1][1] + 1 == first:
            runs[-1] = (runs[-1][0], last, key)
        else:
            runs.append((first, last, key))
    return out


def network_runs(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], version: int) -> list[Run]:
    """Possibly nested networks as disjoint runs keyed by the networks holding each run."""
    nets = sorted({n for n in networks if n.version == version}, key=lambda n: (int(n.network_address), n.prefixlen))
    if not nets:
        return []
    cuts = sorted({int(n.network_address) for n in nets} | {int(n.broadcast_address) + 1 for n in nets})
    runs: list[Run] = []
    for first, nxt in pairwise(cuts):
        holding = tuple(str(n) for n in nets if int(n.network_address) <= first <= int(n.broadcast_address))
        if holding:
            runs.append((first, nxt - 1, holding))
    return runs


def _column(cuts: list[int], runs: list[Run]) -> list[Any]:
    """For each cut, the key of the run holding it (None outside every run)."""
    out = []
    p, n = 0, len(runs)
    for c in cuts:
        while p < n and runs[p][1] < c:
            p += 1
        out.append(runs[p][2] if p < n and runs[p][0] <= c else None)
    return out


@dataclass
class Pieces:
    """One family's partition: piece i is [starts[i], starts[i+1]) with signature id sigs[i]
    (an index into the Signatures the partition was made with)."""

    version: int
    starts: list[int]
    sigs: list[int]

    def at(self, value: int) -> int:
        return bisect_right(self.starts, value) - 1

    def end(self, i: int) -> int:
        return self.starts[i + 1] - 1 if i + 1 < len(self.starts) else TOP[self.version]


class Signatures:
    """Signature tuple <-> small integer: pieces carry the integer (cheap to compare and hash)."""

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {}
        self.items: list[tuple] = []

    def id(self, sig: tuple) -> int:
        got = self.ids.get(sig)
        if got is None:
            got = self.ids[sig] = len(self.items)
            self.items.append(sig)
        return got


def sweep(version: int, sources: list[list[Run]], special: tuple[tuple[int, ...], tuple], signatures: Signatures) -> Pieces:
    """Cut the family at every boundary of every source; the signature of a piece is (family,
    key in each source..., special range name). Neighbours with one signature merge."""
    top = TOP[version]
    cuts = {0, *special[0]}
    for runs in sources:
        for first, last, _key in runs:
            cuts.add(first)
            if last < top:
                cuts.add(last + 1)
    ordered = sorted(c for c in cuts if 0 <= c <= top)
    columns = [_column(ordered, runs) for runs in sources]
    names = special[1]
    starts_sp = special[0]
    sp, nsp = 0, len(starts_sp)
    special_col = []
    for c in ordered:
        while sp + 1 < nsp and starts_sp[sp + 1] <= c:
            sp += 1
        special_col.append(names[sp])
    columns.append(special_col)
    starts: list[int] = []
    sigs: list[int] = []
    last_sig = None
    intern = signatures.id
    for c, sig in zip(ordered, zip(*columns, strict=True), strict=True):
        if sig == last_sig:
            continue
        last_sig = sig
        starts.append(c)
        sigs.append(intern((version, *sig)))
    return Pieces(version, starts, sigs)


# -- IPv6 forms that carry an IPv4 address --------------------------------------------------------

@dataclass(frozen=True)
class Carrier:
    """An IPv6 range whose addresses carry an IPv4 address: IPv4 value v -> first IPv6 address
    `encode(v)`; every IPv6 address from encode(v) to encode(v + 1) - 1 carries v, or is one the
    engine blocks whatever v is (a NAT64 u-octet that is not zero, see `u_octet`)."""

    name: str
    first: int
    last: int
    encode: Callable[[int], int]
    u_octet: bool = False  # bits 64-71 must be zero (RFC 6052 prefixes shorter than /96)


def nat64_carrier(net: ipaddress.IPv6Network) -> Carrier:
    base, length = int(net.network_address), net.prefixlen
    if length == 96:
        def suffix(v: int) -> int:
            return base | v

        return Carrier(f"nat64 {net}", base, base | LOW32, suffix)
    before = 64 - length
    after = 32 - before

    def encode(v: int) -> int:
        return base | (v >> after) << 64 | (v & ((1 << after) - 1)) << (56 - after)

    return Carrier(f"nat64 {net}", base, int(net.broadcast_address), encode, u_octet=True)


def carriers(policy: Policy) -> list[Carrier]:
    """The IPv6 ranges the kernel follows into IPv4: NAT64 (the well-known prefix and the policy's)
    and 6to4. Each IPv4 piece maps to an IPv6 interval there."""
    return [nat64_carrier(n) for n in policy.nat64.networks] + [
        nat64_carrier(ipaddress.IPv6Network(NAT64_WELL_KNOWN)),
        Carrier("6to4", SIXTOFOUR_BASE, int(SIXTOFOUR.broadcast_address), _sixtofour),
    ]


def _sixtofour(v: int) -> int:
    return SIXTOFOUR_BASE | v << 80


@dataclass(frozen=True)
class Whole:
    """An IPv6 range that carries an IPv4 address the kernel does not follow: it is blocked or
    allowed as a whole (allowed only when the engine allows every address in it).

    `address(own_first, own_last, v)` is an address of the own piece [own_first, own_last] that
    carries the IPv4 value v, or None when the piece cannot carry every IPv4 address (then the
    range is blocked whole, which is never looser than the engine)."""

    name: str
    first: int
    last: int
    address: Callable[[int, int, int], int | None]


def _slash96(name: str, base: int, lowest: int = 0) -> Whole:
    def address(first: int, last: int, v: int, base: int = base, lowest: int = lowest) -> int | None:
        if first > base + lowest or last < base | LOW32:
            return None  # the piece is not the whole range
        return base | max(v, lowest)

    return Whole(name, base + lowest, base | LOW32, address)


def _teredo(first: int, last: int, v: int) -> int | None:
    if first & LOW32 or (last + 1) & LOW32:
        return None  # the piece does not span whole /96s
    return first | (~v & LOW32)  # the client address is stored inverted (RFC 4380)


def wholes() -> list[Whole]:
    """Teredo, and the IPv4-mapped, -translated and -compatible forms (no router forwards them;
    the engine reads an IPv4 address from them all the same)."""
    return [
        Whole("teredo", int(TEREDO.network_address), int(TEREDO.broadcast_address), _teredo),
        _slash96("ipv4-mapped", 0xFFFF << 32),
        _slash96("ipv4-translated", 0xFFFF << 48),
        _slash96("ipv4-compatible", 0, lowest=2),  # :: and ::1 are not IPv4-compatible (classify)
    ]


def region_runs(policy: Policy) -> list[Run]:
    """IPv6 runs keyed by the carrier and whole ranges and the NAT64 local-use prefix holding them:
    a column of the IPv6 signature, so that no piece straddles the edge of one."""
    ranges = [(c.first, c.last, c.name) for c in carriers(policy)] + [(w.first, w.last, w.name) for w in wholes()]
    local = ipaddress.IPv6Network(NAT64_LOCAL_USE)
    ranges.append((int(local.network_address), int(local.broadcast_address), "nat64-local-use"))
    cuts = sorted({f for f, _l, _n in ranges} | {last + 1 for _f, last, _n in ranges})
    runs: list[Run] = []
    for first, nxt in pairwise(cuts):
        holding = tuple(n for f, last, n in ranges if f <= first <= last)
        if holding:
            runs.append((first, nxt - 1, holding))
    return runs


def carrier_pieces(carrier: Carrier, own: Pieces, v4: Pieces, signatures: Signatures) -> Pieces:
    """The carrier's range cut at the own (IPv6) pieces and at the image of every IPv4 piece; the
    signature is ("carrier", name, own signature, IPv4 signature)."""
    enc = carrier.encode
    intern = signatures.id
    i6 = own.at(carrier.first)
    if own.end(i6) >= carrier.last:  # one own piece (the usual case): the IPv4 pieces, mapped
        own_sig = own.sigs[i6]
        return Pieces(6, [enc(s) for s in v4.starts], [intern(("carrier", carrier.name, own_sig, s)) for s in v4.sigs])
    mapped = [enc(s) for s in v4.starts]
    i4 = max(0, bisect_right(mapped, carrier.first) - 1)
    starts: list[int] = []
    sigs: list[int] = []
    x = carrier.first
    n4, n6 = len(mapped), len(own.starts)
    while x <= carrier.last:
        sig = intern(("carrier", carrier.name, own.sigs[i6], v4.sigs[i4]))
        if not sigs or sigs[-1] != sig:
            starts.append(x)
            sigs.append(sig)
        nxt4 = mapped[i4 + 1] if i4 + 1 < n4 else None
        nxt6 = own.starts[i6 + 1] if i6 + 1 < n6 else None
        nxt = min(n for n in (nxt4, nxt6, carrier.last + 1) if n is not None)
        if nxt4 == nxt:
            i4 += 1
        if nxt6 == nxt:
            i6 += 1
        x = nxt
    return Pieces(6, starts, sigs)


def splice(base: Pieces, inserts: list[tuple[int, int, Pieces]]) -> Pieces:
    """`base` with the ranges [first, last] replaced by the given pieces (disjoint, and each range
    begins and ends on a cut of `base`)."""
    starts: list[int] = []
    sigs: list[int] = []
    inserts = sorted(inserts, key=lambda t: t[0])
    k = 0
    i = 0
    n = len(base.starts)
    while i < n:
        if k < len(inserts) and base.starts[i] >= inserts[k][0]:
            _first, last, pieces = inserts[k]
            starts += pieces.starts
            sigs += pieces.sigs
            while i < n and base.starts[i] <= last:
                i += 1
            k += 1
            continue
        starts.append(base.starts[i])
        sigs.append(base.sigs[i])
        i += 1
    return Pieces(base.version, starts, sigs)


def special(version: int) -> tuple[tuple[int, ...], tuple]:
    return special_runs(version)
