"""DNS mode and WireGuard's built-in DNS: the name servers mitmproxy asks, and the questions it answers.

In `--mode dns` (and for DNS sent to WireGuard's virtual resolver 10.0.0.53) mitmproxy answers
A/AAAA questions itself, in its `dns_resolver` addon, from the `dns_name_servers` option or else
the operating system's name servers; other questions are forwarded to the first of those. The
A/AAAA lookups open no connection, so `server_connect` never sees them. Here:

- every candidate name server (the `dns_name_servers` the user gave, else the system's) is
  decided by the engine like any destination (port 53), at start-up and whenever the policy or
  a database is reloaded. A blocked one is dropped with one line naming it, its country and the
  rule; `dns_name_servers` is then set to exactly the allowed ones, so mitmproxy never falls back
  to name servers nobody judged. None left: refuse to start, or after a reload refuse every DNS
  question (fail closed) until a reload allows one again.
- every DNS question answered (or refused) gets one decision record: the decision on the name
  server, with a `dns` object holding the question, the name server(s) and the engine's view of
  each answer address. Answers the engine blocks are recorded and, with the option
  `geogate_dns_blocked_answers` (`geogate gateway run --dns-blocked`), removed from the answer or
  the whole answer refused; the record names each removed address (see `filter_answers`).

Forwarded questions (`reverse:dns://HOST` mode, non-A/AAAA questions in DNS mode, WireGuard DNS
to other addresses) open a connection, so `server_connect` decides their upstream as usual; the
question record carries that decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx
from mitmproxy import dns
from mitmproxy import exceptions
from mitmproxy.net.dns import response_codes
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import mode_specs

from geogate.core.addresses import AddressError
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip
from geogate.core.decide import Decision
from geogate.core.record import decision_record
from geogate.core.record import repeat_record
from geogate.core.record import timestamp_at
from geogate.proxy.flows import client_text
from geogate.proxy.flows import make_request
from geogate.proxy.flows import mode_name
from geogate.proxy.messages import decided_by

logger = logging.getLogger("geogate")

DNS_PORT = 53
WIREGUARD_RESOLVER = ("10.0.0.53", 53)  # mitmproxy's virtual resolver in WireGuard mode
WATCH_INTERVAL = 0.5


def uses_name_servers(modes: Sequence[str]) -> str | None:
    """The name of the first mode in which mitmproxy itself asks name servers (dns, wireguard)."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if isinstance(mode, (mode_specs.DnsMode, mode_specs.WireGuardMode)):
            return mode.type_name
    return None


def forwards_dns(modes: Sequence[str]) -> bool:
    """True when a mode answers DNS by forwarding to an upstream named in its spec
    (`reverse:dns://HOST[:PORT]`; mitmproxy's `dns` mode takes no upstream)."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue
        if isinstance(mode, mode_specs.ReverseMode) and mode.scheme == "dns":
            return True
    return False


def system_name_servers() -> list[str]:
    """What mitmproxy's dns_resolver would use without dns_name_servers (tests replace this)."""
    import mitmproxy_rs

    try:
        return list(mitmproxy_rs.dns.get_system_dns_servers())
    except RuntimeError as e:
        logger.warning(f"geogate: cannot read the system's DNS name servers: {e}")
        return []


def resolved_by_mitmproxy(flow: dns.DNSFlow) -> bool:
    """True when mitmproxy's dns_resolver will answer or forward this question (its own test)."""
    mode = flow.client_conn.proxy_mode
    return (isinstance(mode, mode_specs.DnsMode)
            or (isinstance(mode, mode_specs.WireGuardMode) and flow.server_conn.address == WIREGUARD_RESOLVER))


def refuse_dns(addon: Any, flow: dns.DNSFlow, error: Exception) -> None:
    """Fail closed for a DNS hook that raised: the question is refused, not answered."""
    if flow.live and flow.request is not None:
        flow.response = flow.request.fail(response_codes.REFUSED)
        flow.metadata["geogate_dns_refused"] = True


