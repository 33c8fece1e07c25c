"""Two geogate gateways behind one virtual address (VRRP, keepalived), see gateway_pair.LanPair.

Both gateways run the real `geogate gateway run`; keepalived in each gateway namespace holds or
takes the LAN's default-gateway address, and withdraws it when `geogate gateway status` fails
(the configuration of docs/scale-out.md). Connections go through the master and are judged
there; when the master's geogate stops, the address moves and new connections go through the
other gateway, still judged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import system_deps
from gateway_netns import GEOGATE
from gateway_netns import GatewayProcess
from gateway_netns import require_netns
from gateway_netns import wait_until
from gateway_pair import BAD4
from gateway_pair import KEEPALIVED_CONF
from gateway_pair import OK4
from gateway_pair import VIP
from gateway_pair import LanPair
from gateway_pair import http_get
from gateway_pair import proxied
from gateway_pair import running
from gateway_pair import tcp_try

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gv{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    require_netns(TAG)
    system_deps.skip_unless("keepalived")
    tmp = tmp_path_factory.mktemp("gateway-vrrp")
    topo = LanPair(TAG)
    with running(topo, tmp) as (servers, gateways):
        keepalived: list[subprocess.Popen] = []
        try:
            for g, gw in zip(topo.gateways, gateways, strict=True):
                keepalived.append(start_keepalived(g, gw))
            yield {"topo": topo, "servers": servers, "gateways": gateways, "keepalived": keepalived, "tmp": tmp}
        finally:
            for k in keepalived:
                if k.poll() is None:
                    k.send_signal(signal.SIGTERM)
                    try:
                        k.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(k.pid, signal.SIGKILL)
                        k.wait(5)


def start_keepalived(g, gw: GatewayProcess) -> subprocess.Popen:
    """keepalived in gateway `g`'s namespace, tracking `geogate gateway status` of `gw`."""
    own = gw.state_file.parent
    check = own / "geogate-ok.sh"
    check.write_text(f"#!/bin/sh\nGEOGATE_GATEWAY_STATE={gw.state_file} exec {GEOGATE} gateway status >/dev/null 2>&1\n")
    check.chmod(0o755)
    conf = own / "keepalived.conf"
    conf.write_text(KEEPALIVED_CONF.format(name=f"gw{g.index}", check=check, lan=g.ifs["gw_lan"],
                                           priority=150 if g.index == 1 else 100, vip=VIP))
    return subprocess.Popen(
        ["ip", "netns", "exec", g.ns["gw"], "keepalived", "--dont-fork", "--log-console", "--vrrp",
         "--use-file", str(conf), "--pid", str(own / "keepalived.pid"), "--vrrp_pid", str(own / "vrrp.pid")],
        stdout=open(own / "keepalived.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def logs(tmp) -> str:
    return "\n".join((tmp / f"gw{i}" / "keepalived.log").read_text(errors="replace")[-1500:] for i in (1, 2))


def test_the_master_judges_and_when_its_geogate_stops_the_other_takes_over(lan):
    topo, servers, (gw1, gw2) = lan["topo"], lan["servers"], lan["gateways"]
    try:
        wait_until(lambda: topo.holder() is topo.gateways[0], 20, "gateway 1 (priority 150) holds the virtual address")
    except AssertionError:
        raise AssertionError(logs(lan["tmp"])) from None
    for n in range(5):
        assert http_get(topo, OK4, f"/master{n}") == (200, f"hello from {OK4}:80 /master{n}\n".encode())
    assert len(proxied(gw1, OK4, "allow")) == 5 and proxied(gw2, OK4, "allow") == []
    assert http_get(topo, BAD4, "/blocked")[0] == 403 and len(proxied(gw1, BAD4, "block")) == 1
    assert tcp_try(topo, BAD4, 0) == "reset"

    gw1.proc.send_signal(signal.SIGTERM)  # geogate stops; its check fails; keepalived gives the address up
    gw1.proc.wait(20)
    wait_until(lambda: topo.holder() is topo.gateways[1], 20, "gateway 2 takes the virtual address")
    deadline = time.monotonic() + 15
    while http_get(topo, OK4, "/probe")[0] != 200:  # until the client's neighbour entry follows the address
        assert time.monotonic() < deadline, logs(lan["tmp"])
        time.sleep(0.5)
    before = len(proxied(gw2, OK4, "allow"))
    for n in range(5):
        assert http_get(topo, OK4, f"/backup{n}") == (200, f"hello from {OK4}:80 /backup{n}\n".encode())
    assert len(proxied(gw2, OK4, "allow")) - before == 5
    assert http_get(topo, BAD4, "/blocked")[0] == 403 and len(proxied(gw2, BAD4, "block")) == 1
    assert tcp_try(topo, BAD4, 0) == "reset"
    assert servers[("http", BAD4)].connections == [] and servers[("tcp", BAD4)].peers == []
    # the kernel-forwarded connection reached the server from the new master's WAN address
    assert tcp_try(topo, OK4, 0) == "open" and servers[("tcp", OK4)].peers[-1][0] == topo.gateways[1].wan_ip
