"""Two geogate gateways side by side behind an equal-cost multipath route (see gateway_pair.py).

Each gateway namespace runs the real `geogate gateway run` with its own decision log and state
file. New connections are spread over both by the client's kernel and judged by whichever carries
them; a blocked destination is refused through either; when one gateway loses its LAN link the
kernel stops using that nexthop and new connections go through the other, still judged; when a
gateway's process stops, its rules keep refusing the proxied ports (fail closed) until the health
check withdraws its nexthop.
"""

from __future__ import annotations

import os
import signal

import pytest

from gateway_netns import GatewayProcess
from gateway_netns import require_netns
from gateway_netns import wait_until
from gateway_pair import BAD4
from gateway_pair import CLIENT_SRC
from gateway_pair import OK4
from gateway_pair import Pair
from gateway_pair import http_get
from gateway_pair import proxied
from gateway_pair import running
from gateway_pair import tcp_try
from gateway_pair import udp_try

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"ge{os.getpid() % 100000}"
SPREAD_CONNECTIONS = 40


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    require_netns(TAG)
    topo = Pair(TAG)
    with running(topo, tmp_path_factory.mktemp("gateway-ecmp")) as (servers, gateways):
        yield {"topo": topo, "servers": servers, "gateways": gateways}


# -- the tests, in order: both up, one link down, one process stopped -----------------------------

def test_new_connections_are_spread_over_both_gateways_and_judged(pair):
    topo, servers, (gw1, gw2) = pair["topo"], pair["servers"], pair["gateways"]
    before = {gw: len(proxied(gw, OK4, "allow")) for gw in (gw1, gw2)}
    for n in range(SPREAD_CONNECTIONS):
        status, body = http_get(topo, OK4, f"/spread{n}")  # the kernel picks a new source port each time
        assert (status, body) == (200, f"hello from {OK4}:80 /spread{n}\n".encode()), gw1.output[-2000:] + gw2.output[-2000:]
    counts = {gw: len(proxied(gw, OK4, "allow")) - before[gw] for gw in (gw1, gw2)}
    assert sum(counts.values()) == SPREAD_CONNECTIONS, counts
    # binomial(40, 1/2): fewer than 5 on one side happens about once in ten million runs
    assert min(counts.values()) >= 5, f"the connections were not spread: {list(counts.values())}"
    # each gateway's proxy dialled from its own WAN address
    assert {host for host, _port in servers[("http", OK4)].connections} == {"10.77.2.1", "10.77.2.2"}

    # the kernel path (TCP 22, UDP 53): the client's hash decides, the server sees the gateway's address
    for proto, kind in (("tcp", "tcp"), ("udp", "udp")):
        ports = topo.ports_through(OK4, proto, 22 if proto == "tcp" else 53, 2, first=21000)
        for index, sports in ports.items():
            for sport in sports:
                seen = len(servers[(kind, OK4)].peers)
                got = tcp_try(topo, OK4, sport) if proto == "tcp" else udp_try(topo, OK4, sport)
                assert got == ("open" if proto == "tcp" else "echo"), (proto, sport, got)
                assert servers[(kind, OK4)].peers[seen][0] == f"10.77.2.{index}", (proto, sport)


def test_a_blocked_destination_is_blocked_through_either_gateway(pair):
    topo, servers, (gw1, gw2) = pair["topo"], pair["servers"], pair["gateways"]
    by_index = {1: gw1, 2: gw2}
    for index, sports in topo.ports_through(BAD4, "tcp", 22, 2, first=22000).items():
        for sport in sports:
            assert tcp_try(topo, BAD4, sport) == "reset", f"TCP 22 through gateway {index}"
    for index, sports in topo.ports_through(BAD4, "udp", 53, 2, first=23000).items():
        for sport in sports:
            assert udp_try(topo, BAD4, sport) == "EHOSTUNREACH", f"UDP 53 through gateway {index}"
    for index, sports in topo.ports_through(BAD4, "tcp", 80, 2, first=24000).items():
        before = len(proxied(by_index[index], BAD4, "block"))
        for sport in sports:
            status, body = http_get(topo, BAD4, "/blocked", sport)
            assert status == 403, f"HTTP through gateway {index}: {status} {body[:200]!r}"
        assert len(proxied(by_index[index], BAD4, "block")) - before == len(sports)
    assert servers[("tcp", BAD4)].peers == [] and servers[("udp", BAD4)].peers == []
    assert servers[("http", BAD4)].connections == []

    # each gateway wrote the receipts of the flows its kernel refused
    def receipts(gw: GatewayProcess) -> set:
        return {(r["kernel"]["protocol"], r["port"]) for r in gw.records() if r["mode"] == "kernel" and r["address"] == BAD4}
    for gw in (gw1, gw2):
        wait_until(lambda gw=gw: receipts(gw) >= {("tcp", 22), ("udp", 53)}, 10, f"receipts in {gw.log_path}")
        assert all(r["client"] == CLIENT_SRC for r in gw.records() if r["mode"] == "kernel")


