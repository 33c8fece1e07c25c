"""Per-flow decisions folded into the numbers a data-transfer review asks for. Pure, no I/O.

Memory grows with the number of distinct destinations, countries, rules and hosts, never with
the number of flows: flows themselves are only counted (and a bounded sample of the blocked or
changed ones is kept for the reports to list).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from geogate.audit.evaluate import Addressing
from geogate.audit.model import RECORDED
from geogate.audit.model import RESOLVED
from geogate.audit.model import UNRESOLVED
from geogate.audit.model import NotSent
from geogate.audit.model import RecordedFlow
from geogate.audit.model import ip_text
from geogate.core.decide import Decision

SAMPLE_LIMIT = 500

# How a decision reads in a report, most severe first (the order rows are listed in).
LABELS = ("block", "unresolved", "would-block", "monitor", "allow")
UNRESOLVED_KEY = "(unresolved)"
SPECIAL_KEY = "(special range)"
UNKNOWN_KEY = "(unknown)"


def label(d: Decision, addressing: Addressing) -> str:
    """block: refused; unresolved: no address to judge, so refused (fail closed);
    would-block: a monitor-mode policy would have refused it; monitor: allowed, but a
    `monitor` rule flagged it; allow."""
    if addressing.resolution == UNRESOLVED:
        return "unresolved"
    if d.action == "block":
        return "block"
    if d.would_block:
        return "monitor" if d.enforced else "would-block"
    return "allow"


def severity(d: Decision) -> int:
    """2 refused, 1 allowed but would be refused / flagged, 0 allowed: what --against compares."""
    return 2 if d.action == "block" else 1 if d.would_block else 0


def country_key(d: Decision, addressing: Addressing) -> str:
    if addressing.resolution == UNRESOLVED:
        return UNRESOLVED_KEY
    if d.country:
        return d.country
    v = d.verdict
    if v is not None and v.facts.address.special:
        return SPECIAL_KEY
    return UNKNOWN_KEY


def address_text(d: Decision, addressing: Addressing) -> str:
    if d.address is not None:
        return ip_text(d.address)
    if addressing.addresses:
        return ip_text(addressing.addresses[0])
    return ""


@dataclass(slots=True)
class Tally:
    flows: int = 0
    would_block: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, flow: RecordedFlow, blocked: bool) -> None:
        self.flows += 1
        self.would_block += blocked
        self.bytes_sent += flow.bytes_sent
        self.bytes_received += flow.bytes_received

    @property
    def bytes_total(self) -> int:
        return self.bytes_sent + self.bytes_received

    def as_dict(self) -> dict:
        return {"flows": self.flows, "would_block": self.would_block,
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}


@dataclass(slots=True)
class Destination:
    host: str  # host:port
    address: str
    resolution: str
    country: str
    label: str
    rule: str
    reason: str
    citation: str | None
    tally: Tally = field(default_factory=Tally)

    def as_dict(self) -> dict:
        return {"destination": self.host, "address": self.address or None, "resolution": self.resolution,
                "country": self.country, "action": self.label, "rule": self.rule, "reason": self.reason,
                "citation": self.citation, **self.tally.as_dict()}


@dataclass(slots=True)
class Country:
    key: str
    tally: Tally = field(default_factory=Tally)
    hosts: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {"country": self.key, **self.tally.as_dict(), "hosts": len(self.hosts)}


def sample_entry(flow: RecordedFlow, d: Decision, addressing: Addressing) -> dict:
    """What a report lists about one blocked or changed flow."""
    return {"file": flow.source, "index": flow.index, "flow_id": flow.flow_id, "started": flow.started,
            "kind": flow.kind, "url": flow.url, "destination": flow.destination,
            "address": address_text(d, addressing), "resolution": addressing.resolution,
            "country": country_key(d, addressing), "action": label(d, addressing), "rule": d.rule,
            "reason": d.reason, "citation": d.citation, "client": flow.client,
            "bytes_sent": flow.bytes_sent, "bytes_received": flow.bytes_received}


def _sort_key(d: Destination) -> tuple:
    return (LABELS.index(d.label), -d.tally.bytes_total, -d.tally.flows, d.host, d.address)


@dataclass
class ResolutionCounts:
    """How many flows had an address recorded, looked up, or none (Aggregate and Changes alike)."""

    by_resolution: dict[str, int] = field(default_factory=dict)

    def count_resolution(self, addressing: Addressing) -> None:
        self.by_resolution[addressing.resolution] = self.by_resolution.get(addressing.resolution, 0) + 1

    @property
    def resolved(self) -> int:
        return self.by_resolution.get(RESOLVED, 0)

    @property
    def unresolved(self) -> int:
        return self.by_resolution.get(UNRESOLVED, 0)


@dataclass
class Aggregate(ResolutionCounts):
    """Everything the text, HTML and JSON summaries show about one policy's decisions."""

    totals: Tally = field(default_factory=Tally)
    by_label: dict[str, int] = field(default_factory=dict)
    destinations: dict[tuple, Destination] = field(default_factory=dict)
    countries: dict[str, Country] = field(default_factory=dict)
    rules: dict[str, Tally] = field(default_factory=dict)
    blocked_sample: list[dict] = field(default_factory=list)
    blocked_unlisted: int = 0
    host_mismatches: int = 0
    by_label_rule: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None:
        blocked = d.would_block
        lab = label(d, addressing)
        country = country_key(d, addressing)
        address = address_text(d, addressing)
        self.totals.add(flow, blocked)
        self.by_label[lab] = self.by_label.get(lab, 0) + 1
        self.by_label_rule[(lab, d.rule)] = self.by_label_rule.get((lab, d.rule), 0) + 1
        self.count_resolution(addressing)
        self.host_mismatches += d.host_mismatch
        key = (flow.destination, address, addressing.resolution, country, lab, d.rule)
        dest = self.destinations.get(key)
        if dest is None:
            dest = self.destinations[key] = Destination(flow.destination, address, addressing.resolution,
                                                        country, lab, d.rule, d.reason, d.citation)
        dest.tally.add(flow, blocked)
        c = self.countries.get(country)
        if c is None:
            c = self.countries[country] = Country(country)
        c.tally.add(flow, blocked)
        c.hosts.add(flow.host or flow.host_text or address)
        self.rules.setdefault(d.rule, Tally()).add(flow, blocked)
        if blocked:
            if len(self.blocked_sample) < SAMPLE_LIMIT:
                self.blocked_sample.append(sample_entry(flow, d, addressing))
            else:
                self.blocked_unlisted += 1

    # -- views for the reports (sorted: blocked first) ------------------------------------------
    def destination_rows(self) -> list[Destination]:
        return sorted(self.destinations.values(), key=_sort_key)

    def country_rows(self) -> list[Country]:
        return sorted(self.countries.values(),
                      key=lambda c: (0 if c.tally.would_block else 1, -c.tally.bytes_total, -c.tally.flows, c.key))

    def rules_for_label(self, lab: str) -> list[tuple[str, int]]:
        """(rule, flows) that gave this label, most flows first."""
        return sorted(((rule, n) for (lb, rule), n in self.by_label_rule.items() if lb == lab),
                      key=lambda rn: (-rn[1], rn[0]))

    def rule_rows(self) -> list[tuple[str, Tally]]:
        return sorted(self.rules.items(), key=lambda kv: (-kv[1].would_block, -kv[1].flows, kv[0]))


