"""Two gateways side by side, made and removed by the tests themselves (ECMP here, VRRP in LanPair).

                       10.77.1.2 <-veth-> 10.77.1.1 gw1 10.77.2.1 <-veth-+
    client  10.77.9.2 (lo)                                               bridge (servers ns)
            default: nexthop via gw1, nexthop via gw2                   10.77.2.10 (DE), 10.77.2.20 (KP)
                       10.77.3.2 <-veth-> 10.77.3.1 gw2 10.77.2.2 <-veth-+

The client stands for the LAN's router: one link to each gateway and one multipath default route,
hashed on the L4 ports (net.ipv4.fib_multipath_hash_policy=1), so each new connection takes one
gateway and keeps it. Its address lives on lo and the route names it as `src`, so a connection has
the same source whichever link it leaves by. net.ipv4.conf.all.ignore_routes_with_linkdown=1 makes
the kernel skip a nexthop whose link has lost its carrier.

The return path: each gateway masquerades what it forwards out of its WAN link, so a server answers
the gateway that carried the connection (the proxied ports are dialled from the gateway's own WAN
address anyway). The servers namespace has no default route at all: any reply that needed one
would be lost, and the tests would see it.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from pathlib import Path

from gateway_netns import GatewayProcess
from gateway_netns import Namespaces
from netns_servers import TcpEcho
from netns_servers import UdpEcho
from netns_servers import tcp_ping
from netns_servers import udp_ping
from proxy_support import Origin
from proxy_support import close_all
from proxy_support import write_db
from proxy_support import write_policy

CLIENT_SRC = "10.77.9.2"
OK4, BAD4 = "10.77.2.10", "10.77.2.20"  # DE and KP in proxy_support.NETWORKS


class GatewayNs(Namespaces):
    """One gateway's namespace, shaped like gateway_netns.Topology for GatewayProcess."""

    def __init__(self, pair: "Pair", index: int) -> None:
        self.pair, self.index = pair, index
        self.ns = {"gw": f"{pair.tag}g{index}"}
        self.ifs = {"gw_lan": f"{pair.tag}l{index}", "gw_wan": f"{pair.tag}w{index}"}
        self.lan_ip = f"10.77.{2 * index - 1}.1"  # gw1 10.77.1.1, gw2 10.77.3.1
        self.client_ip = f"10.77.{2 * index - 1}.2"
        self.client_if = f"{pair.tag}c{index}"
        self.wan_ip = f"10.77.2.{index}"


