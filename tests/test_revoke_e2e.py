"""Revocation end to end: a real mitmdump, a WebSocket and a TLS pass-through tunnel held open
through it to loopback origins, then the policy edited so that their destination is blocked.

127.0.1.1 and 127.0.1.2 are both DE in the test database; the edit adds a `networks` rule for
127.0.1.1 only, so connections to 127.0.1.2 stay allowed and must stay open.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import close_all
from proxy_support import closed_within
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = pytest.mark.e2e

CUT = "127.0.1.1"  # blocked by the edited policy
KEPT = "127.0.1.2"  # allowed before and after
CUT_RULE = "  - name: cut-127-0-1-1\n    action: block\n    networks: [127.0.1.1/32]\n"
DEADLINE = 15.0  # seconds: a loaded 2-core machine, a settle time and a close


class EchoServer:
    """A WebSocket origin that echoes every message."""

    def __init__(self, host: str) -> None:
        def echo(ws) -> None:
            try:
                for message in ws:
                    ws.send(message)
            except ConnectionClosed:
                pass

        self.server = ws_serve(echo, host, 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


class Tunnel:
    """A CONNECT tunnel through the proxy with TLS end to end (geogate passes it through)."""

    def __init__(self, proxy_port: int, host: str, port: int, cafile: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            assert chunk, f"the proxy closed the CONNECT: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(cafile))
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.host = host

    def get(self) -> bytes:
        """One request on the open tunnel; b"" when the tunnel was closed."""
        try:
            self.sock.sendall(f"GET /again HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            data = b""
            while b"hello from" not in data:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b""
                data += chunk
            return data
        except (OSError, ssl.SSLError):
            return b""

    def closed_within(self, seconds: float) -> bool:
        """True once the far end closes the tunnel (EOF, reset or a TLS error), waiting at most `seconds`."""
        return closed_within(self.sock, seconds)

    def close(self) -> None:
        self.sock.close()


def plain_websocket(proxy_port: int, host: str, port: int) -> socket.socket:
    """A WebSocket upgraded from plain HTTP in absolute form (no CONNECT): the proxy decides its
    request in requestheaders, then holds it open as a WebSocket."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_alive(ws) -> bool:
    try:
        ws.send("ping")
        return ws.recv(timeout=10) == "ping"
    except (ConnectionClosed, TimeoutError, OSError):
        return False


def ws_closed_within(ws, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=0.5)
        except TimeoutError:
            continue
        except ConnectionClosed:
            return True
    return False


@pytest.fixture
def world(tmp_path: Path):
    cert, key = make_cert(tmp_path / "tls", ["localhost"], [CUT, KEPT])
    origins = [Origin(CUT, tls=(cert, key)), Origin(KEPT, tls=(cert, key))]
    echoes = [EchoServer(CUT), EchoServer(KEPT)]
    yield tmp_path, cert, origins, echoes
    for o in origins:
        o.close()
    for e in echoes:
        e.close()


def start(tmp_path: Path, revoke: str) -> tuple[Mitmdump, Path]:
    policy = write_policy(tmp_path / "policy.yaml", name="before")
    log = tmp_path / "decisions.jsonl"
    proxy = Mitmdump(tmp_path, policy=policy, dbs=[write_db(tmp_path / "geo.mmdb")], log=log,
                     args=["--set", "geogate_reload_settle=0.2", "--set", f"geogate_revoke={revoke}"])
    return proxy, policy


def open_all(proxy: Mitmdump, cert: Path, origins, echoes):
    tunnels = {o.host: Tunnel(proxy.port, o.host, o.port, cert) for o in origins}
    sockets = {e.server.socket.getsockname()[0]: ws_connect(f"ws://{e.server.socket.getsockname()[0]}:{e.port}/",
                                                            proxy=proxy.url, open_timeout=10, legacy=True)
               for e in echoes}
    for t in tunnels.values():
        assert t.get(), "the tunnel works before the change"
    for ws in sockets.values():
        assert ws_alive(ws), "the WebSocket works before the change"
    return tunnels, sockets


def test_open_connections_the_new_policy_blocks_are_closed_and_recorded(world) -> None:
    tmp_path, cert, origins, echoes = world
    proxy, policy = start(tmp_path, "on")
    try:
        tunnels, sockets = open_all(proxy, cert, origins, echoes)
        plain = plain_websocket(proxy.port, CUT, echoes[0].port)
        mark = len(proxy.lines)
        write_policy(policy, name="after", before=CUT_RULE)
        assert closed_within(plain, DEADLINE), "a WebSocket upgraded from plain HTTP stays open"
        plain.close()
        assert tunnels[CUT].closed_within(DEADLINE), "the TLS tunnel to the now blocked address stays open"
        assert ws_closed_within(sockets[CUT], DEADLINE), "the WebSocket to the now blocked address stays open"
        # still allowed: still open, and still carrying traffic
        assert tunnels[KEPT].get(), "a tunnel still allowed was closed"
        assert ws_alive(sockets[KEPT]), "a WebSocket still allowed was closed"
        proxy.wait_for_output(r"geogate: revoked .*127\.0\.1\.1", start=mark)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and len([r for r in proxy.records() if r["event"] == "revoked"]) < 3:
            time.sleep(0.1)
        revoked = [r for r in proxy.records() if r["event"] == "revoked"]
        before = [r for r in proxy.records() if r["event"] == "decision" and r["policy"]["name"] == "before"]
        assert len(revoked) == 3, revoked  # the tunnel and the two WebSockets, nothing to 127.0.1.2
        old_sha = before[0]["policy"]["sha256"]
        for r in revoked:
            assert r["host"] == CUT and r["address"] == CUT and r["action"] == "block"
            assert r["rule"] == "cut-127-0-1-1" and r["policy"]["name"] == "after"
            assert r["revoked"] == {"old_rule": "default", "new_rule": "cut-127-0-1-1",
                                    "old_policy_sha256": old_sha, "new_policy_sha256": r["policy"]["sha256"]}
            assert old_sha != r["policy"]["sha256"]
        # and a new connection there is refused as any other
        with pytest.raises(AssertionError):
            Tunnel(proxy.port, CUT, origins[0].port, cert)
        close_all([*tunnels.values(), *sockets.values()])
    finally:
        proxy.stop()


def test_with_revoke_off_open_connections_stay_open(world) -> None:
    tmp_path, cert, origins, echoes = world
    proxy, policy = start(tmp_path, "off")
    try:
        tunnels, sockets = open_all(proxy, cert, origins, echoes)
        mark = len(proxy.lines)
        write_policy(policy, name="after", before=CUT_RULE)
        proxy.wait_for_output(r"reloaded policy after", timeout=DEADLINE, start=mark)
        assert not tunnels[CUT].closed_within(2.0), "geogate_revoke=off closed a tunnel"
        assert tunnels[CUT].get() and ws_alive(sockets[CUT]), "geogate_revoke=off closed a connection"
        assert not [r for r in proxy.records() if r["event"] == "revoked"]
        close_all([*tunnels.values(), *sockets.values()])
    finally:
        proxy.stop()
