"""The decision engine: (policy, request, facts of every address) -> Decision. Pure: no I/O.

The live proxy, the audit replay and `geogate explain` all call `decide` and nothing else.

Order of evaluation for one address:
1. a failed lookup blocks (fail closed);
2. an address in a special-purpose range, under `special: allow|block`, gets that action, unless a
   rule whose `networks` contains the address comes first (the way to carve exceptions); a NAT64
   address whose IPv4 cannot be read (local-use prefix not declared, u-octet not zero) blocks
   whatever the policy says;
3. rules, first match wins (client profile rules before the policy's); expired rules are skipped
   and the skip is reported;
4. no rule matched and no database knows the country: `geo.unknown`;
5. otherwise `default`.
Then, when a database is older than `geo.max_age` (the caller says so: `stale`, see
GateState.freshness), `geo.on_stale` applies to the whole outcome: `warn` adds the warning,
`monitor` turns the decision observe-only, `block` refuses with rule `geo.stale`.
An IPv6 address that carries an IPv4 address is judged on the IPv4 (and on its own record, when a
database has one); the stricter result wins.

The result types are slots dataclasses that nothing mutates after construction; they are not
declared frozen because a frozen dataclass costs several times more to build, and several are built
for every connection.

GateState passes a VerdictMemo: what the rules said about a set of database records is kept and
reused for the next address with the same records, where the rules cannot tell the two apart. The
memo saves work only; every decision is the same without it (tests/test_decide.py compares).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from datetime import date
from datetime import datetime
from datetime import timezone
from functools import lru_cache
from ipaddress import ip_address

from geogate.core.addresses import NAT64_BAD_U_OCTET
from geogate.core.addresses import NAT64_UNDECODED
from geogate.core.addresses import IPAddress
from geogate.core.cache import CLEAR
from geogate.core.cache import BoundedCache
from geogate.core.facts import AddressFacts
from geogate.core.geo import DatabaseInfo
from geogate.core.geo import GeoRecord
from geogate.core.rules import Action
from geogate.core.rules import Addresses
from geogate.core.rules import Disagreement
from geogate.core.rules import Mode
from geogate.core.rules import OnStale
from geogate.core.rules import Policy
from geogate.core.rules import PolicyRef
from geogate.core.rules import Rule
from geogate.core.rules import Special

# The members the evaluation compares with, as module-level names (one global load each, cheaper
# than an attribute of the enum class on the path of every decision), compared by identity: a
# policy and every verdict hold members only (the loader makes them), and `is` costs less than the
# string comparison `==` would run on a str subclass.
_ALLOW, _BLOCK, _MONITOR = Action.ALLOW, Action.BLOCK, Action.MONITOR
_ENFORCE, _LOOKUP, _FIRST, _ALL = Mode.ENFORCE, Special.LOOKUP, Disagreement.FIRST, Addresses.ALL
_SEVERITY = {_ALLOW: 0, _MONITOR: 1, _BLOCK: 2}
_SPECIAL_ACTION = {Special.ALLOW: _ALLOW, Special.BLOCK: _BLOCK}


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
    action: Action
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

    action: Action  # allow | block
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
    stale: OnStale | None = None  # geo.on_stale applied because a database is past geo.max_age


class Decision:
    """One request's decision: the request, the shared outcome, and when it was decided.

    `ts` is built on first use from the seconds since the epoch when the caller had no datetime
    (GateState.decide): many decisions are never rendered with a time, and the rules need only the
    date.
    """

    __slots__ = ("request", "outcome", "wall", "_ts")

    def __init__(self, request: Request, outcome: Outcome, ts: datetime | None = None, wall: float | None = None) -> None:
        self.request = request
        self.outcome = outcome
        self._ts = ts
        if wall is None:
            if ts is None:
                raise TypeError("a Decision needs its time: ts or wall")
            wall = ts.timestamp()
        self.wall = wall  # time.time() of the decision

    @property
    def ts(self) -> datetime:
        ts = self._ts
        if ts is None:
            ts = self._ts = datetime.fromtimestamp(self.wall, timezone.utc)
        return ts

    def __repr__(self) -> str:
        return f"Decision(request={self.request!r}, outcome={self.outcome!r}, ts={self.ts!r})"

    # What was decided is the outcome's; these read it from the decision, as every shell does.

    @property
    def action(self) -> Action:
        return self.outcome.action

    @property
    def enforced(self) -> bool:
        return self.outcome.enforced

    @property
    def would_block(self) -> bool:
        return self.outcome.would_block

    @property
    def verdict(self) -> Verdict | None:
        return self.outcome.verdict

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return self.outcome.verdicts

    @property
    def policy(self) -> PolicyRef:
        return self.outcome.policy

    @property
    def databases(self) -> tuple[DatabaseInfo, ...]:
        return self.outcome.databases

    @property
    def rule(self) -> str:
        return self.outcome.rule

    @property
    def reason(self) -> str:
        return self.outcome.reason

    @property
    def citation(self) -> str | None:
        return self.outcome.citation

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.outcome.warnings

    @property
    def blocked(self) -> bool:
        return self.outcome.action is _BLOCK

    @property
    def stale(self) -> OnStale | None:
        return self.outcome.stale

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
    if policy.disagreement is _FIRST:
        for r in records:
            if any(getattr(r, f) for f in policy.fields):
                return (r,)
        return ()
    return records


def _country_match(rule: Rule, countries: frozenset[str], records: tuple[GeoRecord, ...], policy: Policy) -> Match | None:
    for r in records:
        for f in policy.fields:
            value = getattr(r, f)
            if value and value in countries:
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
        if hit is None or hit.continent is None:  # (a continent in the rule is never None)
            return None
        best = Match("continents", hit.continent, "continent", hit.source)
    if rule.countries is not None:
        m = _country_match(rule, rule.countries, geo, policy)
        if m is None:
            return None
        best = m
    return best or Match("all", "*")


def _host_verified(req: Request, address_ips: tuple[IPAddress, ...]) -> bool:
    """In transparent mode a name counts only if it resolves to the address being dialled."""
    host_addresses = req.host_addresses
    if not host_addresses:
        return False
    return any(a in host_addresses for a in address_ips)


def _reason(rule: Rule, match: Match) -> str:
    if rule.reason:
        return rule.reason
    where = f" (in @{match.group})" if match.group else ""
    field = f" {match.field}" if match.field and match.key == "countries" else ""
    return f"{match.key}:{field} {match.value}{where} matched rule {rule.name}".replace(":  ", ": ")


@dataclass(slots=True)
class Judgement:
    """What the rules say about one view of an address, without the address itself. Shared
    between verdicts through VerdictMemo, so never mutated. (A slots class rather than a
    NamedTuple: reading its slots costs less than unpacking a tuple subclass, on every decision.)"""

    action: Action
    rule: str
    reason: str  # empty when `unknown`: that reason names the address (see _evaluate_view)
    citation: str | None
    match: Match | None
    warnings: tuple[str, ...]
    unknown: bool  # no rule matched and no database gives a geo field: `geo.unknown` decided


def _judge(
    policy: Policy, rules: tuple[Rule, ...], req: Request, records: tuple[GeoRecord, ...],
    address_ips: tuple[IPAddress, ...], day: date,
) -> Judgement:
    """Steps 3-5 of the evaluation: first live rule that matches, else geo.unknown, else default."""
    warnings: list[str] = []
    for rule in rules:
        m = _rule_match(rule, req, records, policy, address_ips)
        if m is None:
            continue
        if not _live(rule, day):
            warnings.append(f"rule {rule.name} expired on {rule.expires} and was skipped")
            continue
        return Judgement(rule.action, rule.name, _reason(rule, m), _citation(policy, rule, m), m, tuple(warnings), False)
    if not any(getattr(r, f) for r in records for f in policy.fields):
        return Judgement(policy.unknown, "geo.unknown", "", None, None, tuple(warnings), True)
    reason = f"no rule matched; policy default is {policy.default}"
    return Judgement(policy.default, "default", reason, None, None, tuple(warnings), False)


def _evaluate_view(
    policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts,
    ip: IPAddress, special: str | None, records: tuple[GeoRecord, ...], day: date,
    memo: VerdictMemo | None = None, memo_key: MemoKey | None = None,
) -> Verdict:
    if special is not None:
        if special in NAT64_UNDECODED:
            return _nat64_verdict(facts, ip, special)
        if policy.special is not _LOOKUP:
            return _special_verdict(policy, rules, req, facts, ip, special, day)
    if memo is None or memo_key is None:
        judgement = _judge(policy, rules, req, records, (ip, facts.address.ip), day)
    else:
        key = (memo_key, records)
        found = memo.judgements.get(key)
        if found is None:
            found = memo.remember(key, _judge(policy, rules, req, records, (ip, facts.address.ip), day))
        judgement = found
    reason = judgement.reason
    if judgement.unknown:
        reason = f"no database gives a {' or '.join(policy.fields)} for {ip}; policy says geo.unknown: {policy.unknown}"
    return Verdict(facts, judgement.action, judgement.rule, reason, judgement.citation, judgement.match, False,
                   judgement.warnings)


def _special_verdict(
    policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts,
    ip: IPAddress, special: str, day: date,
) -> Verdict:
    """Step 2: `special: allow|block` decides, unless a `networks` rule carves the address out."""
    address_ips = (ip, facts.address.ip)
    for rule in rules:
        if rule.networks is not None and _live(rule, day):
            m = _rule_match(rule, req, (), policy, address_ips)
            if m is not None:
                return Verdict(facts, rule.action, rule.name, _reason(rule, m), _citation(policy, rule, m), m)
    return Verdict(facts, _SPECIAL_ACTION[policy.special], f"special:{special}",
                   f"{ip} is in a special-purpose range ({special}); policy says special: {policy.special}")


def _nat64_verdict(facts: AddressFacts, ip: IPAddress, special: str) -> Verdict:
    """A NAT64 address whose IPv4 cannot be read blocks, whatever `special:` and the rules say:
    where it leads is unknown, and a guessed layout could let a sanctioned address through."""
    prefix = facts.address.nat64_prefix
    if special == NAT64_BAD_U_OCTET:
        reason = (f"{ip} is in the NAT64 prefix {prefix} declared by the policy, but its bits 64-71 (the "
                  f"u-octet) are not zero as RFC 6052 requires, so it carries no IPv4 address that can be "
                  f"checked; the connection is refused")
    else:
        reason = (f"{ip} is in the NAT64 local-use prefix {prefix}, whose layout the policy does not declare, "
                  f"so the IPv4 address it leads to is unknown and the connection is refused; declare the "
                  f"prefix your NAT64 uses with its length, e.g. `nat64: [64:ff9b:1::/48]` in the policy")
    return Verdict(facts, _BLOCK, f"special:{special}", reason)


def _live(rule: Rule, day: date) -> bool:
    return rule.expires is None or day <= rule.expires


def _citation(policy: Policy, rule: Rule, m: Match) -> str | None:
    return rule.citation or (policy.group_citations.get(m.group) if m.group else None)


def _evaluate_address(
    policy: Policy, rules: tuple[Rule, ...], req: Request, facts: AddressFacts, day: date,
    memo: VerdictMemo | None, memo_key: MemoKey | None,
) -> Verdict:
    """Verdict for one address: the stricter of its embedded-IPv4 view and its own record.

    With a memo and a memo_key (see VerdictMemo.rules_for), what the rules say is looked up by
    the records instead of evaluated again; the verdict is the same either way.
    """
    addr = facts.address
    if facts.own.error or (facts.embedded is not None and facts.embedded.error):  # facts.error, inline
        verdict = Verdict(facts, _BLOCK, "error",
                          f"address lookup failed, so the connection is refused: {facts.error}")
    elif addr.embedded_ipv4 is None:
        verdict = _evaluate_view(policy, rules, req, facts, addr.ip, addr.special, facts.own.records,
                                 day, memo, memo_key)
    else:
        embedded = facts.embedded
        assert embedded is not None, "the facts of an address that carries an IPv4 hold the IPv4's (FactsSource.facts)"
        verdict = _evaluate_view(policy, rules, req, facts, addr.embedded_ipv4, addr.special, embedded.records,
                                 day, memo, memo_key)
        if facts.own.records:
            # The transition prefix itself (::ffff:0:0/96, ::/96, 64:ff9b::/96, 2001::/32, ...) is
            # not a destination class of its own: its special range is the embedded IPv4's (see
            # classify).
            own = _evaluate_view(policy, rules, req, facts, addr.ip, addr.special, facts.own.records,
                                 day, memo, memo_key)
            if _SEVERITY[own.action] > _SEVERITY[verdict.action]:
                verdict = own
    if req.host_is_claim and req.host and not _host_verified(req, (addr.ip,)):
        verdict = replace(verdict, host_mismatch=True)
    return verdict


# The part of a memo key that comes from the request: (client profile index, host name if a rule
# matches on hosts, port if a rule matches on ports, the day rules expire by).
MemoKey = tuple[int | None, str | None, int | None, date]
# (the rules, whether any matches on networks, on hosts, on ports)
_RuleSet = tuple[tuple[Rule, ...], bool, bool, bool]


class VerdictMemo:
    """What the rules said about each set of records, for one policy: most addresses share their
    records (a country database has a few hundred distinct ones), so after the first address of a
    country the rules need not be evaluated again.

    Used only where the rules cannot depend on the address itself: not when a rule matches on
    `networks`, nor on `hosts` for a claimed host name (verified against the address). Otherwise a
    judgement depends on the rules (the client profile), the records, the date (expiry) and, when
    rules match on them, the host name and the port: exactly the memo key.
    """

    MAX_ENTRIES = 8192  # cleared when full: a cleared memo only costs evaluating the rules again

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # profile index (None: no profile) -> (rules, any networks, any hosts, any ports)
        self._rule_sets: dict[int | None, _RuleSet] = {None: self._rule_set(None)}
        # (memo key prefix, records) -> judgement
        self.judgements = BoundedCache(self.MAX_ENTRIES, CLEAR)  # (MemoKey, records) -> Judgement

    def _rule_set(self, profile: int | None) -> _RuleSet:
        rules = _rules(self.policy, profile)
        return (
            rules,
            any(r.networks is not None for r in rules),
            any(r.hosts is not None for r in rules),
            any(r.ports is not None for r in rules),
        )

    def rules_for(self, req: Request, day: date) -> tuple[tuple[Rule, ...], MemoKey | None]:
        """(the rules that apply to the request, the memo key prefix or None if not memoisable)."""
        profile = _profile_index(self.policy, req) if self.policy.clients else None
        rule_set = self._rule_sets.get(profile)
        if rule_set is None:
            rule_set = self._rule_sets[profile] = self._rule_set(profile)
        rules, by_network, by_host, by_port = rule_set
        if by_network or (by_host and req.host_is_claim):
            return rules, None
        return rules, (profile, req.host if by_host else None, req.port if by_port else None, day)

    def remember(self, key: tuple[MemoKey, tuple[GeoRecord, ...]], judgement: Judgement) -> Judgement:
        self.judgements.put(key, judgement)
        return judgement


# -- the whole request ---------------------------------------------------------------------------

def _profile_index(policy: Policy, req: Request) -> int | None:
    """Index of the client's first matching profile, or None."""
    for index, profile in enumerate(policy.clients):
        if profile.sources is not None and not (
            req.client_ip is not None
            and any(req.client_ip.version == n.version and req.client_ip in n for n in profile.sources)
        ):
            continue
        if profile.users is not None and req.user not in profile.users:
            continue
        return index
    return None


