"""Recordings for the audit tests and examples, written with mitmproxy's own FlowWriter.

`python tests/audit_fixtures.py` (re)writes the committed files:
  tests/data/audit/flows.mitm          every flow kind and recording situation the audit handles
  tests/data/audit/legacy-vNN.mitm     the same kinds in older flow format versions (11..20)
  tests/data/audit/*.har               HAR 1.2 in the style of Chrome, Firefox, Safari, Charles,
                                       Insomnia and Fiddler (with a BOM)
  examples/sample.mitm, sample.har     the sample recording the README audits
tests/test_audit_fixtures.py checks that running this again reproduces them byte for byte.

Addresses: the test flows use documentation ranges that tests/data/audit/policy.yaml looks up
(`special: lookup`) in a flat MMDB the tests write with tests/mmdbs.py (TEST_NETWORKS below). The
sample recording uses addresses that MaxMind's GeoIP2-Country-Test database places (see
tests/data/maxmind/README.md), so its audit is reproducible with a committed database.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import uuid
from pathlib import Path

from mitmproxy import connection
from mitmproxy import dns
from mitmproxy import http
from mitmproxy import tcp
from mitmproxy import udp
from mitmproxy import websocket
from mitmproxy.io import FlowWriter
from mitmproxy.io import tnetstring
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tutils
from wsproto.frame_protocol import Opcode

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "audit"
EXAMPLES = ROOT / "examples"
T0 = 1795683600.0  # 2026-11-26 09:00 UTC: fixed, so the files are reproducible

# The flat test database: documentation ranges mapped to countries.
TEST_NETWORKS = {
    "192.0.2.0/24": "DE",
    "198.51.100.0/24": "CN",
    "203.0.113.0/24": "US",
    "2001:db8::/32": "RU",
}

LEGACY_VERSIONS = (11, 12, 14, 15, 16, 17, 18, 19, 20)


def _id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "geogate-audit/" + "/".join(map(str, parts))))


# -- building blocks --------------------------------------------------------------------------

def client(seed: str, peer=("10.0.0.5", 51000), mode: str = "regular", sni: str | None = None,
           tls: bool = False) -> connection.Client:
    return connection.Client(
        id=_id("client", seed), peername=peer, sockname=("127.0.0.1", 8080), timestamp_start=T0,
        timestamp_tls_setup=T0 + 0.01 if tls else None, timestamp_end=T0 + 5, sni=sni,
        tls=tls, tls_version="TLSv1.3" if tls else None, proxy_mode=ProxyMode.parse(mode),
        state=connection.ConnectionState.CLOSED,
    )


def server(seed: str, address, peer, sni: str | None = None, tls: bool = False, via=None,
           error: str | None = None) -> connection.Server:
    return connection.Server(
        id=_id("server", seed), address=address, peername=peer,
        sockname=("10.0.0.2", 40000) if peer else None, timestamp_start=T0 + 0.1 if peer else None,
        timestamp_tcp_setup=T0 + 0.12 if peer else None, timestamp_tls_setup=T0 + 0.15 if tls and peer else None,
        timestamp_end=T0 + 4 if peer else None, sni=sni, tls=tls, tls_version="TLSv1.3" if tls and peer else None,
        via=via, error=error, state=connection.ConnectionState.CLOSED,
    )


def http_flow(n: int, seed: str, *, scheme: str, host: str, port: int, path: str, peer, method: str = "GET",
              mode: str = "regular", sni: str | None = None, address=None, request_body: bytes = b"",
              response_body: bytes | None = b"", status: int = 200, request_headers=(), response_headers=(),
              content_type: str = "application/json", via=None, error: str | None = None,
              client_peer=("10.0.0.5", 51000), host_header: str | None = None) -> http.HTTPFlow:
    tls = scheme == "https"
    c = client(seed, client_peer, mode, sni=sni if tls else None, tls=tls)
    s = server(seed, address if address is not None else ((host, port) if peer or via else None), peer,
               sni=sni if tls else None, tls=tls, via=via)
    f = http.HTTPFlow(c, s)
    f.id = _id("flow", seed)
    f.timestamp_created = T0 + n
    shown_host = host_header or (host if port in (80, 443) else f"{host}:{port}")
    headers = http.Headers([(b"Host", shown_host.encode()), (b"User-Agent", b"AcmeShop/4.2 (Android 15)"),
                            *[(k.encode(), v.encode()) for k, v in request_headers]])
    if request_body:
        headers[b"Content-Type"] = content_type.encode()
        headers[b"Content-Length"] = str(len(request_body)).encode()
    f.request = http.Request(host, port, method.encode(), scheme.encode(), b"", path.encode(), b"HTTP/1.1",
                             headers, request_body, None, T0 + n, T0 + n + 0.05)
    if response_body is not None and error is None:
        rh = http.Headers([(b"Content-Type", content_type.encode()),
                           (b"Content-Length", str(len(response_body)).encode()),
                           *[(k.encode(), v.encode()) for k, v in response_headers]])
        f.response = http.Response(b"HTTP/1.1", status, http.status_codes.RESPONSES.get(status, "").encode(),
                                   rh, response_body, None, T0 + n + 0.2, T0 + n + 0.3)
    if error:
        from mitmproxy.flow import Error

        f.error = Error(error, T0 + n + 0.1)
    f.live = False
    return f


def ws_flow(n: int, seed: str, *, host: str, path: str, peer, messages) -> http.HTTPFlow:
    f = http_flow(n, seed, scheme="https", host=host, port=443, path=path, peer=peer, sni=host,
                  request_headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                   ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")],
                  response_body=b"", status=101,
                  response_headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                    ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")])
    f.websocket = websocket.WebSocketData(
        messages=[websocket.WebSocketMessage(Opcode.TEXT if isinstance(m, str) else Opcode.BINARY, from_client,
                                             m.encode() if isinstance(m, str) else m, T0 + n + 1 + i)
                  for i, (from_client, m) in enumerate(messages)],
        closed_by_client=True, close_code=1000, close_reason="", timestamp_end=T0 + n + 30)
    return f


def tcp_flow(n: int, seed: str, *, address, peer, messages, mode: str = "regular",
             sni: str | None = None) -> tcp.TCPFlow:
    f = tcp.TCPFlow(client(seed, mode=mode, sni=sni), server(seed, address, peer, sni=sni))
    f.id = _id("flow", seed)
    f.timestamp_created = T0 + n
    f.messages = [tcp.TCPMessage(fc, m, T0 + n + i) for i, (fc, m) in enumerate(messages)]
    f.live = False
    return f


def udp_flow(n: int, seed: str, *, address, peer, messages) -> udp.UDPFlow:
    f = udp.UDPFlow(client(seed), server(seed, address, peer))
    f.client_conn.transport_protocol = f.server_conn.transport_protocol = "udp"
    f.id = _id("flow", seed)
    f.timestamp_created = T0 + n
    f.messages = [udp.UDPMessage(fc, m, T0 + n + i) for i, (fc, m) in enumerate(messages)]
    f.live = False
    return f


def dns_flow(n: int, seed: str, *, address, peer) -> dns.DNSFlow:
    f = dns.DNSFlow(client(seed, mode="dns"), server(seed, address, peer))
    f.client_conn.transport_protocol = f.server_conn.transport_protocol = "udp"
    f.id = _id("flow", seed)
    f.timestamp_created = T0 + n
    f.request = tutils.tdnsreq(timestamp=T0 + n)
    f.response = tutils.tdnsresp(timestamp=T0 + n + 0.02)
    f.live = False
    return f


# -- the test recording -----------------------------------------------------------------------

def test_flows() -> list:
    """One flow per situation; expectations in tests/test_audit.py:EXPECTED, keyed by seed."""
    return [
        # plain HTTP through the explicit proxy, peer in DE: default allow
        http_flow(0, "plain-http", scheme="http", host="www.example.de", port=80, path="/index.html?session=secret",
                  peer=("192.0.2.10", 80), response_body=b"<html>hello</html>", content_type="text/html"),
        # CONNECT, TLS intercepted, peer in CN: doj blocks
        http_flow(1, "connect-https", scheme="https", host="api.example.cn", port=443, path="/v1/upload",
                  method="POST", peer=("198.51.100.7", 443), sni="api.example.cn",
                  request_body=b'{"contacts": ["alice", "bob"]}', response_body=b'{"ok": true}'),
        # WebSocket, peer in US: a monitor rule flags it
        ws_flow(2, "websocket", host="push.example.com", path="/socket", peer=("203.0.113.5", 443),
                messages=[(True, "subscribe:orders"), (False, "order 1 shipped"), (False, b"\x00\x01\x02\x03")]),
        # raw TCP (IMAPS passed through), peer in DE
        tcp_flow(3, "tcp", address=("mail.example.de", 993), peer=("192.0.2.25", 993),
                 messages=[(True, b"a001 LOGIN"), (False, b"a001 OK"), (True, b"a002 LOGOUT")]),
        # the name is allowed by a hosts rule and the client named it: allowed although the peer is in CN
        http_flow(4, "mirror-named", scheme="https", host="mirror.example", port=443, path="/simple/",
                  peer=("198.51.100.50", 443), sni="mirror.example", response_body=b"x" * 300),
        # transparent mode: the same name only in SNI, dialled by address: a claim, never trusted offline
        http_flow(5, "mirror-claimed", scheme="https", host="198.51.100.99", port=443, path="/simple/",
                  peer=("198.51.100.99", 443), address=("198.51.100.99", 443), mode="transparent",
                  sni="mirror.example", host_header="mirror.example", response_body=b"y" * 200),
        # upstream proxy: the peer is the proxy, not the destination: unresolved
        http_flow(6, "upstream", scheme="https", host="secret.example.net", port=443, path="/",
                  peer=("192.0.2.200", 3128), via=("http", ("proxy.internal", 3128)), sni="secret.example.net"),
        # connection refused before any address was recorded: unresolved
        http_flow(7, "no-address", scheme="https", host="telemetry.example.org", port=443, path="/collect",
                  method="POST", peer=None, request_body=b"a" * 120, response_body=None,
                  error="Connection killed: refused by policy"),
        # IPv6 peer (RU by the test database)
        http_flow(8, "ipv6", scheme="https", host="v6.example.ru", port=8443, path="/feed",
                  peer=("2001:db8::5", 8443, 0, 0), sni="v6.example.ru", response_body=b"z" * 50),
        # IPv4-mapped IPv6 peer: judged as the IPv4 it carries (CN)
        http_flow(9, "mapped", scheme="http", host="cdn.example.cn", port=8080, path="/a.js",
                  peer=("::ffff:198.51.100.9", 8080, 0, 0), response_body=b"//js"),
        # body not stored (stream_large_bodies): the announced length counts
        http_flow(10, "streamed", scheme="http", host="download.example.de", port=80, path="/big.iso",
                  peer=("192.0.2.80", 80), response_body=b""),
        # DNS mode: the resolver is the destination
        dns_flow(11, "dns", address=("192.0.2.53", 53), peer=("192.0.2.53", 53)),
        # UDP (e.g. QUIC passed through) to the US
        udp_flow(12, "udp", address=("203.0.113.77", 443), peer=("203.0.113.77", 443),
                 messages=[(True, b"q" * 40), (False, b"r" * 60)]),
        # an authenticated proxy user and an IP-literal URL with no Host name
        http_flow(13, "proxyauth", scheme="http", host="192.0.2.44", port=8000, path="/status",
                  peer=("192.0.2.44", 8000), host_header="192.0.2.44:8000", response_body=b"ok"),
        # recorded through a live geogate: plain HTTP pinned to the checked address (request.host
        # is the address, the Host header the name), with geogate's decision in the metadata
        http_flow(14, "geogate-pinned", scheme="http", host="198.51.100.50", port=80, path="/simple/",
                  peer=("198.51.100.50", 80), host_header="mirror.example", response_body=b"m" * 64),
        # ...and a request geogate refused: no server connection, its own 403 as the response
        http_flow(15, "geogate-blocked", scheme="http", host="cdn.example.cn", port=80, path="/t.js",
                  peer=None, response_body=b"Blocked by geogate.\n", status=403, content_type="text/plain"),
    ]


def _finish_test_flows(flows: list) -> list:
    by_seed = {f.id: f for f in flows}
    streamed = by_seed[_id("flow", "streamed")]
    streamed.response.content = None  # as with stream_large_bodies: only the header survives
    streamed.response.headers["Content-Length"] = "1048576"
    by_seed[_id("flow", "proxyauth")].metadata["proxyauth"] = ("alice", "not-recorded-here")
    # what geogate's proxy saves with each decided flow (the decision record; the fields used here)
    by_seed[_id("flow", "geogate-pinned")].metadata["geogate"] = {
        "event": "decision", "mode": "regular", "host": "mirror.example", "port": 80, "action": "allow",
        "rule": "mirror", "address": "198.51.100.50", "host_mismatch": False}
    by_seed[_id("flow", "geogate-blocked")].metadata["geogate"] = {
        "event": "decision", "mode": "regular", "host": "cdn.example.cn", "port": 80, "action": "block",
        "rule": "doj", "address": "198.51.100.9", "host_mismatch": False}
    return flows


# -- legacy flow format versions --------------------------------------------------------------
# Each step undoes one of mitmproxy's io/compat.py upgrades, so a current state becomes what an
# older mitmproxy wrote; mitmproxy's FlowReader reads them back (tested), and so must the audit.

def _conns(d):
    return [d["client_conn"], d["server_conn"]]


def _down_21(d):
    d["version"] = 20


def _down_20(d):
    d["version"] = 19
    for c in _conns(d):
        c["state"] = 0


def _down_19(d):
    d["version"] = 18
    cc, sc = d["client_conn"], d["server_conn"]
    cc["address"] = cc.pop("peername")
    cc["tls_extensions"] = []
    sc["ip_address"] = sc.pop("peername")
    sc["source_address"] = sc.pop("sockname")
    sc["via2"] = sc.pop("via")
    for c in (cc, sc):
        c["tls_established"] = c["tls"]
        c["cipher_name"] = c.pop("cipher")
        c.pop("transport_protocol", None)


def _down_18(d):
    d["version"] = 17
    d["client_conn"].pop("proxy_mode")


def _down_17(d):
    d["version"] = 16
    d["mode"] = "regular"


def _down_16(d):
    d["version"] = 15
    d.pop("timestamp_created")


def _down_15(d):
    d["version"] = 14
    if d.get("websocket"):
        d["websocket"]["messages"] = [list(m[:5]) for m in d["websocket"]["messages"]]


def _down_14(d):
    d["version"] = 13
    d.pop("comment")


def _down_13(d):
    d["version"] = 12
    d["marked"] = bool(d["marked"])


_STEPS = {21: _down_21, 20: _down_20, 19: _down_19, 18: _down_18, 17: _down_17, 16: _down_16,
          15: _down_15, 14: _down_14, 13: _down_13}


def downgrade(state: dict, version: int) -> list[dict]:
    """`state` as format `version` wrote it: one record, or two for a WebSocket before format 12."""
    d = copy.deepcopy(state)
    while d["version"] > max(version, 12):
        _STEPS[d["version"]](d)
    if version > 11:
        return [d]
    d["version"] = 11
    ws = d.pop("websocket", None)
    if ws is None:
        return [d]
    # Before 12 a WebSocket was the handshake flow plus a separate "websocket" flow.
    d["metadata"]["websocket"] = True
    messages = ws["messages"]
    ws_record = {
        "type": "websocket", "version": 11, "id": _id("ws-record", d["id"]),
        "client_conn": copy.deepcopy(d["client_conn"]), "server_conn": copy.deepcopy(d["server_conn"]),
        "error": None, "intercepted": False, "is_replay": None, "marked": False, "mode": "regular",
        "metadata": {"websocket_handshake": d["id"]}, "messages": messages,
        "close_sender": "client" if ws["closed_by_client"] else "server",
        "close_code": ws["close_code"], "close_reason": ws["close_reason"],
    }
    return [d, ws_record]


def legacy_flows() -> list:
    """The kinds an old mitmproxy could record (HTTP, HTTPS, WebSocket, TCP), regular mode."""
    flows = test_flows()
    keep = {_id("flow", s) for s in ("plain-http", "connect-https", "websocket", "tcp", "no-address", "ipv6")}
    return [f for f in flows if f.id in keep]


# -- HAR dialects -----------------------------------------------------------------------------

def _har(creator: dict, entries: list, pages: list | None = None, browser: dict | None = None) -> dict:
    log = {"version": "1.2", "creator": creator}
    if browser:
        log["browser"] = browser
    if pages is not None:
        log["pages"] = pages
    log["entries"] = entries
    return {"log": log}


def _hdrs(**kv) -> list:
    return [{"name": k.replace("_", "-"), "value": v} for k, v in kv.items()]


# What Chrome writes as timings for a request that never got on the wire (a cache hit or a
# request that failed before sending): the queueing time as `blocked`, nothing else.
CHROME_UNSENT_TIMINGS = {"blocked": 2.31, "dns": -1, "ssl": -1, "connect": -1, "send": 0, "wait": 0, "receive": 0,
                         "_blocked_queueing": 2.31}


def chrome_har() -> dict:
    """Chrome/Edge: IPv6 in brackets, _transferSize, a WebSocket with _webSocketMessages, data:
    and blob: URLs (not traffic; the data: URL is long enough that the scanner keeps only its
    start). Entries that never went to the network, as Chrome writes them (serverIPAddress "",
    _transferSize 0, timings without a connection): answered from the memory and the disk cache
    (_fromCache), by a service worker (_fetchedViaServiceWorker), failed before sending (status 0,
    _error net::ERR_BLOCKED_BY_CLIENT, net::ERR_INTERNET_DISCONNECTED); and one that failed after
    it was sent (net::ERR_CONNECTION_RESET, send and wait times): traffic without an address."""
    page = [{"startedDateTime": "2026-11-26T06:20:00.000Z", "id": "page_1", "title": "https://shop.example.de/",
             "pageTimings": {"onContentLoad": 812.5, "onLoad": 1403.2}}]

    def entry(url, ip, status=200, method="GET", transfer=0, body=None, extra=None, error=None, timings=None,
              response_extra=None):
        e = {"_initiator": {"type": "other"}, "_priority": "VeryHigh", "_resourceType": "document",
             "cache": {}, "connection": "48213", "pageref": "page_1",
             "request": {"method": method, "url": url, "httpVersion": "http/2.0", "headers": _hdrs(accept="*/*"),
                         "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0},
             "response": {"status": status, "statusText": "" if status else "", "httpVersion": "http/2.0" if status else "",
                          "headers": _hdrs(content_type="text/html") if status else [], "cookies": [],
                          "content": {"size": len(body or ""), "mimeType": "text/html", **({"text": body} if body else {})},
                          "redirectURL": "", "headersSize": -1, "bodySize": -1, "_transferSize": transfer,
                          "_error": error, "_fetchedViaServiceWorker": False, **(response_extra or {})},
             "serverIPAddress": ip, "startedDateTime": "2026-11-26T06:20:00.100Z", "time": 120.4,
             "timings": timings or {"blocked": 1.2, "dns": -1, "ssl": -1, "connect": -1, "send": 0.1, "wait": 100,
                                    "receive": 2}}
        if extra:
            e.update(extra)
        return e

    inline_image = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAA" * 3_000  # 72 KB: streams past
    return _har({"name": "WebInspector", "version": "537.36"}, [
        entry("https://shop.example.de/", "192.0.2.10", transfer=24_511, body="<!doctype html><p>Shop</p>"),
        entry(inline_image, "", transfer=0, extra={"_resourceType": "image"}),
        entry("blob:https://shop.example.de/5d2c9e0a-1b7e-4f0e-9a55-3c3f1f7e8b21", "", transfer=0),
        entry("https://api.example.cn:8443/v2/track?uid=42", "198.51.100.7", method="POST", transfer=812),
        entry("https://v6.example.ru/feed.json", "[2001:db8::77]", transfer=3_300),
        entry("https://blocked.example.net/ad.js", "", status=0, error="net::ERR_BLOCKED_BY_CLIENT",
              timings=CHROME_UNSENT_TIMINGS),
        entry("wss://push.example.com/socket", "203.0.113.5", status=101, transfer=0,
              extra={"_resourceType": "websocket", "_webSocketMessages": [
                  {"type": "send", "time": 1795683601.2, "opcode": 1, "data": "hello"},
                  {"type": "receive", "time": 1795683601.3, "opcode": 1, "data": "welcome, 7 items"},
                  {"type": "receive", "time": 1795683601.4, "opcode": 2, "data": "AAECAwQFBgc="}]}),
        entry("https://shop.example.de/app.css", "", body=None, timings=CHROME_UNSENT_TIMINGS,
              extra={"_fromCache": "memory", "_resourceType": "stylesheet"}),
        entry("https://shop.example.de/logo.png", "", timings=CHROME_UNSENT_TIMINGS,
              extra={"_fromCache": "disk", "_resourceType": "image"}),
        entry("https://api.example.cn:8443/v2/config", "", timings=CHROME_UNSENT_TIMINGS,
              response_extra={"_fetchedViaServiceWorker": True, "_serviceWorkerResponseSource": "cache-storage"}),
        entry("https://api.example.cn:8443/v2/track?uid=42", "", status=0, method="POST",
              error="net::ERR_INTERNET_DISCONNECTED", timings=CHROME_UNSENT_TIMINGS),
        entry("https://upload.example.net/v1/logs", "", status=0, method="POST", error="net::ERR_CONNECTION_RESET",
              timings={"blocked": 1.1, "dns": 12.4, "ssl": 30.2, "connect": 44.0, "send": 3.2, "wait": 40.5,
                       "receive": 0, "_blocked_queueing": 1.1}),
    ], pages=page)


def firefox_har() -> dict:
    """Firefox: IPv6 without brackets, "connection" holds the port, sizes in bodySize/headersSize;
    responses from its cache and a failed request, which Firefox marks only by what they lack; a
    304 revalidation, which did go to the network."""
    def entry(url, ip, port, req_headers_size, body_size, resp_headers_size, resp_body, method="GET", post=None):
        req = {"bodySize": len(post) if post else 0, "method": method, "url": url, "httpVersion": "HTTP/2",
               "headers": _hdrs(Host=url.split("/")[2], User_Agent="Mozilla/5.0"), "cookies": [], "queryString": [],
               "headersSize": req_headers_size}
        if post:
            req["postData"] = {"mimeType": "application/json", "params": [], "text": post}
        return {"pageref": "page_1", "startedDateTime": "2026-11-26T07:20:00.000+01:00",
                "request": req,
                "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/2", "headers": _hdrs(Server="x"),
                             "cookies": [], "content": {"mimeType": "application/json", "size": resp_body,
                                                        "text": "{}"},
                             "redirectURL": "", "headersSize": resp_headers_size, "bodySize": resp_body},
                "cache": {}, "timings": {"blocked": 0, "dns": 0, "connect": 0, "ssl": 0, "send": 0, "wait": 35, "receive": 0},
                "time": 35, "_securityState": "secure", "serverIPAddress": ip, "connection": str(port)}

    def unsent(url, status=200, size=0):
        """What Firefox writes for a response it took from its cache (or a request that failed,
        status 0): no serverIPAddress and no connection, no timings, no HTTP version."""
        return {"startedDateTime": "2026-11-26T07:20:01.000+01:00",
                "request": {"bodySize": 0, "method": "GET", "url": url, "httpVersion": "",
                            "headers": _hdrs(Host=url.split("/")[2]), "cookies": [], "queryString": [],
                            "headersSize": -1},
                "response": {"status": status, "statusText": "", "httpVersion": "", "headers": [], "cookies": [],
                             "content": {"mimeType": "text/css", "size": size}, "redirectURL": "",
                             "headersSize": -1, "bodySize": -1},
                "cache": {}, "timings": {}, "time": 0, "pageref": "page_1"}

    revalidated = entry("https://www.example.de/app.js", "192.0.2.10", 443, 330, 0, 180, 0)
    revalidated["response"].update(status=304, statusText="Not Modified", bodySize=0)
    revalidated["cache"] = {"afterRequest": {"expires": "2026-11-27T07:20:00.000Z", "lastFetched": "",
                                             "fetchCount": "3", "_dataSize": "5120", "_lastModified": "",
                                             "_device": ""}}
    return _har({"name": "Firefox", "version": "133.0"}, [
        entry("https://www.example.de/", "192.0.2.10", 443, 310, 0, 220, 5_120),
        entry("https://api.example.cn/v1/sync", "198.51.100.8", 443, 402, 0, 190, 64, method="POST",
              post='{"contacts":["alice","bob","carol"]}'),
        entry("http://[2001:db8::9]:8080/status", "2001:db8::9", 8080, 150, 0, 120, 2),
        unsent("https://www.example.de/style.css", size=20_480),
        unsent("https://fonts.example.net/inter.woff2", size=86_000),
        revalidated,  # a 304: the cache asked the server, so it went to the network
        unsent("https://tracker.example.cn/pixel.gif", status=0),  # failed: nothing sent, nothing recorded
    ], pages=[{"startedDateTime": "2026-11-26T07:20:00.000+01:00", "id": "page_1", "title": "Shop",
               "pageTimings": {"onContentLoad": -1, "onLoad": -1}}], browser={"name": "Firefox", "version": "133.0"})


def safari_har() -> dict:
    """Safari: cached entries without serverIPAddress, _fetchType, an entry without a response."""
    return _har({"name": "WebKit Web Inspector", "version": "20621.1.15"}, [
        {"pageref": "page0", "startedDateTime": "2026-11-26T06:21:00.000Z", "time": 80,
         "request": {"method": "GET", "url": "https://shop.example.de/app.css", "httpVersion": "HTTP/2",
                     "cookies": [], "headers": _hdrs(Accept="text/css"), "queryString": [], "headersSize": -1,
                     "bodySize": 0},
         "response": {"status": 200, "statusText": "", "httpVersion": "HTTP/2", "cookies": [],
                      "headers": _hdrs(Content_Type="text/css"), "content": {"size": 2048, "compression": 1024,
                                                                             "mimeType": "text/css"},
                      "redirectURL": "", "headersSize": -1, "bodySize": 1024},
         "cache": {}, "timings": {"blocked": 0, "dns": 0, "connect": 0, "ssl": 0, "send": 0, "wait": 80, "receive": 0},
         "serverIPAddress": "192.0.2.10", "_serverPort": 443, "_fetchType": "Network Load"},
        {"pageref": "page0", "startedDateTime": "2026-11-26T06:21:01.000Z", "time": 0,
         "request": {"method": "GET", "url": "https://cdn.example.cn/logo.png", "httpVersion": "HTTP/2",
                     "cookies": [], "headers": [], "queryString": [], "headersSize": -1, "bodySize": 0},
         "response": {"status": 200, "statusText": "", "httpVersion": "HTTP/2", "cookies": [], "headers": [],
                      "content": {"size": 900, "mimeType": "image/png"}, "redirectURL": "", "headersSize": -1,
                      "bodySize": -1},
         "cache": {}, "timings": {"blocked": 0, "dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": 0, "receive": 0},
         "_fetchType": "Memory Cache"},
        {"pageref": "page0", "startedDateTime": "2026-11-26T06:21:02.000Z", "time": 0,
         "request": {"method": "GET", "url": "https://198.51.100.30/beacon", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(Host="198.51.100.30"), "queryString": [], "headersSize": -1,
                     "bodySize": 0},
         "cache": {}, "timings": {"blocked": 0, "dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": 0, "receive": 0},
         "_fetchType": "Network Load"},
    ], pages=[{"startedDateTime": "2026-11-26T06:21:00.000Z", "id": "page0", "title": "Shop",
               "pageTimings": {"onContentLoad": 100, "onLoad": 200}}])


def charles_har() -> dict:
    """Charles: base64 bodies, comment fields, serverIPAddress always present."""
    return _har({"name": "Charles Proxy", "version": "5.0.1"}, [
        {"startedDateTime": "2026-11-26T06:22:00.000+00:00", "time": 43,
         "request": {"method": "PUT", "url": "https://storage.example.com/bucket/photo.jpg", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(Host="storage.example.com", Content_Type="image/jpeg"),
                     "queryString": [], "postData": {"mimeType": "image/jpeg", "text": "/9j/4AAQSkZJRgABAQ==",
                                                     "encoding": "base64"},
                     "headersSize": 96, "bodySize": 14},
         "response": {"_charlesStatus": "COMPLETE", "status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                      "cookies": [], "headers": _hdrs(Content_Length="2"),
                      "content": {"size": 2, "mimeType": "text/plain", "text": "b2s=", "encoding": "base64"},
                      "redirectURL": None, "headersSize": 60, "bodySize": 2},
         "serverIPAddress": "203.0.113.40", "cache": {}, "timings": {"dns": 1, "connect": 10, "ssl": 12, "send": 0,
                                                                      "wait": 20, "receive": 0}, "comment": ""},
        {"startedDateTime": "2026-11-26T06:22:01.000+00:00", "time": 51,
         "request": {"method": "GET", "url": "http://legacy.example.cn:8080/api", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(Host="legacy.example.cn:8080"), "queryString": [],
                     "headersSize": 48, "bodySize": 0},
         "response": {"_charlesStatus": "COMPLETE", "status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                      "cookies": [], "headers": [], "content": {"size": 0, "mimeType": "text/plain"},
                      "redirectURL": None, "headersSize": 40, "bodySize": 0},
         "serverIPAddress": "198.51.100.12", "cache": {}, "timings": {"dns": 1, "connect": 10, "send": 0, "wait": 40,
                                                                       "receive": 0}, "comment": ""},
    ])


def insomnia_har() -> dict:
    """Insomnia: no serverIPAddress at all, a request that was never sent (no response), ports in
    URLs, an IP-literal URL (whose host is its own address)."""
    return _har({"name": "Insomnia REST Client", "version": "insomnia.desktop.app:v10.2.0"}, [
        {"startedDateTime": "2026-11-26T06:23:00.000Z", "time": 12,
         "request": {"method": "GET", "url": "http://localhost:3000/api/items", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(accept="application/json"), "queryString": [],
                     "postData": {"mimeType": "", "text": "", "params": []}, "headersSize": -1, "bodySize": -1,
                     "settingEncodeUrl": True},
         "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "cookies": [],
                      "headers": _hdrs(content_type="application/json"),
                      "content": {"size": 27, "mimeType": "application/json", "text": '{"items":[1,2,3],"n":3}'},
                      "redirectURL": "", "headersSize": -1, "bodySize": -1},
         "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 12, "receive": 0, "ssl": -1},
         "comment": "List items"},
        {"startedDateTime": "2026-11-26T06:23:05.000Z", "time": 0,
         "request": {"method": "POST", "url": "https://api.example.cn:9443/v1/orders", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(content_type="application/json"), "queryString": [],
                     "postData": {"mimeType": "application/json", "text": '{"sku":"A-1","qty":2}', "params": []},
                     "headersSize": -1, "bodySize": -1, "settingEncodeUrl": True},
         "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 0, "receive": 0, "ssl": -1},
         "comment": "Create order (not sent)"},
        {"startedDateTime": "2026-11-26T06:23:09.000Z", "time": 30,
         "request": {"method": "GET", "url": "http://203.0.113.9:8080/health", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": [], "queryString": [], "headersSize": -1, "bodySize": -1},
         "response": {"status": 204, "statusText": "No Content", "httpVersion": "HTTP/1.1", "cookies": [],
                      "headers": [], "content": {"size": 0, "mimeType": ""}, "redirectURL": "", "headersSize": -1,
                      "bodySize": -1},
         "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 30, "receive": 0, "ssl": -1}},
    ])


def fiddler_har() -> dict:
    """Fiddler: written with a UTF-8 byte order mark; the non-ASCII text must survive it."""
    return _har({"name": "Fiddler", "version": "5.0.20245.10105", "comment": "http://www.telerik.com/fiddler"}, [
        {"startedDateTime": "2026-11-26T06:24:00.0000000+00:00", "time": 20,
         "request": {"method": "GET", "url": "https://bücher.example.de/suche?q=straße", "httpVersion": "HTTP/1.1",
                     "cookies": [], "headers": _hdrs(Host="xn--bcher-kva.example.de"), "queryString": [],
                     "headersSize": 120, "bodySize": 0},
         "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "cookies": [],
                      "headers": _hdrs(Content_Type="text/html; charset=utf-8"),
                      "content": {"size": 23, "mimeType": "text/html", "text": "<p>Straße, Bücher</p>"},
                      "redirectURL": "", "headersSize": 80, "bodySize": 23},
         "serverIPAddress": "192.0.2.15", "cache": {}, "timings": {"send": 0, "wait": 20, "receive": 0}},
    ])


HAR_DIALECTS = {"chrome": chrome_har, "firefox": firefox_har, "safari": safari_har, "charles": charles_har,
                "insomnia": insomnia_har, "fiddler": fiddler_har}


# -- the sample recording (examples/) ---------------------------------------------------------
# A fictional shopping app, recorded with `mitmdump -w` (regular mode, TLS intercepted). The
# addresses are ones MaxMind's GeoIP2-Country-Test database places.

def sample_flows() -> list:
    api, img = ("89.160.20.115", 443), ("2.125.160.216", 443)
    flows = []
    n = 0

    def add(f):
        nonlocal n
        flows.append(f)
        n += 1

    add(http_flow(n, "s-session", scheme="https", host="api.acmeshop.example", port=443, path="/v2/session",
                  method="POST", peer=api, sni="api.acmeshop.example", request_body=b'{"device":"a1b2c3","app":"4.2"}',
                  response_body=b'{"token":"' + b"t" * 180 + b'"}'))
    for page in range(1, 4):
        add(http_flow(n, f"s-catalog-{page}", scheme="https", host="api.acmeshop.example", port=443,
                      path=f"/v2/catalog?page={page}", peer=api, sni="api.acmeshop.example",
                      response_body=b'{"items":[' + b'{"sku":"A-%d"},' % page * 120 + b"{}]}"))
    for i, size in enumerate((18_432, 9_626, 4_096)):
        add(http_flow(n, f"s-img-{i}", scheme="https", host="img.acmeshop.example", port=443,
                      path=f"/products/{1000 + i}.jpg", peer=img, sni="img.acmeshop.example",
                      response_body=bytes(size), content_type="image/jpeg"))
    add(ws_flow(n, "s-push", host="push.acmeshop.example", path="/socket", peer=("81.2.69.142", 443),
                messages=[(True, '{"subscribe":"orders"}'), (False, '{"order":"A-1","state":"shipped"}'),
                          (False, '{"order":"A-2","state":"packed"}'), (True, '{"ack":2}')]))
    for i in range(3):
        add(http_flow(n, f"s-events-{i}", scheme="https", host="sdk.analytics-partner.example", port=443,
                      path="/v1/events", method="POST", peer=("175.16.199.20", 443),
                      sni="sdk.analytics-partner.example",
                      request_body=b'{"events":[' + b'{"type":"view","user":"a1b2c3","lat":59.33,"lon":18.06},' * 40
                      + b"{}]}", response_body=b'{"accepted":true}'))
    add(http_flow(n, "s-ads", scheme="https", host="bid.adnet.example", port=443, path="/bid", method="POST",
                  peer=("111.235.160.10", 443), sni="bid.adnet.example", request_body=b'{"slot":"home","uid":"a1b2c3"}',
                  response_body=b'{"ad":null}'))
    add(http_flow(n, "s-tiles", scheme="https", host="tiles.maps.example", port=443, path="/14/8800/4700.png",
                  peer=("2a02:d0c0::1", 443, 0, 0), sni="tiles.maps.example", response_body=bytes(7_300),
                  content_type="image/png"))
    add(http_flow(n, "s-anycast", scheme="https", host="edge.cdn-anycast.example", port=443, path="/lib/sdk.js",
                  peer=("214.1.1.10", 443), sni="edge.cdn-anycast.example", response_body=b"/*sdk*/" * 600,
                  content_type="application/javascript"))
    add(http_flow(n, "s-payments", scheme="https", host="api.jp-payments.example", port=443, path="/v1/charge",
                  method="POST", peer=("2001:218::10", 443, 0, 0), sni="api.jp-payments.example",
                  request_body=b'{"amount":4200,"currency":"JPY"}', response_body=b'{"status":"ok"}'))
    add(tcp_flow(n, "s-chat", address=("chat.acmeshop.example", 5222), peer=("202.196.224.10", 5222),
                 messages=[(True, b"<stream:stream to='acmeshop.example'>"), (False, b"<stream:features/>" * 4),
                           (True, b"<presence/>"), (False, b"<message>hi</message>")]))
    add(http_flow(n, "s-debug", scheme="http", host="127.0.0.1", port=8080, path="/__debug/config",
                  peer=("127.0.0.1", 8080), host_header="127.0.0.1:8080", response_body=b'{"debug":true}'))
    add(http_flow(n, "s-crash", scheme="https", host="crash.reports.example", port=443, path="/submit",
                  method="POST", peer=None, request_body=b"x" * 2048, response_body=None,
                  error="Server connection to ('crash.reports.example', 443) failed: Name or service not known"))
    return flows


def sample_har() -> dict:
    """The same app's web shop in a browser, exported by Chrome: a few responses from its cache
    and a request that failed while the browser was offline, as well as network traffic."""
    def entry(url, ip, transfer, method="GET", status=200, rtype="fetch", cache=None, error=None):
        return {"_resourceType": rtype, "cache": {}, "connection": "1201", "pageref": "page_1",
                "request": {"method": method, "url": url, "httpVersion": "http/2.0", "headers": _hdrs(accept="*/*"),
                            "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0},
                "response": {"status": status, "statusText": "", "httpVersion": "http/2.0", "headers": [],
                             "cookies": [], "content": {"size": transfer, "mimeType": "application/json"},
                             "redirectURL": "", "headersSize": -1, "bodySize": -1, "_transferSize": transfer,
                             "_error": error, "_fetchedViaServiceWorker": False},
                "serverIPAddress": ip, "startedDateTime": "2026-11-26T06:30:00.000Z", "time": 80,
                "timings": ({"blocked": 1, "dns": -1, "ssl": -1, "connect": -1, "send": 0, "wait": 70, "receive": 9}
                            if ip else CHROME_UNSENT_TIMINGS),
                **({"_fromCache": cache} if cache else {})}

    return _har({"name": "WebInspector", "version": "537.36"}, [
        entry("https://shop.acmeshop.example/", "89.160.20.115", 48_211, rtype="document"),
        entry("https://img.acmeshop.example/hero.jpg", "2.125.160.216", 210_440, rtype="image"),
        entry("https://sdk.analytics-partner.example/v1/events", "175.16.199.20", 420, method="POST"),
        entry("https://api.jp-payments.example/v1/config", "[2001:218::10]", 1_024),
        entry("https://consent.banner.example/v3/cmp.js", "", 0, status=0, rtype="script",
              error="net::ERR_INTERNET_DISCONNECTED"),
        entry("https://shop.acmeshop.example/app.js", "", 0, rtype="script", cache="disk"),
        entry("https://img.acmeshop.example/logo.svg", "", 0, rtype="image", cache="memory"),
        entry("https://sdk.analytics-partner.example/v1/sdk.js", "", 0, rtype="script", cache="disk"),
    ], pages=[{"startedDateTime": "2026-11-26T06:30:00.000Z", "id": "page_1", "title": "Acme Shop",
               "pageTimings": {"onContentLoad": 640, "onLoad": 1210}}])


# -- writing ----------------------------------------------------------------------------------

def flow_file_bytes(flows: list) -> bytes:
    buf = io.BytesIO()
    writer = FlowWriter(buf)
    for f in flows:
        writer.add(f)
    return buf.getvalue()


def write_many(path: Path, n: int) -> Path:
    """A flow file of `n` flows, cycling through test_flows() with distinct ids, in about a second
    for 100k: each template is serialised once and only its id (same length) is replaced, so
    every record stays a valid tnetstring."""
    templates = []
    for f in _finish_test_flows(test_flows()):
        buf = io.BytesIO()
        tnetstring.dump(f.get_state(), buf)
        templates.append((buf.getvalue(), f.id.encode()))
    with open(path, "wb") as fo:
        for i in range(n):
            raw, flow_id = templates[i % len(templates)]
            fo.write(raw.replace(flow_id, b"%08x" % i + flow_id[8:]))
    return path


def legacy_file_bytes(version: int) -> bytes:
    buf = io.BytesIO()
    for f in legacy_flows():
        for record in downgrade(f.get_state(), version):
            tnetstring.dump(record, buf)
    return buf.getvalue()


def har_bytes(doc: dict, bom: bool = False) -> bytes:
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def committed_files() -> dict[Path, bytes]:
    files = {
        DATA / "flows.mitm": flow_file_bytes(_finish_test_flows(test_flows())),
        EXAMPLES / "sample.mitm": flow_file_bytes(sample_flows()),
        EXAMPLES / "sample.har": har_bytes(sample_har()),
    }
    for v in LEGACY_VERSIONS:
        files[DATA / f"legacy-v{v}.mitm"] = legacy_file_bytes(v)
    for name, make in HAR_DIALECTS.items():
        files[DATA / f"{name}.har"] = har_bytes(make(), bom=name == "fiddler")
    return files


def main() -> int:
    for path, data in committed_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(ROOT)} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