class Pair(Namespaces):
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.client, self.servers = f"{tag}c", f"{tag}s"
        self.gateways = (GatewayNs(self, 1), GatewayNs(self, 2))
        self.ns = {"client": self.client, "servers": self.servers, **{f"gw{g.index}": g.ns["gw"] for g in self.gateways}}
        self.client_src = CLIENT_SRC

    def build(self) -> None:
        c, s = self.client, self.servers
        for ns in (c, s, *(g.ns["gw"] for g in self.gateways)):
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "link", "set", "lo", "up", ns=ns)
        self.sh("ip", "link", "add", "br0", "type", "bridge", ns=s)
        self.sh("ip", "link", "set", "br0", "up", ns=s)
        for addr in (OK4, BAD4):
            self.sh("ip", "addr", "add", f"{addr}/24", "dev", "br0", ns=s)
        self.sh("ip", "addr", "add", f"{CLIENT_SRC}/32", "dev", "lo", ns=c)
        for g in self.gateways:
            gw = g.ns["gw"]
            self.sh("ip", "link", "add", g.client_if, "netns", c, "type", "veth", "peer", "name", g.ifs["gw_lan"],
                    "netns", gw)
            port = f"{self.tag}p{g.index}"
            self.sh("ip", "link", "add", g.ifs["gw_wan"], "netns", gw, "type", "veth", "peer", "name", port, "netns", s)
            self.sh("ip", "link", "set", port, "master", "br0", ns=s)
            self.sh("ip", "link", "set", port, "up", ns=s)
            for ns, dev, addr in ((c, g.client_if, g.client_ip), (gw, g.ifs["gw_lan"], g.lan_ip),
                                  (gw, g.ifs["gw_wan"], g.wan_ip)):
                self.sh("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=ns)
                self.sh("ip", "link", "set", dev, "up", ns=ns)
            self.sh("ip", "route", "add", f"{CLIENT_SRC}/32", "via", g.client_ip, "dev", g.ifs["gw_lan"], ns=gw)
            # the operator's return path: what this gateway forwards leaves with its WAN address
            self.sh("nft", "-f", "-", ns=gw, input=(
                "table ip wan_nat {\n  chain post {\n    type nat hook postrouting priority srcnat;\n"
                f"    oifname \"{g.ifs['gw_wan']}\" masquerade\n  }}\n}}\n"))
        self.sh("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1", ns=c)
        self.sh("sysctl", "-qw", "net.ipv4.conf.all.ignore_routes_with_linkdown=1", ns=c)
        self.set_nexthops(self.gateways)

    def set_nexthops(self, gateways) -> None:
        """The client's default route over these gateways (what a health check changes)."""
        hops = [a for g in gateways for a in ("nexthop", "via", g.lan_ip, "dev", g.client_if)]
        self.sh("ip", "route", "replace", "default", "src", CLIENT_SRC, *hops, ns=self.client)

    def route_of(self, dst: str, proto: str, sport: int, dport: int) -> "GatewayNs":
        """The gateway the client's kernel picks for this 4-tuple (the same multipath hash a
        connection from that source port gets)."""
        out = self.sh("ip", "route", "get", dst, "from", CLIENT_SRC, "ipproto", proto, "sport", str(sport),
                      "dport", str(dport), ns=self.client).stdout
        m = re.search(r"via (\S+)", out)
        by_ip = {g.lan_ip: g for g in self.gateways}
        if not m or m.group(1) not in by_ip:
            raise AssertionError(f"no gateway in {out!r}")
        return by_ip[m.group(1)]

    def ports_through(self, dst: str, proto: str, dport: int, count: int, first: int = 20000) -> dict[int, list[int]]:
        """`count` source ports per gateway (by index) that the client hashes onto it."""
        found: dict[int, list[int]] = {g.index: [] for g in self.gateways}
        port = first
        while min(len(v) for v in found.values()) < count:
            if port > first + 2000:
                raise AssertionError(f"the multipath hash sent 2000 ports one way: {found}")
            g = self.route_of(dst, proto, port, dport)
            if len(found[g.index]) < count:
                found[g.index].append(port)
            port += 1
        return found


VIP = "10.77.1.1"


class LanPair(Pair):
    """The same gateways on one LAN segment instead (a bridge in the client namespace), for VRRP:
    the client's default route is the virtual address VIP, held by whichever gateway is master.

        client 10.77.1.2 -- bridge -- gw1 10.77.1.11 (VIP when master) -- WAN bridge as above
                                 \\-- gw2 10.77.1.12
    """

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.client_src = "10.77.1.2"
        for g in self.gateways:
            g.lan_ip = f"10.77.1.{10 + g.index}"
            g.client_ip = "10.77.1.2"

    def build(self) -> None:
        c, s = self.client, self.servers
        for ns in (c, s, *(g.ns["gw"] for g in self.gateways)):
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "link", "set", "lo", "up", ns=ns)
        for ns, addrs in ((c, ("10.77.1.2",)), (s, (OK4, BAD4))):
            self.sh("ip", "link", "add", "br0", "type", "bridge", ns=ns)
            self.sh("ip", "link", "set", "br0", "up", ns=ns)
            for addr in addrs:
                self.sh("ip", "addr", "add", f"{addr}/24", "dev", "br0", ns=ns)
        for g in self.gateways:
            gw = g.ns["gw"]
            for bridge_ns, port, dev, addr in ((c, g.client_if, g.ifs["gw_lan"], g.lan_ip),
                                               (s, f"{self.tag}p{g.index}", g.ifs["gw_wan"], g.wan_ip)):
                self.sh("ip", "link", "add", dev, "netns", gw, "type", "veth", "peer", "name", port, "netns", bridge_ns)
                self.sh("ip", "link", "set", port, "master", "br0", ns=bridge_ns)
                self.sh("ip", "link", "set", port, "up", ns=bridge_ns)
                self.sh("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=gw)
                self.sh("ip", "link", "set", dev, "up", ns=gw)
            self.sh("nft", "-f", "-", ns=gw, input=(
                "table ip wan_nat {\n  chain post {\n    type nat hook postrouting priority srcnat;\n"
                f"    oifname \"{g.ifs['gw_wan']}\" masquerade\n  }}\n}}\n"))
        self.sh("ip", "route", "add", "default", "via", VIP, ns=c)

    def holder(self) -> "GatewayNs | None":
        """The gateway that holds the virtual address now."""
        for g in self.gateways:
            if f" {VIP}/" in self.sh("ip", "-4", "-o", "addr", "show", "dev", g.ifs["gw_lan"], ns=g.ns["gw"]).stdout:
                return g
        return None


@contextmanager
def running(topo: Pair, tmp: Path) -> Iterator[tuple[dict, list[GatewayProcess]]]:
    """`topo` built, HTTP, TCP 22 and UDP 53 echo servers on OK4 and BAD4, and `geogate gateway run`
    in each gateway namespace (its own directory, decision log and state file); all taken down after."""
    with ExitStack() as stack:
        stack.callback(topo.tear_down)
        topo.build()
        servers: dict = {}
        stack.callback(close_all, servers.values())
        with topo.inside("servers"):
            for ip in (OK4, BAD4):
                servers[("http", ip)] = Origin(ip, 80)
                servers[("tcp", ip)] = TcpEcho(ip, 22)
                servers[("udp", ip)] = UdpEcho(ip, 53)
        policy = write_policy(tmp / "policy.yaml")
        db = write_db(tmp / "geo.mmdb")
        gateways: list[GatewayProcess] = []
        stack.callback(stop_all, gateways)
        for g in topo.gateways:
            own = tmp / f"gw{g.index}"
            own.mkdir()
            gateways.append(GatewayProcess(g, own, policy=policy, dbs=[db], log=own / "decisions.jsonl"))
        for gw in gateways:
            gw.wait_ready()
        yield servers, gateways


def stop_all(gateways: list[GatewayProcess]) -> None:
    for gw in gateways:
        try:
            gw.stop()
        except Exception:
            pass  # the other gateway still has to go down


KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
    script_user root
}}

