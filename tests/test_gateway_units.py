"""The gateway's parts without a gateway: the ruleset text, NFLOG packets, receipts, the commands'
refusals and `gateway check`."""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from geogate.gateway import ruleset
from geogate.gateway import sets
from geogate.gateway.nflog import Refused
from geogate.gateway.nflog import parse_packet
from geogate.gateway.receipts import Receipts
from geogate.policy.state import GateState
from proxy_support import write_db
from proxy_support import write_policy
from record_schema import check_record

GEOGATE = Path(sys.executable).with_name("geogate")
RICH = ("  - name: mail\n    action: block\n    ports: [25, 465-587]\n"
        "  - name: lab-net\n    action: allow\n    networks: [10.77.2.16/30]\n")
CLIENTS = ("clients:\n  - name: lab\n    sources: [10.77.1.0/28, 'fd77:1::/64']\n    rules:\n"
           "      - name: lab-kp\n        action: allow\n        countries: [KP]\n")


@pytest.fixture
def rich(tmp_path):
    path = write_policy(tmp_path / "policy.yaml", before=RICH, extra=CLIENTS, settings="nat64: ['2001:db8:100::/40']\n")
    return GateState.load(path, [write_db(tmp_path / "geo.mmdb")])


def test_ruleset_dispatches_profiles_ports_and_nat64(rich):
    ks = sets.build(rich)
    text = ruleset.render(ks, ruleset.GatewayConfig(lan=("lan0", "lan1"), tcp_ports=(80, 443, 8080)))
    assert text.startswith("table inet geogate\ndelete table inet geogate\ntable inet geogate {\n")
    assert 'iifname != { "lan0", "lan1" } return' in text
    assert "meta l4proto tcp th dport { 80, 443, 8080 } return" in text
    assert "ip saddr { 10.77.1.0/28 } goto p1" in text and "ip6 saddr { fd77:1::/64 } goto p1" in text
    assert text.index("goto p1") < text.index("goto p0")  # a profile's clients before everyone else
    assert "ip6 daddr 2001:db8:100::/40 @nh,256,8 != 0 goto blocked" in text
    assert "th dport { 25, 465-587 }" in text  # the mail ports get sets of their own
    assert f"meta mark set meta mark | {ruleset.GatewayConfig(lan=()).mark:#x}" in text
    assert "meta l4proto tcp reject with tcp reset" in text and "reject with icmpx admin-prohibited" in text
    assert 'redirect to :8080' in text
    assert f"policy={rich.policy.ref.sha256}" in text


def test_flows_these_sets_allowed_skip_the_lookups_and_a_swap_judges_them_again(rich):
    ks = sets.build(rich)
    config = ruleset.GatewayConfig(lan=("lan0",), tcp_ports=())

    def fast_path(generation: int) -> str:
        text = ruleset.render(ks, config, generation)
        prerouting = text[text.index("chain prerouting {"):text.index("chain p0 {")]
        line = next(line.strip() for line in prerouting.splitlines() if "ct state established,related" in line)
        # before any profile's chain, so an allowed flow's later packets do no set lookups
        assert prerouting.index(line) < prerouting.index("goto p")
        assert line.endswith("return") and f"meta mark set meta mark | {config.mark:#x}" in line
        # the tag is the one the profile chains stamp on the flows they allow
        assert f"ct mark set ct mark and {~config.ct_mask & 0xFFFFFFFF:#x} or " + line.split(" == ")[1].split()[0] in text
        return line

    # another generation (every swap) carries another tag: no flow passes on the old sets' verdict
    assert fast_path(1) != fast_path(2)


