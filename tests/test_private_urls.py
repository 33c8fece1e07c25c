"""Private logs: a secret in a query string or in user info never reaches the decision log, the
console, intercepted-request records or audit reports (geogate_log_urls=path, the default);
with `full` it does, which shows the search below can find it. Block pages and refusals never
name the policy, database or log files.

Real parts: `geogate run` (mitmdump in its process) with --intercept and a flow file written by
mitmdump (-w), real origins on loopback, curl for HTTPS through the intercepting proxy.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import DEAD_RESOLVER
from proxy_support import Origin
from proxy_support import free_port
from proxy_support import make_cert
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = pytest.mark.e2e

GEOGATE = Path(sys.executable).with_name("geogate")


class Run:
    """`geogate run` as a child process; its whole stdout and stderr are kept."""

    def __init__(self, tmp: Path, args: list[str], extra: list[str]) -> None:
        (tmp / "resolv.conf").write_text(f"nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n")
        write_hosts(tmp / "hosts", {})
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", GEOGATE_HOSTS_FILE=str(tmp / "hosts"),
                   GEOGATE_RESOLV_CONF=str(tmp / "resolv.conf"))
        self.proc = subprocess.Popen([str(GEOGATE), "run", *args, "--listen-port", str(self.port), "--",
                                      "--set", f"confdir={tmp / 'confdir'}", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 30
        while not any("listening on" in line for line in self.out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("geogate run did not start:\n" + self.output)
            time.sleep(0.05)

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        for t in self._threads:
            t.join(5)


def raw_request(port: int, target: str, host: str) -> bytes:
    """One request with exactly this request target (curl would move user info into a header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture
def world(tmp_path):
    cert, key = make_cert(tmp_path / "certs", ["localhost"], [ALLOWED_IP])
    plain, tls = Origin(ALLOWED_IP), Origin(ALLOWED_IP, tls=(cert, key))
    policy, db = write_policy(tmp_path / "policy.yaml"), write_db(tmp_path / "geo.mmdb")
    yield tmp_path, plain, tls, policy, db
    plain.close()
    tls.close()


def _traffic(tmp: Path, run: Run, plain: Origin, tls: Origin, secret: str) -> dict[str, bytes]:
    """Requests carrying `secret` in query strings, fragments and user info; the answers."""
    answers = {}
    origin = f"{ALLOWED_IP}:{plain.port}"
    answers["query"] = raw_request(run.port, f"http://{origin}/plain?token={secret}&x=1#frag-{secret}", origin)
    answers["userinfo"] = raw_request(run.port, f"http://user:{secret}@{origin}/u?token={secret}", origin)
    answers["blocked"] = raw_request(run.port, f"http://{BLOCKED_IP}:9/b?token={secret}", f"{BLOCKED_IP}:9")
    ca = tmp / "confdir" / "mitmproxy-ca-cert.pem"
    curl = subprocess.run(["curl", "-sS", "--max-time", "20", "--proxy", f"http://127.0.0.1:{run.port}",
                           "--noproxy", "", "--cacert", str(ca), f"https://{ALLOWED_IP}:{tls.port}/tls?token={secret}"],
                          capture_output=True, timeout=40)
    answers["tls"] = curl.stdout + curl.stderr
    return answers


def _start(world, log_urls: str | None) -> tuple[Run, Path, Path]:
    tmp, plain, tls, policy, db = world
    log, flows = tmp / f"decisions-{log_urls}.jsonl", tmp / f"flows-{log_urls}.mitm"
    args = ["--policy", str(policy), "--db", str(db), "--log", str(log), "--intercept"]
    if log_urls is not None:
        args += ["--log-urls", log_urls]
    return Run(tmp, args, ["--set", "ssl_insecure=true", "-w", str(flows)]), log, flows


def _audits(tmp: Path, inputs: list[Path], policy: Path, db: Path) -> dict[str, str]:
    reports = {}
    for fmt in ("text", "json", "csv", "html"):
        out = tmp / f"report.{fmt}"
        proc = subprocess.run([str(GEOGATE), "audit", *map(str, inputs), "--policy", str(policy), "--db", str(db),
                               "--format", fmt, "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, proc.stderr  # 2: the bad entry
        reports[fmt] = out.read_text() + proc.stdout + proc.stderr
    return reports


def _har(path: Path, secret: str) -> Path:
    entry = {
        "startedDateTime": "2026-01-01T00:00:00.000Z", "time": 1, "serverIPAddress": ALLOWED_IP,
        "request": {"method": "GET", "url": f"http://user:{secret}@{ALLOWED_IP}/har?token={secret}#f{secret}",
                    "httpVersion": "HTTP/1.1", "headers": [], "queryString": [], "cookies": [], "headersSize": -1,
                    "bodySize": 0},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [], "cookies": [],
                     "content": {"size": 0, "mimeType": "text/plain"}, "redirectURL": "", "headersSize": -1,
                     "bodySize": 0},
        "cache": {}, "timings": {"send": 1, "wait": 1, "receive": 1},
    }
    bad = dict(entry, request=dict(entry["request"], url=f"http://user:{secret}@/nohost?token={secret}"))
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                        "entries": [entry, bad]}}))
    return path


