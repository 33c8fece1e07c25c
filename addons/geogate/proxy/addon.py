"""The mitmproxy addon: check every upstream connection against the policy, pin it to the
checked address, answer or close blocked ones, and log each decision.

Where each path is decided (see ../shared notes on mitmproxy 12's hook order):
- CONNECT (regular mode): `http_connect`. A block answers the CONNECT with 403 and nothing is
  dialled; an allow is carried to `server_connect`, which pins the tunnel to the checked address.
- plain HTTP through the proxy: `requestheaders`, once per request. A block answers 403; an allow
  rewrites the request to the checked address there (Host header kept), because mitmproxy reuses
  upstream connections by address and pinning later would defeat keep-alive.
- everything else (transparent, SOCKS5, reverse, WireGuard, local, TLS passthrough, raw TCP,
  UDP): `server_connect`, which every upstream connection passes. It decides whatever was not
  decided before on this client connection, pins, or kills the connection with server.error.

mitmproxy logs an exception raised in a hook and carries on, which would let the connection
through; every hook here is wrapped so that an exception refuses the connection instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import hooks
from mitmproxy import http
from mitmproxy import tls
from mitmproxy.addons.next_layer import NeedsMoreData
from mitmproxy.connection import Client
from mitmproxy.connection import Server
from mitmproxy.net.http import http1
from mitmproxy.proxy import layer
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers import ClientTLSLayer
from mitmproxy.proxy.layers import ServerTLSLayer
from mitmproxy.proxy.layers import TCPLayer
from mitmproxy.proxy.layers import UDPLayer

from geogate.core.addresses import AddressError
from geogate.core.addresses import IPAddress
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip
from geogate.core.clients import INTERCEPTED_MODES
from geogate.core.clients import user_of
from geogate.core.decide import Decision
from geogate.core.errors import GeogateError
from geogate.core.record import INTERNAL_ERROR_TEXT
from geogate.core.record import block_body
from geogate.core.record import decision_record
from geogate.core.record import internal_error_body
from geogate.core.record import printable
from geogate.core.record import proxy_status
from geogate.core.record import repeat_record
from geogate.core.record import summary_line
from geogate.core.record import timestamp_at
from geogate.core.resolve import ResolveError
from geogate.core.resolve import Resolver
from geogate.core.resolve_defaults import DEFAULT_CACHE_BYTES
from geogate.core.resolve_defaults import DEFAULT_CACHE_ENTRIES
from geogate.core.resolve_defaults import DEFAULT_TIMEOUT
from geogate.policy.state import GateState
from geogate.proxy.decision_log import DecisionLog
from geogate.proxy.dns_mode import DnsGate
from geogate.proxy.dns_mode import NameServerJudgement
from geogate.proxy.flows import NAME_REUSE_SECONDS
from geogate.proxy.flows import CarriedDecisions
from geogate.proxy.flows import FlowKey
from geogate.proxy.flows import RecentDecision
from geogate.proxy.flows import RecentDecisions
from geogate.proxy.flows import client_text
from geogate.proxy.flows import host_of_header
from geogate.proxy.flows import is_ip
from geogate.proxy.flows import make_request
from geogate.proxy.flows import mode_name
from geogate.proxy.flows import pinned_address
from geogate.proxy.flows import target_url
from geogate.proxy.messages import UPSTREAM_REFUSAL
from geogate.proxy.messages import blocked_connection
from geogate.proxy.messages import flow_comment
from geogate.proxy.mitmproxy_private import client_writer
from geogate.proxy.mitmproxy_private import layer_chooser
from geogate.proxy.reload import DEFAULT_SETTLE
from geogate.proxy.reload import MAX_SETTLE
from geogate.proxy.reload import LiveState
from geogate.proxy.reload import Source
from geogate.proxy.reload import describe
from geogate.proxy.reload import one_line
from geogate.proxy.worker import open_decision_log

logger = logging.getLogger("geogate")

BLOCKED_MARK = ":no_entry:"
WOULD_BLOCK_MARK = ":warning:"
MAX_RESOLVE_TIMEOUT = 60.0


Refusal = Callable[[Any, Any, str, Exception], None]


def fail_closed(block: Refusal):
    """Run a hook; if it raises, log it and refuse the connection with `block`."""

    def decorate(hook):
        @functools.wraps(hook)
        async def guarded(self, arg, *more):
            try:
                await hook(self, arg, *more)
            except Exception as e:
                _refuse(hook.__name__, block, self, arg, e)

        return guarded

    return decorate


def _refuse(hook_name: str, block: Refusal, addon: Any, arg: Any, error: Exception) -> None:
    """Log what failed under a new error id, and refuse with `block`. The client is told only
    that geogate could not decide, and the id; the exception stays in the logs."""
    error_id = secrets.token_hex(6)
    logger.error(f"geogate: {hook_name} failed, refusing the connection (fail closed) [error {error_id}]: "
                 f"{printable(repr(error))}", exc_info=logger.isEnabledFor(logging.DEBUG))
    try:
        block(addon, arg, error_id, error)
    except Exception as e2:
        logger.error(f"geogate: could not refuse the connection after {hook_name} failed [error {error_id}]: "
                     f"{printable(repr(e2))}")


def fail_closed_sync_first(block: Refusal):
    """fail_closed for a hook that does its work synchronously when it can and returns None, or
    returns a coroutine for the part that must wait (a DNS lookup). mitmproxy awaits only what a
    hook returns, so the common case costs no coroutine at all."""
    guard = fail_closed(block)

    def decorate(hook):
        async def finish(self, arg, pending):
            await pending

        finish.__name__ = hook.__name__
        finish_guarded = guard(finish)

        @functools.wraps(hook)
        def guarded(self, arg):
            try:
                pending = hook(self, arg)
            except Exception as e:
                _refuse(hook.__name__, block, self, arg, e)
                return None
            return None if pending is None else finish_guarded(self, arg, pending)

        return guarded

    return decorate


def error_record(error_id: str, error: Exception, *, flow_id: str | None, client: Client, host: Any,
                 port: Any) -> dict[str, Any]:
    """The decision-log line of a refusal because geogate failed (`"event": "error"`): who asked
    for what, and the error under the id the client was shown."""
    return {
        "ts": timestamp_at(time.time()), "event": "error", "flow_id": flow_id,
        "client": client_text(client.peername), "user": None, "mode": mode_name(client.proxy_mode),
        "host": printable(str(host)) if host is not None else None, "port": port,
        "sni": printable(client.sni) if client.sni else None,
        "action": "block", "enforced": True, "would_block": True, "rule": "error",
        "reason": INTERNAL_ERROR_TEXT, "error_id": error_id,
        "error": printable(f"{type(error).__name__}: {error}"),
    }


def _write_error(addon: "GeoGate", rec: dict[str, Any]) -> None:
    if addon.log is not None:
        try:
            addon.log.write(rec)
        except Exception as e:
            logger.error(f"geogate: the refusal [error {rec['error_id']}] could not be written to the decision "
                         f"log: {printable(repr(e))}")


def internal_error_response(error_id: str) -> http.Response:
    return http.Response.make(
        403,
        internal_error_body(error_id).encode(),
        {"Content-Type": "text/plain; charset=utf-8",
         "Proxy-Status": f'geogate; error=proxy_internal_error; details="geogate could not decide; error id {error_id}"'},
    )


def _refuse_flow(addon: "GeoGate", flow: http.HTTPFlow, error_id: str, error: Exception) -> None:
    if not flow.live:
        return  # a replayed flow is only ever reported on
    flow.response = response = internal_error_response(error_id)
    _answer_before_upload(flow, response)
    rec = error_record(error_id, error, flow_id=flow.id, client=flow.client_conn,
                       host=flow.request.host, port=flow.request.port)
    flow.metadata["geogate"] = rec
    flow.marked = BLOCKED_MARK
    flow.comment = f"geogate: internal error, refused (fail closed) [error {error_id}]"
    _write_error(addon, rec)


def _refuse_server(addon: "GeoGate", data: server_hooks.ServerConnectionHookData, error_id: str,
                   error: Exception) -> None:
    # mitmproxy shows this text to some clients ("Connection killed: ..." in a 502 page)
    data.server.error = f"{INTERNAL_ERROR_TEXT}; error id {error_id}"
    address = data.server.address or (None, None)
    _write_error(addon, error_record(error_id, error, flow_id=data.client.id, client=data.client,
                                     host=address[0], port=address[1]))


def _refuse_tls(addon: "GeoGate", data: tls.ClientHelloData, error_id: str, error: Exception) -> None:
    # The destination is checked in server_connect whatever happens here; what failed is only
    # the pass-through. Leaving TLS to mitmproxy means a client without its CA fails the
    # handshake, so nothing is relayed that geogate did not mean to relay.
    data.ignore_connection = False


def block_response(d: Decision) -> http.Response:
    """What a blocked HTTP client gets: 403, an RFC 9209 Proxy-Status header and a short text body."""
    return http.Response.make(
        403,
        block_body(d).encode(),
        {"Content-Type": "text/plain; charset=utf-8", "Proxy-Status": proxy_status(d)},
    )


def _block_flow(flow: http.HTTPFlow, d: Decision) -> None:
    flow.response = response = block_response(d)
    _answer_before_upload(flow, response)


def _answer_before_upload(flow: http.HTTPFlow, response: http.Response) -> None:
    """A refused request that is waiting to send its body (`Expect: 100-continue`) gets its 403
    (`response`, the flow's) now, before any 100 Continue.

    Right after requestheaders, mitmproxy answers the expectation with 100 Continue itself, and
    it sends a response set in requestheaders only once the whole body has arrived: the client
    would upload a body that is thrown away. Removing the expectation stops the 100. For plain
    HTTP/1 (no TLS on the client connection) the 403 is then written to the client at once and
    the flow is killed, which closes the connection without reading the body (RFC 9110 15.2.1
    allows a final status instead of 100). Elsewhere (TLS, HTTP/2) the 403 is still the first
    answer, sent once the client has given up waiting and sent its body.
    """
    req = flow.request
    if req.timestamp_end is not None or req.method == "CONNECT" or req.headers.get("expect", "").lower() != "100-continue":
        return
    del req.headers["expect"]
    client = flow.client_conn
    if client.tls or not req.http_version.startswith("HTTP/1") or not flow.killable:
        return
    writer = client_writer(client)
    if writer is None or writer.is_closing():
        return
    response.headers["Connection"] = "close"
    writer.write(http1.assemble_response(response))
    flow.kill()  # mitmproxy closes the connection and sends nothing more


def _parse_timeout(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_RESOLVE_TIMEOUT:
        raise exceptions.OptionsError(
            f"geogate_resolve_timeout: `{text}` is not a number of seconds from 0 to {MAX_RESOLVE_TIMEOUT:g}, e.g. 3 or 1.5")
    return value


def _parse_settle(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_SETTLE:
        raise exceptions.OptionsError(
            f"geogate_reload_settle: `{text}` is not a number of seconds from 0 to {MAX_SETTLE:g}, e.g. 1 or 0.5")
    return value


def hook_names(addon: object) -> list[str]:
    """The mitmproxy hooks `addon` has a method for."""
    from mitmproxy import addonmanager  # noqa: F401  (defines the load hook)

    return [name for name in sorted(hooks.all_hooks) if callable(getattr(addon, name, None))]


class GeoGate:
    def __init__(self, replay: Callable[[str | None], Any] | None = None) -> None:
        """`replay(rfile)` makes the audit of flows read from a file (`mitmdump -nr`): an object with
        evaluate(flow, state, decision_log) and summary_text(); without it, replayed flows are left alone."""
        # One resolver for the whole proxy, so its TTL cache and in-flight dedup serve everyone.
        self.resolver = Resolver(
            DEFAULT_TIMEOUT,
            hosts_path=os.environ.get("GEOGATE_HOSTS_FILE") or "/etc/hosts",
            resolv_conf=os.environ.get("GEOGATE_RESOLV_CONF") or "/etc/resolv.conf",
        )
        self.resolver.name_server_filter = self._allowed_name_servers
        self._name_servers_judged: tuple[GateState | None, list] = (None, [])
        self.live: LiveState | None = None
        self.reload_settle = DEFAULT_SETTLE
        self.log: DecisionLog | None = None
        self.intercept = False
        self.carried = CarriedDecisions()
        self.recent = RecentDecisions()
        self._running = False
        self._make_replay = replay
        self._replay: Any = None  # made on the first replayed flow
        self.log_allows = True
        self._passthrough: EagerPassthrough | None = None  # see next_layer
        # Hooks that only some set-ups need live in sub-addons, in an `addons` entry that exists
        # only while there are any (see _configure_optional_hooks): in the namespace of the object
        # mitmproxy walks, this addon's own or the script's it serves from (serve_from).
        self._tree_namespace: dict[str, Any] | None = None
        self.dns = DnsGate(self)  # DNS mode and WireGuard DNS: name servers and questions (dns_mode.py)

    def live_state_or_none(self) -> GateState | None:
        return self.live.state if self.live is not None else None

    def current_state(self) -> GateState:
        """The state decisions use now (a method: mitmproxy inspects every attribute at load)."""
        if self.live is None:
            raise GeogateError("geogate has no policy loaded")
        return self.live.state

    # -- options -------------------------------------------------------------------------------
    def load(self, loader) -> None:
        # Help strings hold no line break (split here only in the source): mitmproxy resets a
        # script's option to its default on reload when the help text has line breaks.
        add = loader.add_option
        add("geogate_policy", str, "", "geogate policy file (YAML); empty = the packaged policies/default.yaml.")
        add("geogate_db", Sequence[str], [],
            "geogate GeoIP database (.mmdb); repeat for several; none = the bundled databases.")
        add("geogate_log", str, "", "geogate decision log (JSON lines, one per decision); empty = event log only.")
        add("geogate_intercept", bool, False,
            "geogate: intercept TLS (clients need the mitmproxy CA); off = TLS passes through untouched.")
        add("geogate_resolve_timeout", str, f"{DEFAULT_TIMEOUT:g}",
            "geogate DNS timeout in seconds for destination lookups (decimals allowed, e.g. 1.5).")
        add("geogate_dns_cache_size", int, DEFAULT_CACHE_ENTRIES,
            "geogate: most host names whose DNS answer or failure is cached "
            "(least recently used dropped first; 0 = no cache).")
        add("geogate_dns_cache_bytes", int, DEFAULT_CACHE_BYTES,
            "geogate: approximate memory bound in bytes for the DNS cache (least recently used dropped first).")
        add("geogate_reload_settle", str, f"{DEFAULT_SETTLE:g}",
            "geogate: seconds a changed policy or database must stay unchanged after its writer closed it "
            "before it is applied.")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        try:
            if "mode" in updated:
                self._refuse_upstream(opts.mode)
            if "geogate_resolve_timeout" in updated:
                self.resolver.timeout = _parse_timeout(opts.geogate_resolve_timeout)
            if updated & {"geogate_dns_cache_size", "geogate_dns_cache_bytes"}:
                if opts.geogate_dns_cache_size < 0 or opts.geogate_dns_cache_bytes < 0:
                    raise exceptions.OptionsError("geogate_dns_cache_size and geogate_dns_cache_bytes cannot be negative")
                self.resolver.set_cache_limits(opts.geogate_dns_cache_size, opts.geogate_dns_cache_bytes)
            if "geogate_reload_settle" in updated:
                self.reload_settle = _parse_settle(opts.geogate_reload_settle)
                if self.live is not None:
                    self.live.settle = self.reload_settle
            if "geogate_intercept" in updated:
                self.intercept = bool(opts.geogate_intercept)
            if updated & {"geogate_policy", "geogate_db"}:
                self._load_state(opts.geogate_policy, opts.geogate_db)
            if "geogate_log" in updated:
                self._open_log(opts.geogate_log)
            self.dns.setup(updated, opts, self._running)
            if updated & {"termlog_verbosity", "rfile", "connection_strategy", "geogate_intercept", "mode"}:
                self._configure_optional_hooks(opts)
        except exceptions.OptionsError as e:
            if self._running:
                raise  # a change at run time: mitmproxy rolls it back and shows the message
            # At startup an error line makes mitmdump exit (its errorcheck addon), without the
            # traceback it prints for an exception; until then nothing is loaded, so every
            # connection is refused.
            logger.error(str(e))
            for line in getattr(e, "details", ()):
                logger.info(f"geogate: {line}")

    def _configure_optional_hooks(self, opts) -> None:
        verbosity = getattr(opts, "termlog_verbosity", "info")
        self.log_allows = verbosity in ("info", "debug")
        subs: list[object] = []
        if getattr(opts, "rfile", None):
            subs.append(ReplayHooks(self))
        lazy = getattr(opts, "connection_strategy", "eager") == "lazy"
        if lazy:
            subs.append(LazyHooks(self))
        if self.dns.records_questions:
            subs.append(self.dns)  # dns_* hooks, in DNS, WireGuard and reverse:dns modes only
        self._passthrough = None if lazy or self.intercept else EagerPassthrough()
        # mitmproxy walks every addon's `addons` on every event, for every hook name: a hook that
        # exists is dispatched on every flow, and even an empty list is one more generator per
        # event. Both cost more than most of what geogate does per request, so the attribute
        # exists only when some sub-addon is needed.
        namespace = self.__dict__ if self._tree_namespace is None else self._tree_namespace
        if subs:
            namespace["addons"] = subs
        else:
            namespace.pop("addons", None)

    def serve_from(self, namespace: dict[str, Any]) -> None:
        """Put this addon's hooks in a script's namespace, making the script module the addon.

        mitmproxy walks the whole addon tree for every event of every flow (several per request),
        and an `addons = [GeoGate()]` list puts one more object and one more level of nested
        generators in that walk: about 1% more CPU per keep-alive request in paired runs
        (bench/compare.py). The module takes the name `geogate` (ctx.master.addons.get).
        """
        namespace["name"] = "geogate"
        for hook in hook_names(self):
            namespace[hook] = getattr(self, hook)
        if "addons" in self.__dict__:
            namespace["addons"] = self.__dict__.pop("addons")
        self._tree_namespace = namespace

    @staticmethod
    def _refuse_upstream(modes: Sequence[str]) -> None:
        for spec in modes:
            try:
                mode = mode_specs.ProxyMode.parse(spec)
            except ValueError:
                continue  # mitmproxy reports its own parse errors
            if isinstance(mode, mode_specs.UpstreamMode):
                raise exceptions.OptionsError(UPSTREAM_REFUSAL)

    def _load_state(self, policy: str, dbs: Sequence[str]) -> None:
        try:
            live = LiveState(Source(policy or None, tuple(d for d in dbs if d)), settle=self.reload_settle)
        except GeogateError as e:
            error = exceptions.OptionsError(f"geogate: {one_line(e)}")
            error.details = str(e).splitlines()[1:]  # type: ignore[attr-defined]
            raise error from None
        old, self.live = self.live, live
        if old is not None:
            old.stop()
        if self._running:
            live.start()
        for line in describe(live.state):
            logger.info(f"geogate: {line}")
        for w in live.state.warnings:
            logger.warning(f"geogate: {w}")

    def _open_log(self, path: str) -> None:
        new = None
        if path:
            try:
                new = open_decision_log(os.path.expanduser(path))
            except GeogateError as e:
                raise exceptions.OptionsError(f"geogate_log: {e}") from None
        old, self.log = self.log, new
        if old is not None:
            old.close()

    # -- lifecycle -----------------------------------------------------------------------------
    def running(self) -> None:
        self._running = True
        if self.live is not None:
            self.live.start()
        self.dns.start()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reopen_log)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # no SIGHUP here (Windows, a thread): moved files are still noticed per line

    def _reopen_log(self) -> None:
        if self.log is not None:
            self.log.reopen()
            logger.info("geogate: SIGHUP, reopening the decision log")

    def done(self) -> None:
        self._running = False
        if self.live is not None:
            self.live.stop()
        self.dns.stop()
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        if self.log is not None:
            self.log.close()
        if self._replay is not None:
            print(self._replay.summary_text(), end="")

    # -- the shared path: resolve once, decide, record -----------------------------------------
    def _allowed_name_servers(self, servers: list[str]) -> list[str]:
        """The resolver's name servers the policy allows; each judgement is said once."""
        try:
            state = self.current_state()
            judged = NameServerJudgement(state, servers, "resolver", what="resolver name server")
        except Exception as e:  # no state, or the engine failed: ask no one (fail closed)
            logger.error(f"geogate: the resolver's name servers could not be judged: {one_line(e)}")
            return []
        lines = judged.lines()
        if self._name_servers_judged[1] != lines:
            for level, line in lines:
                logger.log(level, line)
            if self.log is not None:
                for text, d in judged.decisions.items():
                    self.log.write({**decision_record(d), "dns": {"role": "resolver_name_server", "name_server": text}})
        self._name_servers_judged = (state, lines)
        return judged.allowed

    async def _resolve(self, name: str) -> tuple[list, str | None]:
        try:
            # most answers need no query; awaiting the resolver for them costs more than deciding
            r = self.resolver.known(name)
            if r is None:
                if self._name_servers_judged[0] is not self.live_state_or_none():
                    self.resolver.forget_name_servers()  # a reload: judge them with the new policy
                r = await self.resolver.query(name)
        except ResolveError as e:
            return [], str(e)
        return list(r.addresses), None

    async def _decide_name(self, raw_host: str, port: int, **context) -> Decision:
        """A destination the client named: resolve it once and decide on every address."""
        raw_host = printable(str(raw_host))  # what a client sent need not be UTF-8
        try:
            host = canonical_host(raw_host)
        except AddressError as e:
            return self.current_state().decide(make_request(raw_host, port, **context), [], resolve_error=str(e))
        addresses, error = await self._resolve(host)
        # The state is read after the await: a reload meanwhile applies to this decision whole.
        return self.current_state().decide(make_request(host, port, **context), addresses, resolve_error=error)

    async def _decide_intercepted(self, ip_text: str, port: int, claim: str | None, **context) -> Decision:
        """A destination the OS intercepted: the address is the fact, a name is only a claim."""
        ip = parse_ip(ip_text)
        if ip is None:
            return await self._decide_name(ip_text, port, **context)
        claimed: frozenset[IPAddress] | None = None
        if claim:
            claim = printable(claim)  # from a Host header or SNI: any bytes at all
            try:
                claim = canonical_host(claim)
            except AddressError:
                claim = claim.lower()  # unusable name: recorded, and it can never verify
                claimed = frozenset()
            if claimed is None:
                addresses, _error = await self._resolve(claim)
                claimed = frozenset(addresses)
        req = make_request(claim or str(ip), port, claim=bool(claim), claimed_addresses=claimed, **context)
        return self.current_state().decide(req, [ip])

    def _record(self, d: Decision, flow: http.HTTPFlow | None = None, **extra: Any) -> dict[str, Any]:
        rec = decision_record(d)
        rec.update(extra)
        return self._publish(d, rec, flow)

    def _publish(self, d: Decision, rec: dict[str, Any], flow: http.HTTPFlow | None) -> dict[str, Any]:
        if self.log is not None:
            self.log.write(rec)  # raises if the log cannot be written: the hook fails closed
        if d.blocked or d.would_block:
            logger.warning(summary_line(rec))
        elif self.log_allows:
            logger.info(summary_line(rec))
        if flow is not None:
            self._annotate(flow, d, rec)
        return rec

    @staticmethod
    def _annotate(flow: http.HTTPFlow, d: Decision, rec: dict[str, Any]) -> None:
        flow.metadata["geogate"] = rec
        if d.blocked or d.would_block:
            flow.marked = BLOCKED_MARK if d.blocked else WOULD_BLOCK_MARK
            flow.comment = flow_comment(d) or ""

    def _flow_context(self, flow: http.HTTPFlow) -> dict[str, Any]:
        client = flow.client_conn
        return dict(peername=client.peername, mode=mode_name(client.proxy_mode), flow_id=flow.id,
                    user=user_of(flow.metadata.get("proxyauth")))

    def _client_user(self, client: Client) -> str | None:
        proxyauth = ctx.master.addons.get("proxyauth") if ctx.master else None
        authenticated = getattr(proxyauth, "authenticated", None)
        return user_of(authenticated.get(client)) if authenticated is not None else None

    # -- hooks ---------------------------------------------------------------------------------
    def _flow_key(self, flow: http.HTTPFlow, host: str, port: int) -> FlowKey:
        client = flow.client_conn
        peername = client.peername
        return FlowKey(host, port, peername[0] if peername else None, user_of(flow.metadata.get("proxyauth")),
                       mode_name(client.proxy_mode))

    def _recent(self, key: FlowKey, wall: float) -> RecentDecision | None:
        """The recent decision for `key` that still holds now (see flows.RecentDecisions)."""
        return self.recent.get(key, self.live.state if self.live else None, wall, time.monotonic())

    def _reuse_for_connect(self, flow: http.HTTPFlow, key: FlowKey) -> Decision | None:
        """A recent decision for the same destination, recorded again for this CONNECT; or None.
        Clients repeat destinations; see flows.RecentDecisions for when reuse is sound.

        The tunnel gets a decision object of its own: it is carried to the requests inside the
        tunnel, whose records name the CONNECT that decided (connection_id)."""
        wall = time.time()
        recent = self._recent(key, wall)
        if recent is None:
            return None
        client = client_text(flow.client_conn.peername)
        d = recent.again(flow.id, client, wall)
        self._publish(d, repeat_record(recent.record, wall, flow.id, client), flow)
        return d

    async def _decide_flow(self, flow: http.HTTPFlow, key: FlowKey, **extra: Any) -> tuple[Decision, dict[str, Any]]:
        """Decide and record a destination the client named in a request (CONNECT or absolute
        form), and keep the decision for repeats."""
        context = dict(peername=flow.client_conn.peername, mode=key.mode, flow_id=flow.id, user=key.user)
        d = await self._decide_name(key.host, key.port, **context)
        rec = self._record(d, flow, **extra)
        lifetime = float("inf") if is_ip(d.request.host or "") else NAME_REUSE_SECONDS
        # The template leaves out what belongs to this request only (its URL): CONNECT and plain
        # requests for the same host and port share the entry.
        template = {k: v for k, v in rec.items() if k not in extra}
        self.recent.put(key, RecentDecision.of(self.current_state(), d, template, time.monotonic() + lifetime))
        return d, rec

    @fail_closed_sync_first(_refuse_flow)
    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not flow.live or flow.response:
            return None
        req = flow.request
        key = self._flow_key(flow, req.host, req.port)
        reused = self._reuse_for_connect(flow, key)
        if reused is None:
            return self._connect_decided(flow, self._decide_flow(flow, key))
        self._connect_decided_now(flow, reused)
        return None

    async def _connect_decided(self, flow: http.HTTPFlow, deciding: Awaitable[tuple[Decision, dict]]) -> None:
        d, _rec = await deciding
        self._connect_decided_now(flow, d)

    def _connect_decided_now(self, flow: http.HTTPFlow, d: Decision) -> None:
        if d.blocked:
            flow.response = block_response(d)  # nothing is dialled for a refused CONNECT
            return
        req = flow.request
        self.carried.remember(flow.client_conn.id, (req.host, req.port), d)

    @fail_closed_sync_first(_refuse_flow)
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if not flow.live or flow.response or flow.error:
            return None
        client = flow.client_conn
        # An absolute-form request to the explicit proxy: no upstream chosen for it yet. Requests
        # inside a CONNECT tunnel or in transparent/reverse mode already have their server
        # connection's address set; those connections are decided on their own.
        if flow.server_conn.address is not None or not isinstance(client.proxy_mode, mode_specs.RegularMode):
            if self.carried.get(client.id, flow.server_conn.address) is not None:
                self._attach(flow)
            elif mode_name(client.proxy_mode) in INTERCEPTED_MODES and flow.server_conn.address:
                return self._decide_intercepted_request(flow, flow.server_conn.address)
            # else: server_connect decides when the connection is opened
            return None

        # Most plain-HTTP requests repeat a recent one (see flows.RecentDecisions): the decision
        # is shared (nothing on the request's own path acts on who asked) and each request gets
        # its own record.
        data = flow.request.data
        key = self._flow_key(flow, data.host, data.port)
        url = target_url(data)  # before the host is pinned to an address
        wall = time.time()
        recent = self._recent(key, wall)
        if recent is None:
            return self._proxy_request_decided(flow, self._decide_flow(flow, key, url=url))
        rec = repeat_record(recent.record, wall, flow.id, client_text(client.peername))
        rec["url"] = url
        self._publish(recent.decision, rec, flow)
        self._proxy_request_decided_now(flow, recent.decision, rec)
        return None

    async def _proxy_request_decided(self, flow: http.HTTPFlow, deciding: Awaitable[tuple[Decision, dict]]) -> None:
        self._proxy_request_decided_now(flow, *await deciding)

    def _proxy_request_decided_now(self, flow: http.HTTPFlow, d: Decision, rec: dict[str, Any]) -> None:
        """Answer a block, or point the request at the checked address."""
        if d.blocked:
            _block_flow(flow, d)
            return
        data = flow.request.data
        address, port = rec["address"], data.port  # the record spells the address already
        if address is not None and data.scheme == b"http":
            pin = (address, port)
            # Only the target changes: the client's Host header (or h2 :authority) stays as sent.
            # Request.host's setter would rewrite both, and putting them back costs more than
            # the whole decision.
            data.host = address
            self.carried.remember(flow.client_conn.id, pin, d)
        else:
            # https in absolute form: mitmproxy takes the TLS server name from request.host, so
            # the name stays and server_connect pins the address from this carried decision.
            self.carried.remember(flow.client_conn.id, (data.host, port), d)

    async def _decide_intercepted_request(self, flow: http.HTTPFlow, address: tuple[str, int]) -> None:
        """Transparent-style HTTP whose connection is not open yet (connection_strategy=lazy), to
        `address`: decide now, so a block is a readable 403 rather than a killed connection."""
        client = flow.client_conn
        claim = host_of_header(flow.request.host_header) if flow.request.host_header else client.sni
        context = dict(self._flow_context(flow), sni=client.sni)
        d = await self._decide_intercepted(str(address[0]), int(address[1]), claim, **context)
        self._record(d, flow, url=printable(flow.request.pretty_url))
        if d.blocked:
            _block_flow(flow, d)
            return
        self.carried.remember(client.id, address, d)

    def _attach(self, flow: http.HTTPFlow) -> None:
        """Give a flow on an already decided connection that decision (saved flows carry it)."""
        d = self.carried.get(flow.client_conn.id, flow.server_conn.address)
        if d is None:
            return
        rec = decision_record(d)
        rec.update(event="request", flow_id=flow.id, connection_id=d.request.flow_id,
                   url=printable(flow.request.pretty_url))
        self._annotate(flow, d, rec)
        if self.intercept and self.log is not None:
            self.log.write(rec)  # with interception on, every URL is logged

    def error(self, flow: http.HTTPFlow) -> None:
        if "geogate" in flow.metadata or not flow.error or "geogate" not in flow.error.msg:
            return
        d = self.carried.get(flow.client_conn.id, flow.server_conn.address)
        if d is not None:
            self._annotate(flow, d, decision_record(d))
        else:
            flow.marked = BLOCKED_MARK
            flow.comment = flow.error.msg

    @fail_closed(_refuse_server)
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server, client = data.server, data.client
        if server.error:
            return  # already refused (e.g. mitmproxy's own self-connect guard)
        if server.via is not None:
            server.error = "geogate: an upstream proxy would pick the destination; refused"
            return
        if not server.address:
            server.error = "geogate: destination unknown; refused"
            return
        d = self.carried.get(client.id, server.address)
        if d is None:
            d = await self._decide_connection(server.address, client)
            self._record(d)
            self.carried.remember(client.id, server.address, d)
        self._apply(server, server.address, client, d)

    async def _decide_connection(self, address: tuple[str, int], client: Client) -> Decision:
        host, port = str(address[0]), int(address[1])
        mode = mode_name(client.proxy_mode)
        context = dict(peername=client.peername, mode=mode, flow_id=client.id,
                       user=self._client_user(client), sni=client.sni)
        if mode in INTERCEPTED_MODES:
            claim = client.sni  # known here only with connection_strategy=lazy
            return await self._decide_intercepted(host, port, claim, **context)
        return await self._decide_name(host, port, **context)

    def _apply(self, server: Server, address: tuple[str, int], client: Client, d: Decision) -> None:
        """Refuse, or point the connection (to `address`, the server's) at exactly the address that was checked."""
        if d.blocked:
            server.error = blocked_connection(d)
            return
        port = int(address[1])
        pin = pinned_address(d, port)
        if pin is None or str(address[0]) == pin[0]:
            return
        name = d.request.host
        if server.sni is None and name and not is_ip(name) and not d.request.host_is_claim:
            server.sni = name  # certificate checks stay on the name, not the pinned address
        server.address = pin
        self.carried.remember(client.id, pin, d)

    @fail_closed(_refuse_tls)
    async def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if not self.intercept:
            data.ignore_connection = True  # relay TLS untouched: no CA needed on clients

    def client_disconnected(self, client: Client) -> None:
        self.carried.forget(client.id)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        # Once per connection, so a method here costs less than a sub-addon, which every event
        # would visit.
        if self._passthrough is not None:
            self._passthrough.next_layer(nextlayer)

    # -- replayed flows (mitmdump -nr FILE): reported on, never touched ------------------------
    def replayed(self, flow) -> None:
        if flow.live or self._make_replay is None:
            return
        try:
            if self._replay is None:
                self._replay = self._make_replay(getattr(ctx.options, "rfile", None))
            self._replay.evaluate(flow, self.current_state(), self.log)
        except Exception as e:
            logger.error(f"geogate: audit of replayed flow {flow.id} failed: {e!r}")


class ReplayHooks:
    """Present only when flows are read from a file (`-r`/`-nr`)."""

    def __init__(self, gate: GeoGate) -> None:
        self.gate = gate

    def request(self, flow: http.HTTPFlow) -> None:
        self.gate.replayed(flow)

    # A loaded TCP or UDP flow gets its messages one hook at a time after its start: it is
    # complete at its end (or error). HTTP and DNS flows are complete at their first hook.
    def tcp_end(self, flow) -> None:
        self.gate.replayed(flow)

    def tcp_error(self, flow) -> None:
        self.gate.replayed(flow)

    def udp_end(self, flow) -> None:
        self.gate.replayed(flow)

    def udp_error(self, flow) -> None:
        self.gate.replayed(flow)

    def dns_request(self, flow) -> None:
        self.gate.replayed(flow)


class EagerPassthrough:
    """TLS pass-through decided before mitmproxy builds its TLS layers (GeoGate.next_layer).

    With the eager connection strategy every upstream connection is decided in server_connect
    before the client's first bytes arrive, so nothing in a ClientHello can change the decision.
    Relaying TLS from here spares parsing the ClientHello and setting up two TLS layers only to
    drop them in tls_clienthello. Present only when interception is off and connections are
    eager; with lazy connections the SNI is a claim the decision needs, so tls_clienthello
    keeps that job.

    Script addons see next_layer before mitmproxy's own NextLayer addon, so the layer is chosen
    here with that addon's logic (ignore_hosts, proxy modes, protocol detection alike) and only
    its TLS choice is swapped for a relay. Without that addon, nothing changes: tls_clienthello
    still passes TLS through.
    """

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer is not None:
            return
        choose = layer_chooser()
        if choose is None:
            return
        context = nextlayer.context
        depth, client_tls, server_tls = len(context.layers), context.client.tls, context.server.tls
        try:
            chosen = choose(context, nextlayer.data_client(), nextlayer.data_server())
        except NeedsMoreData:
            return  # mitmproxy's addon asks again when more bytes arrive
        if isinstance(chosen, ServerTLSLayer) and isinstance(chosen.child_layer, ClientTLSLayer):
            # building the TLS layers registered them and flagged both ends as TLS: undo that
            del context.layers[depth:]
            context.client.tls, context.server.tls = client_tls, server_tls
            relay = TCPLayer if context.client.transport_protocol == "tcp" else UDPLayer  # DTLS
            chosen = relay(context, ignore=True)
        nextlayer.layer = chosen


class LazyHooks:
    """Present only with connection_strategy=lazy, where a connection is decided after
    requestheaders: the flow gets the decision once the response starts."""

    def __init__(self, gate: GeoGate) -> None:
        self.gate = gate

    @fail_closed(_refuse_flow)
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.live and "geogate" not in flow.metadata:
            self.gate._attach(flow)