def _rules(policy: Policy, profile: int | None) -> tuple[Rule, ...]:
    return policy.rules if profile is None else policy.clients[profile].rules + policy.rules


def rules_for(policy: Policy, req: Request) -> tuple[Rule, ...]:
    """The rules that apply to this client: its first matching profile's, then the policy's."""
    return _rules(policy, _profile_index(policy, req))


def decide(
    policy: Policy,
    req: Request,
    facts: list[AddressFacts],
    databases: tuple[DatabaseInfo, ...] = (),
    *,
    now: datetime | None = None,
    resolve_error: str | None = None,
    stale: str | None = None,
) -> Decision:
    now = now or datetime.now(timezone.utc)
    return Decision(req, decide_outcome(policy, req, facts, databases, now.date(), resolve_error, stale=stale), now)


def decide_outcome(
    policy: Policy,
    req: Request,
    facts: list[AddressFacts],
    databases: tuple[DatabaseInfo, ...],
    day: date,
    resolve_error: str | None = None,
    memo: VerdictMemo | None = None,
    stale: str | None = None,
) -> Outcome:
    """The outcome depends on the request's host, port, client, user and claim fields, the
    addresses' facts, the date (rule expiry) and `stale` (why the databases are past
    `geo.max_age`, None while they are fresh); callers may memoise on exactly those.

    `memo` (made for this policy) only saves work: the outcome is the same without it.
    """
    outcome = _outcome(policy, req, facts, databases, day, resolve_error, memo)
    return outcome if stale is None else _stale_outcome(policy, outcome, stale)


