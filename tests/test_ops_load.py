"""Load test of the decision log (marker `ops`, run by `make test-ops`): a real mitmdump with the
addon, a loopback origin, many concurrent keep-alive clients for a bounded time, the policy
rewritten every few seconds (each version keeps the origin allowed and has a new hash, so every
rewrite is a real reload), and the log rotated out of step with that (moved, with and without
SIGHUP). Then: every request answered has exactly one record (none lost, none twice), every line
of the logs is one well-formed record, and each names the policy hash it was decided with.

GEOGATE_OPS_SECONDS (default 60), GEOGATE_OPS_CLIENTS (200) and GEOGATE_OPS_RELOAD (5) shorten
it for a quick local run. A run with the defaults writes its counts to bench/results/ops-load.*.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from proxy_support import ALLOWED_IP
from proxy_support import Mitmdump
from proxy_support import free_port
from proxy_support import write_db
from proxy_support import write_policy
from record_schema import check_record

pytestmark = [pytest.mark.ops, pytest.mark.e2e]

SECONDS = float(os.environ.get("GEOGATE_OPS_SECONDS", "60"))
CLIENTS = int(os.environ.get("GEOGATE_OPS_CLIENTS", "200"))
RELOAD_EVERY = float(os.environ.get("GEOGATE_OPS_RELOAD", "5"))
ROTATE_EVERY = RELOAD_EVERY * 1.4  # out of step with the reloads
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
READ_TIMEOUT = 60.0  # per response: generous on a loaded 2-core machine; a stuck request is counted, not hung on


async def origin_server() -> tuple[asyncio.AbstractServer, int]:
    """A keep-alive HTTP/1.1 origin that answers every request with a short 200."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                body = b"ok " + target
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, ALLOWED_IP, 0, backlog=1024)
    return server, server.sockets[0].getsockname()[1]


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


class Counts:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.answered: dict[str, int] = {}  # id -> status
        self.errors: Counter[str] = Counter()


