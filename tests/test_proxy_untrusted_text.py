"""Text a client sends need not be UTF-8 (a Host header, an SNI, a path), and geogate failing must
not tell clients anything internal. Every record stays one line of valid JSON in valid UTF-8, with
each byte that is not UTF-8 written as the four characters \\xNN; block pages and fail-closed
refusals carry no exception text, no path and no file hash."""

from __future__ import annotations

import json
import logging

from mitmproxy import connection
from mitmproxy.test import tflow

from geogate.policy.state import GateState
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from test_proxy_unit import client
from test_proxy_unit import connect_flow
from test_proxy_unit import files  # noqa: F401  (fixture)
from test_proxy_unit import gate  # noqa: F401  (fixture)
from test_proxy_unit import hook
from test_proxy_unit import hook_data
from test_proxy_unit import intercepted_request
from test_proxy_unit import poll_until_changed
from test_proxy_unit import proxy_request

RAW_HOST = b"\xff\xfe.example"
SEEN_HOST = RAW_HOST.decode("utf-8", "surrogateescape")  # what mitmproxy hands an addon
LOGGED_HOST = "\\xff\\xfe.example"  # what geogate writes


def log_lines(files) -> list[dict]:
    raw = files.log.read_bytes() if files.log.exists() else b""
    text = raw.decode("utf-8")  # strict: the log is valid UTF-8
    return [json.loads(line) for line in text.splitlines()]


def assert_safe_for_clients(text: str, state=None) -> None:
    for leak in ("Error(", "Error:", "Traceback", "\\u", "\udcff", "/tmp", "/work", "/root", "sha256"):
        assert leak not in text, (leak, text)
    if state is not None:
        assert state.policy.ref.sha256[:12] not in text
        assert all(db.sha256[:12] not in text for db in state.databases.infos)


def transparent_request(address: str, host_header: bytes) -> tflow.http.HTTPFlow:
    """A plain-HTTP request in transparent mode with connection_strategy=lazy: the connection
    is not open yet, so requestheaders decides."""
    f = tflow.tflow(client_conn=client("transparent"), server_conn=connection.Server(address=(address, 80)))
    f.request.host, f.request.port = address, 80
    f.request.headers.fields = ((b"Host", host_header),)
    return f


def test_printable_writes_bytes_that_are_not_utf8_as_backslash_x():
    from geogate.core.record import printable
    from geogate.core.record import to_json_line

    assert printable(SEEN_HOST) == LOGGED_HOST
    assert printable("bücher.example") == "bücher.example"  # valid UTF-8 stays as it is
    assert printable("a\ud800b") == "a\\ud800b"  # a lone surrogate of any other kind
    line = to_json_line({"host": SEEN_HOST, "nested": [{"sni": SEEN_HOST}]})
    line.encode("utf-8")
    assert json.loads(line) == {"host": LOGGED_HOST, "nested": [{"sni": LOGGED_HOST}]}


async def test_a_host_header_that_is_not_utf8_is_logged_and_blocked_readably(gate, caplog):
    f = transparent_request(BLOCKED_IP, RAW_HOST)
    with caplog.at_level(logging.ERROR):
        await hook(gate.gg.requestheaders, f)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no failure, no traceback
    recs = log_lines(gate.files)
    assert len(recs) == 1 and recs[0]["event"] == "decision"
    assert (recs[0]["host"], recs[0]["host_mismatch"], recs[0]["rule"]) == (LOGGED_HOST, True, "doj")
    assert f.metadata["geogate"]["host"] == LOGGED_HOST
    assert f.response.status_code == 403 and "country=KP; rule=doj" in f.response.headers["Proxy-Status"]
    body = f.response.get_text()
    assert f"host:    {LOGGED_HOST}:80" in body and f"id:      {f.id}" in body and recs[0]["flow_id"] == f.id
    assert_safe_for_clients(body, gate.gg.current_state())


async def test_a_host_header_that_is_not_utf8_never_verifies_a_hosts_rule(gate):
    f = transparent_request(ALLOWED_IP, RAW_HOST)
    await hook(gate.gg.requestheaders, f)
    (rec,) = log_lines(gate.files)
    assert f.response is None and (rec["host"], rec["host_mismatch"], rec["action"]) == (LOGGED_HOST, True, "allow")


