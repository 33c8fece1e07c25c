"""DNS on the gateway for real: `geogate gateway run --dns` in the gateway namespace of three
namespaces made by this test (see gateway_netns.py).

Real name servers (UDP, dnspython) listen on port 53 in the servers namespace: one at OK4 (DE) and
one at BAD4 (KP, blocked by the doj rule). Both answer `mixed.test` with an allowed and a blocked
address. The client asks with real UDP and TCP sockets, addressed to any resolver address; the
gateway's rules redirect port 53 to its DNS mode, which asks only the allowed name server and
removes (or refuses, with --dns-blocked refuse) the blocked answer addresses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway_netns import BAD4
from gateway_netns import BAD6
from gateway_netns import GEOGATE
from gateway_netns import OK4
from gateway_netns import OK6
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import built
from proxy_support import UdpNameServer
from proxy_support import close_all
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gd{os.getpid() % 100000}"
ANSWERS = {("mixed.test.", "A"): [OK4, BAD4], ("mixed.test.", "AAAA"): [OK6, BAD6], ("clean.test.", "A"): [OK4]}
NOWHERE4, NOWHERE6 = "10.77.2.99", "fd77:2::99"  # resolver addresses nobody has (geo unknown: blocked)


class NameServer(UdpNameServer):
    """A UDP name server on ADDRESS:53 inside the servers namespace, answering from ANSWERS."""

    def __init__(self, topo: Topology, address: str) -> None:
        self.address = address
        with topo.inside("servers"):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 53))
        super().__init__(sock, lambda name, rdtype: ANSWERS.get((name, rdtype), []))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway-dns")
    with built(TAG) as (topo, stack):
        servers = [NameServer(topo, OK4), NameServer(topo, BAD4)]
        stack.callback(close_all, servers)
        yield {"topo": topo, "tmp": tmp, "ok": servers[0], "bad": servers[1],
               "policy": write_policy(tmp / "policy.yaml"), "db": write_db(tmp / "geo.mmdb")}


def start(lab, name: str, *args: str, policy: Path | None = None) -> GatewayProcess:
    tmp = lab["tmp"] / name
    tmp.mkdir()
    gw = GatewayProcess(lab["topo"], tmp, policy=policy or lab["policy"], dbs=[lab["db"]], log=tmp / "decisions.jsonl",
                        args=list(args))
    try:
        gw.wait_ready(proxy="--tcp-ports" not in args)
        gw.wait_for_output(r"DNS server listening")
    except BaseException:
        gw.stop()
        raise
    return gw


def ask(topo: Topology, resolver: str, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    with topo.inside("client"):
        if tcp:
            return dns.query.tcp(query, resolver, port=53, timeout=8)
        return dns.query.udp(query, resolver, port=53, timeout=8)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if hasattr(r, "address"))


def question_records(gw: GatewayProcess) -> list[dict]:
    return [r for r in gw.records() if (r.get("dns") or {}).get("role") == "question"]


def test_blocked_answers_are_removed_and_the_blocked_name_server_is_never_asked(lab):
    topo, ok, bad = lab["topo"], lab["ok"], lab["bad"]
    gw = start(lab, "remove", "--dns", "--dns-server", BAD4, "--dns-server", OK4)
    try:
        asked_ok = len(ok.packets)
        # to any resolver address, over UDP and TCP, IPv4 and IPv6: the gateway answers
        for resolver, tcp in ((NOWHERE4, False), (BAD4, False), (OK4, True), (NOWHERE6, False), (NOWHERE6, True),
                              ("10.77.1.1", False)):
            reply = ask(topo, resolver, "mixed.test", "A", tcp=tcp)
            assert reply.rcode() == dns.rcode.NOERROR, (resolver, tcp, gw.output)
            assert addresses(reply) == [OK4], (resolver, tcp, reply.to_text())
        six = ask(topo, NOWHERE6, "mixed.test", "AAAA")
        assert addresses(six) == [OK6], six.to_text()
        clean = ask(topo, NOWHERE4, "clean.test", "A")
        assert addresses(clean) == [OK4]
        before = len(ok.packets)
        assert ask(topo, NOWHERE4, "mixed.test", "TXT").rcode() == dns.rcode.NOERROR  # forwarded upstream
        assert len(ok.packets) > before

        assert bad.packets == [], "the name server in a blocked country was asked"
        assert len(ok.packets) > asked_ok  # the answers came from the allowed name server
        gw.wait_for_output(r"REMOVED 10\.77\.2\.20 \(KP, rule doj\)")
        records = question_records(gw)
        removals = [r for r in records if r["dns"]["removed"]]
        assert removals, gw.output
        for r in removals:
            assert r["mode"] == "dns" and r["client"].startswith(("10.77.1.2:", "[fd77:1::2]:"))
            assert r["dns"]["question"]["name"] == "mixed.test" and r["dns"]["filtered"] is True
            assert r["dns"]["blocked_answers"] == "remove" and r["dns"]["refused"] is False
            assert r["dns"]["name_server"] == OK4 and r["host"] == OK4 and r["action"] == "allow"
            blocked = {a["ip"] for a in r["dns"]["answers"] if a["action"] == "block"}
            assert set(r["dns"]["removed"]) == blocked and blocked <= {BAD4, BAD6}
        assert {ip for r in removals for ip in r["dns"]["removed"]} == {BAD4, BAD6}
        assert all(r["dns"]["removed"] == [] for r in records if r["dns"]["question"]["name"] == "clean.test")
        judged = {r["host"]: r["action"] for r in gw.records() if (r.get("dns") or {}).get("role") == "name_server"}
        assert judged == {BAD4: "block", OK4: "allow"}

        status = gw.status()
        assert status["dns"] == {"on": True, "port": 8053, "name_servers": [BAD4, OK4], "source": "--dns-server",
                                 "blocked_answers": "remove"}
        assert "dns:        answered by the proxy's DNS mode on :8053" in gw.geogate("gateway", "status").stdout
        check = gw.geogate("gateway", "check", "--quick", "--policy", str(lab["policy"]), "--db", str(lab["db"]))
        assert check.returncode == 0, check.stderr
        assert "dns: answered by the proxy's DNS mode on :8053" in check.stdout
        assert f"dns: DNS name server {BAD4} blocked, dropped: KP, rule doj" in check.stdout
        # the DNS mode's port is closed to all but the LAN (no open resolver on the other side)
        with topo.inside("servers"):
            try:
                dns.query.udp(dns.message.make_query("mixed.test", "A"), "10.77.2.1", port=8053, timeout=2)
                reached = True
            except dns.exception.Timeout:
                reached = False
        assert not reached
    finally:
        gw.stop()


def test_refuse_answers_refused_when_an_address_is_blocked(lab):
    topo = lab["topo"]
    gw = start(lab, "refuse", "--dns", "--dns-server", OK4, "--dns-blocked", "refuse", "--tcp-ports", "")
    try:
        reply = ask(topo, NOWHERE4, "mixed.test", "A")
        assert reply.rcode() == dns.rcode.REFUSED and reply.answer == []
        reply = ask(topo, NOWHERE4, "mixed.test", "A", tcp=True)
        assert reply.rcode() == dns.rcode.REFUSED
        assert addresses(ask(topo, NOWHERE4, "clean.test", "A")) == [OK4]  # nothing blocked: answered
        refused = [r for r in question_records(gw) if r["dns"]["refused"]]
        assert len(refused) == 2 and all(r["dns"]["removed"] == [BAD4] for r in refused)
        assert all(r["dns"]["response_code"] == "REFUSED" and r["dns"]["blocked_answers"] == "refuse"
                   for r in refused)
        gw.wait_for_output(r"REFUSED because of 10\.77\.2\.20 \(KP, rule doj\)")
        assert gw.status()["dns"]["blocked_answers"] == "refuse"
    finally:
        gw.stop()


def test_a_reload_that_blocks_the_name_server_refuses_every_question_until_it_is_allowed(lab):
    topo, ok = lab["topo"], lab["ok"]
    policy = write_policy(lab["tmp"] / "reload-policy.yaml")
    gw = start(lab, "reload", "--dns", "--dns-server", OK4, "--tcp-ports", "", policy=policy)
    try:
        assert addresses(ask(topo, NOWHERE4, "clean.test", "A")) == [OK4]
        mark = len(gw.lines)
        write_policy(policy, before="  - name: no-de\n    action: block\n    countries: [DE]\n")
        gw.wait_for_output(r"EVERY DNS QUESTION IS REFUSED", timeout=60, start=mark)
        asked = len(ok.packets)
        for tcp in (False, True):
            assert ask(topo, NOWHERE4, "clean.test", "A", tcp=tcp).rcode() == dns.rcode.REFUSED
        assert len(ok.packets) == asked  # fail closed: the name server now blocked was not asked
        mark = len(gw.lines)
        write_policy(policy)
        gw.wait_for_output(r"DNS name servers allowed again", timeout=60, start=mark)
        assert addresses(ask(topo, NOWHERE4, "clean.test", "A")) == [OK4]

        # the proxy child gone: questions meet a closed port, nothing is forwarded, until it is back
        mark = len(gw.lines)
        os.kill(json.loads(gw.state_file.read_text())["proxy"]["pid"], signal.SIGKILL)
        gw.wait_for_output(r"the proxy exited .*LAN DNS are refused", start=mark)
        asked = len(ok.packets)
        try:
            ask(topo, OK4, "clean.test", "A", tcp=True)
            answered = True
        except (ConnectionRefusedError, dns.exception.Timeout):
            answered = False
        # answered only by the restarted child (2 s later; a very slow test thread may get there)
        assert not answered or any("DNS server listening" in line for line in gw.lines[mark:])
        if not answered:
            assert len(ok.packets) == asked
        gw.wait_for_output(r"DNS server listening", timeout=60, start=mark)
        assert addresses(ask(topo, NOWHERE4, "clean.test", "A")) == [OK4]
    finally:
        gw.stop()


def test_only_a_blocked_name_server_refuses_to_start(lab):
    topo, bad = lab["topo"], lab["bad"]
    env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(lab["tmp"] / "no-state.json"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return topo.sh(str(GEOGATE), "gateway", "run", "--lan", topo.ifs["gw_lan"], "--policy", str(lab["policy"]),
                       "--db", str(lab["db"]), *args, ns="gw", env=env, check=False)

    r = run("--dns", "--dns-server", BAD4)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (f"geogate: no DNS name server is allowed: {BAD4} (KP, rule doj); "
                        "refusing to start (give --dns-server ADDR)\n")
    assert bad.packets == []
    assert topo.sh("nft", "list", "tables", ns="gw").stdout.strip() == ""  # nothing was changed
    for args, said in ((("--dns", "--dns-blocked", "drop"), "--dns-blocked 'drop'"),
                       (("--dns", "--dns-server", "dns.example"), "--dns-server 'dns.example': not an IP address"),
                       (("--dns-server", OK4), "--dns-server needs --dns"),
                       (("--dns", "--dns-port", "8080"), "--dns-port 8080: the transparent proxy listens there"),
                       (("--dns", "--tcp-ports", "53,80"), "--tcp-ports holds 53")):
        r = run(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not Path(env["GEOGATE_GATEWAY_STATE"]).exists()
