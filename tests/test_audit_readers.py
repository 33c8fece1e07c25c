"""Audit readers: mitmproxy flow files of every format version, HAR 1.2 dialects, corruption."""

from __future__ import annotations

import io
import json
import random
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader
from mitmproxy.io import tnetstring
from mitmproxy.net.http.http1.assemble import assemble_request_head
from mitmproxy.net.http.http1.assemble import assemble_response_head
from mitmproxy.version import MITMPROXY

import audit_fixtures as af
from geogate.audit import extract
from geogate.audit import flowfile
from geogate.audit.harstream import OMITTED
from geogate.audit.harstream import PREFIX_KEY
from geogate.audit.harstream import HarScanner
from geogate.audit.harstream import HarSyntaxError
from geogate.audit.harstream import NotHar
from geogate.audit.model import NotSent
from geogate.audit.model import Problem
from geogate.audit.model import RecordedFlow
from geogate.audit.readers import InputError
from geogate.audit.readers import open_input

DATA = af.DATA
LEGACY = [DATA / f"legacy-v{v}.mitm" for v in af.LEGACY_VERSIONS]
MITM_FILES = [DATA / "flows.mitm", af.EXAMPLES / "sample.mitm", *LEGACY]


def read_all(path: Path) -> list[RecordedFlow | Problem]:
    return list(open_input(str(path)).flows())


def flows_of(path: Path) -> list[RecordedFlow]:
    """The traffic of a file that reads without problems (not the HAR entries never sent)."""
    items = read_all(path)
    assert not [i for i in items if isinstance(i, Problem)], items
    return [i for i in items if not isinstance(i, NotSent)]


def not_sent_of(path: Path) -> list[NotSent]:
    return [i for i in read_all(path) if isinstance(i, NotSent)]


def by_seed(flows: list[RecordedFlow]) -> dict[str, RecordedFlow]:
    ids = {af._id("flow", seed): seed for seed in _seeds()}
    return {ids[f.flow_id]: f for f in flows}


def _seeds() -> list[str]:
    return ["plain-http", "connect-https", "websocket", "tcp", "mirror-named", "mirror-claimed", "upstream",
            "no-address", "ipv6", "mapped", "streamed", "dns", "udp", "proxyauth", "geogate-pinned",
            "geogate-blocked"]


# -- tnetstring and flow records ----------------------------------------------------------------

@pytest.mark.parametrize("path", MITM_FILES, ids=lambda p: p.name)
def test_records_parse_exactly_like_mitmproxys_tnetstring(path: Path) -> None:
    with open(path, "rb") as fo:
        n = 0
        while (raw := flowfile.read_record(fo)) is not None:
            assert flowfile.parse_record(raw) == tnetstring.loads(raw)
            n += 1
    assert n > 0


@pytest.mark.parametrize("path", [p for p in MITM_FILES if "v11" not in p.name], ids=lambda p: p.name)
def test_states_match_flowreader_for_every_format_version(path: Path) -> None:
    """The audit reads the same flows as mitmproxy's FlowReader, old versions upgraded alike."""
    with open(path, "rb") as fo:
        reference = [extract.from_state(f.get_state(), str(path), i) for i, f in enumerate(FlowReader(fo).stream())]
    assert flows_of(path) == reference


@pytest.mark.parametrize("version", af.LEGACY_VERSIONS)
def test_old_format_versions_audit_like_the_current_one(version: int) -> None:
    current = {f.flow_id: f for f in flows_of(DATA / "flows.mitm")}
    old = flows_of(DATA / f"legacy-v{version}.mitm")
    assert len(old) == len(af.legacy_flows())
    for f in old:
        same = {"source": f.source, "index": f.index}
        if version < 16 and f.kind == "tcp":
            # no timestamp_created before format 16: mitmproxy's upgrade uses the connection's start
            same["started"] = f.started
        expected = current[f.flow_id]
        assert RecordedFlow(**{**{s: getattr(expected, s) for s in expected.__slots__}, **same}) == f


