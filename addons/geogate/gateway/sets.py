"""The kernel's sets, from the one decision engine.

Each piece of the address space (partition.py) is decided once per signature with GateState.decide:
a Request with no host, the port of one port class and a client of one client profile, for the
piece's first address. Neighbouring pieces with the same verdicts merge; what is left are the
intervals the kernel blocks, per client profile and port class, for IPv4 and IPv6.

What the kernel cannot see, it cannot enforce: rules on `hosts` never match a request without a
name (the proxy enforces them on the proxied ports); profiles on `users` never match a packet.
`notes` says which rules these are, for `geogate gateway check`. Teredo (2001::/32) carries its
IPv4 address in a way no interval set can follow, so the kernel allows it only where the engine
allows every Teredo address, else blocks all of it (stricter than the engine, never looser).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timezone
from itertools import pairwise

from geogate.core.addresses import IPNetwork
from geogate.core.decide import Request
from geogate.core.rules import ClientProfile
from geogate.core.rules import Policy
from geogate.gateway import partition
from geogate.gateway.partition import Pieces
from geogate.policy.state import GateState

PORT_TOP = 65535
WHOLE_LABELS = {"teredo": "Teredo (2001::/32)", "ipv4-mapped": "IPv4-mapped (::ffff:0:0/96)",
                "ipv4-translated": "IPv4-translated (::ffff:0:0:0/96)", "ipv4-compatible": "IPv4-compatible (::/96)"}
Interval = tuple[int, int]


@dataclass(frozen=True)
class Profile:
    """A client profile as the kernel applies it: by source address, first match wins."""

    name: str | None  # None: clients in no profile
    sources: tuple = ()  # networks; empty for the default
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None  # one client it applies to


@dataclass
class PortClass:
    """Destination ports the rules cannot tell apart; `ranges` None: packets without a port (ICMP...)."""

    ranges: tuple[Interval, ...] | None

    @property
    def port(self) -> int | None:
        return None if self.ranges is None else self.ranges[0][0]


@dataclass
class KernelSets:
    """What the kernel blocks: blocked[(profile index, class index)] = (IPv4 intervals, IPv6 intervals)."""

    policy_sha256: str
    policy_name: str
    databases: tuple[str, ...]  # sha256 of each database
    profiles: list[Profile]
    classes: list[PortClass]
    blocked: dict[tuple[int, int], tuple[list[Interval], list[Interval]]]
    u_octet_prefixes: tuple[ipaddress.IPv6Network, ...]  # NAT64 prefixes whose bits 64-71 must be 0
    teredo_blocked_whole: dict[tuple[int, int], bool]
    whole_blocked: dict[str, tuple[bool, ...]]  # per whole range (partition.wholes), per combo
    notes: list[str] = field(default_factory=list)
    decisions: int = 0  # engine calls made
    pieces: dict[int, int] = field(default_factory=dict)  # family -> pieces before merging
    seconds: float = 0.0
    day: object = None  # the UTC date the rules were evaluated for (expiry)
    expiring: bool = False  # some rule expires: rebuild when the day changes

    def element_counts(self) -> dict[str, int]:
        """Intervals per family, each distinct list counted once (port classes and profiles
        that block alike share one set)."""
        unique = {(pi, tuple(v4), tuple(v6)) for (pi, _ci), (v4, v6) in self.blocked.items()}
        return {"ipv4": sum(len(u[1]) for u in unique), "ipv6": sum(len(u[2]) for u in unique)}

    def is_blocked(self, profile: int, cls: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """What the kernel does with a packet to `ip` (the same rules the ruleset renders)."""
        v4, v6 = self.blocked[(profile, cls)]
        value = int(ip)
        if ip.version == 6 and any(ip in n and (value >> 56) & 0xFF for n in self.u_octet_prefixes):
            return True

        return contains(v4 if ip.version == 4 else v6, value)


def contains(intervals: list[Interval], value: int) -> bool:
    from bisect import bisect_right

    i = bisect_right(intervals, (value, 1 << 129)) - 1
    return i >= 0 and intervals[i][0] <= value <= intervals[i][1]


class DatabasePieces:
    """The database part of the partition, kept while the databases stay (a policy change only
    re-decides): per family, the runs of each database."""

    def __init__(self, state: GateState) -> None:
        self.databases = state.databases
        self.runs = [partition.database_runs(db) for db in state.databases.databases]
        # the last partition made, by what besides the databases cuts it (see build)
        self.partition: tuple[tuple, tuple] | None = None


def port_classes(policy: Policy) -> list[PortClass]:
    """The port space cut at every boundary of every rule's `ports`, plus the portless class."""
    if not any(rule.ports for rule in policy.all_rules()):
        return [PortClass(None)]  # no rule looks at ports: one class holds every packet
    cuts = {0, PORT_TOP + 1}
    for rule in policy.all_rules():
        for a, b in rule.ports or ():
            cuts |= {a, b + 1}
    ordered = sorted(cuts)
    elementary = [(a, b - 1) for a, b in pairwise(ordered)]
    # ranges that every port rule treats alike form one class
    by_signature: dict[tuple, list[Interval]] = {}
    for a, b in elementary:
        sig = tuple(any(x <= a <= y for x, y in r.ports) for r in policy.all_rules() if r.ports)
        by_signature.setdefault(sig, []).append((a, b))
    return [PortClass(None)] + [PortClass(tuple(r)) for r in by_signature.values()]


