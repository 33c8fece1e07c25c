"""The addon's hooks in-process (mitmproxy's taddons/tflow): where each path is decided, how it
is pinned or refused, fail-closed behaviour, reload, the decision log, the replay glue."""

from __future__ import annotations

import json
import logging
import ssl
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import addonmanager
from mitmproxy import connection
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy import options as moptions
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.proxy import layer
from mitmproxy.proxy import layers
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from geogate.core.errors import GeogateError
from geogate.core.record import decision_record
from geogate.core.record import summary_line
from geogate.policy.state import GateState
from geogate.proxy import addon as proxy_module
from geogate.proxy.addon import GeoGate
from geogate.proxy.decision_log import DecisionLog
from geogate.proxy.flows import CarriedDecisions
from geogate.proxy.flows import client_text
from geogate.proxy.flows import host_of_header
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import DEAD_RESOLVER
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

TRUSTED = "  - name: trusted\n    action: allow\n    hosts: [trusted.test]\n"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    hosts = write_hosts(tmp_path / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP,
                                             "trusted.test": ALLOWED_IP})
    hosts.write_text(hosts.read_text() + f"{ALLOWED_IP} mixed.test\n{BLOCKED_IP} mixed.test\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n")
    monkeypatch.setenv("GEOGATE_HOSTS_FILE", str(hosts))
    monkeypatch.setenv("GEOGATE_RESOLV_CONF", str(resolv))
    return SimpleNamespace(tmp=tmp_path, hosts=hosts, db=write_db(tmp_path / "geo.mmdb"),
                           policy=write_policy(tmp_path / "policy.yaml", before=TRUSTED),
                           log=tmp_path / "decisions.jsonl")


@pytest.fixture
async def gate(files):
    gg = GeoGate()
    with taddons.context(gg) as tctx:
        tctx.configure(gg, geogate_policy=str(files.policy), geogate_db=[str(files.db)],
                       geogate_log=str(files.log), geogate_resolve_timeout="0.5",
                       geogate_reload_settle="0")  # the reload timing is tested in test_reload.py
        yield SimpleNamespace(gg=gg, tctx=tctx, files=files)
        gg.done()


async def hook(fn, arg) -> None:
    """Call a hook the way mitmproxy does: await what it returns, if anything."""
    pending = fn(arg)
    if pending is not None:
        await pending


def records(files) -> list[dict]:
    return [json.loads(line) for line in files.log.read_text().splitlines()] if files.log.exists() else []


def client(mode: str = "regular", sni: str | None = None) -> connection.Client:
    c = tflow.tclient_conn()
    c.proxy_mode = ProxyMode.parse(mode)
    c.sni = sni
    return c


def connect_flow(host: str, port: int = 443) -> tflow.http.HTTPFlow:
    f = tflow.tflow(client_conn=client())
    f.request.method, f.request.host, f.request.port = "CONNECT", host, port
    f.server_conn = connection.Server(address=None)
    return f


def proxy_request(url_host: str, port: int = 80) -> tflow.http.HTTPFlow:
    f = tflow.tflow(client_conn=client())
    f.request.scheme, f.request.host, f.request.port = "http", url_host, port
    f.request.host_header = f"{url_host}:{port}"
    f.server_conn = connection.Server(address=None)  # an explicit-proxy request: upstream not chosen yet
    return f


def hook_data(host: str, port: int, c: connection.Client | None = None) -> server_hooks.ServerConnectionHookData:
    return server_hooks.ServerConnectionHookData(client=c or client(),
                                                 server=connection.Server(address=(host, port)))


# -- options ----------------------------------------------------------------------------------------

async def test_options_survive_a_script_reload(gate):
    # mitmproxy re-creates an option at its default when a reloaded script's help text differs
    loader = addonmanager.Loader(gate.tctx.master)
    GeoGate().load(loader)
    assert gate.tctx.options.geogate_policy == str(gate.files.policy)
    assert gate.tctx.options.geogate_db == [str(gate.files.db)]
    for name in ("geogate_policy", "geogate_db", "geogate_log", "geogate_log_urls", "geogate_intercept",
                 "geogate_resolve_timeout", "geogate_reload_settle", "geogate_dns_cache_size", "geogate_dns_cache_bytes",
                 "geogate_metrics", "geogate_revoke"):
        assert "\n" not in gate.tctx.options._options[name].help