def test_format_11_websocket_is_one_flow_and_tcp_is_read() -> None:
    """Before format 12 a WebSocket was two records; mitmproxy's upgrade repeats the handshake.
    And mitmproxy 12's own FlowReader cannot read TCP flows of format 11 (AssertionError in
    TCPFlow.set_state): the audit reads them."""
    flows = flows_of(DATA / "legacy-v11.mitm")
    kinds = sorted(f.kind for f in flows)
    assert kinds == ["http", "http", "http", "http", "tcp", "websocket"]
    ws = next(f for f in flows if f.kind == "websocket")
    assert ws.bytes_sent == by_seed(flows_of(DATA / "flows.mitm"))["websocket"].bytes_sent
    with open(DATA / "legacy-v11.mitm", "rb") as fo, pytest.raises(AssertionError):
        list(FlowReader(fo).stream())


def test_http_byte_counts_match_mitmproxys_http1_assembly() -> None:
    with open(DATA / "flows.mitm", "rb") as fo:
        reference = list(FlowReader(fo).stream())
    for f in reference:
        if getattr(f, "websocket", None) is not None or f.type != "http" or f.response is None:
            continue
        if f.response.raw_content is None or "geogate" in f.metadata:
            continue
        got = extract.from_state(f.get_state(), "x", 0)
        assert got.bytes_sent == len(assemble_request_head(f.request)) + len(f.request.raw_content)
        assert got.bytes_received == len(assemble_response_head(f.response)) + len(f.response.raw_content)


def test_what_each_recorded_situation_extracts_to() -> None:
    f = by_seed(flows_of(DATA / "flows.mitm"))
    assert (f["plain-http"].host, f["plain-http"].port, str(f["plain-http"].address)) == ("www.example.de", 80, "192.0.2.10")
    assert f["plain-http"].url == "http://www.example.de/index.html"  # query strings never reach reports
    assert f["connect-https"].scheme == "https" and f["connect-https"].sni == "api.example.cn"
    ws = f["websocket"]
    assert (ws.kind, ws.scheme) == ("websocket", "wss")
    assert ws.bytes_sent - f["websocket"].bytes_sent == 0
    tcp = f["tcp"]
    assert (tcp.kind, tcp.host, tcp.port, tcp.bytes_sent, tcp.bytes_received) == ("tcp", "mail.example.de", 993, 21, 7)
    assert not f["mirror-named"].host_is_claim
    claimed = f["mirror-claimed"]
    assert (claimed.host, claimed.host_is_claim, claimed.mode, str(claimed.address)) == (
        "mirror.example", True, "transparent", "198.51.100.99")
    assert f["upstream"].address is None  # the peer is the upstream proxy
    assert f["no-address"].address is None and f["no-address"].error.startswith("Connection killed")
    assert str(f["ipv6"].address) == "2001:db8::5" and f["ipv6"].port == 8443
    assert f["mapped"].address.ipv4_mapped is not None
    assert f["streamed"].bytes_received > 1_048_576  # announced Content-Length of a body not kept
    assert (f["dns"].kind, f["dns"].port, f["dns"].bytes_sent > 0, f["dns"].bytes_received > 0) == ("dns", 53, True, True)
    assert (f["udp"].kind, f["udp"].bytes_sent, f["udp"].bytes_received) == ("udp", 40, 60)
    auth = f["proxyauth"]
    assert (auth.user, auth.host, auth.address_source) == ("alice", "192.0.2.44", "peername")
    assert all(x.client == "10.0.0.5:51000" for x in f.values())


def test_ws_message_bytes_count_by_direction() -> None:
    ws = by_seed(flows_of(DATA / "flows.mitm"))["websocket"]
    state = af.ws_flow(0, "x", host="push.example.com", path="/socket", peer=("192.0.2.1", 443), messages=[]).get_state()
    empty = extract.from_state(state, "x", 0)
    assert ws.bytes_sent - empty.bytes_sent == len("subscribe:orders")
    assert ws.bytes_received - empty.bytes_received == len("order 1 shipped") + 4


# -- HAR --------------------------------------------------------------------------------------

