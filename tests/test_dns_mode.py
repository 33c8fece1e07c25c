"""DNS mode and WireGuard's built-in DNS (geogate/dns_mode.py), with mitmproxy's test helpers:
the name servers mitmproxy may ask are judged, only the allowed ones are used, and every question
gets a decision record. 127.0.1.0/24 is DE (allowed), 127.0.2.0/24 KP (blocked by the doj rule)."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import connection
from mitmproxy import dns
from mitmproxy import exceptions
from mitmproxy.addons.dns_resolver import DnsResolver
from mitmproxy.flow import Error
from mitmproxy.net.dns import response_codes
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from geogate.proxy import dns_mode
from geogate.proxy.addon import GeoGate
from proxy_support import write_db
from proxy_support import write_policy
from record_schema import check_record

ALLOWED_NS = "127.0.1.53"
BLOCKED_NS = "127.0.2.53"
BLOCK_DE = "  - name: no-de\n    action: block\n    countries: [DE]\n"


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(tmp=tmp_path, db=write_db(tmp_path / "geo.mmdb"),
                           policy=write_policy(tmp_path / "policy.yaml"), log=tmp_path / "decisions.jsonl")


@pytest.fixture(autouse=True)
def no_system_name_servers(monkeypatch):
    """Tests never read the machine's resolv.conf through mitmproxy_rs."""
    monkeypatch.setattr(dns_mode, "system_name_servers", lambda: [])


def records(files) -> list[dict]:
    return [json.loads(line) for line in files.log.read_text().splitlines()] if files.log.exists() else []


def start(tctx, gg, files, *, mode="dns", name_servers=(ALLOWED_NS,), **more) -> None:
    tctx.configure(gg, geogate_policy=str(files.policy), geogate_db=[str(files.db)], geogate_log=str(files.log),
                   mode=[mode], dns_name_servers=list(name_servers),
                   geogate_reload_settle="0", **more)  # the reload timing is tested in test_reload.py


def question(name="foo.example", type_=dns_types.A, mode="dns", server=None) -> dns.DNSFlow:
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse(mode)
    client.transport_protocol = "udp"
    req = dns.DNSMessage(id=7, query=True, op_code=dns.op_codes.QUERY, authoritative_answer=False,
                         truncation=False, recursion_desired=True, recursion_available=False, reserved=0,
                         response_code=response_codes.NOERROR,
                         questions=[dns.Question(name, type_, dns.classes.IN)],
                         answers=[], authorities=[], additionals=[])
    return tflow.tdnsflow(client_conn=client, server_conn=connection.Server(address=server, transport_protocol="udp"),
                          req=req)


def answer(flow: dns.DNSFlow, *ips: str) -> None:
    """What mitmproxy's resolver does: answer the question with these addresses."""
    q = flow.request.question
    flow.response = flow.request.succeed([
        dns.ResourceRecord(q.name, q.type, q.class_, 60, ipaddress.ip_address(ip).packed) for ip in ips])


def question_records(files) -> list[dict]:
    return [r for r in records(files) if r.get("dns", {}).get("role") != "name_server"]


def test_a_blocked_name_server_is_dropped_and_mitmproxy_gets_only_the_allowed_ones(files, caplog):
    caplog.set_level(logging.INFO)
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, name_servers=[BLOCKED_NS, ALLOWED_NS])
        assert tctx.options.dns_name_servers == [ALLOWED_NS]
        dropped = [r.getMessage() for r in caplog.records if BLOCKED_NS in r.getMessage()]
        assert dropped == [f"geogate: DNS name server {BLOCKED_NS} blocked, dropped: KP, rule doj"]
        # one decision record per name server, through the engine like any destination
        ns = {r["host"]: r for r in records(files)}
        assert ns[BLOCKED_NS]["action"] == "block" and ns[BLOCKED_NS]["rule"] == "doj"
        assert ns[BLOCKED_NS]["port"] == 53 and ns[BLOCKED_NS]["mode"] == "dns"
        assert ns[ALLOWED_NS]["action"] == "allow" and ns[ALLOWED_NS]["country"] == "DE"
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)  # start-up goes on
        gg.done()


def test_the_systems_name_servers_are_judged_when_none_are_given(files, monkeypatch):
    monkeypatch.setattr(dns_mode, "system_name_servers", lambda: [BLOCKED_NS, ALLOWED_NS])
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, name_servers=[])
        # set explicitly, so mitmproxy never falls back to the unjudged system list
        assert tctx.options.dns_name_servers == [ALLOWED_NS]
        gg.done()


