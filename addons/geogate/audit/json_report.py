"""JSON Lines: every decision as the decision record (docs/decision-record.md) (the decision log's format, plus an `audit`
object saying where the flow came from), written as it is made, then one `audit_summary` line.

Streaming keeps memory flat on any input, and the lines before a crash or a corrupt file stay
valid. With --against only the flows whose outcome changes are written, as `audit_change`
lines holding both records.
"""

from __future__ import annotations

from datetime import datetime
from datetime import timezone
from typing import TextIO

from geogate.audit.aggregate import CHANGES
from geogate.audit.aggregate import Changes
from geogate.audit.auditor import AuditResult
from geogate.audit.evaluate import Addressing
from geogate.audit.model import NotSent
from geogate.audit.model import RecordedFlow
from geogate.core.decide import Decision
from geogate.core.record import decision_record
from geogate.core.record import to_json_line


def audit_fields(flow: RecordedFlow, addressing: Addressing) -> dict:
    return {
        "file": flow.source,
        "index": flow.index,
        "kind": flow.kind,
        "scheme": flow.scheme,
        "url": flow.url,
        "recorded_mode": flow.mode,
        "resolution": addressing.resolution,
        "address_source": flow.address_source if addressing.resolution == "recorded" else None,
        "started": iso_time(flow.started),
        "bytes_sent": flow.bytes_sent,
        "bytes_received": flow.bytes_received,
        "recorded_error": flow.error,
    }


def audit_record(flow: RecordedFlow, d: Decision, addressing: Addressing) -> dict:
    """One flow's line: its decision record plus where the flow came from."""
    record = decision_record(d)
    record["audit"] = audit_fields(flow, addressing)
    return record


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _ref(ref) -> dict | None:
    return {"name": ref.name, "path": ref.path, "sha256": ref.sha256} if ref else None


def not_sent_line(entry: NotSent) -> dict:
    """A HAR entry that never went to the network: no decision, so no decision record."""
    return {"event": "audit_not_sent", "why": entry.why, "reason": entry.reason, "host": entry.host,
            "port": entry.port,
            "audit": {"file": entry.source, "index": entry.index, "url": entry.url, "started": iso_time(entry.started),
                      "bytes_sent": 0, "bytes_received": 0, "recorded_error": entry.detail}}


def not_sent_summary(result: AuditResult) -> dict:
    ns = result.not_sent
    return {"entries": ns.entries, "by_reason": dict(ns.by_why),
            "destinations": [r.as_dict() for r in ns.destination_rows()],
            "inferred": "addresses recorded for the same host elsewhere in the same file, not by these entries"}


def summary(result: AuditResult) -> dict:
    """The final line: totals, per country, per rule, per destination; and whether it is complete."""
    out = {
        "event": "audit_summary",
        "complete": result.complete,
        "problems": [p.as_dict() for p in result.problems],
        "problems_unlisted": result.problems_unlisted,
        "files": [i.as_dict() for i in result.inputs],
        "addresses": "recorded+resolve" if result.resolve else "recorded",
        "policy": _ref(result.policy),
        "databases": [{"name": i.name, "type": i.type, "build_epoch": i.build_epoch, "sha256": i.sha256}
                      for i in result.databases],
        "generated": result.generated.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "not_sent": not_sent_summary(result),
    }
    counts = result.counts
    if isinstance(counts, Changes):
        ch = counts
        out["against"] = _ref(result.against)
        out["totals"] = {"flows": ch.totals.flows, "unchanged": ch.unchanged,
                         **{k.replace("-", "_"): t.as_dict() for k, t in ch.changed.items()}}
        out["changes"] = [r.as_dict() for change in CHANGES for r in ch.rows_for(change)]
        out["countries"] = {change.replace("-", "_"): [c.as_dict() for c in ch.country_rows(change)]
                            for change in CHANGES}
        return out
    agg = counts
    out["totals"] = {**agg.totals.as_dict(), "by_action": dict(agg.by_label),
                     "by_resolution": dict(agg.by_resolution), "host_mismatch": agg.host_mismatches}
    out["countries"] = [c.as_dict() for c in agg.country_rows()]
    out["rules"] = [{"rule": rule, **t.as_dict()} for rule, t in agg.rule_rows()]
    out["destinations"] = [d.as_dict() for d in agg.destination_rows()]
    return out


class JsonLinesReport:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def decision(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None:
        self.out.write(to_json_line(audit_record(flow, d, addressing)) + "\n")

    def change(self, flow: RecordedFlow, before: Decision, after: Decision, addressing: Addressing,
               change: str) -> None:
        line = {"event": "audit_change", "change": change, "flow_id": flow.flow_id,
                "host": flow.host, "port": flow.port, "audit": audit_fields(flow, addressing),
                "before": decision_record(before), "after": decision_record(after)}
        self.out.write(to_json_line(line) + "\n")

    def not_sent(self, entry: NotSent) -> None:
        self.out.write(to_json_line(not_sent_line(entry)) + "\n")

    def finish(self, result: AuditResult) -> None:
        self.out.write(to_json_line(summary(result)) + "\n")