HAR_EXPECTED = {
    # file: [(destination, address, sent, received, kind)]
    "chrome.har": [("shop.example.de:443", "192.0.2.10", 31, 24_511, "http"),
                   ("api.example.cn:8443", "198.51.100.7", 47, 812, "http"),  # request line keeps the query
                   ("v6.example.ru:443", "2001:db8::77", 40, 3_300, "http"),
                   ("push.example.com:443", "203.0.113.5", 42, 24, "websocket"),
                   ("upload.example.net:443", None, 39, 0, "http")],  # failed after it was sent: traffic
    "firefox.har": [("www.example.de:443", "192.0.2.10", 310, 5_340, "http"),
                    ("api.example.cn:443", "198.51.100.8", 438, 254, "http"),
                    ("[2001:db8::9]:8080", "2001:db8::9", 150, 122, "http"),
                    ("www.example.de:443", "192.0.2.10", 330, 180, "http")],  # a 304 revalidation
    "safari.har": [("shop.example.de:443", "192.0.2.10", 41, 1_063, "http"),
                   ("198.51.100.30:443", "198.51.100.30", 45, 0, "http")],
    "charles.har": [("storage.example.com:443", "203.0.113.40", 110, 62, "http"),
                    ("legacy.example.cn:8080", "198.51.100.12", 48, 40, "http")],
    "insomnia.har": [("localhost:3000", None, 53, 78, "http"),
                     ("api.example.cn:9443", None, 81, 0, "http"),
                     ("203.0.113.9:8080", "203.0.113.9", 24, 27, "http")],
    "fiddler.har": [("xn--bcher-kva.example.de:443", "192.0.2.15", 120, 103, "http")],
}


@pytest.mark.parametrize("name", sorted(HAR_EXPECTED))
def test_har_dialects(name: str) -> None:
    reader = open_input(str(DATA / name))
    flows = [f for f in reader.flows() if not isinstance(f, NotSent)]
    assert not [f for f in flows if isinstance(f, Problem)]
    got = [(f.destination, str(f.address) if f.address else None, f.bytes_sent, f.bytes_received, f.kind)
           for f in flows]
    assert got == HAR_EXPECTED[name]
    assert reader.format == "har"
    # no destination at all: Chrome's data: and blob: URLs
    assert reader.ignored == {"chrome.har": 2}.get(name, 0)


def test_har_details() -> None:
    chrome = flows_of(DATA / "chrome.har")
    assert chrome[1].url == "https://api.example.cn:8443/v2/track"  # port kept, query dropped
    assert chrome[1].flow_id == "chrome.har#4"  # entries 2 and 3 are data: and blob: URLs
    assert chrome[4].error == "net::ERR_CONNECTION_RESET"
    assert chrome[3].scheme == "wss"
    assert flows_of(DATA / "fiddler.har")[0].host_text == "bücher.example.de"
    assert flows_of(DATA / "safari.har")[1].address_source == "url-host"
    firefox_start = datetime(2026, 11, 26, 6, 20, tzinfo=timezone.utc).timestamp()  # 07:20+01:00
    assert flows_of(DATA / "firefox.har")[0].started == firefox_start


def test_entries_that_never_went_to_the_network_are_not_traffic() -> None:
    """Cache hits, service-worker answers and requests that failed before sending, as Chrome,
    Firefox and Safari mark them (or, Firefox, by what they lack), are NotSent with why and the
    browser's error; a 304 revalidation and a request reset after it was sent are traffic."""
    got = {name: [(n.index, n.destination, n.why, n.detail) for n in not_sent_of(DATA / name)]
           for name in ("chrome.har", "firefox.har", "safari.har", "charles.har", "insomnia.har", "fiddler.har")}
    assert got == {
        "chrome.har": [(5, "blocked.example.net:443", "failed", "net::ERR_BLOCKED_BY_CLIENT"),
                       (7, "shop.example.de:443", "cache", None), (8, "shop.example.de:443", "cache", None),
                       (9, "api.example.cn:8443", "service-worker", None),
                       (10, "api.example.cn:8443", "failed", "net::ERR_INTERNET_DISCONNECTED")],
        "firefox.har": [(3, "www.example.de:443", "cache", None), (4, "fonts.example.net:443", "cache", None),
                        (6, "tracker.example.cn:443", "failed", None)],
        "safari.har": [(1, "cdn.example.cn:443", "cache", None)],
        "charles.har": [], "insomnia.har": [], "fiddler.har": [],  # tools, not browsers: all recorded is traffic
    }
    assert not_sent_of(DATA / "chrome.har")[4].url == "https://api.example.cn:8443/v2/track"  # no query