def kernel_profiles(policy: Policy) -> tuple[list[Profile], list[str]]:
    """Profiles the kernel can apply (by source address), each with a client it applies to, and
    notes on those it cannot."""
    out = [Profile(None)]
    notes = []
    earlier: list = []
    for p in policy.clients:
        if p.users is not None:
            notes.append(f"client profile {p.name} matches proxy users ({', '.join(sorted(p.users))}); a forwarded "
                         "packet has no user, so the kernel applies the rules that hold without it")
            continue
        client = _first_free(p, earlier)
        earlier.extend(p.sources or ())
        if client is None:
            notes.append(f"client profile {p.name}: every source is in an earlier profile; it never applies")
            continue
        out.append(Profile(p.name, tuple(p.sources or ()), client))
    return out, notes


def _first_free(p: ClientProfile, earlier: list) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address in the profile's sources that no earlier profile's sources hold."""
    for net in p.sources or ():
        rest = [net]
        for e in earlier:
            if e.version != net.version:
                continue
            nxt: list[IPNetwork] = []
            for r in rest:
                if r.subnet_of(e):
                    continue
                nxt.extend(r.address_exclude(e) if e.subnet_of(r) else [r])
            rest = nxt
        if rest:
            return min(rest, key=lambda n: int(n.network_address)).network_address
    return None


def unenforceable(policy: Policy) -> list[str]:
    notes = []
    for rule in policy.all_rules():
        if rule.hosts is not None:
            notes.append(f"rule {rule.name} matches hosts ({', '.join(h.text for h in rule.hosts)}): a forwarded packet "
                         "has no name, so it applies only on the proxied ports")
    return notes


def build(state: GateState, dbpieces: DatabasePieces | None = None, now: datetime | None = None) -> KernelSets:
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    policy = state.policy
    if dbpieces is None or dbpieces.databases is not state.databases:
        dbpieces = DatabasePieces(state)
    profiles, notes = kernel_profiles(policy)
    classes = port_classes(policy)
    combos = [(pi, ci) for pi in range(len(profiles)) for ci in range(len(classes))]
    requests = [Request(None, classes[ci].port, client_ip=profiles[pi].client, mode="kernel") for pi, ci in combos]
    v4, own6, v6 = _partition(policy, dbpieces)
    verdicts = _Verdicts(state, requests, now)
    whole = {w.name: _whole_verdicts(w, own6, v4, verdicts.decide, len(requests)) for w in partition.wholes()}
    whole_ranges = [(w.first, w.last, whole[w.name]) for w in partition.wholes()]
    blocked: dict[tuple[int, int], tuple[list[Interval], list[Interval]]] = {c: ([], []) for c in combos}
    _add_blocked(blocked, combos, 0, _verdict_runs(v4, verdicts, []))
    _add_blocked(blocked, combos, 1, _verdict_runs(v6, verdicts, whole_ranges))
    teredo = {combo: whole["teredo"][k] for k, combo in enumerate(combos)}
    u_octet = tuple(n for n in policy.nat64.networks if n.prefixlen < 96)
    return KernelSets(
        policy_sha256=policy.ref.sha256, policy_name=policy.ref.name,
        databases=tuple(i.sha256 for i in state.databases.infos), profiles=profiles, classes=classes,
        blocked=blocked, u_octet_prefixes=u_octet, teredo_blocked_whole=teredo,
        whole_blocked={w.name: whole[w.name] for w in partition.wholes()},
        notes=notes + _whole_notes(whole) + unenforceable(policy), decisions=verdicts.decisions,
        pieces={4: len(v4.starts), 6: len(v6.starts)}, seconds=time.perf_counter() - started,
        day=now.date(), expiring=any(r.expires is not None for r in policy.all_rules()),
    )


def _partition(policy: Policy, dbpieces: DatabasePieces) -> tuple[Pieces, Pieces, Pieces]:
    """The IPv4 pieces, the IPv6 pieces before the carriers are spliced in (`own6`) and after."""
    rule_nets = [n for r in policy.all_rules() for n in r.networks or ()]
    # the partition depends on the databases, the policy's networks and its NAT64 prefixes only:
    # a policy edit that changes neither (countries, actions, ports) reuses it
    key = (tuple(sorted(map(str, set(rule_nets)))), tuple(map(str, policy.nat64.networks)))
    if dbpieces.partition is not None and dbpieces.partition[0] == key:
        v4, own6, v6, _signatures = dbpieces.partition[1]
        return v4, own6, v6
    signatures = partition.Signatures()
    per_family: dict[int, Pieces] = {}
    for version in (4, 6):
        sources = [runs[version] for runs in dbpieces.runs] + [partition.network_runs(rule_nets, version)]
        if version == 6:
            sources.append(partition.region_runs(policy))
        per_family[version] = partition.sweep(version, sources, partition.special(version), signatures)
    v4 = per_family[4]
    own6 = per_family[6]
    inserts = [(c.first, c.last, partition.carrier_pieces(c, own6, v4, signatures)) for c in partition.carriers(policy)]
    v6 = partition.splice(own6, inserts)
    dbpieces.partition = (key, (v4, own6, v6, signatures))
    return v4, own6, v6


class _Verdicts:
    """The engine's verdicts, one per request (client profile x port class): True = blocked.
    Pieces with one signature share them (`by_signature`)."""

    def __init__(self, state: GateState, requests: list[Request], now: datetime) -> None:
        self.state = state
        self.requests = requests
        self.now = now
        self.by_signature: dict[int, tuple[bool, ...]] = {}
        self.decisions = 0  # engine calls made

    def decide(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[bool, ...]:
        self.decisions += len(self.requests)
        return tuple(self.state.decide(req, [ip], now=self.now).action == "block" for req in self.requests)


def _verdict_runs(pieces: Pieces, verdicts: _Verdicts,
                  whole_ranges: list[tuple[int, int, tuple[bool, ...]]]) -> list[list]:
    """The family as [first, last, verdicts] runs, neighbours with equal verdicts merged. A piece in
    a whole range takes the range's verdicts (a whole range is one signature in `own6`, its region
    column, so caching them by signature is exact)."""
    make = ipaddress.IPv4Address if pieces.version == 4 else ipaddress.IPv6Address
    top = partition.TOP[pieces.version]
    cache = verdicts.by_signature
    runs: list[list] = []
    for start, sig in zip(pieces.starts, pieces.sigs, strict=True):
        vec = cache.get(sig)
        if vec is None:
            vec = next((v for f, last, v in whole_ranges if f <= start <= last), None)
            if vec is None:
                vec = verdicts.decide(make(start))
            cache[sig] = vec
        if runs and runs[-1][2] == vec:
            continue
        if runs:
            runs[-1][1] = start - 1
        runs.append([start, top, vec])
    return runs


def _add_blocked(blocked: dict[tuple[int, int], tuple[list[Interval], list[Interval]]], combos: list[tuple[int, int]],
                 slot: int, runs: list[list]) -> None:
    """Each run into the intervals of every combo (profile, port class) that it blocks; slot 0
    IPv4, 1 IPv6."""
    for first, last, vec in runs:
        for k, combo in enumerate(combos):
            if vec[k]:
                out = blocked[combo][slot]
                if out and out[-1][1] + 1 == first:
                    out[-1] = (out[-1][0], last)
                else:
                    out.append((first, last))


def _whole_notes(whole: dict[str, tuple[bool, ...]]) -> list[str]:
    notes = []
    for w in partition.wholes():
        if any(whole[w.name]):
            notes.append(f"{WHOLE_LABELS[w.name]} is blocked by the kernel as a whole: the IPv4 address it carries "
                         "is not a prefix of it, and the policy does not allow every address in it")
        else:
            notes.append(f"{WHOLE_LABELS[w.name]} is allowed by the kernel: the policy allows every address in it")
    return notes


def _whole_verdicts(whole: partition.Whole, own6: Pieces, v4: Pieces, decide, n: int) -> tuple[bool, ...]:
    """Per request: blocked unless the engine allows every address of the range, i.e. each own
    IPv6 piece of it with each IPv4 signature it can carry."""
    reps: dict[int, int] = {}
    for k, sig in enumerate(v4.sigs):
        if sig not in reps:
            reps[sig] = v4.starts[k]
    # an IPv4 piece that starts below what the range carries (ipv4-compatible: from 0.0.0.2)
    blocked = [False] * n
    i = own6.at(whole.first)
    while i < len(own6.starts) and own6.starts[i] <= whole.last:
        first, last = own6.starts[i], min(own6.end(i), whole.last)
        for k, sig in enumerate(v4.sigs):
            v = v4.starts[k]
            if reps.get(sig) != v:
                continue
            address = whole.address(first, last, max(v, 0))
            if address is None:
                return (True,) * n
            vec = decide(ipaddress.IPv6Address(address))
            blocked = [a or b for a, b in zip(blocked, vec, strict=True)]
            if all(blocked):
                return tuple(blocked)
        i += 1
    return tuple(blocked)