def test_only_blocked_name_servers_refuse_start_up_and_every_question(files, caplog):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, name_servers=[BLOCKED_NS])
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [f"geogate: no DNS name server is allowed: {BLOCKED_NS} (KP, rule doj); "
                          "refusing to start (set dns_name_servers)"]
        f = question()
        gg.dns.dns_request(f)
        assert f.response.response_code == response_codes.REFUSED
        # mitmproxy's resolver, which runs after the script, leaves a refused question alone
        assert DnsResolver._should_resolve(f) is False
        gg.dns.dns_response(f)
        rec = question_records(files)[-1]
        assert rec["action"] == "block" and rec["host"] == BLOCKED_NS and rec["dns"]["refused"] is True
        assert rec["dns"]["question"] == {"name": "foo.example", "type": "A"}
        gg.done()


def test_no_name_server_at_all_refuses_start_up(files, caplog):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, name_servers=[])
        assert any("no DNS name server is configured" in r.getMessage() and r.levelno >= logging.ERROR
                   for r in caplog.records)
        f = question()
        gg.dns.dns_request(f)
        assert f.response.response_code == response_codes.REFUSED
        gg.done()


def test_each_answered_question_gets_one_record_with_name_server_and_answers(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)
        f = question("Foo.Example")
        gg.dns.dns_request(f)
        assert f.response is None  # left to mitmproxy's resolver
        answer(f, "127.0.2.9", "127.0.1.9")
        gg.dns.dns_response(f)
        [rec] = question_records(files)
        assert rec["event"] == "decision" and rec["mode"] == "dns" and rec["flow_id"] == f.id
        assert rec["host"] == ALLOWED_NS and rec["port"] == 53 and rec["action"] == "allow" and rec["country"] == "DE"
        d = rec["dns"]
        assert d["question"] == {"name": "Foo.Example", "type": "A"}
        assert d["name_server"] == ALLOWED_NS and d["name_servers"] == [ALLOWED_NS]
        assert d["response_code"] == "NOERROR" and d["refused"] is False
        assert d["answers"] == [{"ip": "127.0.2.9", "country": "KP", "action": "block", "rule": "doj"},
                                {"ip": "127.0.1.9", "country": "DE", "action": "allow", "rule": "default"}]
        assert d["answers_action"] == "block" and d["filtered"] is False
        assert len(f.response.answers) == 2  # recorded, never removed unless asked
        assert f.metadata["geogate"] is not None
        gg.dns.dns_response(f)  # a hook seen twice is recorded once
        assert len(question_records(files)) == 1
        gg.done()


def test_blocked_answers_are_removed_only_when_asked(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)
        f = question()
        answer(f, "127.0.2.9", "127.0.1.9")
        gg.dns.dns_response(f)  # default: recorded, kept
        assert [str(rr.ipv4_address) for rr in f.response.answers] == ["127.0.2.9", "127.0.1.9"]
        kept = question_records(files)[-1]["dns"]
        assert kept["filtered"] is False and kept["removed"] == [] and kept["blocked_answers"] == "keep"

        tctx.options.update(geogate_dns_blocked_answers="remove")  # what `gateway run --dns` sets
        f = question(type_=dns_types.AAAA)
        q = f.request.question
        f.response = f.request.succeed([
            dns.ResourceRecord(q.name, dns_types.CNAME, q.class_, 60, b"\x03foo\x07example\x00"),
            dns.ResourceRecord(q.name, q.type, q.class_, 60, ipaddress.ip_address("fd77:2::20").packed),
            dns.ResourceRecord(q.name, q.type, q.class_, 60, ipaddress.ip_address("fd77:2::10").packed)])
        gg.dns.dns_response(f)
        assert [rr.type for rr in f.response.answers] == [dns_types.CNAME, dns_types.AAAA]  # others untouched
        assert str(f.response.answers[1].ipv6_address) == "fd77:2::10"
        assert f.response.response_code == response_codes.NOERROR
        rec = question_records(files)[-1]
        check_record(rec)
        assert rec["dns"]["filtered"] is True and rec["dns"]["removed"] == ["fd77:2::20"]
        assert rec["dns"]["refused"] is False and rec["dns"]["blocked_answers"] == "remove"
        assert {a["ip"]: a["action"] for a in rec["dns"]["answers"]} == {"fd77:2::20": "block",
                                                                         "fd77:2::10": "allow"}

        f = question()
        answer(f, "127.0.1.9", "127.0.1.10")  # nothing blocked: the answer goes out as given
        gg.dns.dns_response(f)
        assert len(f.response.answers) == 2 and question_records(files)[-1]["dns"]["removed"] == []
        gg.done()


