"""The nftables ruleset of the gateway, as text for one `nft -f` transaction (pure: no I/O).

One table, `inet geogate`, replaced whole in one transaction (create, delete, create: the kernel
commits all three at once, so no packet ever sees the gateway without rules):

- `prerouting` (filter, priority mangle), for packets from the LAN interfaces: the proxied TCP
  ports pass to the redirect (the proxy judges them, with names); everything else goes to the
  chain of the first client profile whose sources hold the client, else to `p0`;
- a profile chain rejects destinations in its blocked sets (TCP with a reset, everything else with
  ICMP administratively prohibited, so clients see a refusal, not a timeout), and marks every
  packet it lets through; its connection's conntrack mark gets the sets' generation, and the
  first packet of each allowed flow is counted (`allowed_new`) and logged (NFLOG `flow_group`);
  refused first packets are counted (`blocked_new`) and logged (NFLOG `log_group`);
- `nat` redirects the proxied TCP ports to the transparent proxy, and with `--dns` LAN DNS (UDP
  and TCP port 53, to any address) to the proxy's DNS mode (`dns_rules`);
- with `judge_host`, `output` sends the gateway's own packets to the default profile's chain.

holding() is the small table put in place at once after a flush, while the full one loads.

The mark is the latch (latch.py): policy routing forwards LAN traffic only with it, so when this
table is gone (`nft flush ruleset`), nothing from the LAN is forwarded until it is back.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from dataclasses import field

from geogate.gateway import partition
from geogate.gateway.sets import Interval
from geogate.gateway.sets import KernelSets

TABLE = "geogate"
FAMILY = "inet"
PORT_PROTOCOLS = "{ tcp, udp, udplite, sctp, dccp }"
CHUNK = 256  # set elements per line
ALLOWED_COUNTER = "allowed_new"  # new flows the sets let through
BLOCKED_COUNTER = "blocked_new"  # first packets the sets refused (a refused flow stays new)
HELD_COUNTER = "held_new"  # refused by holding() while the sets are put back
HOLDING = "holding"  # in the comment of the table holding()


@dataclass(frozen=True)
class GatewayConfig:
    lan: tuple[str, ...]
    proxy_port: int = 8080
    tcp_ports: tuple[int, ...] = (80, 443)
    mark: int = 0x10000000  # one bit, kept clear of the low bits other tools use
    route_table: int = 6767
    rule_pref: int = 6700  # ip rule preferences rule_pref .. rule_pref + 2
    log_group: int = 6767  # NFLOG group of refused flows
    log_rate: int = 1000  # NFLOG messages per second at most, per group; counters count the rest
    flow_group: int = 6768  # NFLOG group of new allowed flows
    ct_mask: int = 0x7F000000  # conntrack mark bits holding the generation of the sets that allowed a flow
    judge_host: bool = False  # the gateway's own outgoing traffic too (output hook), but the proxy's
    proxy_gid: int = 6767  # the proxy child runs with this group: its upstream connections are exempt
    dns_port: int | None = None  # `--dns`: the port of the proxy's DNS mode; None: DNS judged like any flow
    set_part: int = 131072  # elements per kernel set at most: a larger one is split (restore loads parts in parallel)
    extra: dict = field(default_factory=dict, compare=False)


def _text(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def element_text(version: int, first: int, last: int) -> str:
    if first == last:
        return _text(version, first)
    size = last - first + 1
    if size & (size - 1) == 0 and first % size == 0:
        bits = 32 if version == 4 else 128
        return f"{_text(version, first)}/{bits - size.bit_length() + 1}"
    return f"{_text(version, first)}-{_text(version, last)}"


def complement(intervals: list[Interval], version: int) -> list[Interval]:
    out = []
    at = 0
    for first, last in intervals:
        if first > at:
            out.append((at, first - 1))
        at = last + 1
    if at <= partition.TOP[version]:
        out.append((at, partition.TOP[version]))
    return out


def _set(name: str, version: int, intervals: list[Interval]) -> list[str]:
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"
    lines = [f"  set {name} {{", f"    type {kind}; flags interval;"]
    if intervals:
        texts = [element_text(version, a, b) for a, b in intervals]
        chunks = [", ".join(texts[i:i + CHUNK]) for i in range(0, len(texts), CHUNK)]
        lines.append("    elements = { " + ",\n      ".join(chunks) + " }")
    lines.append("  }")
    return lines


def _quoted(names) -> str:
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def _ports(ranges) -> str:
    return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges) + " }"


@dataclass(frozen=True)
class Staged:
    """The ruleset in steps, for putting a flushed table back behind holding(): `sets`, one
    `nft -f` text per set (independent: they can run in parallel, each loads one whole set into
    the holding table), then `chains`, one transaction that replaces the holding chains with the
    full rules, which reference only those sets. The normal swap uses render() (one transaction)."""

    sets: tuple[str, ...]
    chains: str
    generation: int
    elements: dict[str, int]  # elements per set: what the sets texts load


def render(ks: KernelSets, config: GatewayConfig, generation: int = 1) -> str:
    """The whole transaction: the table (re)created with every set, chain and rule. `generation`
    tags the flows these sets allow (holding() lets only those through)."""
    return render_staged(ks, config, generation)[0]


def staged(ks: KernelSets, config: GatewayConfig, generation: int = 1) -> Staged:
    """The same ruleset as render(), in steps (see Staged); only ever applied on top of holding()."""
    return render_staged(ks, config, generation)[1]


def render_staged(ks: KernelSets, config: GatewayConfig, generation: int = 1) -> tuple[str, Staged]:
    """render() and staged() at once: the elements' text (most of the time) is made once."""
    sets, body, comment = _table(ks, config, generation)
    blocks = [_set(name, version, intervals) for name, version, intervals in sets]
    full = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{",
            f'  comment "{comment}"', *_counters(), *(line for block in blocks for line in block), *body, "}"]
    texts = tuple("\n".join([f"table {FAMILY} {TABLE} {{", *block, "}"]) + "\n" for block in blocks)
    switch = [f"flush chain {FAMILY} {TABLE} {c}\ndelete chain {FAMILY} {TABLE} {c}" for c in _holding_chains(config)]
    switch += [f"delete counter {FAMILY} {TABLE} {HELD_COUNTER}", f"table {FAMILY} {TABLE} {{", *_counters(), *body, "}"]
    return "\n".join(full) + "\n", Staged(texts, "\n".join(switch) + "\n", generation,
                                           {name: len(intervals) for name, _version, intervals in sets})