def test_a_gateway_that_loses_its_link_is_skipped_and_the_other_judges(pair):
    topo, servers, (gw1, gw2) = pair["topo"], pair["servers"], pair["gateways"]
    g1 = topo.gateways[0]
    via_gw1 = topo.ports_through(OK4, "tcp", 80, 10, first=25000)[1]
    topo.sh("ip", "link", "set", g1.ifs["gw_lan"], "down", ns=g1.ns["gw"])
    try:
        # the client's end loses its carrier; with ignore_routes_with_linkdown the nexthop is skipped
        wait_until(lambda: all(topo.route_of(OK4, "tcp", p, 80).index == 2 for p in via_gw1), 10,
                   "the client's kernel stopped choosing gateway 1")
        before = {gw: len(proxied(gw, OK4, "allow")) for gw in (gw1, gw2)}
        for n, sport in enumerate(via_gw1):  # ports that hashed onto gateway 1 while it was up
            status, body = http_get(topo, OK4, f"/failover{n}", sport)
            assert (status, body) == (200, f"hello from {OK4}:80 /failover{n}\n".encode()), body
        assert len(proxied(gw1, OK4, "allow")) == before[gw1]
        assert len(proxied(gw2, OK4, "allow")) - before[gw2] == len(via_gw1)
        # still judged: the blocked destination is refused by the survivor
        blocked_before = len(proxied(gw2, BAD4, "block"))
        assert http_get(topo, BAD4, "/blocked", via_gw1[0] + 1000)[0] == 403
        assert len(proxied(gw2, BAD4, "block")) == blocked_before + 1
        assert tcp_try(topo, BAD4, via_gw1[1] + 1000) == "reset"
        assert udp_try(topo, BAD4, via_gw1[2] + 1000) == "EHOSTUNREACH"
        assert servers[("tcp", BAD4)].peers == [] and servers[("http", BAD4)].connections == []
    finally:
        topo.sh("ip", "link", "set", g1.ifs["gw_lan"], "up", ns=g1.ns["gw"])
    wait_until(lambda: any(topo.route_of(OK4, "tcp", p, 80).index == 1 for p in via_gw1), 10,
               "gateway 1 taken back into the multipath route once its link is up")


def test_a_stopped_gateway_fails_closed_until_the_health_check_withdraws_it(pair):
    topo, (gw1, gw2) = pair["topo"], pair["gateways"]
    via_gw1 = topo.ports_through(OK4, "tcp", 80, 4, first=27000)[1]
    ssh_via_gw1 = topo.ports_through(BAD4, "tcp", 22, 1, first=28000)[1][0]
    gw1.proc.send_signal(signal.SIGTERM)  # the process dies; its rules stay (docs/gateway.md)
    gw1.proc.wait(20)
    # the link is up, so the kernel still sends half the new connections there: they are refused,
    # never forwarded unjudged
    status, _body = http_get(topo, OK4, "/stopped", via_gw1[0])
    assert status is None or status >= 500, status
    assert tcp_try(topo, BAD4, ssh_via_gw1) in ("reset", "EHOSTUNREACH", "timeout")
    # the health check (keepalived's track_script, a cron probe, a routing daemon) withdraws the nexthop
    topo.set_nexthops(topo.gateways[1:])
    before = len(proxied(gw2, OK4, "allow"))
    for n, sport in enumerate(via_gw1[1:]):
        status, body = http_get(topo, OK4, f"/withdrawn{n}", sport + 3000)
        assert (status, body) == (200, f"hello from {OK4}:80 /withdrawn{n}\n".encode()), body
    assert len(proxied(gw2, OK4, "allow")) - before == len(via_gw1) - 1