def test_ruleset_loads_into_nft(rich, tmp_path):
    """The text is what nft 1.0.6 accepts (checked in a namespace of its own, nothing applied)."""
    if os.geteuid() != 0 or subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode:
        pytest.skip("needs root and nft")
    ns = f"gu{os.getpid() % 100000}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        text = ruleset.render(sets.build(rich), ruleset.GatewayConfig(lan=("lan0",)))
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "geogate"],
                                capture_output=True, text=True).stdout
        assert "chain p1" in listed and "10.77.2.16/28" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_elements_are_prefixes_where_aligned():
    ten = ipaddress.IPv4Network("10.0.0.0/8")
    assert ruleset.element_text(4, int(ten.network_address), int(ten.broadcast_address)) == "10.0.0.0/8"
    assert ruleset.element_text(4, 5, 5) == "0.0.0.5"
    assert ruleset.element_text(4, 4, 6) == "0.0.0.4-0.0.0.6"
    assert ruleset.complement([(0, 9), (20, 29)], 4) == [(10, 19), (30, (1 << 32) - 1)]


def ipv4_packet(proto: int, payload: bytes) -> bytes:
    return bytes([0x45, 0]) + struct.pack("!H", 20 + len(payload)) + bytes(5) + bytes([proto]) + bytes(2) + \
        bytes([10, 77, 1, 2]) + bytes([10, 77, 2, 20]) + payload


def test_refused_packets_are_read():
    tcp = parse_packet(ipv4_packet(6, struct.pack("!HH", 40000, 22) + bytes(16)))
    assert tcp == Refused("tcp", ipaddress.ip_address("10.77.1.2"), ipaddress.ip_address("10.77.2.20"), 22)
    assert parse_packet(ipv4_packet(1, bytes([8, 0, 0, 0]))).port is None
    src, dst = ipaddress.IPv6Address("fd77:1::2").packed, ipaddress.IPv6Address("fd77:2::20").packed
    hop_by_hop = bytes([17, 0]) + bytes(6)  # then UDP
    v6 = bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", 16, 0, 64) + src + dst + hop_by_hop + struct.pack("!HH", 5353, 51820)
    got = parse_packet(v6)
    assert (got.protocol, str(got.destination), got.port) == ("udp", "fd77:2::20", 51820)
    assert parse_packet(b"") is None and parse_packet(b"\x45\x00") is None


def test_receipts_one_record_per_flow_with_the_repeats_counted(tmp_path):
    state = GateState.load(write_policy(tmp_path / "p.yaml"), [write_db(tmp_path / "geo.mmdb")])
    written: list[dict] = []
    now = [1000.0]
    receipts = Receipts(lambda: state, written.append, lambda: state.policy.ref.sha256, window=10, per_second=3,
                        clock=lambda: now[0])
    kp = Refused("udp", ipaddress.ip_address("10.77.1.2"), ipaddress.ip_address("10.77.2.20"), 53)
    for _ in range(5):
        receipts.refused(kp)
    assert len(written) == 1 and written[0]["kernel"] == {"protocol": "udp", "suppressed": 0}
    rec = written[0]
    check_record(rec)
    assert (rec["mode"], rec["action"], rec["rule"], rec["country"], rec["port"], rec["client"]) == (
        "kernel", "block", "doj", "KP", 53, "10.77.1.2")
    now[0] += 11
    receipts.refused(kp)
    assert written[-1]["kernel"]["suppressed"] == 4
    # more new flows in one second than allowed: counted, written later
    for port in range(1000, 1010):
        receipts.refused(Refused("tcp", kp.source, kp.destination, port))
    assert len(written) == 4 and receipts.suppressed == 4 + 8
    # the kernel refused what the engine allows (a range blocked whole): the record says so
    de = Refused("udp", kp.source, ipaddress.ip_address("10.77.2.10"), 53)
    now[0] += 5
    receipts.refused(de)
    assert written[-1]["action"] == "block" and written[-1]["rule"] == "kernel"
    check_record(written[-1])