@pytest.mark.parametrize("option, value, message", [
    ("geogate_resolve_timeout", "soon", "not a number of seconds"),
    ("geogate_resolve_timeout", "0", "not a number of seconds"),
    ("mode", ["upstream:http://127.0.0.1:9"], "cannot run in upstream mode"),
    ("geogate_policy", "/nonexistent/policy.yaml", "does not exist"),
    ("geogate_log", "/nonexistent/dir/log.jsonl", "cannot open decision log"),
    ("geogate_revoke", "maybe", "geogate_revoke: `maybe` is not on or off"),
    ("geogate_log_urls", "all", "not one of path, full, none"),
])
async def test_bad_options(gate, caplog, option, value, message):
    gate.gg._running = True  # at run time the change is refused and rolled back
    with pytest.raises(exceptions.OptionsError, match=message):
        gate.tctx.configure(gate.gg, **{option: value})
    gate.gg._running = False  # at startup: one error line (mitmdump then exits), no exception
    with caplog.at_level(logging.ERROR):
        gate.tctx.configure(gate.gg, **{option: value})
    assert message in caplog.text


async def test_decimal_resolve_timeout(gate):
    gate.tctx.configure(gate.gg, geogate_resolve_timeout="1.5")
    assert gate.gg.resolver.timeout == 1.5


# -- CONNECT: decided in http_connect, pinned in server_connect -------------------------------------

async def test_blocked_connect_gets_403_and_is_never_dialled(gate):
    f = connect_flow("blocked.test")
    await hook(gate.gg.http_connect, f)
    assert f.response.status_code == 403
    assert f.response.headers["Proxy-Status"] == 'geogate; error=destination_ip_prohibited; details="country=KP; rule=doj"'
    assert b"blocked.test" in f.response.content and BLOCKED_IP.encode() in f.response.content
    assert f.marked == ":no_entry:" and "rule doj" in f.comment
    assert f.metadata["geogate"]["action"] == "block" and f.metadata["geogate"]["flow_id"] == f.id
    assert gate.gg.carried.get(f.client_conn.id, ("blocked.test", 443)) is None
    assert [r["action"] for r in records(gate.files)] == ["block"]


async def test_allowed_connect_is_pinned_without_a_second_decision(gate):
    f = connect_flow("allowed.test")
    await hook(gate.gg.http_connect, f)
    assert f.response is None and f.metadata["geogate"]["action"] == "allow"
    data = hook_data("allowed.test", 443, f.client_conn)
    await gate.gg.server_connect(data)
    assert data.server.error is None
    assert data.server.address == (ALLOWED_IP, 443) and data.server.sni == "allowed.test"
    # a reconnect inside the tunnel dials the pinned address: carried, not decided again
    again = hook_data(ALLOWED_IP, 443, f.client_conn)
    await gate.gg.server_connect(again)
    assert again.server.error is None and again.server.address == (ALLOWED_IP, 443)
    assert len(records(gate.files)) == 1


async def test_an_unchecked_address_on_a_decided_connection_is_decided(gate):
    f = connect_flow("allowed.test")
    await hook(gate.gg.http_connect, f)
    other = hook_data(BLOCKED_IP, 443, f.client_conn)
    await gate.gg.server_connect(other)
    assert other.server.error and "rule doj" in other.server.error
    assert [r["action"] for r in records(gate.files)] == ["allow", "block"]


# -- plain HTTP: decided and pinned in requestheaders -----------------------------------------------

async def test_plain_http_is_pinned_in_requestheaders(gate):
    f = proxy_request("allowed.test", 8000)
    await hook(gate.gg.requestheaders, f)
    assert f.response is None
    assert f.request.host == ALLOWED_IP and f.request.host_header == "allowed.test:8000"
    rec = f.metadata["geogate"]
    assert rec["url"] == "http://allowed.test:8000/path" and rec["address"] == ALLOWED_IP
    data = hook_data(ALLOWED_IP, 8000, f.client_conn)
    await gate.gg.server_connect(data)
    assert data.server.error is None and len(records(gate.files)) == 1


async def two_requests_on_one_client(gate, second_path: str):
    """Two plain-HTTP requests for allowed.test:8000 from one client connection, the second for
    `second_path`, through requestheaders; (client, first, second)."""
    c = client()
    first, second = proxy_request("allowed.test", 8000), proxy_request("allowed.test", 8000)
    first.client_conn = second.client_conn = c
    second.request.path = second_path
    for f in (first, second):
        await hook(gate.gg.requestheaders, f)
    return c, first, second


