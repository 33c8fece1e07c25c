"""A loaded configuration (policy + databases) and the one way every shell asks for a decision."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from dataclasses import field
from datetime import date
from datetime import datetime
from datetime import time as dtime
from datetime import timezone
from pathlib import Path
from typing import Collection
from typing import Iterable
from typing import Sequence

from geogate.core import packaged
from geogate.core.addresses import IPAddress
from geogate.core.cache import BoundedCache
from geogate.core.databases import DatabaseSet
from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.core.decide import VerdictMemo
from geogate.core.decide import decide_outcome
from geogate.core.errors import GeogateError
from geogate.core.freshness import Freshness
from geogate.core.freshness import Limit
from geogate.core.freshness import limit_of
from geogate.core.ipaddress_private import ip_key
from geogate.core.lookup import FactsSource
from geogate.core.rules import Mode
from geogate.core.rules import Policy
from geogate.core.rules import Rule
from geogate.policy.loader import load_policy

OUTCOME_CACHE_SIZE = 4096  # a few MB; proxies see far fewer distinct destinations than that


def default_policy_path() -> Path:
    return Path(os.environ.get("GEOGATE_POLICY") or packaged.default_policy())


def database_paths(given: Iterable[str | os.PathLike[str]] | None) -> list[Path]:
    """The databases to use: the ones given, else the bundled defaults (unpacked on first use).
    A directory given stands for the `.mmdb` files in it, by name (see directory_databases)."""
    paths: list[Path] = []
    for p in given or ():
        if str(p):
            paths += directory_databases(Path(p)) if Path(p).is_dir() else [Path(p)]
    if paths:
        return paths
    from geogate.core.bundled import default_database_paths

    return list(default_database_paths())


def named_database_files(given: Iterable[str]) -> tuple[str, ...]:
    """The database files `--db` names now, for watching them: a directory stands for its .mmdb
    files (see directory_databases); one that holds none stands as `DIR/*.mmdb`, a file that is
    missing (and so is waited for)."""
    out: list[str] = []
    for d in given:
        if os.path.isdir(d):
            try:
                out += [str(p) for p in directory_databases(Path(d))]
            except GeogateError:
                out.append(os.path.join(d, "*.mmdb"))
        else:
            out.append(d)
    return tuple(out)


def directory_databases(directory: Path) -> list[Path]:
    """The databases of a directory, such as the one MaxMind's geoipupdate writes to: its files
    named `*.mmdb`, sorted by name (GeoLite2-ASN, GeoLite2-City, GeoLite2-Country). Hidden
    files and anything else (geoipupdate's lock and temporary files) are left out."""
    try:
        found = sorted(p for p in directory.iterdir() if p.name.endswith(".mmdb") and not p.name.startswith(".")
                       and p.is_file())
    except OSError as e:
        raise GeogateError(f"cannot read database directory {directory}: {e.strerror or e}") from None
    if not found:
        raise GeogateError(f"database directory {directory} holds no .mmdb file; point --db at the directory "
                           f"geoipupdate writes to (its DatabaseDirectory) or at a .mmdb file")
    return found


_CITY_HINT = "add a City database with --db, e.g. MaxMind GeoLite2-City (docs/databases.md)"


def _rules_match(rules: Sequence[Rule]) -> str:
    names = ", ".join(r.name for r in rules)
    return f"rule {names} matches" if len(rules) == 1 else f"rules {names} match"


def database_warnings(policy: Policy, databases: DatabaseSet, countries: Collection[str] | None = None) -> list[str]:
    """What the policy asks for that the configured databases cannot answer, said only where it
    could change a decision. Without `countries` (checking a policy, starting the proxy) a rule
    that can never match is mentioned when the policy enforces; a monitor-mode policy blocks
    nothing, whatever its rules match. With `countries` (the countries of the addresses one
    decision is about) a subdivisions rule is mentioned only when one of them holds its regions."""
    out = []
    rules = policy.all_rules()
    names = ", ".join(db.name for db in databases.databases)
    if countries is None and policy.mode is Mode.MONITOR:
        rules = ()
    if not databases.has_subdivisions:
        idle = [r for r in rules if r.subdivisions and (
            countries is None or {code.split("-", 1)[0] for code in r.subdivisions} & set(countries))]
        if idle:
            out.append(f"{policy.ref.path}: warning: {_rules_match(idle)} subdivisions, but no City database is loaded "
                       f"({names}); {'it' if len(idle) == 1 else 'they'} can never match: {_CITY_HINT}.")
    if any(r.asns for r in rules) and not databases.has_asn:
        used = [r for r in rules if r.asns]
        out.append(f"{policy.ref.path}: warning: {_rules_match(used)} asns, but no ASN database is loaded "
                   f"({names}); {'it' if len(used) == 1 else 'they'} can never match. Add an ASN database with --db.")
    if not databases.has_country:
        out.append(f"warning: none of the databases ({names}) gives countries; every public address is unknown")
    return out


@dataclass(frozen=True)
class GateState:
    """Immutable in what it decides with (a reload builds a new one, so no decision ever sees
    half of a change); only its caches and the day it last saw change."""

    policy: Policy
    databases: DatabaseSet
    facts: FactsSource
    # outcomes memoised on exactly what they depend on (see decide.decide_outcome)
    _outcomes: BoundedCache = field(default_factory=lambda: BoundedCache(OUTCOME_CACHE_SIZE), repr=False, compare=False)
    # what the rules said about each set of records (see decide.VerdictMemo)
    _verdicts: VerdictMemo | None = field(default=None, repr=False, compare=False)
    # (start, end, date, stale) of the moment last seen, in time.time() seconds: within one UTC
    # day and on one side of the staleness limit (see _moment)
    _day: tuple[float, float, date, str | None] = field(default=(0.0, 0.0, date.min, None), repr=False,
                                                        compare=False)
    # when the databases turn stale under geo.max_age (see core/freshness.py), fixed at load
    _limit: Limit | None = field(default=None, repr=False, compare=False)
    # the two of it every decision reads, as plain attributes (a property costs more, per decision)
    _stale_at: float = field(default=float("inf"), repr=False, compare=False)
    _stale_warning: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.facts.nat64 != self.policy.nat64:  # addresses are classified with the policy's NAT64 prefixes
            object.__setattr__(self, "facts", self.facts.with_nat64(self.policy.nat64))
        if self._limit is None:
            object.__setattr__(self, "_limit", limit_of(self.policy, self.databases.infos, time.time()))
        assert self._limit is not None
        object.__setattr__(self, "_stale_at", self._limit.stale_at)
        object.__setattr__(self, "_stale_warning", self._limit.warning)
        if self._verdicts is None or self._verdicts.policy is not self.policy:
            object.__setattr__(self, "_verdicts", VerdictMemo(self.policy))

    @classmethod
    def load(cls, policy_path: str | os.PathLike[str] | None, db_paths: Sequence[str | os.PathLike[str]] | None) -> "GateState":
        policy = load_policy(policy_path or default_policy_path())
        databases = DatabaseSet.open(database_paths(db_paths))
        return cls(policy, databases, FactsSource(databases))

    @property
    def warnings(self) -> list[str]:
        return list(self.policy.warnings) + database_warnings(self.policy, self.databases)

    @property
    def limit(self) -> Limit:
        assert self._limit is not None, "set in __post_init__"
        return self._limit

    def freshness(self, wall: float | None = None) -> Freshness:
        """How old the databases are against `geo.max_age` at `wall` (time.time(); default now):
        what metrics, `geogate db info` and the proxy's event log read."""
        return Freshness.of(self.limit, time.time() if wall is None else wall)

    def decide(
        self,
        req: Request,
        addresses: Sequence[IPAddress],
        *,
        now: datetime | None = None,
        resolve_error: str | None = None,
    ) -> Decision:
        if now is None:
            wall = time.time()
            start, end, day, stale = self._day
            if not start <= wall < end:
                day, stale = self._moment(wall)
        else:
            wall, day = now.timestamp(), now.date()
            stale = self._stale_warning if wall >= self._stale_at else None
        # Addresses by integer (an ipaddress object's hash runs Python code); the client only
        # where a client profile can tell clients apart.
        client = (ip_key(req.client_ip) if req.client_ip else None, req.user) if self.policy.clients else None
        keys = (ip_key(addresses[0]),) if len(addresses) == 1 else tuple(map(ip_key, addresses))
        key = (req.host, req.port, client, req.host_is_claim, req.host_addresses, keys, resolve_error, day, stale)
        outcome = self._outcomes.get(key)
        if outcome is None:
            # (one key per address by construction; zip's strict= is a keyword call, slow here)
            facts = [self.facts.facts_of(ip, k) for ip, k in zip(addresses, keys)]  # noqa: B905
            outcome = decide_outcome(self.policy, req, facts, self.facts.infos, day, resolve_error, self._verdicts,
                                     stale)
            self._outcomes.put(key, outcome)
        return Decision(req, outcome, now, wall)

    def _moment(self, wall: float) -> tuple[date, str | None]:
        """The UTC date at `wall` (time.time()) and the staleness warning (None: fresh), kept
        with the interval they hold for: cheaper than a datetime and a comparison per decision,
        and what rules expire by and geo.on_stale applies by."""
        start, end, day = utc_day(wall)
        if wall >= self._stale_at:
            start, stale = max(start, self._stale_at), self._stale_warning
        else:
            end, stale = min(end, self._stale_at), None
        object.__setattr__(self, "_day", (start, end, day, stale))
        return day, stale


def utc_day(wall: float) -> tuple[float, float, date]:
    """(start, end, date) of the UTC day holding `wall`, in time.time() seconds."""
    day = datetime.fromtimestamp(wall, timezone.utc).date()
    start = datetime.combine(day, dtime(0), timezone.utc).timestamp()
    return start, start + 86400.0, day