def test_run_refuses_bad_input_before_touching_anything(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(tmp_path / "state.json"))
        return subprocess.run([str(GEOGATE), "gateway", "run", *args], capture_output=True, text=True, env=env)

    r = run("--lan", "nosuch0")
    assert r.returncode == 2 and r.stderr == "geogate: --lan nosuch0: no such network interface\n"
    r = run("--lan", "lo", "--tcp-ports", "80,http")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'http' is not a port number" in r.stderr
    missing = tmp_path / "missing.yaml"
    r = run("--lan", "lo", "--policy", str(missing))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing.yaml" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "state.json").exists()


def test_status_without_a_gateway_says_so(tmp_path):
    env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(tmp_path / "state.json"))
    ns = f"gs{os.getpid() % 100000}"
    prefix = ["ip", "netns", "exec", ns] if os.geteuid() == 0 else []
    if prefix and subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        prefix = []
    try:
        r = subprocess.run([*prefix, str(GEOGATE), "gateway", "status", "--json"], capture_output=True, text=True, env=env)
    finally:
        if prefix:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    import json

    status = json.loads(r.stdout)
    assert r.returncode == 3
    assert status["gateway"]["running"] is False and status["table"] is False and status["latch"] is False
    assert status["kernel"]["policy_sha256"] is None and status["proxy"]["policy_sha256"] is None


def test_check_names_what_only_the_proxy_can_enforce(tmp_path):
    policy = write_policy(tmp_path / "p.yaml", before="  - name: named\n    action: allow\n    hosts: [example.org]\n" + RICH,
                          extra=CLIENTS + "  - name: staff\n    users: [alice]\n    rules: []\n")
    r = subprocess.run([str(GEOGATE), "gateway", "check", "--policy", str(policy), "--db",
                        str(write_db(tmp_path / "geo.mmdb"))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "kernel, every protocol: lab-kp, lab-net, doj\n" in out
    assert "kernel, by destination port (TCP/UDP/SCTP/DCCP): mail" in out
    assert "kernel, client profiles by source address: lab" in out
    assert "rule named matches hosts (example.org)" in out and "proxied ports" in out
    assert "client profile staff matches proxy users (alice)" in out
    assert "Teredo (2001::/32) is blocked by the kernel as a whole" in out
    assert "blocked intervals" in out


def test_large_sets_are_split_in_address_order_and_every_part_is_matched(rich):
    """A set over GatewayConfig.set_part elements becomes parts (restore loads them in parallel);
    together they hold every interval once, and each chain matches every part: a blocked part
    each in a rule of its own, an allowed one only outside all parts."""
    ks = sets.build(rich)
    whole_text, whole = ruleset.render_staged(ks, ruleset.GatewayConfig(lan=("lan0",)))
    text, steps = ruleset.render_staged(ks, ruleset.GatewayConfig(lan=("lan0",), set_part=2))
    assert len(steps.sets) > len(whole.sets)
    for name, count in whole.elements.items():
        parts = {n: c for n, c in steps.elements.items() if n == name or n.startswith(f"{name}_")}
        assert sum(parts.values()) == count and all(c <= 2 for c in parts.values()), name
        if len(parts) > 1:
            def elements(name: str, text: str) -> str:
                found = re.search(rf"set {name} {{.*?elements = {{ (.*?) }}", text, re.S)
                return found.group(1).replace(",\n      ", ", ") if found else ""

            in_order = sorted(parts, key=lambda n: int(n.rsplit("_", 1)[1]))
            assert elements(name, whole_text)
            assert ", ".join(elements(n, text) for n in in_order) == elements(name, whole_text)
            if name.endswith("_allow"):
                assert any(all(f"daddr != @{n}" in line for n in parts) for line in text.splitlines()), name
            else:
                assert all(f"daddr @{n} goto blocked" in text for n in parts), name
    # the switch replaces the holding chains only; the sets come from steps.sets
    assert "elements" not in steps.chains and "delete chain inet geogate prerouting" in steps.chains
    assert "".join(steps.sets).count("elements") == len(steps.sets)
