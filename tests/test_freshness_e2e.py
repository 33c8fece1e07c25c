"""Database freshness end to end: a real mitmdump whose database ages past `geo.max_age` while it
runs, then is replaced by a fresh one (the reload geoipupdate's atomic rename triggers)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from mmdbs import rewrite_metadata
from proxy_support import ALLOWED_IP
from proxy_support import Mitmdump
from proxy_support import Origin
from proxy_support import closed_within
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = pytest.mark.e2e

CROSS_IN = 12  # seconds after the database is written it passes max_age: room to start on a loaded machine


def connect_status(proxy_port: int, host: str, port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as s:
        s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        return s.recv(4096).split(b"\r\n", 1)[0]


def open_tunnel(proxy_port: int, host: str, port: int) -> socket.socket:
    """A CONNECT tunnel with one request answered through it, left open."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.sendall(f"GET /1 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"hello from" not in answer:
        chunk = s.recv(4096)
        assert chunk, answer
        answer += chunk
    return s


def aged_db(tmp_path: Path, name: str, build_epoch: int) -> Path:
    fresh = write_db(tmp_path / f"fresh-{name}")
    return rewrite_metadata(fresh, tmp_path / name, build_epoch=build_epoch)


def test_a_database_that_ages_past_max_age_blocks_once_said_and_a_fresh_one_lifts_it(tmp_path: Path) -> None:
    origin = Origin(ALLOWED_IP)
    stale_at = int(time.time()) + CROSS_IN
    db = aged_db(tmp_path, "geo.mmdb", stale_at - 3600)
    policy = write_policy(tmp_path / "policy.yaml", settings="")
    policy.write_text(policy.read_text().replace("geo:\n", "geo:\n  max_age: 1h\n  on_stale: block\n"))
    log = tmp_path / "decisions.jsonl"
    proxy = Mitmdump(tmp_path, policy=policy, dbs=[db], log=log, args=["--set", "geogate_reload_settle=0.2"])
    try:
        assert time.time() < stale_at - 2, f"start-up took over {CROSS_IN - 2} s: the test would see no crossing"
        assert connect_status(proxy.port, ALLOWED_IP, origin.port) == b"HTTP/1.1 200 Connection established"
        tunnel = open_tunnel(proxy.port, ALLOWED_IP, origin.port)
        line = proxy.wait_for_output(r"older than geo\.max_age 1h", timeout=CROSS_IN + 20)
        assert "geo.on_stale: block" in line and "refused" in line
        assert connect_status(proxy.port, ALLOWED_IP, origin.port).startswith(b"HTTP/1.1 403")
        stale = [r for r in proxy.records() if r.get("stale")]
        assert stale and stale[-1]["rule"] == "geo.stale" and stale[-1]["stale"] == "block"
        # the tunnel opened while the data was fresh is judged again and closed (revocation)
        assert closed_within(tunnel, 15), "an open tunnel survived on_stale: block"
        tunnel.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not [r for r in proxy.records() if r["event"] == "revoked"]:
            time.sleep(0.1)
        (revoked,) = [r for r in proxy.records() if r["event"] == "revoked"]
        assert revoked["revoked"]["old_rule"] == "default" and revoked["revoked"]["new_rule"] == "geo.stale"
        time.sleep(1.5)  # several looks at the files later: still said once
        assert len([x for x in proxy.lines if "until the databases are updated" in x]) == 1, proxy.output

        mark = len(proxy.lines)
        tmp = aged_db(tmp_path, "geo.mmdb.new", int(time.time()))
        tmp.replace(db)  # as geoipupdate does: a new file renamed over the old one
        proxy.wait_for_output(r"within geo\.max_age again", timeout=20, start=mark)
        assert connect_status(proxy.port, ALLOWED_IP, origin.port) == b"HTTP/1.1 200 Connection established"
        assert len([x for x in proxy.lines if "within geo.max_age again" in x]) == 1
    finally:
        proxy.stop()
        origin.close()
