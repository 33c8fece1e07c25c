"""End to end: real mitmdump processes with the addon, real curl and httpx, loopback origins.

127.0.1.1 is DE (allowed) and 127.0.2.1 is KP (blocked by the doj rule) in the test database;
each pair of origins listens on the same port on both addresses, so a name can be moved from
one to the other. Every test that blocks also asserts the blocked origin never saw a connection.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import system_deps
from geogate.proxy.messages import UPSTREAM_REFUSAL
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import ROOT
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import free_port
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e,
              system_deps.needs("curl")]

RECORD_FIELDS = {"ts", "event", "flow_id", "client", "user", "mode", "host", "port", "sni", "action", "enforced",
               "would_block", "rule", "reason", "citation", "address", "host_mismatch", "addresses", "policy",
               "databases"}
ADDRESS_FIELDS = {"ip", "embedded_ipv4", "special", "country", "registered_country", "represented_country",
                  "continent", "subdivisions", "asn", "sources"}


def curl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
                          timeout=timeout)


class Pair:
    """An allowed and a blocked origin on the same port."""

    def __init__(self, tls=None) -> None:
        self.allowed = Origin(ALLOWED_IP, 0, tls=tls)
        self.port = self.allowed.port
        self.blocked = Origin(BLOCKED_IP, self.port, tls=tls)

    def close(self) -> None:
        self.allowed.close()
        self.blocked.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("world")
    cert = make_cert(tmp / "cert", ["allowed.test", "blocked.test", "rebind.test", "localhost"],
                     [ALLOWED_IP, BLOCKED_IP])
    http_pair, https_pair = Pair(), Pair(tls=cert)
    w = {"tmp": tmp, "cert": cert[0], "db": write_db(tmp / "test.mmdb"),
         "policy": write_policy(tmp / "policy.yaml"), "http": http_pair, "https": https_pair,
         "hosts": write_hosts(tmp / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP,
                                              "rebind.test": ALLOWED_IP})}
    yield w
    http_pair.close()
    https_pair.close()


@pytest.fixture(scope="module")
def proxy(world):
    tmp = world["tmp"] / "main"
    tmp.mkdir()
    socks = free_port()
    p = Mitmdump(tmp, policy=world["policy"], dbs=[world["db"]], log=tmp / "decisions.jsonl",
                 hosts=world["hosts"], args=["--mode", "regular", "--mode", f"socks5@127.0.0.1:{socks}",
                                             "--set", "geogate_resolve_timeout=0.5"],
                 listeners=2)
    p.socks = p.ports["SOCKS v5"]
    p.port = p.ports["HTTP(S)"]
    yield p
    p.stop()


@pytest.fixture
def fresh(world, proxy):
    """Start each test with empty origin records and a known log position."""
    for pair in (world["http"], world["https"]):
        for o in (pair.allowed, pair.blocked):
            o.connections.clear()
            o.requests.clear()
    return len(proxy.records())


def new_records(proxy, start: int, count: int, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = proxy.records()[start:]
        if len(recs) >= count:
            return recs
        time.sleep(0.05)
    raise AssertionError(f"expected {count} new log lines, got {proxy.records()[start:]}\n{proxy.output}")


def assert_spec_record(rec: dict) -> None:
    assert RECORD_FIELDS <= rec.keys(), RECORD_FIELDS - rec.keys()
    for a in rec["addresses"]:
        assert ADDRESS_FIELDS <= a.keys()


# -- the developer proxy: plain HTTP, CONNECT + TLS, SOCKS5 -----------------------------------------

def test_plain_http_allowed_reaches_origin_blocked_gets_403(world, proxy, fresh):
    port = world["http"].port
    ok = curl("-x", proxy.url, f"http://allowed.test:{port}/a", "-D", "-")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("HTTP/1.1 200") and f"hello from {ALLOWED_IP}:{port} /a" in ok.stdout
    assert world["http"].allowed.requests[0]["host"] == f"allowed.test:{port}"  # Host header kept

    blocked = curl("-x", proxy.url, f"http://blocked.test:{port}/b", "-D", "-")
    assert blocked.stdout.startswith("HTTP/1.1 403")
    assert 'Proxy-Status: geogate; error=destination_ip_prohibited; details="country=KP; rule=doj"' in blocked.stdout
    for word in ("blocked.test", BLOCKED_IP, "KP", "doj", "reason"):
        assert word in blocked.stdout
    assert world["http"].blocked.connections == []

    allow, block = new_records(proxy, fresh, 2)
    for rec in (allow, block):
        assert_spec_record(rec)
        assert rec["event"] == "decision" and rec["mode"] == "regular" and rec["port"] == port
    assert (allow["host"], allow["action"], allow["address"], allow["country"]) == ("allowed.test", "allow", ALLOWED_IP, "DE")
    assert (block["host"], block["action"], block["address"], block["country"]) == ("blocked.test", "block", BLOCKED_IP, "KP")
    assert block["rule"] == "doj" and block["citation"] == "28 CFR 202.601" and block["enforced"] is True
    assert allow["url"] == f"http://allowed.test:{port}/a"


def test_connect_tls_passes_through_and_blocked_connect_gets_403(world, proxy, fresh):
    port, cert = world["https"].port, str(world["cert"])
    # --cacert is only the origin's certificate: a 200 proves TLS was not intercepted.
    ok = curl("-x", proxy.url, "--cacert", cert, f"https://allowed.test:{port}/tls")
    assert ok.returncode == 0, ok.stderr + proxy.output
    assert f"hello from {ALLOWED_IP}:{port} /tls" in ok.stdout

    blocked = curl("-x", proxy.url, "--cacert", cert, f"https://blocked.test:{port}/tls", "-v")
    assert blocked.returncode != 0
    assert "CONNECT tunnel failed, response 403" in blocked.stderr
    assert "< Proxy-Status: geogate; error=destination_ip_prohibited" in blocked.stderr
    assert world["https"].blocked.connections == []

    allow, block = new_records(proxy, fresh, 2)
    assert (allow["action"], allow["address"], block["action"], block["address"]) == ("allow", ALLOWED_IP, "block", BLOCKED_IP)


def test_httpx_through_http_proxy(world, proxy, fresh):
    ctx = ssl.create_default_context(cafile=str(world["cert"]))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        r = client.get(f"http://allowed.test:{world['http'].port}/x")
        assert r.status_code == 200 and r.text.startswith(f"hello from {ALLOWED_IP}")
        r = client.get(f"https://allowed.test:{world['https'].port}/y")
        assert r.status_code == 200 and r.text.startswith(f"hello from {ALLOWED_IP}")
        r = client.get(f"http://{BLOCKED_IP}:{world['http'].port}/z")
        assert r.status_code == 403 and r.headers["proxy-status"].startswith("geogate; error=destination_ip_prohibited")
        with pytest.raises(httpx.ProxyError, match="403"):
            client.get(f"https://blocked.test:{world['https'].port}/w")
    assert world["http"].blocked.connections == [] and world["https"].blocked.connections == []


def test_socks5_allowed_answers_blocked_is_closed(world, proxy, fresh):
    port, socks = world["http"].port, proxy.socks
    ok = curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://allowed.test:{port}/s")
    assert ok.returncode == 0 and f"hello from {ALLOWED_IP}" in ok.stdout, ok.stderr

    blocked = curl("--socks5-hostname", f"127.0.0.1:{socks}", f"http://blocked.test:{port}/s")
    assert blocked.returncode == 97 and blocked.stdout == ""  # SOCKS reply "host unreachable"

    pytest.importorskip("socksio", reason="httpx[socks] is not installed")
    with httpx.Client(proxy=f"socks5://127.0.0.1:{socks}", timeout=10) as client:
        assert client.get(f"http://allowed.test:{port}/h").status_code == 200
        with pytest.raises((httpx.ProxyError, httpx.ConnectError, httpx.RemoteProtocolError)):
            client.get(f"http://blocked.test:{port}/h")
    assert world["http"].blocked.connections == []

    recs = new_records(proxy, fresh, 4)
    assert [r["mode"] for r in recs] == ["socks5"] * 4
    assert [r["action"] for r in recs] == ["allow", "block", "allow", "block"]
    # no flow exists when SOCKS5 decides, so the client connection's id is the flow_id
    assert all(r["flow_id"] for r in recs)


def test_keep_alive_twelve_requests_on_one_connection(world, proxy, fresh):
    port = world["http"].port
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        for i in range(12):
            r = client.get(f"http://allowed.test:{port}/k{i}")
            assert r.status_code == 200, r.text
    origin = world["http"].allowed
    assert len(origin.requests) == 12
    assert len(origin.peers) == 1, f"upstream connections: {origin.connections}"
    assert len({r["peer"] for r in origin.requests}) == 1
    assert len(new_records(proxy, fresh, 12)) == 12  # every request is decided


def test_name_with_an_allowed_and_a_blocked_address_is_blocked(world, proxy, fresh, tmp_path):
    hosts = world["hosts"]
    original = hosts.read_text()
    hosts.write_text(original + f"{ALLOWED_IP} mixed.test\n{BLOCKED_IP} mixed.test\n")
    time.sleep(1.1)  # the resolver re-reads the hosts file at most once a second
    try:
        r = curl("-x", proxy.url, f"http://mixed.test:{world['http'].port}/", "-D", "-")
    finally:
        hosts.write_text(original)
    assert r.stdout.startswith("HTTP/1.1 403")
    rec = new_records(proxy, fresh, 1)[-1]
    assert [a["ip"] for a in rec["addresses"]] == [ALLOWED_IP, BLOCKED_IP] and rec["address"] == BLOCKED_IP
    assert world["http"].allowed.connections == [] and world["http"].blocked.connections == []


def test_unreachable_resolver_blocks(world, proxy, fresh):
    # not in the hosts file, and resolv.conf points at a loopback address where nothing listens
    r = curl("-x", proxy.url, f"http://nowhere.test:{world['http'].port}/", "-D", "-")
    assert r.stdout.startswith("HTTP/1.1 403")
    rec = new_records(proxy, fresh, 1)[-1]
    assert rec["action"] == "block" and rec["rule"] == "resolve-error" and rec["address"] is None
    r = curl("-x", proxy.url, "--cacert", str(world["cert"]), f"https://nowhere.test:{world['https'].port}/")
    assert "CONNECT tunnel failed, response 403" in r.stderr


def test_sighup_reopens_the_log_and_a_moved_log_is_recreated(world, proxy, fresh):
    log = proxy.log_path
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    start = len(proxy.lines)
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_output("SIGHUP, reopening the decision log", start=start)
    assert curl("-x", proxy.url, f"http://allowed.test:{world['http'].port}/r").returncode == 0
    recs = new_records(proxy, 0, 1)
    assert len(recs) == 1 and recs[0]["host"] == "allowed.test"  # a new file, one line
    assert proxy.proc.poll() is None
    # put the old lines back in front, so the module's later tests keep counting from the start
    log.write_text(rotated.read_text() + log.read_text())


# -- pinning: the address that was checked is the one dialled ---------------------------------------

@pytest.fixture(scope="module")
def rebind_proxy(world):
    """geogate resolves rebind.test to 127.0.1.1 (its hosts file); everything else in the proxy's
    process (glibc, so any second lookup mitmproxy might do) resolves it to 127.0.2.1."""
    system_deps.skip_unless("unshare")
    tmp = world["tmp"] / "rebind"
    tmp.mkdir()
    system_hosts = write_hosts(tmp / "system-hosts", {"rebind.test": BLOCKED_IP})
    socks = free_port()
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              f'mount --bind "{system_hosts}" /etc/hosts && exec "$0" "$@"']
    p = Mitmdump(tmp, policy=world["policy"], dbs=[world["db"]], log=tmp / "decisions.jsonl",
                 hosts=write_hosts(tmp / "hosts", {"rebind.test": ALLOWED_IP}), prefix=prefix,
                 args=["--mode", "regular", "--mode", f"socks5@127.0.0.1:{socks}"], listeners=2)
    p.socks = p.ports["SOCKS v5"]
    p.port = p.ports["HTTP(S)"]
    yield p
    p.stop()


def test_pinned_address_is_the_only_one_dialled(world, rebind_proxy, fresh):
    proxy, cert = rebind_proxy, str(world["cert"])
    http_port, https_port = world["http"].port, world["https"].port
    assert curl("-x", proxy.url, f"http://rebind.test:{http_port}/p").stdout.startswith(f"hello from {ALLOWED_IP}")
    assert curl("-x", proxy.url, "--cacert", cert, f"https://rebind.test:{https_port}/p").stdout.startswith(
        f"hello from {ALLOWED_IP}")
    assert curl("--socks5-hostname", f"127.0.0.1:{proxy.socks}", f"http://rebind.test:{http_port}/p"
                ).stdout.startswith(f"hello from {ALLOWED_IP}")
    with httpx.Client(proxy=proxy.url, timeout=10) as client:  # keep-alive keeps the pin too
        for _ in range(6):
            assert client.get(f"http://rebind.test:{http_port}/k").text.startswith(f"hello from {ALLOWED_IP}")
    assert world["http"].blocked.connections == [] and world["https"].blocked.connections == []
    assert {r["address"] for r in proxy.records()} == {ALLOWED_IP}


def test_name_moved_to_a_blocked_address_is_decided_again(world, rebind_proxy, fresh):
    proxy, port = rebind_proxy, world["http"].port
    hosts = world["tmp"] / "rebind" / "hosts"
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        assert client.get(f"http://rebind.test:{port}/1").status_code == 200
        write_hosts(hosts, {"rebind.test": BLOCKED_IP})
        try:
            time.sleep(1.2)  # the resolver re-reads a changed hosts file within a second
            r = client.get(f"http://rebind.test:{port}/2")  # same client connection
        finally:
            write_hosts(hosts, {"rebind.test": ALLOWED_IP})
    assert r.status_code == 403 and "country=KP" in r.headers["proxy-status"]
    assert world["http"].blocked.connections == []


# -- hot reload, fail closed ------------------------------------------------------------------------

@pytest.fixture
def own_proxy(world, tmp_path):
    """A proxy with its own policy and database files, which the test may change."""
    policy = write_policy(tmp_path / "policy.yaml")
    db = write_db(tmp_path / "geo.mmdb")
    p = Mitmdump(tmp_path, policy=policy, dbs=[db], log=tmp_path / "decisions.jsonl", hosts=world["hosts"])
    p.policy, p.db = policy, db
    yield p
    p.stop()


def test_hot_reload_under_traffic(world, own_proxy):
    proxy, port = own_proxy, world["http"].port
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(proxy=proxy.url, timeout=10) as client:
            while not stop.is_set():
                r = client.get(f"http://allowed.test:{port}/t")
                results.append((time.monotonic(), r.status_code))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        old_sha = proxy.records()[-1]["policy"]["sha256"]
        # Block DE too, written the careless way (in place, in two steps) to tempt a half read.
        new_text = proxy.policy.read_text().replace("name: test", "name: test-v2") + (
            "  - name: no-de\n    action: block\n    countries: [DE]\n")
        changed = time.monotonic()
        with open(proxy.policy, "w") as f:
            f.write(new_text[:40])
            f.flush()
            time.sleep(0.05)
            f.write(new_text[40:])
        deadline = changed + 4
        while time.monotonic() < deadline and not any(t > changed and s == 403 for t, s in results):
            time.sleep(0.02)
        applied = next(t for t, s in results if t > changed and s == 403) - changed
        assert applied < 2.0, f"policy change took {applied:.2f}s"
        # A broken edit is rejected; the last good policy keeps deciding.
        start = len(proxy.lines)
        proxy.policy.write_text("version: 1\nname: broken\ndefault: allw\n")
        line = proxy.wait_for_output("reload failed", start=start)
        time.sleep(0.5)
        assert "still using policy test-v2" in line and "allw" in line
    finally:
        stop.set()
        worker.join(15)
    assert sum("reload failed" in ln for ln in proxy.lines) == 1  # one error line, not one per poll
    recs = proxy.records()
    new_sha = next(r["policy"]["sha256"] for r in recs if r["policy"]["name"] == "test-v2")
    assert {r["policy"]["sha256"] for r in recs} == {old_sha, new_sha}  # nothing half-loaded
    assert all((r["action"] == "allow") == (r["policy"]["sha256"] == old_sha) for r in recs)
    first_new = next(i for i, r in enumerate(recs) if r["policy"]["sha256"] == new_sha)
    assert all(r["policy"]["sha256"] == new_sha for r in recs[first_new:])  # no flip back
    assert len(results) >= 20 and world["http"].allowed.requests
    print(f"policy reload applied {applied:.2f}s after the write; {len(results)} requests during the test")


def test_deleted_database_blocks_until_it_is_back(world, own_proxy):
    proxy, port = own_proxy, world["http"].port
    url = f"http://allowed.test:{port}/d"
    assert curl("-x", proxy.url, url, "-o", "/dev/null", "-w", "%{http_code}").stdout == "200"
    saved = proxy.db.read_bytes()
    proxy.db.unlink()
    proxy.wait_for_output("is missing; every connection is refused")
    r = curl("-x", proxy.url, url, "-D", "-")
    assert r.stdout.startswith("HTTP/1.1 403")
    rec = proxy.records()[-1]
    assert rec["action"] == "block" and rec["rule"] == "error" and "missing" in rec["reason"]
    proxy.db.write_bytes(saved)
    proxy.wait_for_output("databases are back")
    assert curl("-x", proxy.url, url, "-o", "/dev/null", "-w", "%{http_code}").stdout == "200"


def test_monitor_mode_records_would_block_and_blocks_nothing(world, own_proxy):
    proxy, port = own_proxy, world["http"].port
    start = len(proxy.lines)
    write_policy(proxy.policy, name="watch", mode="monitor")
    proxy.wait_for_output("reloaded policy watch", start=start)
    r = curl("-x", proxy.url, f"http://blocked.test:{port}/m")
    assert r.stdout.startswith(f"hello from {BLOCKED_IP}")
    rec = proxy.records()[-1]
    assert (rec["action"], rec["enforced"], rec["would_block"], rec["rule"]) == ("allow", False, True, "doj")


# -- interception, replay, geogate run, refusals ----------------------------------------------------

def test_intercept_logs_every_url_and_saved_flows_carry_the_decision(world, tmp_path):
    flows = tmp_path / "flows.mitm"
    p = Mitmdump(tmp_path, policy=world["policy"], dbs=[world["db"]], log=tmp_path / "d.jsonl",
                 hosts=world["hosts"], args=["--set", "geogate_intercept=true",
                                             "--set", f"ssl_verify_upstream_trusted_ca={world['cert']}",
                                             "-w", str(flows)])
    try:
        ca = tmp_path / "confdir" / "mitmproxy-ca-cert.pem"
        r = curl("-x", p.url, "--cacert", str(ca), f"https://allowed.test:{world['https'].port}/secret?q=1")
        assert r.returncode == 0 and r.stdout.startswith(f"hello from {ALLOWED_IP}"), r.stderr + p.output
        recs = new_records(p, 0, 2)
    finally:
        p.stop()
    decision, request = recs[0], recs[1]
    assert decision["event"] == "decision" and decision["host"] == "allowed.test"
    assert request["event"] == "request" and request["url"] == f"https://allowed.test:{world['https'].port}/secret"  # no query
    assert request["connection_id"] == decision["flow_id"] and request["action"] == "allow"

    # Replaying the saved flow: no connection is made, nothing is killed, mitmdump exits 0.
    replay = subprocess.run([str(Path(sys.executable).with_name("mitmdump")), "-n", "-r", str(flows), "-s",
                             str(ROOT / "addons" / "geogate_addon.py"), "--set", f"confdir={tmp_path / 'confdir'}",
                             "--set", f"geogate_policy={world['policy']}", "--set", f"geogate_db={world['db']}"],
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "Traceback" not in replay.stdout + replay.stderr
    from mitmproxy import io

    with open(flows, "rb") as f:
        saved = list(io.FlowReader(f).stream())
    assert saved and saved[0].metadata["geogate"]["address"] == ALLOWED_IP


def test_geogate_run_starts_the_proxy(world, tmp_path):
    port = free_port()
    log = tmp_path / "run.jsonl"
    cmd = [str(Path(sys.executable).with_name("geogate")), "run", "--policy", str(world["policy"]), "--db",
           str(world["db"]), "--listen-port", str(port), "--log", str(log), "--", "--set",
           f"confdir={tmp_path / 'confdir'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, GEOGATE_HOSTS_FILE=str(world["hosts"])), start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "geogate: TLS passes through" in line or not line:  # said once the port is bound
                break
        out = "".join(lines)
        assert "geogate: policy test" in out and "geogate: database test" in out
        assert f"listening on 127.0.0.1:{port} (regular mode)" in out and "TLS passes through" in out
        r = curl("-x", f"http://127.0.0.1:{port}", f"http://blocked.test:{world['http'].port}/", "-D", "-")
        assert r.stdout.startswith("HTTP/1.1 403")
        assert json.loads(log.read_text().splitlines()[-1])["rule"] == "doj"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_upstream_mode_is_refused_with_one_line(world, tmp_path):
    p = Mitmdump(tmp_path, policy=world["policy"], dbs=[world["db"]],
                 args=["--mode", "upstream:http://127.0.0.1:9"], wait=False)
    try:
        assert p.wait_exit() == 1
    finally:
        p.stop()
    assert UPSTREAM_REFUSAL in p.output and "Traceback" not in p.output
    r = subprocess.run([str(Path(sys.executable).with_name("geogate")), "run", "--mode", "upstream:http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr == UPSTREAM_REFUSAL + "\n"  # the same words as the proxy's


def test_bad_policy_at_start_is_one_line_and_no_traceback(world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\ndefault: allw\n")
    p = Mitmdump(tmp_path, policy=bad, dbs=[world["db"]], wait=False)
    try:
        assert p.wait_exit() == 1
    finally:
        p.stop()
    assert "bad.yaml:3:10" in p.output and "did you mean `allow`" in p.output and "Traceback" not in p.output
