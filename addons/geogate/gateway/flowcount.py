"""Kernel flows counted per rule, country and protocol: the one place that holds them.

The kernel logs the first packet of each new flow it allows (NFLOG group `flow_group`, once per
flow: the conntrack mark says the flow was seen) and of each new flow it refuses (group
`log_group`; a refused flow stays new, so a client's retry counts again). The gateway decides
each logged packet with the engine (GateState.decide, the same decision as every other one; the
verdicts are cached per client, destination and port while the policy stays) and counts it under
the rule and country the engine names.

NFLOG is bounded (a rate limit in the kernel, a socket buffer here): under a flood not every flow
reaches user space. The kernel's own counters (`allowed_new`, `blocked_new`, named counters of
the table) count every one; `snapshot()` gives both and the difference as `unattributed`, so the
totals are exact even when the attribution is not. A swap or a restore recreates the table and
its counters: they are read just before and added up here.

`FlowCounts.snapshot()` is the accessor for anything that reports them (status, metrics).
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Callable

from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.gateway.nflog import Refused
from geogate.policy.state import GateState

MAX_VERDICTS = 65536
ACTIONS = ("allowed", "blocked")
KERNEL_COUNTERS = {"allowed": "allowed_new", "blocked": "blocked_new"}


class FlowVerdicts:
    """The engine's rule and country for a logged packet, cached per (client, destination,
    port) for one state: a policy or database change starts a new cache."""

    def __init__(self, state: Callable[[], GateState]) -> None:
        self.state = state
        self._for: GateState | None = None
        self._cache: dict[tuple, tuple[str, str | None, bool]] = {}

    def __call__(self, packet: Refused) -> tuple[str, str | None, bool]:
        """(rule, country, blocked by the engine)."""
        state = self.state()
        if state is not self._for:
            self._for, self._cache = state, {}
        key = (packet.source, packet.destination, packet.port)
        hit = self._cache.get(key)
        if hit is None:
            d = decide(state, packet)
            verdict = d.verdict
            hit = (d.rule, verdict.country if verdict is not None else None, d.blocked)
            if len(self._cache) >= MAX_VERDICTS:
                self._cache.clear()  # bounded; a forgotten verdict is only decided again
            self._cache[key] = hit
        return hit


def decide(state: GateState, packet: Refused, flow_id: str | None = None) -> Decision:
    source: ipaddress.IPv4Address | ipaddress.IPv6Address = packet.source
    req = Request(None, packet.port, client_ip=source, client=str(source), mode="kernel", flow_id=flow_id)
    return state.decide(req, [packet.destination])


class FlowCounts:
    """Counts of new kernel flows; thread-safe (the NFLOG reader adds, status reads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_rule: dict[str, dict[str, dict[str, int]]] = {a: {} for a in ACTIONS}
        self.by_protocol: dict[str, dict[str, int]] = {a: {} for a in ACTIONS}
        self.seen = dict.fromkeys(ACTIONS, 0)  # flows attributed here
        self.kernel_base = dict.fromkeys(ACTIONS, 0)  # counted by tables that are gone
        self.kernel_now = dict.fromkeys(ACTIONS, 0)  # the live table's counters, last read
        self.kernel_read = False  # the counters were read at least once
        self.dropped = 0  # NFLOG messages lost in the socket buffer (ENOBUFS)
        self.lost_at_flush = 0  # flushes that took counts not yet read

    def add(self, action: str, rule: str, country: str | None, protocol: str) -> None:
        with self.lock:
            per_country = self.by_rule[action].setdefault(rule, {})
            cc = country or "none"
            per_country[cc] = per_country.get(cc, 0) + 1
            per_proto = self.by_protocol[action]
            per_proto[protocol] = per_proto.get(protocol, 0) + 1
            self.seen[action] += 1

    def kernel(self, counters: dict[str, int] | None) -> None:
        """The live table's counters as just read (None: they could not be read)."""
        if counters is None:
            return
        with self.lock:
            for action, name in KERNEL_COUNTERS.items():
                if name in counters:
                    self.kernel_now[action] = counters[name]
            self.kernel_read = True

    def table_replaced(self, counters: dict[str, int] | None) -> None:
        """The table is about to be replaced (`counters` read just before) or is gone (None:
        what it counted since the last read is lost)."""
        with self.lock:
            if counters is None:
                self.lost_at_flush += 1
            for action, name in KERNEL_COUNTERS.items():
                last = counters.get(name, self.kernel_now[action]) if counters is not None else self.kernel_now[action]
                self.kernel_base[action] += last
                self.kernel_now[action] = 0

    def lost(self) -> None:
        with self.lock:
            self.dropped += 1

    def snapshot(self) -> dict:
        """{"allowed": {RULE: {CC: n}}, "blocked": {...}, "protocols": {...}, "kernel": {...},
        "unattributed": {...}, "lagging": bool, ...}: what status and metrics report."""
        with self.lock:
            kernel = {a: self.kernel_base[a] + self.kernel_now[a] for a in ACTIONS}
            unattributed = {a: max(0, kernel[a] - self.seen[a]) for a in ACTIONS}
            return {
                "allowed": {r: dict(c) for r, c in self.by_rule["allowed"].items()},
                "blocked": {r: dict(c) for r, c in self.by_rule["blocked"].items()},
                "protocols": {a: dict(p) for a, p in self.by_protocol.items()},
                "attributed": dict(self.seen),
                "kernel": kernel if self.kernel_read else None,
                "unattributed": unattributed if self.kernel_read else None,
                "lagging": bool(self.kernel_read and any(unattributed.values())) or self.dropped > 0,
                "nflog_overruns": self.dropped,
                "counts_lost_at_flush": self.lost_at_flush,
            }