async def client(n: int, proxy_port: int, origin: str, deadline: float, counts: Counts) -> None:
    seq = 0
    reader = writer = None
    while time.monotonic() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            except OSError as e:
                counts.errors[f"connect: {type(e).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
        rid = f"c{n}-{seq}"
        seq += 1
        counts.sent.append(rid)
        writer.write(f"GET http://{origin}/{rid} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        try:
            counts.answered[rid] = await asyncio.wait_for(read_response(reader), READ_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as e:
            counts.errors[f"request: {type(e).__name__}"] += 1
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def reloader(policy: Path, deadline: float, written: list[str]) -> None:
    version = 0
    while True:
        await asyncio.sleep(RELOAD_EVERY)
        if time.monotonic() >= deadline - 1:
            return
        version += 1
        # a different rule each time (never matching the origin): a new hash, the same verdicts
        write_policy(policy, before=f"  - name: reload-{version}\n    action: block\n    countries: [FR]\n")
        written.append(hashlib.sha256(policy.read_bytes()).hexdigest())


async def rotator(proxy: Mitmdump, log: Path, deadline: float, rotated: list[Path]) -> None:
    """Rotate the log as logrotate does, alternately with and without SIGHUP (the log notices a
    moved file by itself)."""
    while True:
        await asyncio.sleep(ROTATE_EVERY)
        if time.monotonic() >= deadline - 1:
            return
        target = log.with_name(f"{log.name}.{len(rotated) + 1}")
        log.rename(target)
        rotated.append(target)
        if len(rotated) % 2:
            proxy.signal(signal.SIGHUP)


async def drive(proxy: Mitmdump, proxy_port: int, policy: Path, written: list[str], rotated: list[Path]) -> Counts:
    server, origin_port = await origin_server()
    counts = Counts()
    deadline = time.monotonic() + SECONDS
    assert proxy.log_path is not None
    try:
        await asyncio.gather(
            reloader(policy, deadline, written),
            rotator(proxy, proxy.log_path, deadline, rotated),
            *(client(n, proxy_port, f"{ALLOWED_IP}:{origin_port}", deadline, counts) for n in range(CLIENTS)),
        )
    finally:
        server.close()
    return counts


def test_every_request_has_exactly_one_record_under_load_and_reloads(tmp_path):
    policy = write_policy(tmp_path / "policy.yaml")
    written = [hashlib.sha256(policy.read_bytes()).hexdigest()]
    log = tmp_path / "decisions.jsonl"
    rotated: list[Path] = []
    port = free_port()
    # warn: no line per request on the console (this process would spend its time reading them)
    proxy = Mitmdump(tmp_path, policy=policy, dbs=[write_db(tmp_path / "geo.mmdb")], log=log, port=port, wait=False,
                     args=["--set", "termlog_verbosity=warn", "--set", "flow_detail=0",
                           "--set", "geogate_reload_settle=0.2"])
    started = time.monotonic()
    try:
        _wait_port(proxy, port)
        counts = asyncio.run(drive(proxy, port, policy, written, rotated))
        time.sleep(1)  # the last records of requests answered at the deadline
    finally:
        proxy.stop()
    elapsed = time.monotonic() - started

    malformed, per_id, hashes_seen, wrong_hash = 0, Counter(), Counter(), 0
    lines = 0
    for raw in _lines([*rotated, log]):
        lines += 1
        try:
            rec = json.loads(raw)
            check_record(rec)
        except Exception:
            malformed += 1
            continue
        rid = (rec.get("url") or "").rsplit("/", 1)[-1]
        per_id[rid] += 1
        hashes_seen[rec["policy"]["sha256"]] += 1
        if rec["policy"]["sha256"] not in written:
            wrong_hash += 1
    answered = counts.answered
    ok = sum(1 for s in answered.values() if s == 200)
    lost = sum(1 for rid in answered if per_id[rid] == 0)
    duplicated = sum(1 for rid, c in per_id.items() if c > 1)
    unanswered_logged = sum(1 for rid in counts.sent if rid not in answered and per_id[rid])
    sent = set(counts.sent)
    stray = sum(c for rid, c in per_id.items() if rid not in sent)
    result = {
        "clients": CLIENTS, "seconds": SECONDS, "reload_every_s": RELOAD_EVERY, "elapsed_s": round(elapsed, 1),
        "requests_sent": len(counts.sent), "responses": len(answered), "responses_200": ok,
        "requests_per_s": round(len(answered) / SECONDS, 1),
        "client_errors": dict(counts.errors), "log_lines": lines, "records_for_requests": sum(per_id.values()),
        "lost": lost, "duplicated": duplicated, "malformed": malformed,
        "unanswered_but_logged": unanswered_logged, "stray_records": stray,
        "log_files": len(rotated) + 1, "policy_versions_written": len(written), "policy_hashes_in_records": len(hashes_seen),
        "records_with_unknown_hash": wrong_hash,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))
    if SECONDS >= 60 and CLIENTS >= 200:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ops-load.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "ops-load.md").write_text(_markdown(result))

    assert answered and ok == len(answered), Counter(answered.values())
    assert (lost, duplicated, malformed, stray, wrong_hash) == (0, 0, 0, 0, 0), result
    assert lines == sum(per_id.values()), "a line that is not a request's record"
    # unanswered requests (a client gave up at the deadline) may or may not have been logged: counted above
    assert len(counts.sent) - len(answered) <= CLIENTS, result
    if SECONDS >= 3 * RELOAD_EVERY:
        assert len(hashes_seen) >= 2, "no reload was seen in the records: the test proved nothing about reloads"
        assert rotated and all(p.stat().st_size for p in rotated), "a rotation left an empty file: nothing was rotated"


def _lines(paths: list[Path]):
    for path in paths:
        data = path.read_bytes()
        assert data.endswith(b"\n") and b"\0" not in data, f"{path}: a partial line or a hole"
        yield from data.splitlines()


def _wait_port(proxy: Mitmdump, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proxy.proc.poll() is None, "mitmdump ended:\n" + proxy.output
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("mitmdump did not listen:\n" + proxy.output)


def _markdown(r: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in r.items())
    return ("# Decision-log load test (tests/test_ops_load.py, `make test-ops`)\n\n"
            f"{r['clients']} concurrent keep-alive clients through a real mitmdump for {r['seconds']:g} s, "
            f"the policy rewritten every {r['reload_every_s']:g} s; loopback origin.\n\n"
            "| count | value |\n|---|---|\n" + rows + "\n")
