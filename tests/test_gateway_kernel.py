"""The gateway's kernel verdicts for real: `geogate gateway run` in a namespace, real packets.

Every protocol the proxy does not see (TCP on other ports, UDP, ICMP; IPv4 and IPv6) reaches the
allowed (DE) server and never the blocked (KP) one; refusals are visible to the client; a flushed
ruleset lets nothing through and the gateway puts it back within 2 s; a policy edit flips a
country both ways without a restart; refused flows leave decision records with mode kernel.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from gateway_netns import BAD4
from gateway_netns import BAD6
from gateway_netns import GEOGATE
from gateway_netns import OK4
from gateway_netns import OK6
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import built
from gateway_netns import wait_until
from netns_servers import TcpEcho
from netns_servers import UdpEcho
from netns_servers import family
from netns_servers import tcp_try
from netns_servers import udp_try
from proxy_support import Origin
from proxy_support import close_all
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gk{os.getpid() % 100000}"
ADDRESSES = (OK4, BAD4, OK6, BAD6)
TCP_PORTS = (22, 8443)
UDP_PORTS = (53, 443, 51820)
BLOCK_DE = "  - name: no-de\n    action: block\n    countries: [DE]\n"
BLOCK_FR = "  - name: no-fr\n    action: block\n    countries: [FR]\n"


class IcmpCounter:
    """Counts echo requests that reach one address (a raw socket bound to it)."""

    def __init__(self, ip: str) -> None:
        self.count = 0
        proto, self.request = (socket.IPPROTO_ICMPV6, 128) if ":" in ip else (socket.IPPROTO_ICMP, 8)
        self.v6 = ":" in ip
        self.sock = socket.socket(family(ip), socket.SOCK_RAW, proto)
        self.sock.bind((ip, 0))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except OSError:
                return
            icmp = data if self.v6 else data[(data[0] & 0xF) * 4:]
            if icmp and icmp[0] == self.request:
                self.count += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-kernel")
    with built(TAG) as (topo, stack):
        servers: dict = {}
        stack.callback(close_all, servers.values())
        with topo.inside("servers"):
            for ip in ADDRESSES:
                for port in TCP_PORTS:
                    servers[("tcp", ip, port)] = TcpEcho(ip, port)
                for port in UDP_PORTS:
                    servers[("udp", ip, port)] = UdpEcho(ip, port)
                servers[("icmp", ip)] = IcmpCounter(ip)
                servers[("http", ip)] = Origin(ip, 80)
        policy = write_policy(tmp / "policy.yaml")
        gateway = GatewayProcess(topo, tmp, policy=policy, dbs=[write_db(tmp / "geo.mmdb")], log=tmp / "decisions.jsonl",
                                 args=["--log-allowed"])
        stack.callback(gateway.stop)
        gateway.wait_ready()
        yield {"topo": topo, "servers": servers, "gateway": gateway, "policy": policy, "tmp": tmp}


def refused(ip: str) -> str:
    """How a connected UDP socket reports ICMP administratively prohibited (v4: type 3 code 13,
    v6: type 1 code 1)."""
    return "EACCES" if ":" in ip else "EHOSTUNREACH"


def ping(topo: Topology, ip: str) -> str:
    v6 = ":" in ip
    with topo.inside("client"):
        s = socket.socket(family(ip), socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(1.5)
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"geogate"
    if not v6:
        padded = body + b"\0" * (len(body) % 2)
        total = sum(struct.unpack("!%dH" % (len(padded) // 2), padded))
        total = (total >> 16) + (total & 0xFFFF)
        body = body[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + body[4:]
    try:
        s.sendto(body, (ip, 0))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            data = s.recv(2048)
            icmp = data if v6 else data[(data[0] & 0xF) * 4:]
            kind, code = icmp[0], icmp[1]
            if kind == (129 if v6 else 0):
                return "reply"
            if (v6 and kind == 1) or (not v6 and kind == 3):
                return f"unreachable code {code}"
        return "timeout"
    except OSError:
        return "timeout"
    finally:
        s.close()


def settled(attempt, *args, tries: int = 3) -> str:
    """An answer that is not a time-out: on a loaded machine a reply can be late, so one is tried
    again (a refusal or a reached server is an answer at the first try; what a server receives is
    asserted separately)."""
    for _ in range(tries):
        result = attempt(*args)
        if result not in ("timeout", "slow reset", "silent", "EAGAIN"):
            return result
    return result


def test_every_protocol_is_judged(gw):
    topo, servers, gateway = gw["topo"], gw["servers"], gw["gateway"]
    before = {k: (s.accepted if k[0] == "tcp" else len(s.received) if k[0] == "udp" else s.count if k[0] == "icmp" else 0)
              for k, s in servers.items()}
    for ok, bad in ((OK4, BAD4), (OK6, BAD6)):
        for port in TCP_PORTS:
            assert settled(tcp_try, topo, ok, port) == "open", gateway.output
            assert settled(tcp_try, topo, bad, port) == "reset"  # a TCP reset, at once
        for port in UDP_PORTS:
            assert settled(udp_try, topo, ok, port) == "echo"
            assert settled(udp_try, topo, bad, port) == refused(bad)
        assert settled(ping, topo, ok) == "reply"
        assert settled(ping, topo, bad) == ("unreachable code 1" if ":" in bad else "unreachable code 13")
    for ip in (BAD4, BAD6):
        assert servers[("icmp", ip)].count == before[("icmp", ip)] == 0
        for port in TCP_PORTS:
            assert servers[("tcp", ip, port)].accepted == 0, f"blocked {ip}:{port} was reached"
        for port in UDP_PORTS:
            assert servers[("udp", ip, port)].received == [], f"blocked {ip}:{port}/udp was reached"
    # the kernel answers the echo while the counter's thread reads its copy: it may count after the reply
    wait_until(lambda: servers[("icmp", OK4)].count >= 1 and servers[("icmp", OK6)].count >= 1, 2, "an echo request counted")

    # the proxied port: the proxy answers for the blocked country, with the reason
    blocked = topo.sh("curl", "-sS", "--max-time", "8", "-D", "-", f"http://{BAD4}/", ns="client", check=False)
    assert blocked.stdout.startswith("HTTP/1.1 403")
    assert 'error=destination_ip_prohibited; details="country=KP; rule=doj"' in blocked.stdout
    assert servers[("http", BAD4)].connections == []
    ok = topo.sh("curl", "-sS", "--max-time", "8", f"http://{OK4}/k", ns="client", check=False)
    assert ok.stdout == f"hello from {OK4}:80 /k\n", ok.stderr

    # receipts: one record per refused flow, mode kernel, the engine's rule and country
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kernel = [r for r in gateway.records() if r["mode"] == "kernel" and r["action"] == "block"]
        if {(r["address"], r["port"]) for r in kernel} >= {(BAD4, 22), (BAD6, 8443), (BAD4, 51820)}:
            break
        time.sleep(0.2)
    by_flow = {(r["address"], r["kernel"]["protocol"], r["port"]): r for r in kernel}
    r = by_flow[(BAD4, "tcp", 22)]
    assert (r["action"], r["rule"], r["country"], r["client"]) == ("block", "doj", "KP", "10.77.1.2")
    assert r["policy"]["sha256"] == gateway.status()["kernel"]["policy_sha256"]
    assert (BAD6, "udp", 53) in by_flow and (BAD4, "icmp", None) in by_flow and (BAD6, "icmpv6", None) in by_flow
    assert not any(r["address"] in (OK4, OK6) for r in kernel)


def flows(gateway: GatewayProcess) -> dict:
    return gateway.status()["flows"]


def count(snapshot: dict, action: str, rule: str, country: str) -> int:
    return snapshot[action].get(rule, {}).get(country, 0)


def test_new_kernel_flows_are_counted_per_rule_and_country_and_logged_on_request(gw):
    topo, gateway = gw["topo"], gw["gateway"]
    wait_until(lambda: flows(gateway)["kernel"] is not None, 10)
    before = flows(gateway)
    for _ in range(3):
        assert tcp_try(topo, OK4, 22) == "open"  # each a new connection: a new flow
        assert tcp_try(topo, BAD4, 22) == "reset"
    assert udp_try(topo, OK6, 443) == "echo"
    for _ in range(2):
        assert udp_try(topo, BAD6, 443) == "EACCES"

    def moved(now: dict) -> tuple:
        return (count(now, "allowed", "default", "DE") - count(before, "allowed", "default", "DE"),
                count(now, "blocked", "doj", "KP") - count(before, "blocked", "doj", "KP"),
                now["kernel"]["allowed"] - before["kernel"]["allowed"],
                now["kernel"]["blocked"] - before["kernel"]["blocked"])

    # four allowed flows (3 TCP, 1 UDP), five refused first packets; the kernel's counters agree
    wait_until(lambda: moved(flows(gateway)) == (4, 5, 4, 5), 10)
    now = flows(gateway)
    assert now["protocols"]["allowed"]["tcp"] - before["protocols"]["allowed"].get("tcp", 0) == 3
    assert now["protocols"]["allowed"]["udp"] - before["protocols"]["allowed"].get("udp", 0) == 1
    assert now["unattributed"] == {"allowed": 0, "blocked": 0} and now["lagging"] is False
    # a packet of an open connection is not a new flow
    with topo.inside("client"):
        conn = socket.create_connection((OK4, 8443), timeout=3)
    try:
        for _ in range(5):
            conn.sendall(b"more")
            assert conn.recv(4) == b"more"
    finally:
        conn.close()
    wait_until(lambda: moved(flows(gateway))[2] == 5, 10)
    time.sleep(1.5)
    assert moved(flows(gateway)) == (5, 5, 5, 5)

    # --log-allowed: a record per new allowed flow, limited like the refusals (repeats counted)
    allowed = [r for r in gateway.records() if r["mode"] == "kernel" and r["action"] == "allow"]
    r = next(r for r in allowed if (r["address"], r["port"]) == (OK4, 22))
    assert (r["rule"], r["country"], r["client"], r["kernel"]["protocol"]) == ("default", "DE", "10.77.1.2", "tcp")
    assert not any(r["address"] in (BAD4, BAD6) for r in allowed)
    assert sum(1 for r in allowed if (r["address"], r["port"]) == (OK4, 22)) <= 2  # the window holds repeats back
    assert gateway.status()["receipts"]["allowed"]["suppressed"] >= 1


def test_a_flushed_ruleset_lets_nothing_through_and_comes_back(gw):
    topo, servers, gateway = gw["topo"], gw["servers"], gw["gateway"]
    ok, bad = servers[("udp", OK4, 51820)], servers[("udp", BAD4, 51820)]
    stop = threading.Event()
    with topo.inside("client"):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send() -> None:
        while not stop.is_set():
            stamp = struct.pack("!d", time.monotonic())
            for ip in (OK4, BAD4):
                try:
                    sender.sendto(stamp, (ip, 51820))
                except OSError:
                    pass  # an ICMP error from the previous datagram
            stop.wait(0.1)

    thread = threading.Thread(target=send, daemon=True)
    start = len(gateway.lines)
    bad_before = len(bad.received)
    thread.start()
    try:
        time.sleep(0.5)
        flushed = time.monotonic()
        topo.sh("nft", "flush", "ruleset", ns="gw")
        gateway.wait_for_output(r"ALERT: restored table inet geogate", timeout=5, start=start)
        time.sleep(2.5)
    finally:
        stop.set()
        thread.join(2)
        sender.close()
    assert len(bad.received) == bad_before, "a packet to the blocked server got through while the ruleset was flushed"
    sent_after = [struct.unpack("!d", data)[0] for _arrived, data in ok.received if len(data) == 8]
    resumed = min(t for t in sent_after if t >= flushed) - flushed
    assert resumed < 2.0, f"allowed traffic resumed {resumed:.2f} s after the flush"
    assert any("gone" in line and "ALERT" in line for line in gateway.lines[start:])
    assert any("ALERT: holding table in place" in line for line in gateway.lines[start:])
    restore = gateway.status()["last_restore"]
    assert restore["holding_ms"] <= restore["full_ms"]


def test_policy_edits_flip_a_country_both_ways_and_keep_allowed_flows(gw):
    topo, gateway, policy = gw["topo"], gw["gateway"], gw["policy"]
    with topo.inside("client"):
        long_lived = socket.create_connection((OK4, 8443), timeout=3)
    try:
        sha0 = gateway.status()["kernel"]["policy_sha256"]
        write_policy(policy, before=BLOCK_FR)  # unrelated to DE: the open connection must survive the swap
        wait_kernel_sha(gateway, lambda sha: sha != sha0)
        long_lived.sendall(b"still here")
        assert long_lived.recv(64) == b"still here"

        written = time.monotonic()
        write_policy(policy, before=BLOCK_DE)
        wait_until(lambda: udp_try(topo, OK4, 53) == "EHOSTUNREACH", 10)
        assert tcp_try(topo, OK6, 22) == "reset"
        assert time.monotonic() - written < 10
        with pytest.raises(OSError):
            long_lived.sendall(b"now blocked")
            long_lived.settimeout(2)
            if not long_lived.recv(64):
                raise OSError("closed")

        write_policy(policy)
        wait_until(lambda: udp_try(topo, OK4, 53) == "echo", 10)
        assert tcp_try(topo, OK6, 22) == "open"
        assert udp_try(topo, BAD4, 53) == "EHOSTUNREACH"
    finally:
        long_lived.close()
    # back to the first policy, in the kernel and in the proxy (which reloaded it by itself)
    wait_kernel_sha(gateway, lambda sha: sha == sha0)
    wait_until(lambda: gateway.status()["proxy"]["policy_sha256"] == sha0, 10)


def test_status_names_one_policy_for_kernel_and_proxy(gw):
    gateway = gw["gateway"]
    wait_until(lambda: gateway.status()["proxy"]["policy_sha256"] is not None, 10)
    status = gateway.status()
    assert status["table"] and status["latch"] and status["gateway"]["running"]
    assert status["forwarding"] == {"ipv4": True, "ipv6": True}
    assert status["kernel"]["policy_sha256"] == status["proxy"]["policy_sha256"]
    assert len(status["kernel"]["policy_sha256"]) == 64


def test_a_missing_lan_interface_changes_nothing(gw, tmp_path):
    topo = gw["topo"]
    env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(tmp_path / "state.json"))
    # the servers namespace: forwarding off, no nftables table
    r = topo.sh(str(GEOGATE), "gateway", "run", "--lan", "nosuch0", "--policy", str(gw["policy"]),
                ns="servers", env=env, check=False)
    assert r.returncode == 2 and r.stderr == "geogate: --lan nosuch0: no such network interface\n"
    assert topo.sh("cat", "/proc/sys/net/ipv4/ip_forward", ns="servers").stdout.strip() == "0"
    assert "geogate" not in topo.sh("nft", "list", "tables", ns="servers").stdout
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("version: 1\nrules: [\n")
    r = topo.sh(str(GEOGATE), "gateway", "run", "--lan", topo.ifs["servers"], "--policy", str(bad_policy),
                ns="servers", env=env, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.yaml" in r.stderr
    assert topo.sh("cat", "/proc/sys/net/ipv4/ip_forward", ns="servers").stdout.strip() == "0"


def wait_kernel_sha(gateway: GatewayProcess, predicate, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sha = gateway.status()["kernel"]["policy_sha256"]
        if sha and predicate(sha):
            return sha
        time.sleep(0.2)
    raise AssertionError("the kernel sets did not change:\n" + gateway.output)
