"""End to end with raw sockets: what a client can send that curl would not. A real mitmdump with
the addon and TLS interception (`geogate_intercept=true`) on loopback; 127.0.1.1 is DE (allowed)
and 127.0.2.1 is KP (blocked by the doj rule) in the test database.

- Host headers and paths that are not UTF-8: every decision is still one line of valid JSON in
  valid UTF-8, and no client reads an exception, a path of this machine or a file hash.
- `Expect: 100-continue` to a blocked destination: the 403 comes first, never a 100.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time

import pytest

from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e]

RAW_HOST = b"\xff\xfe.example"
LOGGED_HOST = "\\xff\\xfe.example"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raw")
    cert = make_cert(tmp / "cert", ["allowed.test", "blocked.test"], [ALLOWED_IP, BLOCKED_IP])
    origins = {"http": Origin(ALLOWED_IP), "https": Origin(ALLOWED_IP, tls=cert)}
    origins["blocked"] = Origin(BLOCKED_IP, origins["http"].port)
    log = tmp / "decisions.jsonl"
    proxy = Mitmdump(tmp, policy=write_policy(tmp / "policy.yaml"), dbs=[write_db(tmp / "test.mmdb")], log=log,
                     hosts=write_hosts(tmp / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP}),
                     args=["--set", "geogate_intercept=true", "--set", "ssl_insecure=true"])
    yield {"tmp": tmp, "proxy": proxy, "log": log, **origins}
    proxy.stop()
    for o in origins.values():
        o.close()


def log_lines(log) -> list[str]:
    """The decision log as text lines; strict UTF-8."""
    return log.read_bytes().decode("utf-8").splitlines() if log.exists() else []


def wait_lines(log, count: int, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(log)
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} log lines: {log_lines(log)}")


def read_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the connection closes or the head and Content-Length body are in."""
    sock.settimeout(timeout)
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                return data
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def assert_nothing_internal(response: bytes, world) -> None:
    text = response.decode("utf-8")  # valid UTF-8 too
    for leak in ("Error(", "Error:", "Traceback", "surrogates", str(world["tmp"]), "/tmp/", "/work/", "sha256"):
        assert leak not in text, (leak, text)
    hashes = re.findall(r'"sha256":"([0-9a-f]{64})"', world["log"].read_text())
    assert hashes and not any(h[:12] in text for h in hashes)
    assert not re.search(r"[0-9a-f]{32}", text)  # no hash of anything
    assert not re.search(r"(?<![\w.:/])/[\w.-]+/", text.split("\r\n\r\n", 1)[1])  # no path in the body


def test_a_blocked_request_with_a_host_that_is_not_utf8_gets_a_readable_403_and_one_record(world):
    # mitmproxy refuses a request line that is not ASCII itself (400); a Host header is passed on
    start = len(log_lines(world["log"]))
    port = world["blocked"].port
    with socket.create_connection(("127.0.0.1", world["proxy"].port)) as s:
        s.sendall(b"GET http://%s:%d/x HTTP/1.1\r\nHost: %s\r\nUser-Agent: raw\r\n\r\n" % (BLOCKED_IP.encode(), port, RAW_HOST))
        response = read_response(s)
    assert response.startswith(b"HTTP/1.1 403"), response
    assert b'Proxy-Status: geogate; error=destination_ip_prohibited; details="country=KP; rule=doj"' in response
    assert_nothing_internal(response, world)
    recs = wait_lines(world["log"], start + 1)[start:]
    time.sleep(0.3)
    assert len(log_lines(world["log"])) == start + 1  # exactly one line for the one decision
    (rec,) = recs
    assert (rec["event"], rec["action"], rec["rule"], rec["url"]) == ("decision", "block", "doj", f"http://{BLOCKED_IP}:{port}/x")
    assert rec["flow_id"] in response.decode()  # the id a client can quote is the record's
    assert world["blocked"].connections == []


def test_an_intercepted_request_with_a_host_that_is_not_utf8_is_logged(world):
    start = len(log_lines(world["log"]))
    port = world["https"].port
    with socket.create_connection(("127.0.0.1", world["proxy"].port)) as raw:
        raw.sendall(b"CONNECT allowed.test:%d HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n" % (port, port))
        assert read_response(raw).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # mitmproxy's CA
        with context.wrap_socket(raw, server_hostname="allowed.test") as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: " + RAW_HOST + b"\r\nConnection: close\r\n\r\n")
            response = read_response(s)
    # the tunnel is allowed and nothing failed: the origin answers (before, the log write raised
    # and the client read a 403 repeating the exception, the policy path and the file hashes)
    assert response.startswith(b"HTTP/1.1 200"), response
    assert_nothing_internal(response, world)
    recs = wait_lines(world["log"], start + 2)[start:]
    time.sleep(0.3)
    assert len(log_lines(world["log"])) == start + 2
    assert [r["event"] for r in recs] == ["decision", "request"]
    assert recs[1]["url"] == f"https://{LOGGED_HOST}/x" and recs[1]["connection_id"] == recs[0]["flow_id"]
    assert "Traceback" not in world["proxy"].output and "Logging error" not in world["proxy"].output


def expect_continue(world, host: str, port: int) -> tuple[bytes, float]:
    """Send only the head of an upload with `Expect: 100-continue`; the first answer and how long it took."""
    with socket.create_connection(("127.0.0.1", world["proxy"].port)) as s:
        started = time.monotonic()
        s.sendall(b"POST http://%s:%d/upload HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: 1000000\r\n"
                  b"Expect: 100-continue\r\n\r\n" % (host.encode(), port, host.encode(), port))
        first = read_response(s, timeout=3)
        return first, time.monotonic() - started


def test_a_blocked_upload_that_expects_100_continue_gets_the_403_first(world):
    first, took = expect_continue(world, "blocked.test", world["blocked"].port)
    assert first.startswith(b"HTTP/1.1 403 "), first  # never a 100 before it
    assert b"100 Continue" not in first and b"country=KP; rule=doj" in first
    assert took < 2  # answered without waiting for the body
    assert world["blocked"].connections == []


def test_an_allowed_upload_that_expects_100_continue_still_gets_100(world):
    with socket.create_connection(("127.0.0.1", world["proxy"].port)) as s:
        s.settimeout(5)
        s.sendall(b"POST http://allowed.test:%d/upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\n"
                  b"Expect: 100-continue\r\n\r\n" % world["http"].port)
        assert s.recv(100).startswith(b"HTTP/1.1 100")