@pytest.mark.parametrize("entry, why", [
    ({"serverIPAddress": "", "timings": {"blocked": 3, "send": 0, "wait": 0},
      "response": {"status": 0, "_error": "net::ERR_NAME_NOT_RESOLVED"}}, "failed"),
    ({"serverIPAddress": "192.0.2.1", "response": {"status": 0, "_error": "net::ERR_ABORTED"}}, None),  # connected
    ({"response": {"status": 0, "_transferSize": 310}}, None),  # bytes came back
    ({"response": {"status": 0}, "timings": {"connect": 20.5}}, None),  # a connection was set up
    ({"response": {"status": 200, "httpVersion": "HTTP/2"}, "timings": {}}, None),  # a version: it was received
    ({"response": {"status": 200, "httpVersion": ""}, "timings": {}}, "cache"),
    ({"response": {"status": 200, "httpVersion": ""}}, None),  # no timings recorded at all: no evidence
    ({"response": {"status": 200, "_fetchedViaServiceWorker": True}}, "service-worker"),
    ({"serverIPAddress": "192.0.2.1", "response": {"status": 200, "_fetchedViaServiceWorker": True}}, None),
    ({"_fromCache": "disk", "serverIPAddress": "192.0.2.1", "response": {"status": 200}}, "cache"),
    ({"_fromCache": ["disk"], "response": {"status": 200, "httpVersion": "h2"}}, None),
    ({}, None),  # no response: as recorded, traffic
])
def test_what_counts_as_never_sent(entry: dict, why: str | None) -> None:
    entry = {"request": {"method": "GET", "url": "https://a.example/x"}, **entry}
    got = extract.from_har_entry(entry, "t.har", 0, "t.har")
    assert (got.why if isinstance(got, NotSent) else None) == why


def test_fiddler_file_really_starts_with_a_bom() -> None:
    assert (DATA / "fiddler.har").read_bytes().startswith(b"\xef\xbb\xbf{")


def scan(data: bytes, chunk: int = 1 << 16, long_string: int = 1 << 16) -> list:
    return [entry for _, entry in HarScanner(io.BytesIO(data), chunk, long_string).entries()]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 4096])
def test_scanner_is_independent_of_chunk_boundaries(chunk: int) -> None:
    data = (DATA / "chrome.har").read_bytes()
    doc = json.loads(data)
    got = scan(data, chunk=chunk, long_string=1 << 30)
    assert got == doc["log"]["entries"]


def test_scanner_drops_long_strings_but_keeps_their_size() -> None:
    body = "x" * 300_000
    doc = {"log": {"entries": [{"request": {"url": "http://a.example/"},
                                "response": {"status": 200, "content": {"text": body, "size": -1}}}]}}
    got = scan(json.dumps(doc).encode(), chunk=4096, long_string=65_536)
    assert got[0]["response"]["content"]["text"] == {OMITTED: 300_000, PREFIX_KEY: "x" * 512}
    assert got[0]["request"]["url"] == "http://a.example/"


def test_omitted_strings_keep_their_start() -> None:
    url = "data:image/png;base64," + "A" * 100_000
    doc = {"log": {"entries": [{"request": {"url": url}}, {"request": {"url": "https://b.example/" + "é" * 40_000}}]}}
    got = scan(json.dumps(doc, ensure_ascii=False).encode(), chunk=1000, long_string=2000)
    assert got[0]["request"]["url"]["$prefix"].startswith("data:image/png;base64,AAAA")
    assert got[1]["request"]["url"]["$prefix"].startswith("https://b.example/éé")  # cut on a character
    flow = extract.from_har_entry(got[1], "x.har", 1, "x.har")
    assert flow.host == "b.example"
    with pytest.raises(extract.NotTraffic):
        extract.from_har_entry(got[0], "x.har", 0, "x.har")