vrrp_script geogate_ok {{
    script "{check}"
    interval 1
    timeout 5
    fall 2
    rise 2
}}

vrrp_instance lan {{
    state BACKUP
    interface {lan}
    virtual_router_id 77
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {vip}/24 dev {lan}
    }}
    track_script {{
        geogate_ok
    }}
}}
"""


# -- servers and clients of the pair tests --------------------------------------------------------

def client_socket(topo: Pair, kind: int, sport: int = 0) -> socket.socket:
    with topo.inside("client"):
        s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((topo.client_src, sport))
    return s


def http_get(topo: Pair, ip: str, path: str, sport: int = 0) -> tuple[int | None, bytes]:
    """One request on a new connection: (status, body), or (None, why)."""
    s = client_socket(topo, socket.SOCK_STREAM, sport)
    s.settimeout(8)
    try:
        s.connect((ip, 80))
        conn = http.client.HTTPConnection(ip, 80, timeout=8)
        conn.sock = s
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    except OSError as e:
        return None, repr(e).encode()
    finally:
        s.close()


def tcp_try(topo: Pair, ip: str, sport: int) -> str:
    return tcp_ping(client_socket(topo, socket.SOCK_STREAM, sport), ip, 22)


def udp_try(topo: Pair, ip: str, sport: int) -> str:
    return udp_ping(client_socket(topo, socket.SOCK_DGRAM, sport), ip, 53)


def proxied(gw: GatewayProcess, address: str, action: str) -> list[dict]:
    return [r for r in gw.records() if r["mode"] == "transparent" and r["address"] == address and r["action"] == action]