def _parts(name: str, intervals: list[Interval], part: int) -> list[tuple[str, list[Interval]]]:
    """A set of more than `part` elements as several (nft parses one set in one process; parts
    load in parallel after a flush), in address order."""
    if len(intervals) <= part:
        return [(name, intervals)]
    count = -(-len(intervals) // part)
    size = -(-len(intervals) // count)
    return [(f"{name}_{i}", intervals[i * size:(i + 1) * size]) for i in range(count)]


def _table(ks: KernelSets, config: GatewayConfig, generation: int) -> tuple[list, list[str], str]:
    """The table's sets (name, version, intervals), the lines of its chains, and its comment."""
    sets: list[tuple[str, int, list[Interval]]] = []
    chains: list[str] = []
    dispatch: list[str] = []
    for pi, profile in enumerate(ks.profiles):
        chain = f"p{pi}"
        body: list[str] = []
        for net in ks.u_octet_prefixes:
            # RFC 6052: bits 64-71 of a NAT64 address are zero; the engine refuses any other
            body.append(f"ip6 daddr {net} @nh,256,8 != 0 goto blocked")
        groups: dict[tuple, list[int]] = {}
        for ci in range(len(ks.classes)):
            v4, v6 = ks.blocked[(pi, ci)]
            groups.setdefault((tuple(v4), tuple(v6)), []).append(ci)
        for gi, ((v4, v6), classes) in enumerate(groups.items()):
            matches = _class_matches([ks.classes[c].ranges for c in classes], len(groups) == 1)
            for version, blocked in ((4, list(v4)), (6, list(v6))):
                proto = "ip" if version == 4 else "ip6"
                allowed = complement(blocked, version)
                if not blocked:
                    continue
                name = f"{chain}_{gi}_{version}"
                if not allowed:
                    tests = [f"meta nfproto {'ipv4' if version == 4 else 'ipv6'}"]
                elif len(allowed) < len(blocked):  # an allow-list is the smaller set: keep that
                    parts = _parts(f"{name}_allow", allowed, config.set_part)
                    sets += [(n, version, p) for n, p in parts]
                    tests = [" ".join(f"{proto} daddr != @{n}" for n, _p in parts)]  # in none of the parts
                else:
                    parts = _parts(f"{name}_block", blocked, config.set_part)
                    sets += [(n, version, p) for n, p in parts]
                    tests = [f"{proto} daddr @{n}" for n, _p in parts]
                body += [f"{m}{test} goto blocked" for test in tests for m in matches]
        body += _allowed(config, generation)
        chains += [f"  chain {chain} {{", *(f"    {line}" for line in body), "  }"]
        if profile.name is not None:
            for version in (4, 6):
                nets = [n for n in profile.sources if n.version == version]
                if nets:
                    proto = "ip" if version == 4 else "ip6"
                    dispatch.append(f"{proto} saddr {{ {', '.join(str(n) for n in nets)} }} goto {chain}")
    lan = _quoted(config.lan)
    ports = _ports([(p, p) for p in sorted(set(config.tcp_ports))])
    comment = f"geogate policy={ks.policy_sha256} name={ks.policy_name}"
    pre = [
        f'comment "{comment}"',
        "type filter hook prerouting priority mangle; policy accept;",
        f"iifname != {lan} return",
        # the gateway's own addresses, broadcast, multicast (neighbour discovery): not forwarded
        "fib daddr type { local, broadcast, multicast } return",
    ]
    if config.tcp_ports:
        pre.append(f"meta l4proto tcp th dport {ports} return")
    dns_pre, dns_nat, dns_input = dns_rules(config)
    pre += dns_pre + [_established(config, generation)] + dispatch + ["goto p0"]
    out = ["  chain prerouting {", *(f"    {line}" for line in pre), "  }",
           *chains,
           "  chain blocked {",
           f'    ct state new counter name "{BLOCKED_COUNTER}" limit rate {config.log_rate}/second '
           f"burst {config.log_rate * 2} packets log group {config.log_group}",
           "    meta l4proto tcp reject with tcp reset",
           "    reject with icmpx admin-prohibited",
           "  }"]
    out += _nat_chain(config, dns_nat)
    out += dns_input
    out += _host_chain(config, [_established(config, generation), "goto p0"])
    return sets, out, comment


def _holding_chains(config: GatewayConfig) -> list[str]:
    """The chains holding() makes, for the switch to the full rules to delete."""
    dns = config.dns_port is not None
    return (["prerouting"] + (["nat"] if config.tcp_ports or dns else []) + (["dns_input"] if dns else [])
            + (["output"] if config.judge_host else []))


def _host_chain(config: GatewayConfig, tail: list[str]) -> list[str]:
    """`--judge-host`: the gateway's own outgoing packets through `tail` (the default profile's
    chain; in holding(), the holding rules). Exempt: the proxy child's sockets (its group), the
    gateway's own addresses, and the LAN (answers to clients, the kernel's own refusals)."""
    if not config.judge_host:
        return []
    lines = [
        "type filter hook output priority mangle; policy accept;",
        f"oifname {_quoted(('lo', *config.lan))} return",
        "fib daddr type { local, broadcast, multicast } return",
        f"meta skgid {config.proxy_gid} return",
        *tail,
    ]
    return ["  chain output {", *(f"    {line}" for line in lines), "  }"]


def _generation(config: GatewayConfig, generation: int) -> int:
    low = config.ct_mask & -config.ct_mask
    return (generation % (config.ct_mask // low) + 1) * low  # never 0: an untagged flow is no generation


def _established(config: GatewayConfig, generation: int) -> str:
    """A packet of a flow these sets already allowed skips the set lookups: its conntrack mark
    carries their generation. After a swap the generation differs, so every flow is judged again
    by the new sets on its next packet (and re-tagged, or refused)."""
    tag, mask = _generation(config, generation), config.ct_mask
    return f"ct state established,related ct mark and {mask:#x} == {tag:#x} meta mark set meta mark | {config.mark:#x} return"


def _allowed(config: GatewayConfig, generation: int) -> list[str]:
    """The end of a profile chain: the packet is allowed. A flow's first packet is counted and
    logged (group flow_group) once: the conntrack mark then carries these sets' generation, so a
    retransmitted first packet is not counted again, and holding() knows the flow was allowed."""
    tag, mask = _generation(config, generation), config.ct_mask
    return [
        f'ct state new ct mark and {mask:#x} != {tag:#x} counter name "{ALLOWED_COUNTER}" '
        f"limit rate {config.log_rate}/second burst {config.log_rate * 2} packets log group {config.flow_group}",
        f"ct mark set ct mark and {~mask & 0xFFFFFFFF:#x} or {tag:#x}",
        f"meta mark set meta mark | {config.mark:#x}",
    ]


def _counters() -> list[str]:
    return [f"  counter {ALLOWED_COUNTER} {{ }}", f"  counter {BLOCKED_COUNTER} {{ }}"]


def holding(config: GatewayConfig, generation: int, policy_sha256: str, policy_name: str) -> str:
    """The table while the full sets are being put back after a flush (milliseconds to load,
    where the sets take seconds): flows that the sets of `generation` allowed go on; anything new
    is refused, visibly (a reset, ICMP administratively prohibited); an established flow not
    tagged by these sets (idle since the last swap) is dropped, and retransmits once the sets
    are back. The proxied ports go to the proxy, which judges them itself."""
    tag, mask = _generation(config, generation), config.ct_mask
    lan = _quoted(config.lan)
    ports = _ports([(p, p) for p in sorted(set(config.tcp_ports))])
    comment = f"geogate policy={policy_sha256} name={policy_name} {HOLDING}"
    dns_pre, dns_nat, dns_input = dns_rules(config)  # LAN DNS is answered by the proxy while holding too
    hold = [
        f"ct state established,related ct mark and {mask:#x} == {tag:#x} meta mark set meta mark | {config.mark:#x} return",
        "ct state established,related drop",
        f'counter name "{HELD_COUNTER}"',
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx admin-prohibited",
    ]
    pre = [
        f'comment "{comment}"',
        "type filter hook prerouting priority mangle; policy accept;",
        f"iifname != {lan} return",
        "fib daddr type { local, broadcast, multicast } return",
        *([f"meta l4proto tcp th dport {ports} return"] if config.tcp_ports else []),
        *dns_pre,
        *hold,
    ]
    # the table's own comment is the full ruleset's: the switch from staged() keeps the table
    out = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{",
           f'  comment "geogate policy={policy_sha256} name={policy_name}"', *_counters(), f"  counter {HELD_COUNTER} {{ }}",
           "  chain prerouting {", *(f"    {line}" for line in pre), "  }"]
    out += _nat_chain(config, dns_nat)
    out += dns_input
    out += _host_chain(config, hold)
    out.append("}")
    return "\n".join(out) + "\n"


def _nat_chain(config: GatewayConfig, dns_nat: list[str]) -> list[str]:
    """The proxied TCP ports to the transparent proxy; with `--dns`, LAN DNS to the DNS mode."""
    ports = _ports([(p, p) for p in sorted(set(config.tcp_ports))])
    nat = [f"iifname {_quoted(config.lan)} meta l4proto tcp th dport {ports} redirect to :{config.proxy_port}"]
    lines = (nat if config.tcp_ports else []) + dns_nat
    if not lines:
        return []
    return ["  chain nat {", "    type nat hook prerouting priority dstnat; policy accept;",
            *(f"    {line}" for line in lines), "  }"]


def dns_rules(config: GatewayConfig) -> tuple[list[str], list[str], list[str]]:
    """With `--dns`, lines for three chains: prerouting keeps LAN DNS from the kernel's judgement
    of the resolver's address (the gateway answers; that address is never contacted), nat hands
    it, UDP and TCP, IPv4 and IPv6, to any address, to the DNS mode, and a chain on input keeps
    the DNS mode's port closed to everyone but the LAN (no open resolver on the other side)."""
    if config.dns_port is None:
        return [], [], []
    lan, both = _quoted(config.lan), "meta l4proto { tcp, udp }"
    return ([f"{both} th dport 53 return"],
            [f"iifname {lan} {both} th dport 53 redirect to :{config.dns_port}"],
            ["  chain dns_input {",
             "    type filter hook input priority filter; policy accept;",
             f"    iifname != {_quoted(('lo', *config.lan))} {both} th dport {config.dns_port} drop",
             "  }"])


def _class_matches(class_ranges: list, only_group: bool) -> list[str]:
    """The match prefixes for a group of port classes (None: packets without ports)."""
    if only_group:
        return [""]
    out = []
    ranges = sorted(r for rs in class_ranges if rs is not None for r in rs)
    if ranges:
        out.append(f"meta l4proto {PORT_PROTOCOLS} th dport {_ports(ranges)} ")
    if any(rs is None for rs in class_ranges):
        out.append(f"meta l4proto != {PORT_PROTOCOLS} ")
    return out


def delete_text() -> str:
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