def test_refuse_answers_refused_when_any_address_is_blocked(files, caplog):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, geogate_dns_blocked_answers="refuse")
        f = question()
        answer(f, "127.0.1.9", "127.0.2.9")
        gg.dns.dns_response(f)
        assert f.response.response_code == response_codes.REFUSED and f.response.answers == []
        rec = question_records(files)[-1]
        check_record(rec)
        assert rec["dns"]["refused"] is True and rec["dns"]["response_code"] == "REFUSED"
        assert rec["dns"]["removed"] == ["127.0.2.9"] and rec["dns"]["filtered"] is True
        assert rec["action"] == "allow" and rec["host"] == ALLOWED_NS  # the name server was allowed and asked
        assert "REFUSED because of 127.0.2.9 (KP, rule doj)" in caplog.text

        f = question()
        answer(f, "127.0.1.9")
        gg.dns.dns_response(f)
        assert f.response.response_code == response_codes.NOERROR and len(f.response.answers) == 1
        gg.done()


def test_an_unknown_blocked_answers_value_is_refused(files, caplog):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, geogate_dns_blocked_answers="drop")  # at start-up: an error line ends mitmdump
        assert "geogate_dns_blocked_answers 'drop': use one of keep, remove, refuse" in caplog.text
        assert gg.dns.blocked_answers == "keep"
        gg.done()


def reload(gg) -> None:
    """What the watcher does once the policy's writer has closed it (settle time 0)."""
    assert any(gg.live.poll() for _ in range(3))


def test_a_reload_that_blocks_every_name_server_fails_closed_until_one_is_allowed(files, caplog):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)
        gg._running = True
        write_policy(files.policy, before=BLOCK_DE)
        reload(gg)
        f = question()
        gg.dns.dns_request(f)  # judged again for the new state before anything is answered
        assert f.response.response_code == response_codes.REFUSED
        assert any("EVERY DNS QUESTION IS REFUSED (fail closed)" in r.getMessage() and r.levelno >= logging.ERROR
                   for r in caplog.records)
        gg.dns.dns_response(f)
        assert question_records(files)[-1]["rule"] == "no-de"
        write_policy(files.policy)
        reload(gg)
        f = question()
        gg.dns.dns_request(f)
        assert f.response is None
        assert tctx.options.dns_name_servers == [ALLOWED_NS]
        gg.done()


def test_a_reload_drops_a_name_server_the_new_policy_blocks(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, name_servers=[ALLOWED_NS, "127.0.2.54"])
        assert tctx.options.dns_name_servers == [ALLOWED_NS]
        # a policy that allows the KP one and blocks DE: the set flips
        write_policy(files.policy, before=BLOCK_DE + "  - name: kp-ns\n    action: allow\n    networks: [127.0.2.54/32]\n")
        reload(gg)
        gg.dns.current()
        assert tctx.options.dns_name_servers == ["127.0.2.54"]
        gg.done()


def test_setting_only_blocked_name_servers_at_run_time_is_rolled_back(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)
        gg._running = True
        with pytest.raises(exceptions.OptionsError, match="no DNS name server is allowed"):
            tctx.options.update(dns_name_servers=[BLOCKED_NS])
        assert tctx.options.dns_name_servers == [ALLOWED_NS]
        gg.done()


def test_a_record_that_cannot_be_written_refuses_the_answer(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)

        class Broken:
            def write(self, rec):
                raise OSError("disk full")

        gg.log = Broken()
        f = question()
        answer(f, "127.0.1.9")
        gg.dns.dns_response(f)
        assert f.response.response_code == response_codes.REFUSED and f.response.answers == []
        gg.log = None
        gg.done()


async def test_reverse_dns_upstream_is_decided_in_server_connect_and_each_question_recorded(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, mode=f"reverse:dns://{BLOCKED_NS}")
        assert gg.dns.mode is None and gg.dns.records_questions  # no name servers of its own to judge
        assert [type(a).__name__ for a in gg.addons] == ["DnsGate"]
        f = question(mode=f"reverse:dns://{BLOCKED_NS}", server=(BLOCKED_NS, 53))
        gg.dns.dns_request(f)
        assert f.response is None  # mitmproxy forwards it: a connection, so server_connect decides
        data = server_hooks.ServerConnectionHookData(client=f.client_conn, server=f.server_conn)
        await gg.server_connect(data)
        assert "blocked" in data.server.error and "KP" in data.server.error
        f.error = Error("Connection killed: " + data.server.error)
        gg.dns.dns_error(f)
        rec = question_records(files)[-1]
        assert rec["mode"] == "reverse" and rec["action"] == "block" and rec["host"] == BLOCKED_NS
        assert rec["dns"]["question"]["name"] == "foo.example" and rec["dns"]["name_server"] == BLOCKED_NS
        gg.done()


async def test_forwarded_questions_carry_the_server_connect_decision(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files)
        f = question(type_=dns_types.TXT)
        gg.dns.dns_request(f)
        f.server_conn.address = (tctx.options.dns_name_servers[0], 53)  # dns_resolver forwards it
        data = server_hooks.ServerConnectionHookData(client=f.client_conn, server=f.server_conn)
        await gg.server_connect(data)
        assert data.server.error is None
        f.response = f.request.succeed([])
        gg.dns.dns_response(f)
        rec = question_records(files)[-1]
        assert rec["host"] == ALLOWED_NS and rec["action"] == "allow"
        assert rec["dns"]["question"]["type"] == "TXT" and rec["dns"]["name_server"] == ALLOWED_NS
        gg.done()


