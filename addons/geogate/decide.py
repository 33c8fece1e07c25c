"""The decision engine: (policy, request, facts of every address) -> Decision. Pure: no I/O.

The live proxy, the audit replay and `geogate explain` all call `decide` and nothing else.

Order of evaluation for one address:
1. a failed lookup blocks (fail closed);
2. an address in a special-purpose range, under `special: allow|block`, gets that action, unless a
   rule whose `networks` contains the address comes first (the way to carve exceptions);
3. rules, first match wins (client profile rules before the policy's); expired rules are skipped
   and the skip is reported;
4. no rule matched and no database knows the country: `geo.unknown`;
5. otherwise `default`.
An IPv6 address that carries an IPv4 address is judged on the IPv4 (and on its own record, when a
database has one); the stricter result wins.

The result types are slots dataclasses that nothing mutates after construction; they are not
declared frozen because a frozen dataclass costs several times more to build, and several are built
for every connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timezone
from functools import lru_cache
from ipaddress import ip_address

from .addresses import IPAddress
from .databases import DatabaseInfo
from .databases import GeoRecord
from .facts import AddressFacts
from .policy.model import Policy
from .policy.model import PolicyRef
from .policy.model import Rule

_SEVERITY = {"allow": 0, "monitor": 1, "block": 2}


@dataclass(slots=True)
class Request:
    """What is being asked for. `host` is canonical (see addresses.canonical_host)."""

    host: str | None
    port: int | None
    client_ip: IPAddress | None = None
    user: str | None = None
    # transparent mode: the name comes from SNI/Host and is only a claim about the destination
    host_is_claim: bool = False
    host_addresses: frozenset[IPAddress] | None = None  # what the claimed name resolves to
    # context carried into the record
    flow_id: str | None = None
    client: str | None = None
    mode: str = "explain"
    sni: str | None = None


@dataclass(slots=True)
class Match:
    """Why a rule matched: which key, which value, from which field, database and group."""

    key: str
    value: str
    field: str | None = None
    source: str | None = None
    group: str | None = None


@dataclass(slots=True)
class Verdict:
    """The decision for one address."""

    facts: AddressFacts
    action: str  # allow | block | monitor
    rule: str
    reason: str
    citation: str | None = None
    match: Match | None = None
    host_mismatch: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def country(self) -> str | None:
        if self.match and self.match.key == "countries":
            return self.match.value
        return self.facts.geo.first("country")


@dataclass(slots=True)
class Outcome:
    """Everything decided, independent of who asked and when: safe to share between requests."""

    action: str  # allow | block
    enforced: bool
    would_block: bool
    verdict: Verdict | None  # the address chosen (allow) or the one that blocked
    verdicts: tuple[Verdict, ...]
    policy: PolicyRef
    databases: tuple[DatabaseInfo, ...]
    rule: str
    reason: str
    citation: str | None = None
    warnings: tuple[str, ...] = ()
    record_fields: dict | None = None  # record.py's rendering of this outcome, made once


@dataclass(slots=True)
class Decision:
    request: Request
    outcome: Outcome
    ts: datetime

    action = property(lambda self: self.outcome.action)
    enforced = property(lambda self: self.outcome.enforced)
    would_block = property(lambda self: self.outcome.would_block)
    verdict = property(lambda self: self.outcome.verdict)
    verdicts = property(lambda self: self.outcome.verdicts)
    policy = property(lambda self: self.outcome.policy)
    databases = property(lambda self: self.outcome.databases)
    rule = property(lambda self: self.outcome.rule)
    reason = property(lambda self: self.outcome.reason)
    citation = property(lambda self: self.outcome.citation)
    warnings = property(lambda self: self.outcome.warnings)

    @property
    def blocked(self) -> bool:
        return self.outcome.action == "block"

    @property
    def address(self) -> IPAddress | None:
        """The address to dial (allow) or the one that caused the block."""
        v = self.outcome.verdict
        return v.facts.address.ip if v else None

    @property
    def country(self) -> str | None:
        v = self.outcome.verdict
        return v.country if v else None

    @property
    def host_mismatch(self) -> bool:
        return any(v.host_mismatch for v in self.outcome.verdicts)


# -- one address --------------------------------------------------------------------------------

def _geo_records(records: tuple[GeoRecord, ...], policy: Policy) -> tuple[GeoRecord, ...]:
    """The records a geo rule may look at, per `geo.disagreement`."""
    if policy.disagreement == "first":
        for r in records:
            if any(getattr(r, f) for f in policy.fields):
                return (r,)
        return ()
    return records


def _country_match(rule: Rule, records: tuple[GeoRecord, ...], policy: Policy) -> Match | None:
    for r in records:
        for f in policy.fields:
            value = getattr(r, f)
            if value and value in rule.countries:
                return Match("countries", value, f, r.source, _group(rule, value))
    return None


def _group(rule: Rule, value: str) -> str | None:
    origin = rule.origin.get(value)
    return origin if origin and origin != "listed" else None


def _rule_match(
    rule: Rule, req: Request, records: tuple[GeoRecord, ...], policy: Policy,
    address_ips: tuple[IPAddress, ...],
) -> Match | None:
    """Why `rule` matches (every key present must match), or None."""
    best: Match | None = None
    if rule.ports is not None:
        if req.port is None or not any(a <= req.port <= b for a, b in rule.ports):
            return None
        best = Match("ports", str(req.port))
    if rule.networks is not None:
        net = next((n for n in rule.networks for a in address_ips if a.version == n.version and a in n), None)
        if net is None:
            return None
        best = Match("networks", str(net))
    if rule.hosts is not None:
        pattern = next((p for p in rule.hosts if req.host and p.matches(req.host)), None)
        if pattern is None or (req.host_is_claim and not _host_verified(req, address_ips)):
            return None
        best = best or Match("hosts", pattern.text)
    geo = _geo_records(records, policy)
    if rule.asns is not None:
        hit = next((r for r in records if r.asn in rule.asns), None)
        if hit is None:
            return None
        best = Match("asns", f"AS{hit.asn}", "asn", hit.source)
    if rule.subdivisions is not None:
        hit_sub = next(((s, r) for r in geo for s in r.subdivisions if s in rule.subdivisions), None)
        if hit_sub is None:
            return None
        best = Match("subdivisions", hit_sub[0], "subdivisions", hit_sub[1].source, _group(rule, hit_sub[0]))
    if rule.continents is not None:
        hit = next((r for r in geo if r.continent in rule.continents), None)
        if hit is None:
            return None
        best = Match("continents", hit.continent, "continent", hit.source)
    if rule.countries is not None:
        m = _country_match(rule, geo, policy)
        if m is None:
            return None
        best = m
    return best or Match("all", "*")


def _host_verified(req: Request, address_ips: tuple[IPAddress, ...]) -> bool:
    """In transparent mode a name counts only if it resolves to the address being dialled."""
    return bool(req.host_addresses) and any(a in req.host_addresses for a in address_ips)


def _reason(rule: Rule, match: Match) -> str:
    if rule.reason:
        return rule.reason
    where = f" (in @{match.group})" if match.group else ""
    field = f" {match.field}" if match.field and match.key == "countries" else ""
    return f"{match.key}:{field} {match.value}{where} matched rule {rule.name}".replace(":  ", ": ")


def _evaluate_view(
    policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts,
    ip: IPAddress, special: str | None, records: tuple[GeoRecord, ...], now: datetime,
) -> Verdict:
    address_ips = (ip, facts.address.ip)
    if special is not None and policy.special != "lookup":
        for rule in rules:
            if rule.networks is not None and _live(rule, now):
                m = _rule_match(rule, req, (), policy, address_ips)
                if m is not None:
                    return _rule_verdict(policy, rule, m, facts)
        return Verdict(facts, policy.special, f"special:{special}",
                       f"{ip} is in a special-purpose range ({special}); policy says special: {policy.special}")
    warnings: list[str] = []
    for rule in rules:
        m = _rule_match(rule, req, records, policy, address_ips)
        if m is None:
            continue
        if not _live(rule, now):
            warnings.append(f"rule {rule.name} expired on {rule.expires} and was skipped")
            continue
        return _rule_verdict(policy, rule, m, facts, tuple(warnings))
    if not any(getattr(r, f) for r in records for f in policy.fields):
        return Verdict(facts, policy.unknown, "geo.unknown",
                       f"no database gives a {' or '.join(policy.fields)} for {ip}; policy says geo.unknown: {policy.unknown}",
                       warnings=tuple(warnings))
    return Verdict(facts, policy.default, "default", f"no rule matched; policy default is {policy.default}",
                   warnings=tuple(warnings))


def _live(rule: Rule, now: datetime) -> bool:
    return rule.expires is None or now.date() <= rule.expires


def _rule_verdict(policy: Policy, rule: Rule, m: Match, facts: AddressFacts, warnings: tuple[str, ...] = ()) -> Verdict:
    citation = rule.citation or (policy.group_citations.get(m.group) if m.group else None)
    return Verdict(facts, rule.action, rule.name, _reason(rule, m), citation, m, False, warnings)


def evaluate_address(policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts, now: datetime) -> Verdict:
    """Verdict for one address: the stricter of its embedded-IPv4 view and its own record."""
    verdict = _evaluate_stricter(policy, rules, req, facts, now)
    if req.host_is_claim and req.host and not _host_verified(req, (facts.address.ip,)):
        verdict = replace(verdict, host_mismatch=True)
    return verdict


def _evaluate_stricter(policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts, now: datetime) -> Verdict:
    if facts.error:
        return Verdict(facts, "block", "error", f"address lookup failed, so the connection is refused: {facts.error}")
    addr = facts.address
    if addr.embedded_ipv4 is None:
        return _evaluate_view(policy, rules, req, facts, addr.ip, addr.special, facts.own.records, now)
    verdict = _evaluate_view(policy, rules, req, facts, addr.embedded_ipv4, addr.special, facts.embedded.records, now)
    if facts.own.records:
        # The transition prefix itself (::ffff:0:0/96, ::/96, 64:ff9b::/96, 2001::/32, ...) is not a
        # destination class of its own: its special range is the embedded IPv4's (see classify).
        own = _evaluate_view(policy, rules, req, facts, addr.ip, addr.special, facts.own.records, now)
        if _SEVERITY[own.action] > _SEVERITY[verdict.action]:
            verdict = own
    return verdict


# -- the whole request ---------------------------------------------------------------------------

def rules_for(policy: Policy, req: Request) -> tuple[Rule, ...]:
    """The rules that apply to this client: its first matching profile's, then the policy's."""
    for profile in policy.clients:
        if profile.sources is not None and not (
            req.client_ip is not None
            and any(req.client_ip.version == n.version and req.client_ip in n for n in profile.sources)
        ):
            continue
        if profile.users is not None and req.user not in profile.users:
            continue
        return profile.rules + policy.rules
    return policy.rules


def decide(
    policy: Policy,
    req: Request,
    facts: list[AddressFacts],
    databases: tuple[DatabaseInfo, ...] = (),
    *,
    now: datetime | None = None,
    resolve_error: str | None = None,
) -> Decision:
    now = now or datetime.now(timezone.utc)
    return Decision(req, decide_outcome(policy, req, facts, databases, now, resolve_error), now)


def decide_outcome(
    policy: Policy,
    req: Request,
    facts: list[AddressFacts],
    databases: tuple[DatabaseInfo, ...],
    now: datetime,
    resolve_error: str | None = None,
) -> Outcome:
    """The outcome depends on the request's host, port, client, user and claim fields, the
    addresses' facts and the date (rule expiry); callers may memoise on exactly those."""
    rules = rules_for(policy, req)
    verdicts = tuple(evaluate_address(policy, rules, req, f, now) for f in facts)
    warnings = tuple(dict.fromkeys(w for v in verdicts for w in v.warnings))
    worst = max(verdicts, key=lambda v: _SEVERITY[v.action]) if verdicts else None  # first of the most severe

    if worst is None:
        rule, reason = "resolve-error", resolve_error or f"{req.host} has no address"
        chosen, action, citation = None, "block", None
    elif policy.addresses == "all":
        if worst.action == "block":
            chosen, action = worst, "block"
        else:
            chosen = next((v for v in verdicts if v.action == "allow"), worst)
            action = "allow"
        rule, reason, citation = worst.rule, worst.reason, worst.citation
        if action == "allow" and len(verdicts) > 1 and worst.action == "monitor":
            reason = f"{worst.reason} (address {worst.facts.address.ip})"
    else:  # any: connect only to an allowed address
        chosen = next((v for v in verdicts if v.action == "allow"), None) or next(
            (v for v in verdicts if v.action == "monitor"), None
        )
        if chosen is None:
            chosen, action = verdicts[0], "block"
            reason = verdicts[0].reason
            if len(verdicts) > 1:
                reason = f"none of the {len(verdicts)} addresses is allowed; first: {reason}"
        else:
            action, reason = "allow", chosen.reason
        rule, citation = chosen.rule, chosen.citation

    if action == "block":
        would_block = True
    elif policy.addresses == "all":
        would_block = worst is not None and worst.action == "monitor"
    else:
        would_block = chosen is not None and chosen.action == "monitor"
    enforced = policy.mode == "enforce"
    if not enforced:
        action = "allow"
    return Outcome(action, enforced, would_block, chosen, verdicts, policy.ref, databases,
                   rule, reason, citation, warnings)


@lru_cache(maxsize=8192)
def parse_client(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
