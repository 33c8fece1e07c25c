"""`geogate gateway run --judge-host`: the gateway's own outgoing traffic is judged by the same
sets, except the transparent proxy's upstream connections (the proxy child runs with the group
the output chain exempts). Real namespaces, real sockets, the real gateway and proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway_netns import BAD4
from gateway_netns import OK4
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import built
from geogate.gateway.ruleset import GatewayConfig
from netns_servers import TcpEcho
from proxy_support import Origin
from proxy_support import close_all
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gh{os.getpid() % 100000}"
GID = GatewayConfig(lan=()).proxy_gid
CONNECT = ("import socket,sys\ns=socket.socket()\ns.settimeout(3)\n"
           "try:\n s.connect((sys.argv[1],int(sys.argv[2]))); print('open')\n"
           "except ConnectionRefusedError: print('reset')\nexcept OSError as e: print(e)\n")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-host")
    with built(TAG) as (topo, stack):
        servers: list = []
        stack.callback(close_all, servers)
        with topo.inside("servers"):
            servers += [TcpEcho(OK4, 22), TcpEcho(BAD4, 22), Origin(OK4, 80)]
        gateway = GatewayProcess(topo, tmp, policy=write_policy(tmp / "policy.yaml"), dbs=[write_db(tmp / "geo.mmdb")],
                                 args=["--judge-host"])
        stack.callback(gateway.stop)
        gateway.wait_ready()
        yield {"topo": topo, "gateway": gateway}


def connect_from_gateway(topo: Topology, ip: str, port: int, gid: int | None = None) -> str:
    """A TCP connection made on the gateway host itself, by a process of group `gid`."""
    def setup() -> None:
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
    r = subprocess.run(["ip", "netns", "exec", topo.ns["gw"], sys.executable, "-c", CONNECT, ip, str(port)],
                       capture_output=True, text=True, timeout=30, preexec_fn=setup)
    return r.stdout.strip()


def test_the_gateways_own_traffic_is_judged_and_the_proxys_is_not(host):
    topo, gateway = host["topo"], host["gateway"]
    assert connect_from_gateway(topo, OK4, 22) == "open"
    assert connect_from_gateway(topo, BAD4, 22) == "reset"  # refused on the gateway itself, visibly
    # the group the proxy child runs with is exempt: that is how its upstream connections pass
    assert connect_from_gateway(topo, BAD4, 22, gid=GID) == "open"
    proxy_pid = json.loads(gateway.state_file.read_text())["proxy"]["pid"]
    gids = next(line for line in open(f"/proc/{proxy_pid}/status") if line.startswith("Gid:")).split()[1:]
    assert set(gids) == {str(GID)}
    # and the proxy still reaches an allowed origin for a client on the LAN
    ok = topo.sh("curl", "-sS", "--max-time", "8", f"http://{OK4}/h", ns="client", check=False)
    assert ok.stdout == f"hello from {OK4}:80 /h\n", ok.stderr + gateway.output
    assert gateway.status()["gateway"]["running"]


def test_without_judge_host_the_gateway_itself_is_not_judged(host, tmp_path):
    # the ruleset has no output chain unless asked: nothing else about the host changes
    from geogate.gateway import ruleset
    from geogate.gateway import sets
    from geogate.policy.state import GateState

    state = GateState.load(write_policy(tmp_path / "p.yaml"), [write_db(tmp_path / "g.mmdb")])
    ks = sets.build(state)
    assert "hook output" not in ruleset.render(ks, GatewayConfig(lan=("lan0",)))
    judged = ruleset.render(ks, GatewayConfig(lan=("lan0",), judge_host=True))
    assert f"meta skgid {GID} return" in judged and 'oifname { "lo", "lan0" } return' in judged
    assert "hook output" in ruleset.holding(GatewayConfig(lan=("lan0",), judge_host=True), 1, "0" * 64, "p")