def test_wireguard_dns_to_the_virtual_resolver_is_judged_the_same_way(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, mode="wireguard", name_servers=[BLOCKED_NS, ALLOWED_NS])
        assert gg.dns.mode == "wireguard" and tctx.options.dns_name_servers == [ALLOWED_NS]
        f = question(mode="wireguard", server=("10.0.0.53", 53))
        gg.dns.dns_request(f)
        assert f.response is None
        answer(f, "127.0.1.9")
        gg.dns.dns_response(f)
        rec = question_records(files)[-1]
        assert rec["mode"] == "wireguard" and rec["host"] == ALLOWED_NS and rec["dns"]["name_server"] == ALLOWED_NS
        # DNS a WireGuard client sends elsewhere is an ordinary connection (server_connect)
        other = question(mode="wireguard", server=(BLOCKED_NS, 53))
        gg.dns.dns_request(other)
        assert other.response is None
        gg.done()


def test_wireguard_dns_is_refused_when_no_name_server_is_allowed(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, mode="wireguard", name_servers=[BLOCKED_NS])
        f = question(mode="wireguard", server=("10.0.0.53", 53))
        gg.dns.dns_request(f)
        assert f.response.response_code == response_codes.REFUSED
        gg.done()


def test_other_modes_have_no_dns_hooks(files):
    gg = GeoGate()
    with taddons.context(gg, DnsResolver()) as tctx:
        start(tctx, gg, files, mode="regular", name_servers=[BLOCKED_NS])
        assert gg.dns.mode is None and not hasattr(gg, "addons")
        assert tctx.options.dns_name_servers == [BLOCKED_NS]  # unused outside DNS/WireGuard modes
        gg.done()


def test_geogate_run_refuses_to_start_without_an_allowed_name_server(files, monkeypatch):
    from geogate.policy.state import GateState

    state = GateState.load(files.policy, [files.db])
    assert dns_mode.refusal_before_start(state, ["dns"], [ALLOWED_NS]) is None
    assert dns_mode.refusal_before_start(state, ["regular"], [BLOCKED_NS]) is None
    assert "no DNS name server is allowed: 127.0.2.53 (KP, rule doj)" in dns_mode.refusal_before_start(
        state, ["dns@5353"], [BLOCKED_NS])


def test_geogate_run_dns_mode_with_only_a_blocked_name_server_exits_2_with_one_line(files):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "geogate.cli", "run", "--mode", "dns", "--policy", str(files.policy),
                        "--db", str(files.db), "--", "--set", f"dns_name_servers={BLOCKED_NS}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (f"geogate: no DNS name server is allowed: {BLOCKED_NS} (KP, rule doj); "
                        "refusing to start (set dns_name_servers)\n")


# -- geogate's own resolver (regular, SOCKS5 and other modes that resolve names) -----------------

def resolver_gate(tctx, gg, files, *servers: str) -> None:
    conf = files.tmp / "resolv.conf"
    conf.write_text("".join(f"nameserver {s}\n" for s in servers))
    gg.resolver.resolv_conf = str(conf)
    tctx.configure(gg, geogate_policy=str(files.policy), geogate_db=[str(files.db)], geogate_log=str(files.log))


async def test_the_resolvers_name_servers_are_judged_and_only_allowed_ones_asked(files, caplog):
    gg = GeoGate()
    with taddons.context(gg) as tctx:
        resolver_gate(tctx, gg, files, BLOCKED_NS, ALLOWED_NS)
        assert [str(ns) for ns in gg.resolver._dns_resolver().nameservers] == [ALLOWED_NS]
        judged = [r for r in records(files) if (r.get("dns") or {}).get("role") == "resolver_name_server"]
        assert {(r["dns"]["name_server"], r["action"]) for r in judged} == {(BLOCKED_NS, "block"), (ALLOWED_NS, "allow")}
        assert f"resolver name server {BLOCKED_NS} blocked, dropped" in caplog.text
        gg.done()


async def test_a_resolver_with_only_blocked_name_servers_resolves_nothing_and_blocks(files):
    gg = GeoGate()
    with taddons.context(gg) as tctx:
        resolver_gate(tctx, gg, files, BLOCKED_NS)
        d = await gg._decide_name("foo.example", 80, mode="regular", peername=None, flow_id=None)
        assert d.blocked and "no name server" in d.reason and "allowed by the policy" in d.reason
        assert gg.resolver._dns is None  # nothing was built that could send a question
        gg.done()