# -- --against: what changes between two policies --------------------------------------------

NEWLY_BLOCKED = "newly-blocked"  # refused now; allowed (flagged or not) before
NEWLY_FLAGGED = "newly-flagged"  # still allowed, but now flagged (monitor rule, or a monitor-mode policy would block)
NEWLY_ALLOWED = "newly-allowed"  # refused before; allowed now (flagged or not)
NO_LONGER_FLAGGED = "no-longer-flagged"  # allowed before and now, no longer flagged
# Every change between the three outcomes (refused, flagged, allowed), stricter ones first: the
# order reports list them in.
CHANGES = (NEWLY_BLOCKED, NEWLY_FLAGGED, NEWLY_ALLOWED, NO_LONGER_FLAGGED)
STRICTER = (NEWLY_BLOCKED, NEWLY_FLAGGED)  # what --fail-on-block fails on
CHANGE_TITLES = {NEWLY_BLOCKED: "newly blocked", NEWLY_FLAGGED: "newly flagged", NEWLY_ALLOWED: "newly allowed",
                 NO_LONGER_FLAGGED: "no longer flagged"}
_CHANGE = {(0, 2): NEWLY_BLOCKED, (1, 2): NEWLY_BLOCKED, (0, 1): NEWLY_FLAGGED,
           (2, 0): NEWLY_ALLOWED, (2, 1): NEWLY_ALLOWED, (1, 0): NO_LONGER_FLAGGED}


def change_of(before: Decision, after: Decision) -> str | None:
    """Which of CHANGES the second policy makes for this flow; None when both treat it alike.
    Strictness: refused > flagged > allowed."""
    return _CHANGE.get((severity(before), severity(after)))


@dataclass(slots=True)
class ChangeRow:
    change: str
    host: str
    address: str
    country: str
    before: str  # label under the first policy
    after: str
    rule_before: str
    rule_after: str
    reason_after: str
    tally: Tally = field(default_factory=Tally)

    def as_dict(self) -> dict:
        return {"change": self.change, "destination": self.host, "address": self.address or None,
                "country": self.country, "before": self.before, "after": self.after,
                "rule_before": self.rule_before, "rule_after": self.rule_after,
                "reason_after": self.reason_after, **self.tally.as_dict()}