def test_scanner_escapes_across_chunks() -> None:
    doc = {"log": {"pages": [{"title": 'a "quoted" \\ title'}], "entries": [{"k": '\\"' * 50 + "é"}], "x": [1, {"y": None}]}}
    data = json.dumps(doc, ensure_ascii=False).encode()
    for chunk in range(1, 12):
        assert scan(data, chunk=chunk, long_string=1 << 20) == doc["log"]["entries"]


@pytest.mark.parametrize("data, error", [
    (b"[1, 2]", NotHar),
    (b'{"log": 1}', NotHar),
    (b'{"log": {"version": "1.2"}}', NotHar),
    (b'{"log": {"entries": {}}}', NotHar),
    (b'{"log": {"entries": [{"a": 1} {"b": 2}]}}', HarSyntaxError),
    (b'{"log": {"entries": [{"a": 1}]}} trailing', HarSyntaxError),
    (b'{"log": {"entries": [{"a": [1}]}}', HarSyntaxError),
])
def test_scanner_errors(data: bytes, error: type) -> None:
    with pytest.raises(error):
        scan(data)


def test_scanner_reports_a_bad_entry_and_goes_on() -> None:
    entries = scan(b'{"log": {"entries": [{"a": "\\q"}, {"b": 2}]}}')
    assert isinstance(entries[0], HarSyntaxError) and entries[1] == {"b": 2}


def test_scanner_truncated_anywhere_raises_never_hangs() -> None:
    data = (DATA / "firefox.har").read_bytes()
    for cut in range(0, len(data) - 2, 37):
        with pytest.raises((HarSyntaxError, NotHar)):
            scan(data[:cut], chunk=256)


def test_har_entries_that_cannot_be_audited_are_skipped_not_fatal(tmp_path: Path) -> None:
    doc = {"log": {"entries": [{"request": {"url": "https://ok.example/"}, "serverIPAddress": "192.0.2.1"},
                               {"request": {"method": "GET"}},
                               {"request": {"url": "https://bad.example:99999/"}},
                               "not an entry",
                               {"request": {"url": "https://ok2.example/"}, "serverIPAddress": "not-an-ip"}]}}
    path = tmp_path / "odd.har"
    path.write_text(json.dumps(doc))
    items = read_all(path)
    assert [type(i).__name__ for i in items] == ["RecordedFlow", "Problem", "Problem", "Problem", "RecordedFlow"]
    assert [i.fatal for i in items if isinstance(i, Problem)] == [False, False, False]
    assert "request.url" in items[1].message
    assert items[4].address is None  # an unusable serverIPAddress is no address, never a guess


# -- corrupt flow files -----------------------------------------------------------------------

def test_truncated_flow_file_reports_position_and_keeps_earlier_flows(tmp_path: Path) -> None:
    data = (DATA / "flows.mitm").read_bytes()
    with open(DATA / "flows.mitm", "rb") as fo:
        offsets = []
        while True:
            offsets.append(fo.tell())
            if flowfile.read_record(fo) is None:
                break
    cut = offsets[5] + 100  # inside the sixth record
    path = tmp_path / "cut.mitm"
    path.write_bytes(data[:cut])
    items = read_all(path)
    assert len([i for i in items if isinstance(i, RecordedFlow)]) == 5
    problem = items[-1]
    assert isinstance(problem, Problem) and problem.fatal
    assert (problem.index, problem.offset) == (5, offsets[5])
    assert "file ends inside a record" in problem.message
    assert f"flow #6 at byte offset {offsets[5]}" in problem.text()