def _stale_outcome(policy: Policy, outcome: Outcome, stale: str) -> Outcome:
    """`geo.on_stale` applied to an outcome decided on databases past `geo.max_age`."""
    on_stale = policy.on_stale
    warnings = outcome.warnings + (f"{stale}; policy says geo.on_stale: {on_stale}",)
    if on_stale is OnStale.BLOCK:
        # fail closed whatever the rules and the mode say: the data may no longer be true
        reason = f"{stale}, so the connection is refused; policy says geo.on_stale: block"
        return replace(outcome, action=_BLOCK, enforced=True, would_block=True, rule="geo.stale", reason=reason,
                       citation=None, warnings=warnings, stale=on_stale)
    if on_stale is OnStale.MONITOR:
        return replace(outcome, action=_ALLOW, enforced=False, warnings=warnings, stale=on_stale)
    return replace(outcome, warnings=warnings, stale=on_stale)


def _outcome(
    policy: Policy,
    req: Request,
    facts: list[AddressFacts],
    databases: tuple[DatabaseInfo, ...],
    day: date,
    resolve_error: str | None,
    memo: VerdictMemo | None,
) -> Outcome:
    if memo is not None and memo.policy is policy:
        rules, memo_key = memo.rules_for(req, day)
    else:
        rules, memo_key = rules_for(policy, req), None
    if len(facts) == 1:
        verdict = _evaluate_address(policy, rules, req, facts[0], day, memo, memo_key)
        return _one_address_outcome(policy, verdict, databases)
    verdicts = tuple(_evaluate_address(policy, rules, req, f, day, memo, memo_key) for f in facts)
    warnings = tuple(dict.fromkeys(w for v in verdicts for w in v.warnings))
    worst = max(verdicts, key=lambda v: _SEVERITY[v.action]) if verdicts else None  # first of the most severe

    chosen: Verdict | None
    if worst is None:
        rule, reason = "resolve-error", resolve_error or f"{req.host} has no address"
        chosen, action, citation = None, _BLOCK, None
    elif policy.addresses is _ALL:
        if worst.action is _BLOCK:
            chosen, action = worst, _BLOCK
        else:
            chosen = next((v for v in verdicts if v.action is _ALLOW), worst)
            action = _ALLOW
        rule, reason, citation = worst.rule, worst.reason, worst.citation
        if action is _ALLOW and len(verdicts) > 1 and worst.action is _MONITOR:
            reason = f"{worst.reason} (address {worst.facts.address.ip})"
    else:  # any: connect only to an allowed address
        chosen = next((v for v in verdicts if v.action is _ALLOW), None) or next(
            (v for v in verdicts if v.action is _MONITOR), None
        )
        if chosen is None:
            chosen, action = verdicts[0], _BLOCK
            reason = verdicts[0].reason
            if len(verdicts) > 1:
                reason = f"none of the {len(verdicts)} addresses is allowed; first: {reason}"
        else:
            action, reason = _ALLOW, chosen.reason
        rule, citation = chosen.rule, chosen.citation

    if action is _BLOCK:
        would_block = True
    elif policy.addresses is _ALL:
        would_block = worst is not None and worst.action is _MONITOR
    else:
        would_block = chosen is not None and chosen.action is _MONITOR
    enforced = policy.mode is _ENFORCE
    if not enforced:
        action = _ALLOW
    return Outcome(action, enforced, would_block, chosen, verdicts, policy.ref, databases,
                   rule, reason, citation, warnings)


def _one_address_outcome(policy: Policy, verdict: Verdict, databases: tuple[DatabaseInfo, ...]) -> Outcome:
    """decide_outcome for a single address (most requests), without its generators: the one
    verdict is the chosen one and the worst one, for `addresses: all` and `any` alike."""
    blocked = verdict.action is _BLOCK
    enforced = policy.mode is _ENFORCE
    return Outcome(_BLOCK if blocked and enforced else _ALLOW, enforced, verdict.action is not _ALLOW, verdict,
                   (verdict,), policy.ref, databases, verdict.rule, verdict.reason, verdict.citation,
                   tuple(dict.fromkeys(verdict.warnings)) if verdict.warnings else ())


@lru_cache(maxsize=8192)
def parse_client(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