@dataclass
class Changes(ResolutionCounts):
    """The flows whose outcome differs between two policies, counted like Aggregate counts."""

    totals: Tally = field(default_factory=Tally)  # every flow evaluated
    changed: dict[str, Tally] = field(default_factory=lambda: {change: Tally() for change in CHANGES})
    rows: dict[tuple, ChangeRow] = field(default_factory=dict)
    countries: dict[tuple[str, str], Country] = field(default_factory=dict)  # (change, country)
    sample: list[dict] = field(default_factory=list)
    unlisted: int = 0

    def add(self, flow: RecordedFlow, before: Decision, after: Decision, addressing: Addressing) -> str | None:
        self.totals.add(flow, after.would_block)
        self.count_resolution(addressing)
        change = change_of(before, after)
        if change is None:
            return None
        self.changed[change].add(flow, after.would_block)
        country = country_key(after, addressing)
        address = address_text(after, addressing)
        lb, la = label(before, addressing), label(after, addressing)
        key = (change, flow.destination, address, country, lb, la, before.rule, after.rule)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = ChangeRow(change, flow.destination, address, country, lb, la,
                                             before.rule, after.rule, after.reason)
        row.tally.add(flow, after.would_block)
        c = self.countries.get((change, country))
        if c is None:
            c = self.countries[(change, country)] = Country(country)
        c.tally.add(flow, after.would_block)
        c.hosts.add(flow.host or flow.host_text or address)
        if len(self.sample) < SAMPLE_LIMIT:
            entry = sample_entry(flow, after, addressing)
            entry.update(change=change, before=lb, rule_before=before.rule)
            self.sample.append(entry)
        else:
            self.unlisted += 1
        return change

    def rows_for(self, change: str) -> list[ChangeRow]:
        return sorted((r for r in self.rows.values() if r.change == change),
                      key=lambda r: (-r.tally.bytes_total, -r.tally.flows, r.host, r.address))

    def country_rows(self, change: str) -> list[Country]:
        return sorted((c for (ch, _), c in self.countries.items() if ch == change),
                      key=lambda c: (-c.tally.bytes_total, -c.tally.flows, c.key))

    @property
    def unchanged(self) -> int:
        return self.totals.flows - sum(t.flows for t in self.changed.values())


# -- HAR entries that never went to the network -----------------------------------------------

INFERRED_LIMIT = 3  # addresses remembered per host and file for the inference


@dataclass(slots=True)
class NotSentRow:
    file: str
    destination: str
    why: str
    reason: str
    entries: int = 0
    # (address, country) recorded for the same host elsewhere in the same file: an inference about
    # where the entry would have gone, not a record of it
    inferred: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"file": self.file, "destination": self.destination, "why": self.why, "reason": self.reason,
                "entries": self.entries,
                "inferred_addresses": [{"address": a, "country": c} for a, c in self.inferred]}


@dataclass
class NotSentEntries:
    """HAR entries that were not traffic, by file, destination and reason; and, per host and file,
    the addresses the recorded traffic went to, to infer theirs from."""

    entries: int = 0
    by_why: dict[str, int] = field(default_factory=dict)
    rows: dict[tuple, NotSentRow] = field(default_factory=dict)
    hosts: dict[tuple, tuple] = field(default_factory=dict)  # (file, host, port) of the rows
    recorded: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (file, host) -> {address: country}

    def add(self, entry: NotSent) -> None:
        self.entries += 1
        self.by_why[entry.why] = self.by_why.get(entry.why, 0) + 1
        key = (entry.source, entry.destination, entry.why, entry.reason)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = NotSentRow(entry.source, entry.destination, entry.why, entry.reason)
            self.hosts[key] = (entry.source, entry.host)
        row.entries += 1

    def seen(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None:
        """Remember where a recorded HAR flow went (a few addresses per host and file)."""
        if addressing.resolution != RECORDED or flow.mode != "har" or not flow.host:
            return
        known = self.recorded.setdefault((flow.source, flow.host), {})
        if len(known) < INFERRED_LIMIT:
            known.setdefault(address_text(d, addressing), country_key(d, addressing))

    def infer(self) -> None:
        for key, row in self.rows.items():
            row.inferred = sorted(self.recorded.get(self.hosts[key], {}).items())

    def destination_rows(self) -> list[NotSentRow]:
        self.infer()
        return sorted(self.rows.values(), key=lambda r: (-r.entries, r.destination, r.why, r.reason, r.file))
