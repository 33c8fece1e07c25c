"""The policy as the decision engine sees it: validated, expanded, immutable."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from datetime import date
from enum import StrEnum
from typing import Literal

from geogate.core.addresses import NO_NAT64
from geogate.core.addresses import IPNetwork
from geogate.core.addresses import Nat64Prefixes

# The policy's words are StrEnums: each member is the string the policy file spells, so records,
# the YAML loader and any comparison with a plain string see exactly the text they saw before.


class Action(StrEnum):
    """What a rule, a setting or a decision does with a connection."""

    ALLOW = "allow"
    BLOCK = "block"
    MONITOR = "monitor"  # allowed, and recorded as would_block


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"  # decide and record, never block


class Special(StrEnum):
    """`special:` what to do with an address in a special-purpose range."""

    ALLOW = "allow"
    BLOCK = "block"
    LOOKUP = "lookup"  # no special treatment: the rules and the databases decide


class Disagreement(StrEnum):
    """`geo.disagreement:` which databases a geo rule looks at."""

    ANY = "any"  # every database that knows the address
    FIRST = "first"  # the first database that gives one of `geo.fields`


class Addresses(StrEnum):
    """`addresses:` how the addresses of a name decide."""

    ALL = "all"  # every address must be allowed
    ANY = "any"  # connect to an allowed one


class OnStale(StrEnum):
    """`geo.on_stale:` what a database older than `geo.max_age` does to decisions."""

    WARN = "warn"  # decide as usual; each decision records the warning
    MONITOR = "monitor"  # the policy turns observe-only: nothing is blocked, all is recorded
    BLOCK = "block"  # fail closed: every connection is refused until the data is fresh


ACTIONS = tuple(Action)
# The values `default:` and `geo.unknown:` take (a final say is never `monitor`).
FINAL_ACTIONS = (Action.ALLOW, Action.BLOCK)

# A GeoRecord attribute a country rule reads. Plain strings, not an enum: the engine reads them
# with getattr, whose attribute cache takes only exact str.
GeoField = Literal["country", "registered_country", "represented_country"]
FIELDS: tuple[GeoField, ...] = ("country", "registered_country", "represented_country")
CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


@dataclass(frozen=True, slots=True)
class HostPattern:
    """`example.com` matches that name only; `*.example.com` matches any name below it."""

    text: str
    suffix: str | None  # ".example.com" for a wildcard

    def matches(self, host: str) -> bool:
        if self.suffix is not None:
            return host.endswith(self.suffix)
        return host == self.text


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    hosts: tuple[HostPattern, ...] | None = None
    networks: tuple[IPNetwork, ...] | None = None
    countries: frozenset[str] | None = None
    continents: frozenset[str] | None = None
    subdivisions: frozenset[str] | None = None
    asns: frozenset[int] | None = None
    ports: tuple[tuple[int, int], ...] | None = None
    reason: str | None = None
    citation: str | None = None
    expires: date | None = None
    # where each country/subdivision came from ("@group" or "listed"), to explain a match
    origin: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        # The engine compares members by identity: a plain "block" must become Action.BLOCK
        # here, or a rule built by hand would never match as a block (an unknown word raises).
        object.__setattr__(self, "action", Action(self.action))


@dataclass(frozen=True, slots=True)
class ClientProfile:
    name: str
    sources: tuple[IPNetwork, ...] | None
    users: frozenset[str] | None
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """How a decision names the policy that made it."""

    name: str
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Policy:
    ref: PolicyRef
    description: str | None = None
    mode: Mode = Mode.ENFORCE
    default: Action = Action.BLOCK  # one of FINAL_ACTIONS
    fields: tuple[GeoField, ...] = ("country",)
    unknown: Action = Action.BLOCK  # one of FINAL_ACTIONS
    disagreement: Disagreement = Disagreement.ANY
    special: Special = Special.BLOCK
    addresses: Addresses = Addresses.ALL
    nat64: Nat64Prefixes = NO_NAT64  # declared NAT64 prefixes (64:ff9b::/96 is always decoded)
    max_age: int | None = None  # `geo.max_age` in seconds: older databases are stale (None: no limit)
    on_stale: OnStale = OnStale.WARN
    groups: dict[str, frozenset[str]] = field(default_factory=dict, hash=False, compare=False)
    rules: tuple[Rule, ...] = ()
    clients: tuple[ClientProfile, ...] = ()
    warnings: tuple[str, ...] = ()
    # citation of each built-in group the policy uses, for decisions that match through it
    group_citations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        # As Rule: settings given as plain words become the members the engine compares by identity.
        for name, kind in (("mode", Mode), ("default", Action), ("unknown", Action),
                           ("disagreement", Disagreement), ("special", Special), ("addresses", Addresses),
                           ("on_stale", OnStale)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    @property
    def name(self) -> str:
        return self.ref.name

    def all_rules(self) -> tuple[Rule, ...]:
        return tuple(r for c in self.clients for r in c.rules) + self.rules