def test_no_secret_in_any_output_by_default(world):
    tmp, plain, tls, policy, db = world
    secret = "SECRET" + secrets.token_hex(8)
    run, log, flows = _start(world, None)  # the default: path
    try:
        answers = _traffic(tmp, run, plain, tls, secret)
    finally:
        run.stop()
    assert b"hello from" in answers["query"] and b"hello from" in answers["tls"], answers
    assert b"403" in answers["blocked"].split(b"\r\n", 1)[0]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    urls = {r.get("url") for r in records}
    # the URLs are there, shaped: a request record of the intercepted tunnel and the plain ones
    assert f"http://{ALLOWED_IP}:{plain.port}/plain" in urls  # (the one with user info is mitmproxy's 400)
    assert f"https://{ALLOWED_IP}:{tls.port}/tls" in urls and f"http://{BLOCKED_IP}:9/b" in urls
    assert any(r["event"] == "request" for r in records)
    assert flows.exists() and secret.encode() in flows.read_bytes()  # the traffic itself did carry it
    reports = _audits(tmp, [flows, _har(tmp / "s.har", secret)], policy, db)
    assert "/har" in reports["json"] and "/plain" in reports["csv"]
    outputs = {"decision log": log.read_text(), "console": run.output, **{f"audit {k}": v for k, v in reports.items()}}
    # what geogate answered (the origins' answers echo the path they were sent, and mitmproxy's
    # 400 for the request line with user info echoes it to the client that sent it)
    outputs["answer blocked"] = answers["blocked"].decode("utf-8", "replace")
    leaks = [name for name, text in outputs.items() if secret in text]
    assert not leaks, f"the secret is in: {leaks}"


def test_full_keeps_the_secret_so_the_search_can_fail(world):
    tmp, plain, tls, policy, db = world
    secret = "SECRET" + secrets.token_hex(8)
    run, log, _flows = _start(world, "full")
    try:
        _traffic(tmp, run, plain, tls, secret)
    finally:
        run.stop()
    text = log.read_text()
    assert f"/plain?token={secret}" in text and f"/tls?token={secret}" in text
    assert secret in run.output  # mitmproxy's own line per flow is back with `full`


def test_none_leaves_urls_out(world):
    tmp, plain, tls, policy, db = world
    secret = "SECRET" + secrets.token_hex(8)
    run, log, _flows = _start(world, "none")
    try:
        _traffic(tmp, run, plain, tls, secret)
    finally:
        run.stop()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all("url" not in r for r in records)
    assert {r["host"] for r in records} >= {ALLOWED_IP, BLOCKED_IP}


def test_block_pages_and_refusals_name_no_file(world):
    """What clients read (403 bodies, Proxy-Status, refused CONNECTs, a refusal because the log
    cannot be written) never holds the policy, database or log paths."""
    tmp, plain, tls, policy, db = world
    run, log, _flows = _start(world, None)
    try:
        answers = [raw_request(run.port, f"http://{BLOCKED_IP}:9/x", f"{BLOCKED_IP}:9")]
        with socket.create_connection(("127.0.0.1", run.port), timeout=20) as s:
            s.sendall(f"CONNECT {BLOCKED_IP}:443 HTTP/1.1\r\nHost: {BLOCKED_IP}:443\r\n\r\n".encode())
            answers.append(s.recv(65536))
        log.unlink()
        log.mkdir()  # the log's name is now a directory: it cannot be reopened, every request is refused
        answers.append(raw_request(run.port, f"http://{ALLOWED_IP}:{plain.port}/y", f"{ALLOWED_IP}:{plain.port}"))
    finally:
        run.stop()
    assert all(b" 403 " in a.split(b"\r\n", 1)[0] for a in answers), answers
    assert b"could not decide" in answers[-1]
    for a in answers:
        text = a.decode("utf-8", "replace")
        for path in (policy, db, log, tmp):
            assert str(path) not in text and path.name not in text, (path, text)
    assert not plain.requests
    assert run.output.count("cannot write the decision log") == 1, run.output


@pytest.mark.parametrize("url, path, none", [
    ("http://u:S@h:8/p?token=S#S", "http://h:8/p", None),
    ("https://[::1]:8443/a/b?x=S", "https://[::1]:8443/a/b", None),
    ("http://h/p@q?S", "http://h/p@q", None),  # an @ in the path is not user info
    ("http://h?S/y", "http://h", None),
    ("h:443", "h:443", None),
    ("*", "*", None),
])
def test_log_url(url, path, none):
    from geogate.core.urls import log_url

    assert log_url(url) == log_url(url, "path") == path
    assert log_url(url, "none") is none
    assert log_url(url, "full") == url


def test_console_lines_are_shaped_too():
    from geogate.proxy.private_log import shape_text

    line = "Bad HTTP request line: b'GET http://user:S@127.0.1.1:8/u?token=S HTTP/1.1' then GET /v?S HTTP/1.1"
    assert shape_text(line, "path") == "Bad HTTP request line: b'GET http://127.0.1.1:8/u HTTP/1.1' then GET /v HTTP/1.1"
    assert "S@" not in shape_text(line, "none") and "?S" not in shape_text(line, "none")
    assert shape_text(line, "full") == line
