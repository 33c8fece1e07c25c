"""Policy file -> Policy, or every problem with file:line:col, what is wrong and what to write.

A policy is built only when the whole file validates; nothing half-read ever reaches a decision.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable
from typing import TypedDict

import pycountry
from yaml.nodes import MappingNode
from yaml.nodes import Node
from yaml.nodes import ScalarNode
from yaml.nodes import SequenceNode

from geogate.core.addresses import BUILTIN_CARRIERS
from geogate.core.addresses import NAT64_LENGTHS
from geogate.core.addresses import NAT64_WELL_KNOWN
from geogate.core.addresses import AddressError
from geogate.core.addresses import IPNetwork
from geogate.core.addresses import Nat64Prefixes
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip
from geogate.core.errors import GeogateError
from geogate.core.rules import ACTIONS
from geogate.core.rules import CONTINENTS
from geogate.core.rules import FIELDS
from geogate.core.rules import FINAL_ACTIONS
from geogate.core.rules import Action
from geogate.core.rules import Addresses
from geogate.core.rules import ClientProfile
from geogate.core.rules import Disagreement
from geogate.core.rules import GeoField
from geogate.core.rules import HostPattern
from geogate.core.rules import Mode
from geogate.core.rules import OnStale
from geogate.core.rules import Policy
from geogate.core.rules import PolicyRef
from geogate.core.rules import Rule
from geogate.core.rules import Special
from geogate.policy.groups import builtin_groups
from geogate.policy.yamlnodes import Position
from geogate.policy.yamlnodes import YamlSyntaxError
from geogate.policy.yamlnodes import compose
from geogate.policy.yamlnodes import position

TOP_KEYS = (
    "version", "name", "description", "mode", "default", "geo", "special", "addresses", "nat64",
    "groups", "rules", "clients",
)  # fmt: skip
GEO_KEYS = ("fields", "unknown", "disagreement", "max_age", "on_stale")
# `geo.max_age` units, in seconds: a database's age is counted from its build time
AGE_UNITS = {"d": 86400, "h": 3600, "w": 7 * 86400}
RULE_KEYS = (
    "name", "action", "hosts", "networks", "countries", "continents", "subdivisions", "asns",
    "ports", "reason", "citation", "expires",
)  # fmt: skip
MATCH_KEYS = ("hosts", "networks", "countries", "continents", "subdivisions", "asns", "ports")
CLIENT_KEYS = ("name", "sources", "users", "rules")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MAX_GROUP_DEPTH = 64

# Codes people write that are not ISO 3166-1 alpha-2 country codes, with what to write instead.
NEAR_MISSES = {
    "UK": "GB",
    "EL": "GR",
    "EU": '"@eu" (the EU is a group, not a country)',
    "AP": "the codes of the Asia/Pacific countries you mean (AP is a legacy GeoIP pseudo-code)",
    "A1": "a rule for anonymous proxies is not country-based; A1 is a legacy GeoIP pseudo-code",
    "A2": "the satellite provider's ASN in `asns` (A2 is a legacy GeoIP pseudo-code)",
    "O1": "geo.unknown to handle addresses with no country",
    "ZZ": "geo.unknown to handle addresses with no country",
    "SU": "RU (the USSR code is withdrawn)",
    "YU": "RS or ME (Yugoslavia's code is withdrawn)",
    "CS": "RS or ME",
    "AN": "CW, SX or BQ (the Netherlands Antilles code is withdrawn)",
    "TP": "TL",
    "ZR": "CD",
    "BU": "MM",
    "FX": "FR",
    "KO": "XK (Kosovo)",
}
EXTRA_COUNTRIES = {"XK"}  # user-assigned, but databases emit it for Kosovo
SUBDIVISION_HINTS = {
    "RU-CR": "UA-43 (Crimea) and UA-40 (Sevastopol); RU-CR is not an ISO 3166-2 code",
    "RU-SEV": "UA-40 (Sevastopol); RU-SEV is not an ISO 3166-2 code",
    "CN-HK": 'the country code HK in `countries` (GeoIP reports Hong Kong as a country)',
    "CN-MO": 'the country code MO in `countries`',
    "CN-TW": 'the country code TW in `countries`',
}


@dataclass(frozen=True, slots=True)
class Issue:
    position: Position
    message: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        message = self.message
        if not message.isprintable():
            # one line per issue: a key or value quoted in the message may hold a line break
            message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
        return f"{self.position}: {self.severity}: {message}"


class PolicyError(GeogateError):
    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.position.line, i.position.column))
        errors = [i for i in self.issues if i.severity == "error"]
        super().__init__("\n".join(str(i) for i in errors))


def _country_codes() -> set[str]:
    return {c.alpha_2 for c in pycountry.countries} | EXTRA_COUNTRIES


_COUNTRIES = _country_codes()


def suggest_country(text: str) -> str | None:
    """What to write instead of a wrong country code, or None."""
    upper = text.strip().upper()
    if upper in NEAR_MISSES:
        return NEAR_MISSES[upper]
    for lookup in (
        lambda: pycountry.countries.get(alpha_3=upper),
        lambda: pycountry.countries.lookup(text.strip()),
        lambda: pycountry.historic_countries.get(alpha_2=upper),
    ):
        try:
            found: object = lookup()
        except LookupError:
            continue
        code = getattr(found, "alpha_2", None)
        if isinstance(code, str) and code in _COUNTRIES:
            return code
    return None


def _number(text: str) -> int | None:
    """A run of ASCII digits as an int, else None. str.isdigit() is also true for '²' and '٣'
    (int() then raises or reads another script), and int() refuses over 4300 digits."""
    if text.isascii() and text.isdigit() and len(text) <= 20:
        return int(text)
    return None


# The keys of a mapping as read: key -> (key node, value node).
_Keys = dict[str, tuple[Node, Node]]


class _RuleFields(TypedDict, total=False):
    """The optional fields of a Rule that its keys gave."""

    hosts: tuple[HostPattern, ...]
    networks: tuple[IPNetwork, ...]
    countries: frozenset[str]
    continents: frozenset[str]
    subdivisions: frozenset[str]
    asns: frozenset[int]
    ports: tuple[tuple[int, int], ...]
    reason: str | None
    citation: str | None
    expires: date | None


class _Settings(TypedDict, total=False):
    """The policy-wide settings a file gives (the others keep Policy's defaults)."""

    description: str
    mode: Mode
    default: Action
    special: Special
    addresses: Addresses
    fields: tuple[GeoField, ...]
    unknown: Action
    disagreement: Disagreement
    nat64: Nat64Prefixes
    max_age: int
    on_stale: OnStale


class _Reader:
    """Walks the node tree, converting values and collecting issues with their positions."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[Issue] = []

    def pos(self, node: Node) -> Position:
        return position(self.path, node)

    def error(self, node: Node, message: str) -> None:
        self.issues.append(Issue(self.pos(node), message))

    def warn(self, node: Node, message: str) -> None:
        self.issues.append(Issue(self.pos(node), message, "warning"))

    def mapping(self, node: Node, what: str, allowed: tuple[str, ...]) -> _Keys:
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping of `key: value` lines")
            return {}
        out: _Keys = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, ScalarNode) else None
            if key is None:
                self.error(knode, f"{what}: keys must be plain words")
                continue
            if key in out:
                self.error(knode, f"{what}: `{key}` is given twice; keep one")
                continue
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(allowed)}"
                self.error(knode, f"{what}: unknown key `{key}`{hint}")
                continue
            out[key] = (knode, vnode)
        return out

    def scalar(self, node: Node, what: str) -> str | None:
        if not isinstance(node, ScalarNode) or node.value == "" and node.style is None:
            self.error(node, f"{what} must be a single value")
            return None
        value: str = node.value  # a scalar's value is its text
        return value

    def choice[S: str](self, node: Node, what: str, choices: tuple[S, ...]) -> S | None:
        """The one of `choices` the node spells (in any case), e.g. Action.BLOCK for `Block`."""
        value = self.scalar(node, what)
        if value is None:
            return None
        lowered = value.lower()
        for c in choices:
            if c == lowered:
                return c
        close = difflib.get_close_matches(lowered, choices, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        self.error(node, f"{what}: `{value}` is not one of {', '.join(choices)}{hint}")
        return None

    def items(self, node: Node, what: str) -> list[Node]:
        """A list value; a lone scalar is accepted as a list of one."""
        if isinstance(node, SequenceNode):
            if not node.value:
                self.error(node, f"{what}: the list is empty; remove the key or list something")
            return list(node.value)
        if isinstance(node, ScalarNode) and node.value != "":
            return [node]
        self.error(node, f"{what} must be a list, e.g. `{what}: [a, b]`")
        return []


class _PolicyBuilder:
    def __init__(self, reader: _Reader, today: date) -> None:
        self.r = reader
        self.today = today
        self.user_groups: dict[str, tuple[Node, list[Node]]] = {}
        self.expanded: dict[str, frozenset[str]] = {}
        self.group_citations: dict[str, str] = {}
        self.rule_names: set[str] = set()

    # -- groups ------------------------------------------------------------------------------
    def read_groups(self, node: Node) -> None:
        if not isinstance(node, MappingNode):
            self.r.error(node, "groups must map a group name to a list of country codes")
            return
        builtins = builtin_groups()
        for knode, vnode in node.value:
            name = knode.value
            if not isinstance(name, str) or not NAME_RE.match(name):
                self.r.error(knode, f"group name `{name}` must be lower-case letters, digits and '-'")
                continue
            if name in self.user_groups:
                self.r.error(knode, f"group `{name}` is defined twice")
                continue
            if name in builtins:
                self.r.warn(knode, f"group `{name}` hides the built-in group of the same name")
            self.user_groups[name] = (knode, self.r.items(vnode, f"groups.{name}"))

    def group(self, name: str, node: Node, stack: tuple[str, ...] = ()) -> frozenset[str] | None:
        """Countries of `@name`: the policy's own groups first, then the built-in ones."""
        if name in self.expanded:
            return self.expanded[name]
        if name in stack:
            self.r.error(node, f"group `{name}` includes itself ({' -> '.join(stack + (name,))})")
            return None
        if len(stack) >= MAX_GROUP_DEPTH:  # each level is a Python call: stop before the stack does
            self.r.error(node, f"group `{name}`: groups include each other more than {MAX_GROUP_DEPTH} deep")
            return None
        if name in self.user_groups:
            codes: set[str] = set()
            for item in self.user_groups[name][1]:
                codes |= self.countries_item(item, f"groups.{name}", stack + (name,))
            result = frozenset(codes)
        elif name in builtin_groups():
            g = builtin_groups()[name]
            self.group_citations[name] = g.citation
            result = g.countries
        else:
            known = sorted(set(self.user_groups) | set(builtin_groups()))
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"; did you mean `@{close[0]}`?" if close else f"; known groups: {', '.join('@' + k for k in known)}"
            self.r.error(node, f"unknown group `@{name}`{hint}")
            return None
        self.expanded[name] = result
        return result

    def countries_item(self, node: Node, what: str, stack: tuple[str, ...] = ()) -> set[str]:
        text = self.r.scalar(node, what)
        if text is None:
            return set()
        text = text.strip()
        if text.startswith("@"):
            return set(self.group(text[1:], node, stack) or ())
        code = text.upper()
        if code in _COUNTRIES and code not in NEAR_MISSES:
            return {code}
        hint = suggest_country(text)
        tail = f"; did you mean {hint}?" if hint else "; write an ISO 3166-1 alpha-2 code such as DE, or a group such as @eu"
        self.r.error(node, f"{what}: `{text}` is not an ISO 3166-1 alpha-2 country code{tail}")
        return set()

    # -- rules -------------------------------------------------------------------------------
    def rules(self, node: Node, what: str) -> tuple[Rule, ...]:
        if not isinstance(node, SequenceNode):
            self.r.error(node, f"{what} must be a list of rules, each starting with `- name:`")
            return ()
        return tuple(r for r in (self.rule(n) for n in node.value) if r is not None)

    def rule(self, node: Node) -> Rule | None:
        """One rule; every key is read (and every problem reported) even when another is wrong."""
        keys = self.r.mapping(node, "rule", RULE_KEYS)
        if not keys:
            return None
        name = self.rule_name(node, keys)
        action = self.rule_action(node, keys, name)
        label = f"rule `{name}`" if name else "rule"
        origin: dict[str, str] = {}
        fields = self.match_keys(keys, origin)
        if "reason" in keys:
            fields["reason"] = self.r.scalar(keys["reason"][1], "reason")
        if "citation" in keys:
            fields["citation"] = self.r.scalar(keys["citation"][1], "citation")
        if "expires" in keys:
            fields["expires"] = self.expires(keys["expires"][1], label)
        if not any(k in keys for k in MATCH_KEYS):
            self.r.warn(node, f"{label} has no match key ({', '.join(MATCH_KEYS)}): it matches every connection")
        if name is None or action is None:
            return None
        return Rule(name=name, action=action, origin=origin, **fields)

    def rule_name(self, node: Node, keys: _Keys) -> str | None:
        if "name" not in keys:
            self.r.error(node, "rule has no `name`; add `name: a-short-name`")
            return None
        name = self.r.scalar(keys["name"][1], "rule name")
        if name is not None:
            if name in self.rule_names:
                self.r.error(keys["name"][1], f"rule name `{name}` is used twice; names must be unique")
            self.rule_names.add(name)
        return name

    def rule_action(self, node: Node, keys: _Keys, name: str | None) -> Action | None:
        if "action" not in keys:
            self.r.error(node, f"rule `{name}` has no `action`; add `action: allow`, `block` or `monitor`")
            return None
        return self.r.choice(keys["action"][1], "action", ACTIONS)

    def match_keys(self, keys: _Keys, origin: dict[str, str]) -> _RuleFields:
        """The match keys of a rule, in the order of RULE_KEYS; `origin` gets where each country
        and subdivision came from."""
        fields: _RuleFields = {}

        def items(key: str) -> list[Node]:
            return self.r.items(keys[key][1], key)

        if "hosts" in keys:
            fields["hosts"] = tuple(filter(None, map(self.host, items("hosts"))))
        if "networks" in keys:
            fields["networks"] = tuple(filter(None, map(self.network, items("networks"))))
        if "countries" in keys:
            fields["countries"] = self.tagged(items("countries"), lambda n: self.countries_item(n, "countries"), origin)
        if "continents" in keys:
            fields["continents"] = frozenset(filter(None, map(self.continent, items("continents"))))
        if "subdivisions" in keys:
            fields["subdivisions"] = self.tagged(items("subdivisions"), self.subdivision, origin)
        if "asns" in keys:
            fields["asns"] = frozenset(a for a in map(self.asn, items("asns")) if a is not None)
        if "ports" in keys:
            fields["ports"] = tuple(filter(None, map(self.ports, items("ports"))))
        return fields

    @staticmethod
    def tagged(items: list[Node], read: Callable[[Node], set[str]], origin: dict[str, str]) -> frozenset[str]:
        """The codes `read` finds in each item; each code's origin is the group it came from
        (`@eu` -> "eu"), or "listed" when written out. The first origin of a code stays."""
        codes: set[str] = set()
        for item in items:
            got = read(item)
            tag = item.value.strip() if isinstance(item, ScalarNode) else ""
            for c in got:
                origin.setdefault(c, tag[1:] if tag.startswith("@") else "listed")
            codes |= got
        return frozenset(codes)

    def host(self, node: Node) -> HostPattern | None:
        text = self.r.scalar(node, "hosts")
        if text is None:
            return None
        raw = text.strip()
        wildcard = raw.startswith("*.")
        body = raw[2:] if wildcard else raw
        if "*" in body:
            self.r.error(node, f"hosts: `{raw}`: only a leading `*.` wildcard is supported, e.g. `*.example.com`")
            return None
        if parse_ip(body) is not None:
            self.r.error(node, f"hosts: `{raw}` is an address; put it under `networks:` instead")
            return None
        try:
            name = canonical_host(body)
        except AddressError as e:
            self.r.error(node, f"hosts: {e}")
            return None
        return HostPattern(f"*.{name}", f".{name}") if wildcard else HostPattern(name, None)

    def network(self, node: Node) -> IPNetwork | None:
        text = self.r.scalar(node, "networks")
        if text is None:
            return None
        try:
            return ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as e:
            try:
                fixed = ipaddress.ip_network(text.strip(), strict=False)
                self.r.error(node, f"networks: `{text}` has host bits set; did you mean {fixed}?")
            except ValueError:
                self.r.error(node, f"networks: `{text}` is not an address or CIDR network ({e}); write e.g. 203.0.113.0/24")
            return None

    def continent(self, node: Node) -> str | None:
        text = self.r.scalar(node, "continents")
        if text is None:
            return None
        code = text.strip().upper()
        if code in CONTINENTS:
            return code
        by_name = {v.lower(): k for k, v in CONTINENTS.items()}
        hint = by_name.get(text.strip().lower())
        tail = f"; did you mean {hint}?" if hint else f"; write one of {', '.join(CONTINENTS)}"
        self.r.error(node, f"continents: `{text}` is not a continent code{tail}")
        return None

    def subdivision(self, node: Node) -> set[str]:
        text = self.r.scalar(node, "subdivisions")
        if text is None:
            return set()
        text = text.strip()
        if text.startswith("@"):
            name = text[1:]
            g = builtin_groups().get(name)
            if g is None or not g.regions:
                with_regions = sorted(k for k, v in builtin_groups().items() if v.regions)
                listed = ", ".join("@" + k for k in with_regions)
                self.r.error(node, f"subdivisions: `{text}` is not a built-in group with regions; groups with regions: {listed}")
                return set()
            self.group_citations[name] = g.citation
            return set(g.regions)
        code = text.upper()
        if code in SUBDIVISION_HINTS:
            self.r.error(node, f"subdivisions: `{text}`: write {SUBDIVISION_HINTS[code]}")
            return set()
        if pycountry.subdivisions.get(code=code) is not None:
            return {code}
        if code in _COUNTRIES:
            self.r.error(node, f"subdivisions: `{text}` is a country; put it under `countries:` or write a region code "
                               "such as UA-43")
        else:
            self.r.error(node, f"subdivisions: `{text}` is not an ISO 3166-2 code; write COUNTRY-REGION, e.g. UA-43")
        return set()

    def asn(self, node: Node) -> int | None:
        text = self.r.scalar(node, "asns")
        if text is None:
            return None
        number = _number(text.strip().upper().removeprefix("AS"))
        if number is not None and 0 < number < 2**32:
            return number
        self.r.error(node, f"asns: `{text}` is not an AS number; write e.g. 15169 or AS15169")
        return None

    def ports(self, node: Node) -> tuple[int, int] | None:
        text = self.r.scalar(node, "ports")
        if text is None:
            return None
        lo, sep, hi = text.strip().partition("-")
        a, b = _number(lo), _number(hi) if sep else _number(lo)
        if a is not None and b is not None and 0 < a <= b < 65536:
            return (a, b)
        self.r.error(node, f"ports: `{text}` is not a port or range; write e.g. 443 or 8000-8999")
        return None

    def expires(self, node: Node, label: str) -> date | None:
        text = self.r.scalar(node, "expires")
        if text is None:
            return None
        try:
            when = date.fromisoformat(text.strip())
        except ValueError:
            self.r.error(node, f"expires: `{text}` is not a date; write YYYY-MM-DD, e.g. 2027-03-31")
            return None
        if when < self.today:
            self.r.warn(node, f"{label} expired on {when}: it no longer matches anything")
        return when

    # -- nat64 -------------------------------------------------------------------------------
    def nat64(self, node: Node) -> Nat64Prefixes:
        """`nat64: [PREFIX/LEN, ...]`: RFC 6052 prefixes, none overlapping another or a built-in form."""
        lengths = ", ".join(f"/{n}" for n in NAT64_LENGTHS)
        seen: list[tuple[ipaddress.IPv6Network, int]] = []
        for item in self.r.items(node, "nat64"):
            text = self.r.scalar(item, "nat64")
            if text is None:
                continue
            text = text.strip()
            line = item.start_mark.line + 1
            if "/" not in text and parse_ip(text) is not None:
                self.r.error(item, f"nat64: `{text}` has no prefix length; write the prefix your NAT64 uses with "
                                   f"its RFC 6052 length ({lengths}), e.g. 64:ff9b:1::/48")
                continue
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as e:
                self.r.error(item, f"nat64: `{text}` is not an IPv6 prefix ({e}); write e.g. 64:ff9b:1::/48")
                continue
            if net.version != 6:
                self.r.error(item, f"nat64: `{text}` is an IPv4 network; NAT64 prefixes are IPv6, e.g. 64:ff9b:1::/48")
                continue
            if net.prefixlen not in NAT64_LENGTHS:
                written = ipaddress.ip_address(text.split("/", 1)[0])
                longer = min((n for n in NAT64_LENGTHS if n > net.prefixlen), default=96)
                hint = f"; did you mean {ipaddress.ip_network((written, longer), strict=False)}?"
                self.r.error(item, f"nat64: `{text}`: /{net.prefixlen} is not an RFC 6052 prefix length; write the "
                                   f"length your NAT64 uses, one of {lengths}{hint}")
                continue
            if int(ipaddress.ip_address(text.split("/", 1)[0])) != int(net.network_address):
                self.r.error(item, f"nat64: `{text}` has host bits set; did you mean {net}?")
                continue
            if net.prefixlen == 96 and (int(net.network_address) >> 56) & 0xFF:
                fixed = ipaddress.IPv6Network((int(net.network_address) & ~(0xFF << 56), 96))
                self.r.error(item, f"nat64: `{text}`: bits 64-71 of a NAT64 prefix must be zero (RFC 6052 "
                                   f"section 2.2); did you mean {fixed}?")
                continue
            if str(net) == NAT64_WELL_KNOWN:
                self.r.warn(item, f"nat64: {NAT64_WELL_KNOWN} is the well-known prefix, always decoded; this entry can go")
                continue
            clash = next((f"{c} ({form})" for c, form in BUILTIN_CARRIERS if net.overlaps(ipaddress.ip_network(c))), None)
            if clash is not None:
                self.r.error(item, f"nat64: `{text}` overlaps {clash}, which geogate already decodes; "
                                   f"declare only the prefix your NAT64 uses, e.g. 64:ff9b:1::/48")
                continue
            other = next(((o, ln) for o, ln in seen if o.overlaps(net)), None)
            if other is not None:
                self.r.error(item, f"nat64: `{text}` overlaps {other[0]} (line {other[1]}); an address must have one "
                                   f"layout, so keep the prefix your NAT64 really uses")
                continue
            seen.append((net, line))
        return Nat64Prefixes(tuple(n for n, _ in seen))

    # -- clients -----------------------------------------------------------------------------
    def clients(self, node: Node) -> tuple[ClientProfile, ...]:
        if not isinstance(node, SequenceNode):
            self.r.error(node, "clients must be a list of profiles, each starting with `- name:`")
            return ()
        out = []
        names: set[str] = set()
        for item in node.value:
            keys = self.r.mapping(item, "client profile", CLIENT_KEYS)
            if not keys:
                continue
            name = self.r.scalar(keys["name"][1], "client name") if "name" in keys else None
            if "name" not in keys:
                self.r.error(item, "client profile has no `name`")
            elif name in names:
                self.r.error(keys["name"][1], f"client profile `{name}` is defined twice")
            names.add(name or "")
            sources: tuple[IPNetwork, ...] | None = None
            if "sources" in keys:
                sources = tuple(filter(None, (self.network(n) for n in self.r.items(keys["sources"][1], "sources"))))
            users: frozenset[str] | None = None
            if "users" in keys:
                users = frozenset(filter(None, (self.r.scalar(n, "users") for n in self.r.items(keys["users"][1], "users"))))
            if sources is None and users is None:
                self.r.error(item, f"client profile `{name}` needs `sources:` (client networks) or `users:` (proxy-auth names)")
            rules = self.rules(keys["rules"][1], f"clients.{name}.rules") if "rules" in keys else ()
            if name:
                out.append(ClientProfile(name, sources, users, rules))
        return tuple(out)


def load_policy_text(text: str, path: str, *, today: date | None = None, data: bytes | None = None) -> Policy:
    """Validate and build a policy; raises PolicyError listing every error (warnings kept).

    The file is read top to bottom in one order (header, settings, nat64, groups, rules, clients):
    warnings are reported in the order they were found.
    """
    reader = _Reader(path)
    root = _root(text, path)
    top = reader.mapping(root, "policy", TOP_KEYS)
    b = _PolicyBuilder(reader, today or date.today())
    name = _header(reader, root, top)
    settings = _settings(reader, root, top)
    if "nat64" in top:
        settings["nat64"] = b.nat64(top["nat64"][1])
    if "groups" in top:
        b.read_groups(top["groups"][1])
        for gname, (knode, _items) in b.user_groups.items():
            b.group(gname, knode)
    rules = b.rules(top["rules"][1], "rules") if "rules" in top else ()
    clients = b.clients(top["clients"][1]) if "clients" in top else ()

    if any(i.severity == "error" for i in reader.issues):
        raise PolicyError(reader.issues)
    raw = data if data is not None else text.encode()
    ref = PolicyRef(name=name or "", path=path, sha256=hashlib.sha256(raw).hexdigest())
    return Policy(
        ref=ref,
        rules=rules,
        clients=clients,
        groups=dict(b.expanded),
        group_citations=dict(b.group_citations),
        warnings=tuple(str(i) for i in reader.issues),
        **settings,
    )


def _root(text: str, path: str) -> Node:
    """The document's root node; a file that is not YAML, or is empty, is one error."""
    try:
        root = compose(text, path)
    except YamlSyntaxError as e:
        raise PolicyError([Issue(e.position, e.message)]) from None
    if root is None:
        raise PolicyError([Issue(Position(path, 1, 1), "the policy file is empty; start with `version: 1`")])
    return root


def _required(reader: _Reader, root: Node, top: _Keys, key: str, example: str) -> Node | None:
    if key not in top:
        reader.error(root, f"missing `{key}`; add `{example}`")
        return None
    return top[key][1]


def _header(reader: _Reader, root: Node, top: _Keys) -> str | None:
    """`version` and `name`: the policy's name, or None when it is missing or unreadable."""
    node = _required(reader, root, top, "version", "version: 1")
    if node is not None and reader.scalar(node, "version") != "1":
        reader.error(node, "version: only `version: 1` exists")
    node = _required(reader, root, top, "name", "name: my-policy")
    if node is None:
        return None
    name = reader.scalar(node, "name")
    if name is not None and not NAME_RE.match(name):
        example = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "my-policy"
        reader.error(node, f"name: `{name}` must use lower-case letters, digits and '-', e.g. `{example}`")
    return name


def _choice[S: str](reader: _Reader, keys: _Keys, key: str, what: str, choices: tuple[S, ...]) -> S | None:
    """The value of `key` in `keys` as one of `choices`; None when absent or wrong (reported)."""
    return reader.choice(keys[key][1], what, choices) if key in keys else None


def _settings(reader: _Reader, root: Node, top: _Keys) -> _Settings:
    """The policy-wide settings, `default` (required) to `geo`; what is absent or wrong is left out."""
    settings: _Settings = {}
    node = _required(reader, root, top, "default", "default: allow")
    if node is not None and (default := reader.choice(node, "default", FINAL_ACTIONS)) is not None:
        settings["default"] = default
    if "description" in top and (description := reader.scalar(top["description"][1], "description")) is not None:
        settings["description"] = description
    if (mode := _choice(reader, top, "mode", "mode", tuple(Mode))) is not None:
        settings["mode"] = mode
    if (special := _choice(reader, top, "special", "special", tuple(Special))) is not None:
        settings["special"] = special
    if (addresses := _choice(reader, top, "addresses", "addresses", tuple(Addresses))) is not None:
        settings["addresses"] = addresses
    if "geo" in top:
        _geo_settings(reader, reader.mapping(top["geo"][1], "geo", GEO_KEYS), settings)
    return settings


def _geo_settings(reader: _Reader, geo: _Keys, settings: _Settings) -> None:
    if "fields" in geo:
        fields: list[GeoField] = []
        for n in reader.items(geo["fields"][1], "geo.fields"):
            f = reader.choice(n, "geo.fields", FIELDS)
            if f and f not in fields:
                fields.append(f)
        settings["fields"] = tuple(fields)
    if (unknown := _choice(reader, geo, "unknown", "geo.unknown", FINAL_ACTIONS)) is not None:
        settings["unknown"] = unknown
    if (disagreement := _choice(reader, geo, "disagreement", "geo.disagreement", tuple(Disagreement))) is not None:
        settings["disagreement"] = disagreement
    if "max_age" in geo and (max_age := _max_age(reader, geo["max_age"][1])) is not None:
        settings["max_age"] = max_age
    if (on_stale := _choice(reader, geo, "on_stale", "geo.on_stale", tuple(OnStale))) is not None:
        settings["on_stale"] = on_stale
        if "max_age" not in geo:
            reader.warn(geo["on_stale"][1], "geo.on_stale does nothing without geo.max_age; add e.g. `max_age: 45d`")


def _max_age(reader: _Reader, node: Node) -> int | None:
    """`geo.max_age: 45d` (also `36h`, `6w`): seconds, or None when wrong (reported)."""
    text = reader.scalar(node, "geo.max_age")
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d{1,6})\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m and unit in AGE_UNITS and int(m.group(1)) > 0:
        return int(m.group(1)) * AGE_UNITS[unit]
    digits = re.sub(r"\D", "", text)
    example = f"{int(digits)}d" if digits and 0 < int(digits) < 10**6 else "45d"
    reader.error(node, f"geo.max_age: `{text}` is not an age; write a whole number of days, hours or weeks, "
                       f"e.g. `{example}` (also 36h, 6w)")
    return None


def load_policy(path: str | os.PathLike[str], *, today: date | None = None) -> Policy:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise GeogateError(f"policy file {p} does not exist") from None
    except OSError as e:
        raise GeogateError(f"cannot read policy file {p}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PolicyError([Issue(Position(str(p), 1, 1), f"the file is not UTF-8 text (byte {e.start})")]) from None
    return load_policy_text(text, str(p), today=today, data=data)
