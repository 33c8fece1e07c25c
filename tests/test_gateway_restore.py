"""The first step of putting a flushed table back: the holding table (ruleset.holding).

Loaded in milliseconds where the full sets take seconds, it must let the flows that the sets
allowed go on and refuse everything else, visibly, until the full sets are back; a flow that
the sets would refuse now gets nothing through, even one established under older sets. Built
with the real rulesets and real nft, in namespaces, with real TCP and UDP (no gateway daemon:
the test steps through the restore itself, so it can look at the holding state for as long as
it needs; test_gateway_kernel.py's flush test runs the daemon's restore end to end).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess

import pytest

from gateway_netns import BAD4
from gateway_netns import OK4
from gateway_netns import OK6
from gateway_netns import Topology
from gateway_netns import built
from geogate.gateway import kernel
from geogate.gateway import ruleset
from geogate.gateway import sets
from geogate.policy.state import GateState
from netns_servers import TcpEcho
from netns_servers import UdpEcho
from netns_servers import family
from netns_servers import tcp_try
from netns_servers import udp_try
from proxy_support import close_all
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gr{os.getpid() % 100000}"
ALLOW_KP = "  - name: kp-ok\n    action: allow\n    countries: [KP]\n"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-restore")
    with built(TAG) as (topo, stack):
        config = ruleset.GatewayConfig(lan=(topo.ifs["gw_lan"],), tcp_ports=())
        topo.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns="gw")
        for fam in ("-4", "-6"):
            topo.sh("ip", fam, "route", "replace", "unreachable", "default", "table", str(config.route_table), ns="gw")
        for args in ruleset_latch(config):
            topo.sh("ip", *args, ns="gw")
        servers: list = []
        stack.callback(close_all, servers)
        with topo.inside("servers"):
            for ip in (OK4, BAD4, OK6):
                servers += [TcpEcho(ip, 22), TcpEcho(ip, 8443), UdpEcho(ip, 53)]
        db = write_db(tmp / "geo.mmdb")
        strict = GateState.load(write_policy(tmp / "policy.yaml"), [db])
        loose = GateState.load(write_policy(tmp / "loose.yaml", before=ALLOW_KP), [db])
        yield {"topo": topo, "config": config, "strict": sets.build(strict), "loose": sets.build(loose)}


def ruleset_latch(config):
    from geogate.gateway.kernel import latch_rules

    return latch_rules(config)


def connect(topo: Topology, ip: str, port: int) -> socket.socket:
    with topo.inside("client"):
        s = socket.create_connection((ip, port), timeout=3)
    assert echo(s), "the connection did not echo before the test"
    return s


def echo(s: socket.socket, timeout: float = 3) -> bool:
    s.settimeout(timeout)
    try:
        s.sendall(b"ping")
        return s.recv(4) == b"ping"
    except OSError:
        return False


def udp_flow(topo: Topology, ip: str) -> socket.socket:
    with topo.inside("client"):
        s = socket.socket(family(ip), socket.SOCK_DGRAM)
    s.connect((ip, 53))
    return s


def udp_echo(s: socket.socket) -> bool:
    s.settimeout(1.5)
    try:
        s.send(b"datagram")
        return s.recv(64) == b"datagram"
    except OSError:
        return False


def counter(topo: Topology, name: str) -> int:
    out = topo.sh("nft", "list", "counter", "inet", "geogate", name, ns="gw").stdout
    return int(out.split("packets", 1)[1].split()[0])


def test_holding_lets_allowed_flows_go_on_and_refuses_everything_new(net):
    topo, config, strict, loose = net["topo"], net["config"], net["strict"], net["loose"]

    def load(text: str) -> None:
        r = subprocess.run(["ip", "netns", "exec", topo.ns["gw"], "nft", "-f", "-"], input=text, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    # a flow to KP established while a policy allowed it; then the sets that refuse KP (generation 2)
    load(ruleset.render(loose, config, generation=1))
    to_kp = connect(topo, BAD4, 8443)
    idle = connect(topo, OK4, 8443)  # allowed, then silent across the swap
    load(ruleset.render(strict, config, generation=2))
    assert tcp_try(topo, BAD4, 22) == "reset"
    kept = connect(topo, OK4, 22)
    datagrams = udp_flow(topo, OK6)
    assert any(udp_echo(datagrams) for _ in range(3))  # the first may wait for neighbour discovery
    sha, name = strict.policy_sha256, strict.policy_name
    try:
        topo.sh("nft", "flush", "ruleset", ns="gw")
        load(ruleset.holding(config, 2, sha, name))
        listed = topo.sh("nft", "list", "chain", "inet", "geogate", "prerouting", ns="gw").stdout
        assert f"policy={sha}" in listed and ruleset.HOLDING in listed

        # the flows the live sets allowed go on, TCP and UDP
        assert echo(kept) and udp_echo(datagrams)
        # anything new is refused at once, allowed destination or not
        assert tcp_try(topo, OK4, 22) == "reset"
        assert udp_try(topo, OK4, 53) == "EHOSTUNREACH"
        assert tcp_try(topo, BAD4, 22) == "reset"
        assert counter(topo, ruleset.HELD_COUNTER) >= 3
        # established before the sets that refuse it: nothing gets through
        assert not echo(to_kp, timeout=1.5)
        # established and allowed, but idle since the swap: held back, not reset
        assert not echo(idle, timeout=1.5)

        load(ruleset.render(strict, config, generation=2))
        # the full sets: new allowed flows open, the idle flow's retransmission arrives
        assert tcp_try(topo, OK4, 22) == "open"
        idle.settimeout(5)
        assert idle.recv(4) == b"ping"
        assert echo(kept) and udp_echo(datagrams)
        assert not echo(to_kp, timeout=1.5)
    finally:
        for s in (to_kp, idle, kept, datagrams):
            s.close()


def test_holding_keeps_the_proxied_ports_for_the_proxy(net):
    config = ruleset.GatewayConfig(lan=("lan0",), tcp_ports=(80, 443), proxy_port=8080)
    text = ruleset.holding(config, 3, "0" * 64, "p")
    before = text.index("meta l4proto tcp th dport { 80, 443 } return")
    assert before < text.index("ct state established,related")
    assert 'iifname { "lan0" } meta l4proto tcp th dport { 80, 443 } redirect to :8080' in text
    # the same tag render() gives the flows it allows
    full = ruleset.render(net["strict"], config, generation=3)
    tag = next(line.split("or ")[1] for line in full.splitlines() if "ct mark set" in line)
    assert f"== {tag} meta mark set" in text


def listing(topo: Topology) -> list[str]:
    """The table's sets, counters and chains as nft lists them, in name order (the parts load in
    any order), without what differs between two loads of the same ruleset."""
    out = re.sub(r"packets \d+ bytes \d+", "", topo.sh("nft", "list", "table", "inet", "geogate", ns="gw").stdout)
    return sorted(re.split(r"\n(?=\t\S)", out))


def test_the_sets_loaded_in_parts_are_complete_before_the_chains_switch(net):
    """The restore's second step (ruleset.staged, kernel.nft_parallel): every set loaded whole by
    a process of its own on top of the holding table, which still refuses anything new; then the
    chains switch in one small transaction: the table is the one render() makes, element for
    element. A switch without its sets is refused and leaves the holding table in place."""
    topo, strict = net["topo"], net["strict"]
    config = dataclasses.replace(net["config"], set_part=2)  # every set of more than 2 elements in parts
    text, steps = ruleset.render_staged(strict, config, generation=4)
    whole = ruleset.render_staged(strict, net["config"], generation=4)[1]
    assert len(steps.sets) > len(whole.sets), "the test policy's sets are too small to be split"
    assert sum(steps.elements.values()) == sum(whole.elements.values())
    sha, name = strict.policy_sha256, strict.policy_name

    with topo.inside("gw"):
        kernel.nft(text)
    expected = listing(topo)
    kept = connect(topo, OK4, 22)
    try:
        topo.sh("nft", "flush", "ruleset", ns="gw")
        with topo.inside("gw"):
            kernel.nft(ruleset.holding(config, 4, sha, name))
            with pytest.raises(kernel.GatewayError):
                kernel.nft(steps.chains)  # the sets are not there yet: nothing switches
            assert ruleset.HOLDING in kernel.table_comment()
            kernel.nft_parallel(steps.sets)
        # every set complete, the holding chains still in place: new flows refused, old ones go on
        assert tcp_try(topo, OK4, 8443) == "reset" and echo(kept)
        for set_name, count in steps.elements.items():
            out = topo.sh("nft", "-j", "list", "set", "inet", "geogate", set_name, ns="gw").stdout
            loaded = next(o["set"] for o in json.loads(out)["nftables"] if "set" in o)
            assert len(loaded.get("elem", [])) == count, set_name
        with topo.inside("gw"):
            kernel.nft(steps.chains)
        assert listing(topo) == expected
        assert tcp_try(topo, OK4, 8443) == "open"
        assert tcp_try(topo, BAD4, 8443) == "reset"
        assert echo(kept)
    finally:
        kept.close()
