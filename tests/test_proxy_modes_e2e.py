"""End to end for the modes that are decided only in `server_connect`: reverse HTTP, reverse TLS
passthrough, raw TCP (reverse and SOCKS5 spoken by hand) and UDP.

One real mitmdump with the addon listens in every mode at once (repeated --mode), on loopback.
Every origin records each connection (TCP) or datagram (UDP) it gets, before reading any byte, so
"the blocked origin never saw a connection" is checked on the origin itself, not in the proxy.
127.0.1.1 is DE (allowed) and 127.0.2.1 is KP (blocked by the doj rule) in the test database.

CONNECT with TLS passing through untouched (the client trusting only the origin's certificate) is
covered in test_proxy_e2e.py; here the same proof is made for reverse:tls, which has no CONNECT.
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import subprocess
import threading
import time

import pytest

import system_deps
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e,
              system_deps.needs("curl")]

PROXY_HOST = "127.0.0.1"
# How long a blocked client waits for an answer that must not come, and how long an origin is
# given to record a connection that a broken proxy might still be opening.
SILENCE = 1.0
SETTLE = 0.3


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=15)


# -- origins that are not HTTP -------------------------------------------------------------------------

class LineServer:
    """A raw TCP origin (not HTTP): answers each line with `echo <its address>: <line>`."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.connections: list[tuple[str, int]] = []
        self.lines: list[bytes] = []
        origin = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    origin.lines.append(line)
                    self.wfile.write(b"echo " + origin.host.encode() + b": " + line)
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, addr = super().get_request()
                origin.connections.append(addr)  # every accept counts, even one that sends nothing
                return sock, addr

            def handle_error(self, request, client_address) -> None:
                pass

        self.server = Server((host, port), Handler)
        self.host, self.port = self.server.server_address[:2]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UdpEcho:
    """A UDP origin: records every datagram and answers `echo <its address>: <datagram>`."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            self.datagrams.append((data, peer))
            self.sock.sendto(b"echo " + self.host.encode() + b": " + data, peer)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def pair(make, attempts: int = 20):
    """An allowed and a blocked origin on the same port (like the pairs in test_proxy_e2e.py)."""
    for _ in range(attempts):
        allowed = make(ALLOWED_IP, 0)
        try:
            return allowed, make(BLOCKED_IP, allowed.port)
        except OSError:  # that port is taken on the other address: try another
            allowed.close()
    raise RuntimeError("no port free on both origin addresses")


def free_ports(count: int) -> list[int]:
    """Distinct ports free for both TCP and UDP on the proxy's address (held until all are picked)."""
    held, ports = [], []
    while len(ports) < count:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((PROXY_HOST, 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((PROXY_HOST, port))
        except OSError:
            t.close()
            u.close()
            continue
        held += [t, u]
        ports.append(port)
    for s in held:
        s.close()
    return ports


# -- the world: origins on both addresses, one proxy in every mode --------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes")
    cert = make_cert(tmp / "cert", ["allowed.test", "blocked.test"], [ALLOWED_IP, BLOCKED_IP])
    w = {"tmp": tmp, "cert": cert[0],
         "http": pair(Origin),
         "tls": pair(lambda host, port: Origin(host, port, tls=cert)),
         "tcp": pair(LineServer),
         "udp": pair(UdpEcho)}
    yield w
    for key in ("http", "tls", "tcp", "udp"):
        for origin in w[key]:
            origin.close()


MODES = {  # listener name -> (scheme, origin kind, allowed?)
    "http-allowed": ("http", "http", True), "http-blocked": ("http", "http", False),
    "tls-allowed": ("tls", "tls", True), "tls-blocked": ("tls", "tls", False),
    "tcp-allowed": ("tcp", "tcp", True), "tcp-blocked": ("tcp", "tcp", False),
    "udp-allowed": ("udp", "udp", True), "udp-blocked": ("udp", "udp", False),
}


@pytest.fixture(scope="module")
def proxy(world):
    tmp = world["tmp"] / "proxy"
    tmp.mkdir()
    ports = dict(zip([*MODES, "socks5"], free_ports(len(MODES) + 1), strict=True))
    args = []
    for name, (scheme, kind, allowed) in MODES.items():
        origin = world[kind][0 if allowed else 1]
        args += ["--mode", f"reverse:{scheme}://{origin.host}:{origin.port}@{PROXY_HOST}:{ports[name]}"]
    args += ["--mode", f"socks5@{PROXY_HOST}:{ports['socks5']}"]
    hosts = write_hosts(tmp / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP})
    p = Mitmdump(tmp, policy=write_policy(tmp / "policy.yaml"), dbs=[write_db(tmp / "test.mmdb")],
                 log=tmp / "decisions.jsonl", hosts=hosts, args=args, wait=False)
    try:
        # proxy_support's LISTEN_RE does not know "reverse proxy to ... listening at": wait per port
        for port in ports.values():
            p.wait_for_output(rf"listening at {re.escape(PROXY_HOST)}:{port}\b", timeout=20)
    except AssertionError:
        p.stop()
        raise
    p.listen = ports
    yield p
    p.stop()


@pytest.fixture
def fresh(world, proxy):
    """Empty origin records and the decision log's current length, for each test."""
    for kind in ("http", "tls", "tcp", "udp"):
        for origin in world[kind]:
            for attr in ("connections", "requests", "lines", "datagrams"):
                if hasattr(origin, attr):
                    getattr(origin, attr).clear()
    return len(proxy.records())


def decisions(proxy, start: int, count: int, timeout: float = 5) -> list[dict]:
    """Exactly `count` new decision lines (after a short settle, so extra lines are caught too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(proxy.records()[start:]) < count:
        time.sleep(0.05)
    time.sleep(SETTLE)
    recs = proxy.records()[start:]
    assert len(recs) == count, f"expected {count} new decision lines, got {recs}\n{proxy.output}"
    assert all(r["event"] == "decision" for r in recs)
    return recs


def assert_allow(rec: dict, mode: str, host: str, port: int, address: str = ALLOWED_IP) -> None:
    assert (rec["mode"], rec["host"], rec["port"]) == (mode, host, port), rec
    assert (rec["action"], rec["enforced"], rec["would_block"], rec["rule"]) == ("allow", True, False, "default"), rec
    assert (rec["address"], rec["country"]) == (address, "DE"), rec
    assert rec["flow_id"] and rec["client"].startswith("127.0.0.1:")


def assert_block(rec: dict, mode: str, host: str, port: int, address: str = BLOCKED_IP) -> None:
    assert (rec["mode"], rec["host"], rec["port"]) == (mode, host, port), rec
    assert (rec["action"], rec["enforced"], rec["rule"]) == ("block", True, "doj"), rec
    assert (rec["address"], rec["country"]) == (address, "KP"), rec
    assert rec["citation"] == "28 CFR 202.601" and rec["flow_id"]


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# -- reverse HTTP ------------------------------------------------------------------------------------

def test_reverse_http_allowed_answers_blocked_is_closed_unseen(world, proxy, fresh):
    allowed, blocked = world["http"]
    ok = curl("-D", "-", f"http://{PROXY_HOST}:{proxy.listen['http-allowed']}/rev")
    assert ok.returncode == 0, ok.stderr + proxy.output
    assert ok.stdout.startswith("HTTP/1.1 200") and f"hello from {ALLOWED_IP}:{allowed.port} /rev" in ok.stdout
    assert [r["path"] for r in allowed.requests] == ["/rev"]

    no = curl("-D", "-", f"http://{PROXY_HOST}:{proxy.listen['http-blocked']}/rev")
    # the proxy accepted, then closed before any response: curl 52 (empty reply) or 56 (reset)
    assert no.returncode in (52, 56), (no.returncode, no.stderr)
    assert no.stdout == ""
    time.sleep(SETTLE)
    assert blocked.connections == [] and blocked.requests == []

    allow, block = decisions(proxy, fresh, 2)
    assert_allow(allow, "reverse", ALLOWED_IP, allowed.port)
    assert_block(block, "reverse", BLOCKED_IP, blocked.port)
    assert "url" not in block  # decided on the connection, before any request existed


# -- reverse TLS: passes through untouched, the client checks the origin's certificate ---------------

def test_reverse_tls_passes_through_with_the_origins_certificate(world, proxy, fresh):
    allowed, blocked = world["tls"]
    # The client trusts only the origin's self-signed certificate, and there is no mitmproxy CA in
    # it: a verified handshake (ssl_verify_result 0) is one the origin itself made.
    ok = curl("-v", "--cacert", str(world["cert"]), "-w", "\nverify=%{ssl_verify_result}",
              "--connect-to", f"allowed.test:443:{PROXY_HOST}:{proxy.listen['tls-allowed']}",
              "https://allowed.test/tls")
    assert ok.returncode == 0, ok.stderr + proxy.output
    assert f"hello from {ALLOWED_IP}:{allowed.port} /tls" in ok.stdout and ok.stdout.endswith("verify=0")
    assert "issuer: CN=allowed.test" in ok.stderr and "mitmproxy" not in ok.stderr
    assert len(allowed.connections) == 1

    no = curl("--cacert", str(world["cert"]),
              "--connect-to", f"blocked.test:443:{PROXY_HOST}:{proxy.listen['tls-blocked']}",
              "https://blocked.test/tls")
    assert no.returncode != 0 and no.stdout == ""
    time.sleep(SETTLE)
    assert blocked.connections == []

    allow, block = decisions(proxy, fresh, 2)
    assert_allow(allow, "reverse", ALLOWED_IP, allowed.port)
    assert_block(block, "reverse", BLOCKED_IP, blocked.port)


# -- raw TCP (not HTTP) -----------------------------------------------------------------------------

def test_reverse_tcp_allowed_echoes_blocked_is_closed_unseen(world, proxy, fresh):
    allowed, blocked = world["tcp"]
    with socket.create_connection((PROXY_HOST, proxy.listen["tcp-allowed"]), timeout=5) as s:
        s.sendall(b"ping one\n")
        f = s.makefile("rb")
        assert f.readline() == f"echo {ALLOWED_IP}: ping one\n".encode()
        s.sendall(b"ping two\n")
        assert f.readline() == f"echo {ALLOWED_IP}: ping two\n".encode()
    assert allowed.lines == [b"ping one\n", b"ping two\n"] and len(allowed.connections) == 1

    with socket.create_connection((PROXY_HOST, proxy.listen["tcp-blocked"]), timeout=5) as s:
        try:
            s.sendall(b"ping blocked\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed: just as good
        assert read_until_closed(s) == b""
    time.sleep(SETTLE)
    assert blocked.connections == [] and blocked.lines == []

    allow, block = decisions(proxy, fresh, 2)
    assert_allow(allow, "reverse", ALLOWED_IP, allowed.port)
    assert_block(block, "reverse", BLOCKED_IP, blocked.port)


def socks5_connect(proxy_port: int, host: str, port: int) -> tuple[socket.socket, int]:
    """The SOCKS5 handshake by hand (RFC 1928, no authentication); returns the socket and REP."""
    s = socket.create_connection((PROXY_HOST, proxy_port), timeout=5)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    try:
        addr = b"\x01" + socket.inet_aton(host)  # an address...
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()  # ...or a name the proxy resolves
    s.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    f = s.makefile("rb")
    version, rep, _rsv, atyp = f.read(4)
    assert version == 5
    f.read({1: 4, 4: 16}.get(atyp) or f.read(1)[0])  # BND.ADDR
    f.read(2)  # BND.PORT
    return s, rep


def test_socks5_raw_tcp_allowed_echoes_blocked_is_refused_unseen(world, proxy, fresh):
    allowed, blocked = world["tcp"]
    socks = proxy.listen["socks5"]
    # mitmproxy guesses the protocol after SOCKS5: a first line like "not http\n" (letters, then a
    # space) would be taken for HTTP. Leading binary bytes make it raw TCP, as a real protocol would.
    line = b"\x00\x01raw tcp, not http\n"
    for target in ("allowed.test", ALLOWED_IP):  # a name and an address
        s, rep = socks5_connect(socks, target, allowed.port)
        with s:
            assert rep == 0, rep
            s.sendall(line)
            assert s.makefile("rb").readline() == b"echo " + ALLOWED_IP.encode() + b": " + line
    assert allowed.lines == [line] * 2 and len(allowed.connections) == 2

    for target in ("blocked.test", BLOCKED_IP):
        s, rep = socks5_connect(socks, target, blocked.port)
        with s:
            assert rep == 4, rep  # host unreachable
            assert read_until_closed(s) == b""
    time.sleep(SETTLE)
    assert blocked.connections == [] and blocked.lines == []

    recs = decisions(proxy, fresh, 4)
    assert_allow(recs[0], "socks5", "allowed.test", allowed.port)
    assert_allow(recs[1], "socks5", ALLOWED_IP, allowed.port)
    assert_block(recs[2], "socks5", "blocked.test", blocked.port)
    assert_block(recs[3], "socks5", BLOCKED_IP, blocked.port)


# -- UDP --------------------------------------------------------------------------------------------

def test_reverse_udp_allowed_echoes_blocked_gets_nothing_unseen(world, proxy, fresh):
    allowed, blocked = world["udp"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for n in (1, 2):  # two datagrams on one flow: one decision
            s.sendto(b"datagram %d" % n, (PROXY_HOST, proxy.listen["udp-allowed"]))
            assert s.recvfrom(65535)[0] == b"echo %s: datagram %d" % (ALLOWED_IP.encode(), n)
    assert [d for d, _peer in allowed.datagrams] == [b"datagram 1", b"datagram 2"]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(SILENCE)
        s.sendto(b"datagram blocked", (PROXY_HOST, proxy.listen["udp-blocked"]))
        with pytest.raises(TimeoutError):  # no answer (and no ICMP error: the proxy is listening)
            s.recvfrom(65535)
    assert blocked.datagrams == []

    allow, block = decisions(proxy, fresh, 2)
    assert_allow(allow, "reverse", ALLOWED_IP, allowed.port)
    assert_block(block, "reverse", BLOCKED_IP, blocked.port)