def test_garbage_appended_is_reported_after_the_last_good_flow(tmp_path: Path) -> None:
    data = (DATA / "flows.mitm").read_bytes()
    path = tmp_path / "garbage.mitm"
    path.write_bytes(data + b"\x00\xffthis is not a flow")
    items = read_all(path)
    assert len([i for i in items if isinstance(i, RecordedFlow)]) == 16
    assert items[-1].fatal and items[-1].offset == len(data) and items[-1].index == 16


def test_random_damage_never_escapes_as_an_exception(tmp_path: Path) -> None:
    data = bytearray((DATA / "flows.mitm").read_bytes())
    rng = random.Random(7)
    for i in range(40):
        damaged = bytearray(data)
        for _ in range(3):
            damaged[rng.randrange(200, len(damaged))] = rng.randrange(256)
        path = tmp_path / f"d{i}.mitm"
        path.write_bytes(bytes(damaged))
        try:
            items = read_all(path)
        except InputError as e:  # damage in the first flow: the file cannot be used at all
            assert "first flow" in str(e)
            continue
        assert all(isinstance(x, (RecordedFlow, Problem)) for x in items)


# -- user errors ------------------------------------------------------------------------------

def test_user_errors_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "data.json").write_text('{"items": []}')
    (tmp_path / "trunc.har").write_text('{"log": {"version": "1.2", "creator": {"na')
    newer = io.BytesIO()
    state = af.test_flows()[0].get_state()
    state["version"] = 99
    tnetstring.dump(state, newer)
    (tmp_path / "newer.mitm").write_bytes(newer.getvalue())
    (tmp_path / "damaged.mitm").write_bytes(b"12:5:hello,1:x#}")
    import gzip

    (tmp_path / "c.har.gz").write_bytes(gzip.compress(b'{"log": {"entries": []}}'))
    cases = {
        "missing.mitm": "no such file",
        ".": "is a directory",
        "notes.txt": "not a mitmproxy flow file or HAR",
        "damaged.mitm": "damaged mitmproxy flow file: its first flow (at byte 0) cannot be read",
        "data.json": 'not a HAR file: there is no "log" object',
        "trunc.har": "not valid JSON at byte offset",
        "newer.mitm": "unsupported flow format version 99, newer than this mitmproxy reads ("
                      f"{MITMPROXY} cannot read files with flow format version 99, please update mitmproxy); "
                      "geogate audit reads flow format versions 11 to 21",
        "c.har.gz": "gzip-compressed",
    }
    for name, message in cases.items():
        with pytest.raises(InputError) as e:
            open_input(str(tmp_path / name))
        assert message in str(e.value) and "\n" not in str(e.value), name


@pytest.mark.parametrize("version, shown", [(10, "10"), (4, "4"), ([0, 17], "0.17"), ([3, 0], "3.0")])
def test_an_older_format_version_is_unsupported_not_damaged(tmp_path: Path, version, shown: str) -> None:
    state = af.test_flows()[0].get_state()
    state["version"] = version
    path = tmp_path / "old.mitm"
    with open(path, "wb") as fo:
        tnetstring.dump(state, fo)
    with pytest.raises(InputError) as e:
        open_input(str(path))
    message = str(e.value)
    assert f"unsupported flow format version {shown}," in message
    assert "reads flow format versions 11 to 21" in message
    assert "damaged" not in message and "malformed" not in message


def test_an_unsupported_version_after_supported_flows_keeps_them(tmp_path: Path) -> None:
    state = af.test_flows()[0].get_state()
    state["version"] = 10
    buf = io.BytesIO()
    tnetstring.dump(state, buf)
    path = tmp_path / "mixed.mitm"
    path.write_bytes(af.legacy_file_bytes(11) + buf.getvalue())
    items = read_all(path)
    assert all(not isinstance(i, Problem) for i in items[:-1]) and len(items) == 7
    assert items[-1].fatal and "unsupported flow format version 10," in items[-1].message


def test_empty_flow_file_has_no_flows(tmp_path: Path) -> None:
    (tmp_path / "empty.mitm").write_bytes(b"")
    assert read_all(tmp_path / "empty.mitm") == []