class NameServerJudgement:
    """The name servers judged against one state: each one's decision, and the allowed ones."""

    def __init__(self, state: Any, candidates: list[str], mode: str, *, what: str = "DNS name server") -> None:
        self.state = state
        self.what = what
        self.candidates = candidates
        self.decisions: dict[str, Decision] = {}
        self.invalid: list[str] = []
        for text in candidates:
            ip = parse_ip(text)
            if ip is None:
                self.invalid.append(text)
                continue
            req = make_request(str(ip), DNS_PORT, peername=None, mode=mode, flow_id=None)
            self.decisions[text] = state.decide(req, [ip])
        self.allowed = [t for t, d in self.decisions.items() if not d.blocked]
        self.blocked = [t for t, d in self.decisions.items() if d.blocked]

    def lines(self) -> list[tuple[int, str]]:
        out = []
        for text in self.invalid:
            out.append((logging.ERROR, f"geogate: {self.what} {text!r} is not an IP address; dropped"))
        for text, d in self.decisions.items():
            what = "blocked, dropped" if d.blocked else ("allowed (WOULD BLOCK)" if d.would_block else "allowed")
            level = logging.ERROR if d.blocked else logging.INFO
            out.append((level, f"geogate: {self.what} {text} {what}: {d.country or 'no country'}, rule {d.rule}"))
        return out

    def refusal(self) -> str:
        if not self.candidates:
            return "no DNS name server is configured or known from the system, so none could be judged"
        said = ", ".join(f"{t} {decided_by(self.decisions[t].country, self.decisions[t].rule)}"
                         if t in self.decisions else f"{t} (not an address)" for t in self.candidates)
        return f"no DNS name server is allowed: {said}"


def refusal_before_start(state: Any, modes: Sequence[str], name_servers: Sequence[str]) -> str | None:
    """For `geogate run`: why the proxy must not start (no allowed name server), else None."""
    mode = uses_name_servers(modes)
    if mode is None:
        return None
    judged = NameServerJudgement(state, list(name_servers) or system_name_servers(), mode)
    return None if judged.allowed else f"geogate: {judged.refusal()}; refusing to start (set dns_name_servers)"


def _answer_ip(rr: Any) -> Any:
    """The address an A or AAAA record holds, else None."""
    if rr.type == dns_types.A:
        return parse_ip(str(rr.ipv4_address))
    if rr.type == dns_types.AAAA:
        return parse_ip(str(rr.ipv6_address))
    return None


def fail_closed(hook):
    """A DNS hook that raises refuses the question instead of letting mitmproxy answer it."""

    def guarded(self, flow: dns.DNSFlow) -> None:
        try:
            hook(self, flow)
        except Exception as e:
            logger.error(f"geogate: {hook.__name__} failed, refusing the DNS question (fail closed): {e!r}")
            refuse_dns(self, flow, e)

    guarded.__name__ = hook.__name__
    guarded.__doc__ = hook.__doc__
    return guarded


