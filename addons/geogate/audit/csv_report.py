"""CSV: one row per flow (per changed flow with --against), streamed, for spreadsheets and pivots.

A HAR entry that never went to the network (browser cache, service worker, failed before it was
sent) is a row whose `action` (with --against: `change`) is `not-sent`, with no bytes. CSV has no
place for a summary, so an incomplete audit ends with one row per problem whose
`action` is `error` and whose `reason` says what could not be read (file, position, why).
"""

from __future__ import annotations

import csv
from typing import TextIO

from geogate.audit.aggregate import address_text
from geogate.audit.aggregate import country_key
from geogate.audit.aggregate import label
from geogate.audit.auditor import AuditResult
from geogate.audit.evaluate import Addressing
from geogate.audit.json_report import audit_fields
from geogate.audit.json_report import iso_time
from geogate.audit.model import NotSent
from geogate.audit.model import RecordedFlow
from geogate.core.decide import Decision

COLUMNS = ["file", "index", "flow_id", "started", "kind", "url", "client", "host", "port", "sni",
           "address", "resolution", "country", "action", "enforced", "would_block", "rule", "reason",
           "citation", "bytes_sent", "bytes_received"]
CHANGE_COLUMNS = ["change", "file", "index", "flow_id", "started", "kind", "url", "client", "host", "port",
                  "address", "resolution", "country", "before", "rule_before", "after", "rule_after",
                  "reason_after", "bytes_sent", "bytes_received"]


class CsvReport:
    def __init__(self, out: TextIO, against: bool = False) -> None:
        self.columns = CHANGE_COLUMNS if against else COLUMNS
        self.writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore")
        self.writer.writeheader()

    def _common(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> dict:
        a = audit_fields(flow, addressing)
        return {"file": flow.source, "index": flow.index, "flow_id": flow.flow_id, "started": a["started"],
                "kind": flow.kind, "url": flow.url, "client": flow.client, "host": flow.host or flow.host_text,
                "port": flow.port, "sni": flow.sni, "address": address_text(d, addressing),
                "resolution": addressing.resolution, "country": country_key(d, addressing),
                "bytes_sent": flow.bytes_sent, "bytes_received": flow.bytes_received}

    def decision(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None:
        row = self._common(flow, d, addressing)
        row.update(action=label(d, addressing), enforced=d.enforced, would_block=d.would_block, rule=d.rule,
                   reason=d.reason, citation=d.citation)
        self.writer.writerow(row)

    def change(self, flow: RecordedFlow, before: Decision, after: Decision, addressing: Addressing,
               change: str) -> None:
        row = self._common(flow, after, addressing)
        row.update(change=change, before=label(before, addressing), rule_before=before.rule,
                   after=label(after, addressing), rule_after=after.rule, reason_after=after.reason)
        self.writer.writerow(row)

    def not_sent(self, entry: NotSent) -> None:
        """A HAR entry that never went to the network: action (change) `not-sent`, no bytes."""
        self.writer.writerow({"file": entry.source, "index": entry.index, "started": iso_time(entry.started),
                              "kind": "http", "url": entry.url, "host": entry.host or entry.host_text,
                              "port": entry.port, "resolution": "not-sent", "action": "not-sent",
                              "change": "not-sent", "reason": entry.reason, "reason_after": entry.reason,
                              "bytes_sent": 0, "bytes_received": 0})

    def finish(self, result: AuditResult) -> None:
        for p in result.problems:
            self.writer.writerow({"file": p.path, "index": p.index, "action": "error", "before": "error",
                                  "change": "error", "reason": p.text(), "reason_after": p.text()})
        if result.problems_unlisted:
            self.writer.writerow({"action": "error", "change": "error",
                                  "reason": f"{result.problems_unlisted} more problems not listed",
                                  "reason_after": f"{result.problems_unlisted} more problems not listed"})