async def test_an_sni_that_is_not_utf8_is_logged(gate):
    blocked = hook_data(BLOCKED_IP, 443, client("transparent", sni=SEEN_HOST))
    await gate.gg.server_connect(blocked)
    allowed = hook_data(ALLOWED_IP, 443, client("transparent", sni=SEEN_HOST))
    await gate.gg.server_connect(allowed)
    recs = log_lines(gate.files)
    assert [(r["sni"], r["host"], r["action"], r["host_mismatch"]) for r in recs] == [
        (LOGGED_HOST, LOGGED_HOST, "block", True), (LOGGED_HOST, LOGGED_HOST, "allow", True)]
    # mitmproxy shows server.error to some clients ("Connection killed: ...")
    assert LOGGED_HOST in blocked.server.error and "fail closed" not in blocked.server.error
    assert allowed.server.error is None and allowed.server.address == (ALLOWED_IP, 443)


async def test_an_intercepted_request_with_a_host_that_is_not_utf8_is_logged(gate):
    inner = await intercepted_request(gate)
    inner.request.headers.fields = ((b"Host", RAW_HOST),)
    inner.request.path = "/caf\udce9"
    await hook(gate.gg.requestheaders, inner)
    assert inner.response is None  # the tunnel was allowed: nothing failed
    recs = log_lines(gate.files)
    assert [r["event"] for r in recs] == ["decision", "request"]
    assert recs[1]["url"] == f"https://{LOGGED_HOST}/caf\\xe9" == inner.metadata["geogate"]["url"]


async def test_a_proxy_request_whose_path_is_not_utf8_is_logged_and_blocked(gate):
    gate.gg.log_urls = "full"  # the query string too: every byte the client sent is escaped
    f = proxy_request(BLOCKED_IP)
    f.request.data.path = b"/\xff?q=\xfe"
    await hook(gate.gg.requestheaders, f)
    (rec,) = log_lines(gate.files)
    assert rec["url"] == f"http://{BLOCKED_IP}/\\xff?q=\\xfe" and rec["action"] == "block"
    assert f.response.status_code == 403
    assert_safe_for_clients(f.response.get_text(), gate.gg.current_state())
    again = proxy_request(BLOCKED_IP)  # a repeat reuses the decision: same rule for its URL
    again.request.data.path = b"/\xfe"
    await hook(gate.gg.requestheaders, again)
    assert log_lines(gate.files)[-1]["url"] == f"http://{BLOCKED_IP}/\\xfe"


async def test_an_internal_error_shows_clients_a_generic_refusal_with_the_id_of_its_log_line(gate, monkeypatch, caplog):
    secret = f"{gate.files.policy} {gate.gg.current_state().policy.ref.sha256}"

    def explode(*args, **kwargs):
        raise RuntimeError(f"boom in {secret}")

    monkeypatch.setattr(GateState, "decide", explode)
    for f, hook_name in ((connect_flow("allowed.test"), "http_connect"), (proxy_request("allowed.test"), "requestheaders")):
        with caplog.at_level(logging.ERROR):
            await hook(getattr(gate.gg, hook_name), f)
        body = f.response.get_text()
        assert f.response.status_code == 403
        assert body.startswith("geogate could not decide; refused (fail closed).\nerror id: ")
        error_id = body.split("error id: ")[1].strip()
        assert f.response.headers["Proxy-Status"] == (
            f'geogate; error=proxy_internal_error; details="geogate could not decide; error id {error_id}"')
        assert_safe_for_clients(body + f.response.headers["Proxy-Status"], gate.gg.current_state())
        rec = log_lines(gate.files)[-1]
        assert (rec["event"], rec["error_id"], rec["flow_id"], rec["action"], rec["rule"]) == (
            "error", error_id, f.id, "block", "error")
        assert "boom" in rec["error"] and f.metadata["geogate"] == rec
        assert any(error_id in r.message and "boom" in r.message for r in caplog.records)
    data = hook_data("allowed.test", 443, client("socks5"))
    await gate.gg.server_connect(data)
    error_id = data.server.error.rsplit(" ", 1)[1]
    assert data.server.error == f"geogate could not decide; refused (fail closed); error id {error_id}"
    assert log_lines(gate.files)[-1]["error_id"] == error_id


async def test_a_block_page_for_a_failed_lookup_names_no_file(gate):
    gate.files.db.unlink()
    assert poll_until_changed(gate.gg)
    f = proxy_request(ALLOWED_IP)
    await hook(gate.gg.requestheaders, f)
    rec = log_lines(gate.files)[-1]
    assert rec["rule"] == "error" and str(gate.files.db) in rec["reason"]  # the record tells the operator
    body = f.response.get_text()
    assert "rule:    error" in body and "GeoIP lookup of the address failed" in body
    assert_safe_for_clients(body)