class DnsGate:
    """Held by GeoGate, which calls setup, start and stop; a sub-addon of it (for the dns_*
    hooks) while a DNS or WireGuard mode is configured (GeoGate._configure_optional_hooks)."""

    # What happens to an answer holding an address the engine blocks (geogate_dns_blocked_answers):
    # keep = recorded only (a client still has to connect, and is judged then); remove = those
    # records are taken out; refuse = the whole answer becomes REFUSED.
    BLOCKED_ANSWERS = ("keep", "remove", "refuse")

    def __init__(self, gate: Any) -> None:
        self.gate = gate
        self.mode: str | None = None  # "dns"/"wireguard" while such a mode is configured
        self.records_questions = False  # the dns_* hooks are needed (a DNS, WireGuard or reverse:dns mode)
        self.configured: list[str] = []  # dns_name_servers as the user gave it
        self.applied: list[str] | None = None  # what geogate set dns_name_servers to
        self.judged: NameServerJudgement | None = None
        self.closed = False  # no allowed name server: every question is refused
        self.blocked_answers = "keep"
        self._task: asyncio.Task | None = None

    # -- configuration -------------------------------------------------------------------------
    def setup(self, updated: set[str], opts: Any, running: bool) -> None:
        if "geogate_dns_blocked_answers" in updated:
            value = getattr(opts, "geogate_dns_blocked_answers", "keep")
            if value not in self.BLOCKED_ANSWERS:  # mitmproxy checks choices; a direct caller may not
                raise exceptions.OptionsError(f"geogate_dns_blocked_answers {value!r}: use one of "
                                              f"{', '.join(self.BLOCKED_ANSWERS)}")
            self.blocked_answers = value
        if "mode" in updated:
            self.mode = uses_name_servers(getattr(opts, "mode", ()))
            self.records_questions = self.mode is not None or forwards_dns(getattr(opts, "mode", ()))
        user_change = False
        if "dns_name_servers" in updated and hasattr(opts, "dns_name_servers"):
            value = list(opts.dns_name_servers)
            if value != self.applied:
                self.configured, user_change = value, True
        if self.mode is None or self.gate.live is None:
            return
        if user_change or updated & {"mode", "geogate_policy", "geogate_db"} or self.judged is None:
            self.judge(self.gate.current_state(), at_start=not running, user_change=user_change and running)

    def judge(self, state: Any, *, at_start: bool = False, user_change: bool = False) -> None:
        """Decide every candidate name server with `state` and use only the allowed ones."""
        candidates = self.configured or system_name_servers()
        judged = NameServerJudgement(state, candidates, self.mode or "dns")
        if not judged.allowed and user_change:
            raise exceptions.OptionsError(f"geogate: {judged.refusal()}; dns_name_servers left unchanged")
        self.judged = judged
        log = self.gate.log
        for text, d in judged.decisions.items():
            if log is not None:
                rec = decision_record(d)
                rec["dns"] = {"role": "name_server", "name_server": text}
                log.write(rec)
        for level, line in judged.lines():
            # at start-up an error line stops mitmdump; a dropped server alone must not
            logger.log(logging.WARNING if at_start and level == logging.ERROR else level, line)
        if not judged.allowed:
            self.closed = True
            if at_start:
                logger.error(f"geogate: {judged.refusal()}; refusing to start (set dns_name_servers)")
            else:
                logger.error(f"geogate: {judged.refusal()}; EVERY DNS QUESTION IS REFUSED (fail closed) "
                             f"until a reload allows a name server")
            return
        was_closed, self.closed = self.closed, False
        if was_closed and not at_start:
            logger.warning(f"geogate: DNS name servers allowed again: {', '.join(judged.allowed)}")
        self.applied = list(judged.allowed)
        if ctx.master is not None and "dns_name_servers" in ctx.options and list(ctx.options.dns_name_servers) != self.applied:
            ctx.options.update(dns_name_servers=self.applied)  # mitmproxy uses exactly these

    def current(self) -> NameServerJudgement | None:
        """The judgement for the state in force now; judged again first if a reload replaced it."""
        if self.mode is None or self.gate.live is None:
            return self.judged
        state = self.gate.current_state()
        if self.judged is None or self.judged.state is not state:
            self.judge(state)
        return self.judged

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.mode is not None and self._task is None:
            from mitmproxy.utils import asyncio_utils

            self._task = asyncio_utils.create_task(self._watch(), name="geogate dns name servers", keep_ref=True)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        """Judge again right after a reload, so a change is said when it happens, not at the
        next question (each question also checks, so none is ever answered on an old judgement)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                self.current()
            except Exception as e:
                logger.error(f"geogate: judging the DNS name servers failed: {e!r}")

    # -- hooks ---------------------------------------------------------------------------------
    @fail_closed
    def dns_request(self, flow: dns.DNSFlow) -> None:
        if not flow.live or flow.response or flow.error or not resolved_by_mitmproxy(flow):
            return
        judged = self.current()
        if self.closed or judged is None or not judged.allowed:
            flow.response = flow.request.fail(response_codes.REFUSED)
            flow.metadata["geogate_dns_refused"] = True

    @fail_closed
    def dns_response(self, flow: dns.DNSFlow) -> None:
        if flow.live and "geogate" not in flow.metadata:
            self._record(flow)

    @fail_closed
    def dns_error(self, flow: dns.DNSFlow) -> None:
        if flow.live and "geogate" not in flow.metadata:
            self._record(flow)

    # -- the record ----------------------------------------------------------------------------
    def _name_server(self, flow: dns.DNSFlow) -> tuple[Decision | None, str | None, list[str]]:
        """The decision on the name server this question went to, its address, and the set."""
        server, client = flow.server_conn, flow.client_conn
        if server.address and server.address != WIREGUARD_RESOLVER:
            d = self.gate.carried.get(client.id, server.address)  # decided in server_connect
            if d is not None:
                return d, str(server.address[0]), [str(server.address[0])]
        judged = self.judged
        if judged is None:
            return None, None, []
        if flow.metadata.get("geogate_dns_refused"):
            names = judged.blocked or judged.candidates
            return (judged.decisions.get(names[0]) if names else None), (names[0] if names else None), []
        if not judged.allowed:
            return None, None, []
        first = judged.allowed[0]  # mitmproxy's resolver asks these in turn
        return judged.decisions[first], first, list(judged.allowed)

    def _record(self, flow: dns.DNSFlow) -> dict[str, Any] | None:
        d, name_server, name_servers = self._name_server(flow)
        q = flow.request.question if flow.request else None
        client = client_text(flow.client_conn.peername)
        mode = mode_name(flow.client_conn.proxy_mode)
        info: dict[str, Any] = {
            "role": "question",
            "question": {"name": q.name, "type": dns_types.to_str(q.type)} if q else None,
            "name_server": name_server,
            "name_servers": name_servers,
        }
        info.update(self._answers(flow, q, mode))  # may remove answers or refuse the whole answer
        info.update({
            "response_code": response_codes.to_str(flow.response.response_code) if flow.response else None,
            "refused": bool(flow.metadata.get("geogate_dns_refused") or flow.metadata.get("geogate_dns_answer_refused")),
            "error": flow.error.msg if flow.error else None,
        })
        if d is not None:
            rec = repeat_record(decision_record(d), flow.timestamp_created, flow.id, client)
        else:
            # no name server could be judged (none configured): nothing was asked
            live = self.gate.live
            ref = live.state.policy.ref if live is not None else None
            rec = {"ts": timestamp_at(flow.timestamp_created), "event": "decision", "flow_id": flow.id,
                   "client": client, "user": None, "mode": mode, "host": None, "port": None, "sni": None,
                   "action": "block", "enforced": True, "would_block": True, "rule": "dns-no-name-server",
                   "reason": "no DNS name server is allowed or known, so the question was not asked",
                   "citation": None, "address": None, "country": None, "host_mismatch": False, "match": None,
                   "addresses": [], "warnings": [], "databases": [],
                   "policy": {"name": ref.name, "path": ref.path, "sha256": ref.sha256} if ref else None}
        rec["mode"] = mode
        rec["dns"] = info
        if self.gate.log is not None:
            self.gate.log.write(rec)  # raises if the log cannot be written: the hook fails closed
        self._say(rec, d)
        flow.metadata["geogate"] = rec
        return rec

    def _answers(self, flow: dns.DNSFlow, q: Any, mode: str) -> dict[str, Any]:
        """The engine's view of the answer addresses (as if a client dialled them)."""
        resp = flow.response
        none: dict[str, Any] = {"answers": [], "answers_action": None, "filtered": False, "removed": []}
        if resp is None or q is None:
            return none
        ips = [ip for ip in map(_answer_ip, resp.answers) if ip is not None]
        if not ips or self.gate.live is None:
            return none
        try:
            host = canonical_host(q.name)
        except AddressError:
            host = q.name.lower()
        req = make_request(host, None, peername=flow.client_conn.peername, mode=mode, flow_id=flow.id)
        ad = self.gate.current_state().decide(req, ips)
        answers = [{"ip": a["ip"], "country": a["country"], "action": a["action"], "rule": a["rule"]}
                   for a in decision_record(ad)["addresses"]]
        removed = self.filter_answers(flow, answers)
        return {"answers": answers, "answers_action": ad.action, "answers_rule": ad.rule,
                "filtered": bool(removed), "removed": removed, "blocked_answers": self.blocked_answers}

    def filter_answers(self, flow: dns.DNSFlow, answers: list[dict[str, Any]]) -> list[str]:
        """Act on the answer addresses the engine blocks, as geogate_dns_blocked_answers says:
        remove their records, or refuse the whole answer. Returns the blocked addresses the
        client did not get (empty: the answer went out as the name server gave it)."""
        if self.blocked_answers == "keep" or flow.response is None:
            return []
        blocked = [a["ip"] for a in answers if a["action"] == "block"]
        if not blocked:
            return []
        if self.blocked_answers == "refuse":
            flow.response = flow.request.fail(response_codes.REFUSED)
            flow.metadata["geogate_dns_answer_refused"] = True
            return blocked
        gone = {parse_ip(ip) for ip in blocked}  # as addresses: text forms of one address differ
        flow.response.answers = [rr for rr in flow.response.answers if _answer_ip(rr) not in gone]
        return blocked

    @staticmethod
    def _say(rec: dict[str, Any], d: Decision | None) -> None:
        info = rec["dns"]
        q = info["question"] or {}
        via = info["name_server"] or "-"
        answers = ", ".join(f"{a['ip']} ({a['country'] or 'no country'}{', BLOCK' if a['action'] == 'block' else ''})"
                            for a in info["answers"]) or info["response_code"] or info["error"] or "-"
        verdict = "REFUSED" if info["refused"] else "answered"
        removed = info.get("removed") or []
        if removed:
            why = {a["ip"]: f"{a['country'] or 'no country'}, rule {a['rule']}" for a in info["answers"]}
            gone = ", ".join(f"{ip} ({why.get(ip, '?')})" for ip in removed)
            answers += f"; REFUSED because of {gone}" if info["refused"] else f"; REMOVED {gone}"
        line = (f"geogate: DNS {verdict} {q.get('type', '?')} {q.get('name', '?')} via {via} "
                f"{decided_by(rec.get('country'), rec.get('rule'))} -> {answers} "
                f"[{rec['mode']} {rec['client']}]")
        if info["refused"] or info["error"] or removed:
            logger.warning(line)
        else:
            logger.info(line)
