"""The metric families, and what each event adds to them.

Label values are bounded by construction: actions, modes and kinds from fixed sets, country
codes (two letters), rule names from the loaded policy (clipped). A host name or an address never
becomes a label value: the counts are per decision, the log has the detail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

from geogate.core.freshness import Limit
from geogate.core.geo import DatabaseInfo
from geogate.core.rules import OnStale
from geogate.core.rules import PolicyRef

DECISION_LABELS = ("action", "rule", "country", "mode")
ACTIONS = frozenset({"allow", "block", "monitor"})
# mitmproxy's mode names, and the gateway's kernel receipts
MODES = frozenset({"regular", "transparent", "socks5", "reverse", "upstream", "dns", "wireguard", "local",
                   "tun", "kernel", "resolver", "unknown"})
RESOLVE_ERROR_KINDS = frozenset({"timeout", "nxdomain", "no-address", "no-answer", "no-resolver",
                                 "no-name-server", "invalid-name", "failed"})
RELOAD_KINDS = frozenset({"policy", "database", "options"})
RELOAD_RESULTS = frozenset({"success", "failure", "missing"})
ON_STALE = frozenset(str(o) for o in OnStale)
INF = float("inf")
MAX_RULE_LENGTH = 64
MAX_CHILDREN = 4096  # distinct raw label tuples remembered (the bounded labels are far fewer)
# a decision is a dict probe (µs) unless a name is resolved (ms to the resolver timeout)
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)
_COUNTRY = re.compile(r"[A-Z]{2}")
_RULE = re.compile(r"[\x20-\x7e]+")


def _bounded(value: Any, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "other"


def country_label(value: Any) -> str:
    """An ISO code, or `none` (no country known); anything else is `other`."""
    if value is None:
        return "none"
    return value if isinstance(value, str) and _COUNTRY.fullmatch(value) else "other"


def rule_label(value: Any) -> str:
    """A rule name as the policy spells it (printable ASCII, clipped); `none` when no rule."""
    if not value:
        return "none"
    text = str(value)
    return text[:MAX_RULE_LENGTH] if _RULE.fullmatch(text) else "other"


def decision_labels(action: Any, rule: Any, country: Any, mode: Any) -> tuple[str, str, str, str]:
    return (_bounded(action, ACTIONS), rule_label(rule), country_label(country), _bounded(mode, MODES))


class Metrics:
    """The families of one process, in a registry of their own (nothing global is touched).

    Under PROMETHEUS_MULTIPROC_DIR (set before prometheus_client is imported) the values go to
    files there instead, which serve.aggregate_registry sums; the gauges say how: open
    connections add up over live workers, the policy and database gauges take the largest value
    of a live worker.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter("geogate_decisions", "Decisions recorded, by outcome and proxy mode",
                                 DECISION_LABELS, registry=r)
        self.decision_seconds = Histogram("geogate_decision_seconds",
                                          "Seconds from the hook's entry to the recorded decision",
                                          buckets=DECISION_BUCKETS, registry=r)
        self.resolve_errors = Counter("geogate_resolve_errors", "Destination names that could not be resolved",
                                      ["kind"], registry=r)
        self.reloads = Counter("geogate_reloads", "Policy and database reloads", ["kind", "result"], registry=r)
        self.policy_info = Gauge("geogate_policy_info", "The policy in force (1)", ["name", "sha256"],
                                 registry=r, multiprocess_mode="livemax")
        self.database_build = Gauge("geogate_database_build_timestamp_seconds",
                                    "Build time of each database in use (MMDB metadata build_epoch)", ["name"],
                                    registry=r, multiprocess_mode="livemax")
        self.log_write_errors = Counter("geogate_log_write_errors", "Decision records that could not be written",
                                        registry=r)
        self.max_age = Gauge("geogate_database_max_age_seconds",
                             "The policy's geo.max_age (+Inf: no limit)", registry=r, multiprocess_mode="livemax")
        self.stale_at = Gauge("geogate_database_stale_at_timestamp_seconds",
                              "When the databases in use pass geo.max_age (+Inf: never, -Inf: an unusable build time), "
                              "by the policy's geo.on_stale", ["on_stale"], registry=r, multiprocess_mode="livemax")
        self.revocations = Counter("geogate_revocations", "Open connections closed because a reload blocks them, "
                                   "by the new decision's rule and country", ["rule", "country"], registry=r)
        self.open_connections = Gauge("geogate_open_connections", "Upstream connections open now, by their decision",
                                      DECISION_LABELS, registry=r, multiprocess_mode="livesum")
        self._policy: tuple[str, str] | None = None
        # raw (action, rule, country, mode) -> the counter of its bounded labels: a decision then
        # costs one dict probe and one increment, not two regular expressions and a labels() lookup
        self._children: dict[tuple[Any, Any, Any, Any], Any] = {}
        self._databases: set[str] = set()
        self._on_stale: str | None = None

    def decided(self, record: Mapping[str, Any], seconds: float | None = None) -> None:
        """A decision record was written (or would have been, with no log)."""
        raw = (record.get("action"), record.get("rule"), record.get("country"), record.get("mode"))
        child = self._children.get(raw)
        if child is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            child = self._children[raw] = self.decisions.labels(*decision_labels(*raw))
        child.inc()
        if seconds is not None:
            self.decision_seconds.observe(seconds)

    def resolve_error(self, kind: str) -> None:
        self.resolve_errors.labels(_bounded(kind, RESOLVE_ERROR_KINDS)).inc()

    def reloaded(self, kind: str, result: str) -> None:
        self.reloads.labels(_bounded(kind, RELOAD_KINDS), _bounded(result, RELOAD_RESULTS)).inc()

    def log_write_error(self) -> None:
        self.log_write_errors.inc()

    def in_force(self, policy: PolicyRef, databases: Iterable[DatabaseInfo], limit: Limit | None = None) -> None:
        """The policy and databases decisions use now (at start and after each reload), and when
        they turn stale (`limit`: GateState.limit)."""
        now = (rule_label(policy.name), policy.sha256)
        if self._policy is not None and self._policy != now:
            # a multiprocess gauge keeps a series it was given: 0 marks the old policy out of force
            self.policy_info.labels(*self._policy).set(0)
        self.policy_info.labels(*now).set(1)
        self._policy = now
        names = set()
        for info in databases:
            name = rule_label(info.name)
            names.add(name)
            self.database_build.labels(name).set(info.build_epoch)
        for gone in self._databases - names:
            self.database_build.remove(gone)
        self._databases = names
        if limit is not None:
            self._limit_in_force(limit)

    def _limit_in_force(self, limit: Limit) -> None:
        on_stale = _bounded(str(limit.on_stale), ON_STALE)
        if self._on_stale is not None and self._on_stale != on_stale:
            # as for the policy: a series once given stays; +Inf says the old setting never turns stale
            self.stale_at.labels(self._on_stale).set(INF)
        self.stale_at.labels(on_stale).set(limit.stale_at)
        self.max_age.set(INF if limit.max_age is None else limit.max_age)
        self._on_stale = on_stale

    def revoked(self, rule: Any, country: Any) -> None:
        """An open connection closed by a reload: counted by the decision that closed it."""
        self.revocations.labels(rule_label(rule), country_label(country)).inc()

    def connection_opened(self, labels: tuple[str, str, str, str]) -> None:
        self.open_connections.labels(*labels).inc()

    def connection_closed(self, labels: tuple[str, str, str, str]) -> None:
        self.open_connections.labels(*labels).dec()
