"""The nftables ruleset of the gateway, as text for one `nft -f` transaction (pure: no I/O).

One table, `inet geogate`, replaced whole in one transaction (create, delete, create: the kernel
commits all three at once, so no packet ever sees the gateway without rules):

- `prerouting` (filter, priority mangle), for packets from the LAN interfaces: the proxied TCP
  ports pass to the redirect (the proxy judges them, with names); everything else goes to the
  chain of the first client profile whose sources hold the client, else to `p0`;
- a profile chain rejects destinations in its blocked sets (TCP with a reset, everything else with
  ICMP administratively prohibited, so clients see a refusal, not a timeout), and marks every
  packet it lets through;
- `nat` redirects the proxied TCP ports to the transparent proxy, and with `--dns` LAN DNS (UDP
  and TCP port 53, to any address) to the proxy's DNS mode (`dns_rules`).

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


@dataclass(frozen=True)
class GatewayConfig:
    lan: tuple[str, ...]
    proxy_port: int = 8080
    tcp_ports: tuple[int, ...] = (80, 443)
    mark: int = 0x10000000  # one bit, kept clear of the low bits other tools use
    route_table: int = 6767
    rule_pref: int = 6700  # ip rule preferences rule_pref .. rule_pref + 2
    log_group: int = 6767
    log_rate: int = 50  # NFLOG messages per second at most; the rest are counted by nobody
    dns_port: int | None = None  # `--dns`: the port of the proxy's DNS mode; None: DNS judged like any flow
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


def render(ks: KernelSets, config: GatewayConfig) -> str:
    """The whole transaction: the table (re)created with every set, chain and rule."""
    sets: list[str] = []
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
                    test = f"meta nfproto {'ipv4' if version == 4 else 'ipv6'}"
                elif len(allowed) < len(blocked):  # an allow-list is the smaller set: keep that
                    sets += _set(f"{name}_allow", version, allowed)
                    test = f"{proto} daddr != @{name}_allow"
                else:
                    sets += _set(f"{name}_block", version, blocked)
                    test = f"{proto} daddr @{name}_block"
                body += [f"{m}{test} goto blocked" for m in matches]
        body.append(f"meta mark set meta mark | {config.mark:#x}")
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
    pre += dns_pre + dispatch + ["goto p0"]
    out = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{",
           f'  comment "{comment}"', *sets,
           "  chain prerouting {", *(f"    {line}" for line in pre), "  }",
           *chains,
           "  chain blocked {",
           f"    ct state new limit rate {config.log_rate}/second burst {config.log_rate * 2} packets "
           f"log group {config.log_group}",
           "    meta l4proto tcp reject with tcp reset",
           "    reject with icmpx admin-prohibited",
           "  }"]
    nat = [f"iifname {lan} meta l4proto tcp th dport {ports} redirect to :{config.proxy_port}"] if config.tcp_ports else []
    if nat or dns_nat:
        out += ["  chain nat {",
                "    type nat hook prerouting priority dstnat; policy accept;",
                *(f"    {line}" for line in nat + dns_nat),
                "  }"]
    out += dns_input
    out.append("}")
    return "\n".join(out) + "\n"


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
