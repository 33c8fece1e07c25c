"""Audit flows that mitmdump replays (`mitmdump -nr FILE -s addons/geogate_addon.py`).

The addon hands every non-live flow to `ReplayAudit.evaluate` once it is complete (for TCP and
UDP that is their end: mitmdump hands their messages over one hook at a time) and prints
`summary_text()` when mitmdump is done. The flow goes through `flow.get_state()` into the same
extraction as `geogate audit` reads from files, and through the same Audit, so both report the
same numbers for the same recording. Replayed flows are only judged, never killed (they are not
live). With a decision log, each judged flow is written to it as the line `geogate audit
--format json` writes for it.

A HAR file is the exception: mitmproxy's conversion of its entries keeps neither the sizes a
browser recorded nor its cache and WebSocket fields, so a replayed HAR is read again, whole, by
the audit's own HAR reader, and the converted flows are not looked at.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import flow as mflow

from geogate.audit import text_report
from geogate.audit.auditor import Audit
from geogate.audit.auditor import InputSummary
from geogate.audit.evaluate import Addressing
from geogate.audit.extract import MALFORMED_STATE
from geogate.audit.extract import ExtractError
from geogate.audit.extract import from_state
from geogate.audit.json_report import audit_record
from geogate.audit.model import Problem
from geogate.audit.model import RecordedFlow
from geogate.audit.readers import HarInput
from geogate.audit.readers import InputError
from geogate.audit.readers import open_input
from geogate.audit.run import run_inputs
from geogate.core.decide import Decision
from geogate.core.record import printable
from geogate.policy.state import GateState

logger = logging.getLogger(__name__)


class _LogSink:
    """Writes each decision to the proxy's decision log, if it has one (it may change at run time)."""

    def __init__(self) -> None:
        self.log: Any = None

    def decision(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None:
        if self.log is None:
            return
        try:
            self.log.write(audit_record(flow, d, addressing))
        except Exception as e:  # the flow is still counted; only its line is missing
            logger.error(f"geogate: the decision record of replayed flow {flow.flow_id} could not be written to "
                         f"the decision log: {printable(repr(e))}")

    def change(self, *args: Any) -> None:  # a replay has one policy
        pass

    def not_sent(self, entry: Any) -> None:  # not a decision: the decision log has no line for it
        pass


class ReplayAudit:
    def __init__(self, source: str | None = None) -> None:
        """`source`: the file mitmdump reads (its `rfile` option), named in the report."""
        self.source = source or "replay"
        self._audit: Audit | None = None
        self._sink = _LogSink()
        self._index = 0
        self._last_id: str | None = None
        self._input = InputSummary(self.source, "mitmproxy", 0) if source else None
        self._har_read = False
        self.last: Decision | None = None  # the decision for the flow last evaluated

    def evaluate(self, flow: mflow.Flow, state: GateState, log: Any = None) -> None:
        """Decide and count one flow, and write its record to `log` (a DecisionLog) if given.
        Call once per complete flow; a repeat call for the same flow is ignored."""
        if flow.id == self._last_id:
            return
        self._last_id = flow.id
        self._sink.log = log
        if self._audit is None:
            self._audit = Audit(state, sink=self._sink)
            self._open_source()
        audit = self._audit
        if self._har_read:
            return
        index, self._index = self._index, self._index + 1
        try:
            recorded = from_state(flow.get_state(), self.source, index)
        except ExtractError as e:
            self._skip(audit, index, f"flow {flow.id}: {e}")
            return
        except MALFORMED_STATE as e:
            self._skip(audit, index, f"flow {flow.id}: malformed flow ({type(e).__name__}: {e})")
            return
        self.last = audit.add(recorded, state)
        if self._input is not None:
            self._input.flows += 1

    def _skip(self, audit: Audit, index: int, message: str) -> None:
        audit.problem(Problem(self.source, "flow", index, 0, message, fatal=False))
        self.last = None

    def _open_source(self) -> None:
        """Learn what the replayed file is; a HAR file is audited from the file itself, now."""
        if self._input is None or self._audit is None:
            return
        try:
            reader = open_input(self.source)
        except InputError:
            return  # mitmdump read it, so it exists; judge the flows it hands over
        self._input.size = reader.size
        if isinstance(reader, HarInput):
            [self._input] = run_inputs(self._audit, [reader])
            self._har_read = True

    @property
    def flows(self) -> int:
        return self._audit.totals.flows if self._audit else 0

    @property
    def would_block(self) -> int:
        return self._audit.totals.would_block if self._audit else 0

    def summary_text(self) -> str:
        """The `geogate audit` text report for the flows evaluated so far."""
        if self._audit is None:
            return "geogate audit of replayed flows: no flows\n"
        inputs = [self._input] if self._input is not None else []
        return text_report.render(self._audit.result(inputs, source="replay"))
