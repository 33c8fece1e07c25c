"""End to end for `--mode dns`: a real mitmdump answering a real DNS client (dnspython, UDP), with
fake upstream name servers on loopback that count every packet they get.

mitmproxy's resolver only talks to name servers on port 53, so the fake ones bind port 53 on
addresses of their own in 127.0.1.0/24 (DE, allowed) and 127.0.2.0/24 (KP, blocked by the doj
rule in the test database); the test skips where port 53 cannot be bound.
"""

from __future__ import annotations

import random
import re
import socket
import time

import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from proxy_support import Mitmdump
from proxy_support import UdpNameServer
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e]

LISTEN_RE = re.compile(r"DNS server listening at 127\.0\.0\.1:(\d+)")


class FakeNameServer(UdpNameServer):
    """A UDP name server on HOST:53: answers A with ANSWER, anything else with no records, and
    counts every packet it receives."""

    def __init__(self, prefix: str, answer: str) -> None:
        for _ in range(30):
            host = f"{prefix}.{random.randint(100, 250)}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((host, 53))
                break
            except PermissionError:
                sock.close()
                pytest.skip("cannot bind port 53 here (mitmproxy's resolver only asks port 53)")
            except OSError:
                sock.close()
        else:
            raise RuntimeError(f"no free port 53 in {prefix}.0/24")
        self.host = host
        super().__init__(sock, lambda _name, rdtype: [answer] if rdtype == "A" else [])


@pytest.fixture
def servers():
    allowed = FakeNameServer("127.0.1", "127.0.1.9")
    blocked = FakeNameServer("127.0.2", "127.0.2.9")
    yield allowed, blocked
    allowed.close()
    blocked.close()


def start(tmp, name_servers: list[str], wait: bool = True) -> Mitmdump:
    args = ["--mode", "dns@0", "--set", "dns_use_hosts_file=false"]
    args += [a for ns in name_servers for a in ("--set", f"dns_name_servers={ns}")]
    p = Mitmdump(tmp, policy=write_policy(tmp / "policy.yaml"), dbs=[write_db(tmp / "test.mmdb")],
                 log=tmp / "decisions.jsonl", args=args, wait=False)
    if wait:
        line = p.wait_for_output(LISTEN_RE.pattern, timeout=20)
        p.port = int(LISTEN_RE.search(line).group(1))
    return p


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5)


def test_dns_mode_uses_only_the_allowed_name_server_and_logs_every_question(tmp_path, servers):
    allowed, blocked = servers
    p = start(tmp_path, [blocked.host, allowed.host])
    try:
        a = ask(p.port, "www.example.test.", "A")
        assert a.rcode() == dns.rcode.NOERROR
        assert [r.address for rrset in a.answer for r in rrset] == ["127.0.1.9"]  # the allowed server answered
        assert ask(p.port, "www.example.test.", "AAAA").rcode() == dns.rcode.NOERROR
        assert ask(p.port, "www.example.test.", "TXT").rcode() == dns.rcode.NOERROR  # forwarded, server_connect
        time.sleep(0.3)
    finally:
        p.stop()
    assert blocked.packets == []  # never sent a packet
    assert len(allowed.packets) >= 3
    assert f"geogate: DNS name server {blocked.host} blocked, dropped: KP, rule doj" in p.output
    questions = [r for r in p.records() if r.get("dns", {}).get("question")]
    assert [(r["dns"]["question"]["type"], r["mode"], r["host"], r["action"]) for r in questions] == [
        ("A", "dns", allowed.host, "allow"), ("AAAA", "dns", allowed.host, "allow"), ("TXT", "dns", allowed.host, "allow")]
    assert questions[0]["dns"]["answers"] == [{"ip": "127.0.1.9", "country": "DE", "action": "allow", "rule": "default"}]
    assert all(r["dns"]["question"]["name"] == "www.example.test" for r in questions)
    name_servers = {r["host"]: r["action"] for r in p.records() if r.get("dns", {}).get("role") == "name_server"}
    assert name_servers == {blocked.host: "block", allowed.host: "allow"}


def test_dns_mode_refuses_to_start_when_the_only_name_server_is_blocked(tmp_path, servers):
    _allowed, blocked = servers
    p = start(tmp_path, [blocked.host], wait=False)
    try:
        rc = p.wait_exit(30)
    finally:
        p.stop()
    assert rc != 0  # mitmdump ends on an error line at start-up (1); `geogate run` says 2
    assert f"no DNS name server is allowed: {blocked.host} (KP, rule doj); refusing to start" in p.output
    assert "Traceback" not in p.output
    assert blocked.packets == []


def test_a_reload_that_blocks_the_last_name_server_refuses_every_question(tmp_path, servers):
    allowed, _blocked = servers
    p = start(tmp_path, [allowed.host])
    try:
        assert ask(p.port, "www.example.test.", "A").rcode() == dns.rcode.NOERROR
        before = len(allowed.packets)
        write_policy(tmp_path / "policy.yaml", before="  - name: no-de\n    action: block\n    countries: [DE]\n")
        p.wait_for_output(r"EVERY DNS QUESTION IS REFUSED \(fail closed\)", timeout=10)
        assert ask(p.port, "www.example.test.", "A").rcode() == dns.rcode.REFUSED
        assert ask(p.port, "www.example.test.", "TXT").rcode() == dns.rcode.REFUSED
        time.sleep(0.3)
        assert len(allowed.packets) == before  # nothing more reached the now blocked server
    finally:
        p.stop()
    refused = [r for r in p.records() if r.get("dns", {}).get("refused")]
    assert len(refused) == 2 and all(r["action"] == "block" and r["rule"] == "no-de" for r in refused)