async def test_repeated_plain_http_requests_reuse_the_decision_with_their_own_records(gate, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(proxy_module.time, "monotonic", lambda: clock[0])
    decisions = []
    real_decide = GateState.decide
    monkeypatch.setattr(GateState, "decide", lambda self, *a, **k: decisions.append(a) or real_decide(self, *a, **k))
    c, first, second = await two_requests_on_one_client(gate, "/other")
    assert len(decisions) == 1  # one decision, two requests
    assert second.request.host == ALLOWED_IP and second.request.host_header == "allowed.test:8000"
    a, b = records(gate.files)
    assert (a["flow_id"], b["flow_id"]) == (first.id, second.id) and b["url"] == "http://allowed.test:8000/other"
    assert {k: v for k, v in a.items() if k not in ("ts", "flow_id", "url")} == \
        {k: v for k, v in b.items() if k not in ("ts", "flow_id", "url")}
    assert b == second.metadata["geogate"]

    # what the reuse must never outlive: the name's resolution, another client or user, the policy
    clock[0] += proxy_module.NAME_REUSE_SECONDS + 0.1
    await hook(gate.gg.requestheaders, proxy_request("allowed.test", 8000))
    assert len(decisions) == 2
    other = proxy_request("allowed.test", 8000)
    other.client_conn.peername = ("192.0.2.7", 5555)
    await hook(gate.gg.requestheaders, other)
    assert len(decisions) == 3
    authed = proxy_request("allowed.test", 8000)
    authed.client_conn.peername = c.peername
    authed.metadata["proxyauth"] = ("alice", "secret")
    await hook(gate.gg.requestheaders, authed)
    assert len(decisions) == 4 and records(gate.files)[-1]["user"] == "alice"
    write_policy(gate.files.policy, name="v2", extra="  - name: no-de\n    action: block\n    countries: [DE]\n")
    assert poll_until_changed(gate.gg)
    again = proxy_request("allowed.test", 8000)
    again.client_conn = c
    await hook(gate.gg.requestheaders, again)
    assert len(decisions) == 5 and again.response.status_code == 403 and records(gate.files)[-1]["policy"]["name"] == "v2"


@pytest.mark.parametrize("mode, host, scheme, expect", [
    ("enforce", "allowed.test", "http", "pinned"),
    ("enforce", "allowed.test", "https", "named"),  # the TLS server name stays; server_connect pins
    ("enforce", "blocked.test", "http", "403"),
    ("monitor", "blocked.test", "http", "pinned, marked"),
])
async def test_a_repeated_plain_http_request_is_treated_as_the_first(gate, mode, host, scheme, expect):
    # a repeat reuses the recent decision instead of deciding again: every request of the run
    # must end the same way
    if mode == "monitor":
        write_policy(gate.files.policy, name="watch", mode="monitor")
        assert poll_until_changed(gate.gg)
    c = client()
    flows = [proxy_request(host, 8000) for _ in range(3)]
    outcomes = []
    for i, f in enumerate(flows):
        f.client_conn, f.request.scheme, f.request.path = c, scheme, f"/{i}"
        await hook(gate.gg.requestheaders, f)
        outcomes.append((f.response.status_code if f.response else None, f.request.host, f.marked,
                         f.comment, f.metadata["geogate"]["url"]))
    pinned = ALLOWED_IP if host == "allowed.test" else BLOCKED_IP
    first = {"pinned": (None, pinned, "", ""), "named": (None, host, "", ""), "403": (403, host, ":no_entry:"),
             "pinned, marked": (None, pinned, ":warning:")}[expect]
    assert outcomes[0][:len(first)] == first
    assert [o[:4] for o in outcomes] == [outcomes[0][:4]] * 3
    assert [o[4] for o in outcomes] == [f"{scheme}://{host}:8000/{i}" for i in range(3)]
    assert [r["flow_id"] for r in records(gate.files)] == [f.id for f in flows]
    if expect != "403":
        address = pinned if expect != "named" else host
        assert gate.gg.carried.get(c.id, (address, 8000)) is not None


async def test_a_connect_after_a_plain_request_to_the_same_place_has_no_url_of_that_request(gate):
    # both kinds of request share the recent decision for a host and port; only the record's
    # common part is shared
    c = client()
    plain = proxy_request("allowed.test", 443)
    plain.client_conn = c
    await hook(gate.gg.requestheaders, plain)
    tunnel = connect_flow("allowed.test", 443)
    tunnel.client_conn = c
    await hook(gate.gg.http_connect, tunnel)
    first, second = records(gate.files)
    assert first["url"] == "http://allowed.test:443/path" and "url" not in second
    assert second["flow_id"] == tunnel.id and tunnel.metadata["geogate"] == second
    again = proxy_request("allowed.test", 443)
    again.client_conn = c
    again.request.path = "/next"
    await hook(gate.gg.requestheaders, again)
    assert records(gate.files)[-1]["url"] == "http://allowed.test:443/next"


async def test_repeated_connects_reuse_the_decision_and_a_block_stays_a_block(gate, monkeypatch):
    decisions = []
    real_decide = GateState.decide
    monkeypatch.setattr(GateState, "decide", lambda self, *a, **k: decisions.append(a) or real_decide(self, *a, **k))
    flows = [connect_flow("blocked.test") for _ in range(3)]
    for f in flows:
        await hook(gate.gg.http_connect, f)
        assert f.response.status_code == 403 and "country=KP" in f.response.headers["Proxy-Status"]
    assert len(decisions) == 1
    assert [r["flow_id"] for r in records(gate.files)] == [f.id for f in flows]


async def test_plain_http_blocked_gets_403(gate):
    f = proxy_request("blocked.test")
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and "country=KP" in f.response.headers["Proxy-Status"]
    assert f.request.host == "blocked.test" and f.marked == ":no_entry:"


async def test_ip_spelled_in_hex_is_checked_and_dialled_as_that_address(gate):
    f = proxy_request("0x7f.0.0x201")  # inet_aton: 127.0.2.1
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and f.metadata["geogate"]["address"] == BLOCKED_IP


async def test_addresses_any_pins_to_the_allowed_address(gate):
    write_policy(gate.files.policy, settings="addresses: any\n")
    assert poll_until_changed(gate.gg)
    f = proxy_request("mixed.test")
    await hook(gate.gg.requestheaders, f)
    assert f.response is None and f.request.host == ALLOWED_IP


async def test_name_with_a_blocked_address_is_blocked_under_addresses_all(gate):
    f = proxy_request("mixed.test")
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and f.metadata["geogate"]["address"] == BLOCKED_IP


# -- server_connect: SOCKS5, transparent, upstream --------------------------------------------------

async def test_socks5_name_is_resolved_once_and_pinned(gate):
    ok = hook_data("allowed.test", 80, client("socks5"))
    await gate.gg.server_connect(ok)
    assert ok.server.address == (ALLOWED_IP, 80) and ok.server.error is None
    bad = hook_data("blocked.test", 80, client("socks5"))
    await gate.gg.server_connect(bad)
    assert "geogate: blocked blocked.test -> 127.0.2.1 (KP, rule doj)" == bad.server.error
    recs = records(gate.files)
    assert [(r["mode"], r["action"]) for r in recs] == [("socks5", "allow"), ("socks5", "block")]
    assert recs[0]["flow_id"] == ok.client.id  # no flow: the client connection's id


async def test_transparent_checks_the_original_address_and_treats_sni_as_a_claim(gate):
    # the SNI names a host the policy trusts, but the connection goes to a KP address
    lie = hook_data(BLOCKED_IP, 443, client("transparent", sni="trusted.test"))
    await gate.gg.server_connect(lie)
    assert lie.server.error and lie.server.address == (BLOCKED_IP, 443)
    rec = records(gate.files)[-1]
    assert (rec["host"], rec["sni"], rec["host_mismatch"], rec["rule"]) == ("trusted.test", "trusted.test", True, "doj")
    # a claim that does resolve to the destination lets the hosts rule match
    true = hook_data(ALLOWED_IP, 443, client("transparent", sni="trusted.test"))
    await gate.gg.server_connect(true)
    rec = records(gate.files)[-1]
    assert true.server.error is None and (rec["host_mismatch"], rec["rule"]) == (False, "trusted")
    # no claim at all: the address alone decides
    bare = hook_data(ALLOWED_IP, 8443, client("transparent"))
    await gate.gg.server_connect(bare)
    rec = records(gate.files)[-1]
    assert (rec["host"], rec["host_mismatch"], rec["mode"]) == (ALLOWED_IP, False, "transparent")


async def test_transparent_http_with_lazy_connections_is_decided_in_requestheaders(gate):
    # connection_strategy=lazy: the request comes before the upstream connection is opened
    c = client("transparent")
    f = tflow.tflow(client_conn=c, server_conn=connection.Server(address=(BLOCKED_IP, 80)))
    f.request.host, f.request.port, f.request.host_header = BLOCKED_IP, 80, "trusted.test"
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and "country=KP" in f.response.headers["Proxy-Status"]
    rec = f.metadata["geogate"]
    assert (rec["host"], rec["host_mismatch"], rec["address"]) == ("trusted.test", True, BLOCKED_IP)
    ok = tflow.tflow(client_conn=c, server_conn=connection.Server(address=(ALLOWED_IP, 80)))
    ok.request.host, ok.request.port, ok.request.host_header = ALLOWED_IP, 80, "trusted.test:80"
    await hook(gate.gg.requestheaders, ok)
    assert ok.response is None and ok.metadata["geogate"]["rule"] == "trusted"
    data = hook_data(ALLOWED_IP, 80, c)
    await gate.gg.server_connect(data)  # carried: no second decision
    assert data.server.error is None and len(records(gate.files)) == 2


async def test_transparent_claim_that_does_not_resolve_is_a_mismatch(gate):
    data = hook_data(ALLOWED_IP, 443, client("transparent", sni="nowhere.test"))
    await gate.gg.server_connect(data)
    rec = records(gate.files)[-1]
    assert rec["host_mismatch"] is True and rec["action"] == "allow"  # DE by address


async def test_upstream_proxy_connection_is_refused(gate):
    data = hook_data("allowed.test", 443)
    data.server.via = ("http", ("127.0.0.1", 3128))
    await gate.gg.server_connect(data)
    assert "upstream proxy" in data.server.error


async def test_connection_already_refused_is_left_alone(gate):
    data = hook_data("allowed.test", 443)
    data.server.error = "Request destination unknown."
    await gate.gg.server_connect(data)
    assert data.server.error == "Request destination unknown." and records(gate.files) == []


# -- TLS passthrough ---------------------------------------------------------------------------------

async def test_tls_passes_through_unless_intercept_is_on(gate):
    data = SimpleNamespace(ignore_connection=False, context=SimpleNamespace(client=client()))
    await gate.gg.tls_clienthello(data)
    assert data.ignore_connection is True
    gate.tctx.configure(gate.gg, geogate_intercept=True)
    data = SimpleNamespace(ignore_connection=False, context=SimpleNamespace(client=client()))
    await gate.gg.tls_clienthello(data)
    assert data.ignore_connection is False


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def next_layer_for(data: bytes, transport: str = "tcp") -> layer.NextLayer:
    """A transparent-mode connection whose client has sent `data`."""
    c = client("transparent")
    c.transport_protocol = transport
    context = Context(c, moptions.Options())
    modes.TransparentProxy(context)
    nl = layer.NextLayer(context)
    nl.data_client = lambda: data
    return nl


def passthrough_hooks(gg: GeoGate) -> list:
    return [gg._passthrough] if gg._passthrough is not None else []


async def test_eager_connections_relay_tls_before_any_tls_layer_is_built(gate):
    # the default strategy: the connection was decided in server_connect already
    gate.tctx.master.addons.add(NextLayer())
    gate.gg._configure_optional_hooks(SimpleNamespace(connection_strategy="eager"))
    assert passthrough_hooks(gate.gg) != []
    assert not hasattr(gate.gg, "addons")  # no sub-addon for mitmproxy to walk on every event
    nl = next_layer_for(client_hello())
    gate.gg.next_layer(nl)
    assert type(nl.layer) is layers.TCPLayer and nl.layer.flow is None  # relayed, no flow recorded
    assert [type(x).__name__ for x in nl.context.layers] == ["TransparentProxy", "TCPLayer"]
    assert not nl.context.client.tls and not nl.context.server.tls  # nothing half set up
    # anything else is mitmproxy's own choice
    nl = next_layer_for(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
    gate.gg.next_layer(nl)
    assert type(nl.layer) is layers.HttpLayer


def test_the_script_module_is_the_addon_with_the_hooks_of_one_geogate():
    from mitmproxy.addons.script import load_script

    from geogate.proxy.addon import hook_names

    module = load_script(str(Path(__file__).resolve().parents[1] / "addons" / "geogate_addon.py"))
    assert module.name == "geogate"  # what ctx.master.addons.get("geogate") finds
    gg = module.requestheaders.__self__
    assert isinstance(gg, GeoGate)
    expected = {"load", "configure", "running", "done", "http_connect", "requestheaders", "error",
                "server_connect", "server_connected", "server_disconnected", "tls_clienthello", "client_disconnected",
                    "websocket_start",
                    "next_layer"}
    assert set(hook_names(gg)) == expected
    for hook in expected:
        bound = getattr(module, hook)
        assert bound.__self__ is gg and bound.__func__ is getattr(GeoGate, hook)
    # nothing below the module for mitmproxy to walk on every event...
    assert not hasattr(module, "addons") and not hasattr(gg, "addons")
    assert [type(a).__name__ for a in addonmanager.traverse([module])] == ["module"]
    # ...until a set-up needs sub-addons, which then hang from the module, not from the GeoGate
    gg._configure_optional_hooks(SimpleNamespace(rfile="flows.mitm", connection_strategy="lazy"))
    assert [type(a).__name__ for a in module.addons] == ["ReplayHooks", "LazyHooks"]
    assert [type(a).__name__ for a in addonmanager.traverse([module])] == ["module", "ReplayHooks", "LazyHooks"]
    assert not hasattr(gg, "addons")
    gg._configure_optional_hooks(SimpleNamespace(rfile=None, connection_strategy="eager"))
    assert not hasattr(module, "addons")


def test_serving_from_a_namespace_moves_sub_addons_already_configured():
    gg = GeoGate()
    gg._configure_optional_hooks(SimpleNamespace(rfile="flows.mitm"))
    namespace: dict = {}
    gg.serve_from(namespace)
    assert [type(a).__name__ for a in namespace["addons"]] == ["ReplayHooks"] and not hasattr(gg, "addons")


async def test_tls_layers_stay_when_intercepting_or_connections_are_lazy(gate):
    # lazy connections need the SNI the ClientHello carries; intercepting needs the TLS layers
    gate.gg._configure_optional_hooks(SimpleNamespace(connection_strategy="lazy"))
    assert passthrough_hooks(gate.gg) == []
    gate.gg._configure_optional_hooks(SimpleNamespace(connection_strategy="eager"))
    assert passthrough_hooks(gate.gg) != []
    gate.tctx.configure(gate.gg, geogate_intercept=True)
    assert passthrough_hooks(gate.gg) == []


async def intercepted_request(gate, host: str = "allowed.test") -> http.HTTPFlow:
    """A CONNECT to `host` decided with --intercept, and a request inside its tunnel (not yet
    hooked), as mitmproxy hands them over."""
    gate.tctx.configure(gate.gg, geogate_intercept=True)
    c = client()
    f = connect_flow(host)
    f.client_conn = c
    await hook(gate.gg.http_connect, f)
    await gate.gg.server_connect(hook_data(host, 443, c))
    inner = tflow.tflow(client_conn=c, server_conn=connection.Server(address=(ALLOWED_IP, 443)))
    inner.request.scheme, inner.request.host, inner.request.port = "https", ALLOWED_IP, 443
    return inner


async def test_intercepted_requests_carry_the_decision_and_log_their_url(gate):
    inner = await intercepted_request(gate)
    inner.request.host_header = "allowed.test"
    await hook(gate.gg.requestheaders, inner)
    rec = inner.metadata["geogate"]
    assert rec["event"] == "request" and rec["url"] == "https://allowed.test/path" and rec["flow_id"] == inner.id
    assert [r["event"] for r in records(gate.files)] == ["decision", "request"]


# -- fail closed ----------------------------------------------------------------------------------------

async def test_a_raising_hook_refuses_the_connection(gate, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(GateState, "decide", explode)
    f = connect_flow("allowed.test")
    await hook(gate.gg.http_connect, f)
    assert f.response.status_code == 403 and "proxy_internal_error" in f.response.headers["Proxy-Status"]
    f = proxy_request("allowed.test")
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and f.request.host == "allowed.test"
    data = hook_data("allowed.test", 443, client("socks5"))
    await gate.gg.server_connect(data)
    assert "fail closed" in data.server.error and data.server.address == ("allowed.test", 443)


async def test_a_hook_raising_before_it_would_await_refuses_the_connection(gate, monkeypatch):
    await hook(gate.gg.requestheaders, proxy_request("allowed.test"))  # decided: the next one reuses it
    monkeypatch.setattr(proxy_module, "repeat_record", lambda *a: 1 / 0)
    f = proxy_request("allowed.test")
    assert gate.gg.requestheaders(f) is None  # failed synchronously, nothing left to await
    assert f.response.status_code == 403 and "proxy_internal_error" in f.response.headers["Proxy-Status"]
    assert f.request.host == "allowed.test"  # never pinned


async def test_a_raising_resolver_refuses_the_connection(gate, monkeypatch):
    def explode_now(name):
        raise OSError("resolver exploded")

    async def explode(name):
        explode_now(name)

    monkeypatch.setattr(gate.gg.resolver, "known", explode_now)
    monkeypatch.setattr(gate.gg.resolver, "query", explode)
    data = hook_data("allowed.test", 443, client("socks5"))
    await gate.gg.server_connect(data)
    assert "fail closed" in data.server.error


async def test_an_unwritable_log_refuses_the_connection(gate, monkeypatch, caplog):
    def full(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gate.gg.log, "write", full)
    data = hook_data("allowed.test", 443, client("socks5"))
    await gate.gg.server_connect(data)
    # the client is told geogate could not decide; the cause is in the event log, under the same id
    assert "fail closed" in data.server.error and "No space" not in data.server.error
    error_id = data.server.error.rsplit(" ", 1)[1]
    assert any(error_id in r.message and "No space left" in r.message for r in caplog.records)


async def test_unreachable_resolver_blocks(gate):
    data = hook_data("nowhere.test", 443, client("socks5"))
    await gate.gg.server_connect(data)
    rec = records(gate.files)[-1]
    assert data.server.error and rec["rule"] == "resolve-error" and rec["action"] == "block"


async def test_no_policy_loaded_refuses_everything(files, caplog):
    gg = GeoGate()
    with taddons.context(gg) as tctx:
        with caplog.at_level(logging.ERROR):
            tctx.configure(gg, geogate_policy="/nonexistent.yaml", geogate_db=[str(files.db)])
        data = hook_data("allowed.test", 443, client("socks5"))
        await gg.server_connect(data)
        assert "fail closed" in data.server.error


# -- reload -------------------------------------------------------------------------------------------

def poll_until_changed(gg, tries: int = 3) -> bool:
    return any(gg.live.poll() for _ in range(tries))


async def test_policy_change_applies_and_broken_policy_keeps_the_last_good(gate, caplog):
    write_policy(gate.files.policy, name="v2", extra="  - name: no-de\n    action: block\n    countries: [DE]\n")
    assert poll_until_changed(gate.gg)
    data = hook_data("allowed.test", 80, client("socks5"))
    await gate.gg.server_connect(data)
    assert "rule no-de" in data.server.error
    gate.files.policy.write_text("version: 1\nname: v3\ndefault: allw\n")
    with caplog.at_level(logging.ERROR, logger="geogate"):
        for _ in range(6):
            assert not gate.gg.live.poll()
    errors = [r.getMessage() for r in caplog.records if "reload failed" in r.getMessage()]
    assert len(errors) == 1 and "still using policy v2" in errors[0] and "allw" in errors[0]
    assert gate.gg.current_state().policy.name == "v2"


async def test_deleted_database_blocks_until_it_is_back(gate):
    saved = gate.files.db.read_bytes()
    gate.files.db.unlink()
    assert poll_until_changed(gate.gg)
    data = hook_data("allowed.test", 80, client("socks5"))
    await gate.gg.server_connect(data)
    rec = records(gate.files)[-1]
    assert data.server.error and rec["rule"] == "error" and "missing" in rec["reason"]
    gate.files.db.write_bytes(saved)
    assert poll_until_changed(gate.gg)
    data = hook_data("allowed.test", 80, client("socks5"))
    await gate.gg.server_connect(data)
    assert data.server.error is None


async def test_corrupt_database_keeps_the_last_good(gate):
    gate.files.db.write_bytes(b"not an mmdb")
    for _ in range(3):
        assert not gate.gg.live.poll()
    data = hook_data("allowed.test", 80, client("socks5"))
    await gate.gg.server_connect(data)
    assert data.server.error is None


async def test_monitor_mode_never_blocks_but_records_would_block(gate):
    write_policy(gate.files.policy, name="watch", mode="monitor")
    assert poll_until_changed(gate.gg)
    f = proxy_request("blocked.test")
    await hook(gate.gg.requestheaders, f)
    rec = f.metadata["geogate"]
    assert f.response is None and f.request.host == BLOCKED_IP
    assert (rec["action"], rec["enforced"], rec["would_block"]) == ("allow", False, True)
    assert f.marked == ":warning:"


# -- decision log ---------------------------------------------------------------------------------------

@pytest.mark.any_records  # the log's file handling, with placeholder records
def test_decision_log_follows_rotation(tmp_path):
    path = tmp_path / "d.jsonl"
    log = DecisionLog(str(path))
    log.write({"n": 1})
    path.rename(tmp_path / "d.jsonl.1")  # logrotate without a signal
    log.write({"n": 2})
    assert path.read_text() == '{"n":2}\n' and (tmp_path / "d.jsonl.1").read_text() == '{"n":1}\n'
    (tmp_path / "d.jsonl.2").write_text(path.read_text())
    path.write_text("")  # copytruncate-style: same inode, nothing to notice...
    log.reopen()  # ...but SIGHUP asks for a reopen anyway
    log.write({"n": 3})
    assert path.read_text() == '{"n":3}\n'
    log.close()
    with pytest.raises(GeogateError, match="cannot open decision log"):
        DecisionLog(str(tmp_path / "missing-dir" / "d.jsonl"))


# -- replayed flows -----------------------------------------------------------------------------------

async def test_replayed_flows_go_to_the_replay_audit_and_are_never_killed(gate, capsys):
    seen = []

    class FakeReplayAudit:
        def __init__(self, source):
            pass

        def evaluate(self, flow, state, log):
            seen.append((flow.id, state.policy.name))

        def summary_text(self):
            return "replay summary: 1 flow"

    gate.gg._make_replay = FakeReplayAudit
    f = tflow.tflow(resp=True, live=False)
    await gate.tctx.cycle(gate.gg, f)
    assert seen == []  # not reading a file: the replay hook is not even installed
    gate.gg._configure_optional_hooks(types.SimpleNamespace(rfile="flows.mitm"))
    await gate.tctx.cycle(gate.gg, f)
    assert seen == [(f.id, "test")] and f.error is None and f.response.status_code == 200
    assert records(gate.files) == []  # a replay is an audit, not live decisions
    gate.gg.done()
    assert "replay summary: 1 flow" in capsys.readouterr().out


async def test_replayed_flows_without_a_replay_audit_are_left_alone(gate):
    gate.gg._configure_optional_hooks(types.SimpleNamespace(rfile="flows.mitm"))
    f = tflow.tflow(resp=True, live=False)
    await gate.tctx.cycle(gate.gg, f)
    assert f.error is None and f.response.status_code == 200 and gate.gg._replay is None


def test_the_mitmproxy_script_gives_the_addon_the_replay_audit():
    from geogate import addon
    from geogate.audit.replay import ReplayAudit

    namespace: dict = {}
    addon.serve(namespace)
    assert namespace["name"] == "geogate"
    gate = next(v.__self__ for v in namespace.values() if hasattr(v, "__self__"))
    assert gate._make_replay is ReplayAudit


# -- small pure pieces ----------------------------------------------------------------------------------

def test_carried_decisions_are_per_client_and_forgotten():
    carried = CarriedDecisions()
    d = object()
    carried.remember("c1", ("Example.TEST", 443), d)
    assert carried.get("c1", ("example.test", 443)) is d
    assert carried.get("c2", ("example.test", 443)) is None and carried.get("c1", None) is None
    carried.forget("c1")
    assert carried.get("c1", ("example.test", 443)) is None and len(carried) == 0


@pytest.mark.parametrize("header, host", [("a.test", "a.test"), ("a.test:8080", "a.test"),
                                          ("[2001:db8::1]:443", "2001:db8::1"), ("[::1]", "::1")])
def test_host_of_header(header, host):
    assert host_of_header(header) == host


def test_client_text():
    assert client_text(("127.0.0.1", 5)) == "127.0.0.1:5" and client_text(("::1", 5, 0, 0)) == "[::1]:5"
    assert client_text(None) is None


def test_summary_line_names_host_address_country_and_rule(files):
    from geogate.core.decide import Request

    state = GateState.load(str(files.policy), [str(files.db)])
    import ipaddress

    d = state.decide(Request("blocked.test", 443, mode="regular", client="127.0.0.1:1"),
                     [ipaddress.ip_address(BLOCKED_IP)])
    assert summary_line(decision_record(d)) == \
        "geogate: BLOCK blocked.test:443 -> 127.0.2.1 (KP) rule doj [regular 127.0.0.1:1]"


def test_a_recent_decision_holds_for_its_state_its_utc_day_and_its_lifetime(files):
    import ipaddress
    from datetime import datetime
    from datetime import timezone

    from geogate.core.decide import Request
    from geogate.proxy.flows import RecentDecision
    from geogate.proxy.flows import RecentDecisions

    state = GateState.load(str(files.policy), [str(files.db)])
    late = datetime(2026, 11, 28, 23, 59, 59, 500000, tzinfo=timezone.utc)
    d = state.decide(Request("allowed.test", 80), [ipaddress.ip_address(ALLOWED_IP)], now=late)
    recent = RecentDecisions()
    entry = RecentDecision.of(state, d, {}, until=100.0)
    recent.put(("allowed.test", 80), entry)
    midnight = datetime(2026, 11, 29, tzinfo=timezone.utc).timestamp()
    assert recent.get(("allowed.test", 80), state, late.timestamp(), 99.0) is entry
    assert recent.get(("allowed.test", 80), state, midnight - 0.001, 100.0) is entry
    assert recent.get(("allowed.test", 80), state, midnight, 99.0) is None  # rules expire by date
    assert recent.get(("allowed.test", 80), state, late.timestamp(), 100.5) is None  # the name's lifetime
    other = GateState.load(str(files.policy), [str(files.db)])
    assert recent.get(("allowed.test", 80), other, late.timestamp(), 99.0) is None  # a reload
    assert recent.get(("allowed.test", 81), state, late.timestamp(), 99.0) is None


async def test_a_blocked_upload_expecting_100_continue_gets_no_100(gate):
    # without a live connection to write to (here; or TLS, HTTP/2), the expectation is removed so
    # that mitmproxy sends no 100 Continue: the 403 is the first answer (end to end, it is sent at
    # once: test_proxy_raw_e2e.py)
    f = proxy_request(BLOCKED_IP)
    f.request.method, f.request.timestamp_end = "POST", None
    f.request.headers["Expect"] = "100-continue"
    await hook(gate.gg.requestheaders, f)
    assert f.response.status_code == 403 and "expect" not in f.request.headers
    ok = proxy_request(ALLOWED_IP)
    ok.request.method, ok.request.timestamp_end = "POST", None
    ok.request.headers["Expect"] = "100-continue"
    await hook(gate.gg.requestheaders, ok)
    assert ok.response is None and ok.request.headers["expect"] == "100-continue"  # allowed: mitmproxy's 100
