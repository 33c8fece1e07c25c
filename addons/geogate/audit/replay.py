"""Audit flows that mitmdump replays (`mitmdump -nr FILE -s addons/geogate_addon.py`).

The addon hands every non-live flow to `ReplayAudit.evaluate` and prints `summary_text()` when
mitmdump is done. The flow goes through `flow.get_state()` into the same extraction as
`geogate audit` reads from files, and through the same Audit, so both report the same numbers
for the same recording. Replayed flows are only judged, never killed (they are not live).
"""

from __future__ import annotations

from mitmproxy import flow as mflow

from geogate.audit import text_report
from geogate.audit.auditor import Audit
from geogate.audit.extract import MALFORMED_STATE
from geogate.audit.extract import ExtractError
from geogate.audit.extract import from_state
from geogate.audit.model import Problem
from geogate.core.decide import Decision
from geogate.policy.state import GateState


class ReplayAudit:
    def __init__(self) -> None:
        self._audit: Audit | None = None
        self._index = 0
        self._last_id: str | None = None
        self.last: Decision | None = None  # the decision for the flow last evaluated

    def evaluate(self, flow: mflow.Flow, state: GateState) -> None:
        """Decide and count one flow. Call once per flow (from any one hook: a replayed flow is
        complete when its first hook fires); a repeat call for the same flow is ignored."""
        if flow.id == self._last_id:
            return
        self._last_id = flow.id
        if self._audit is None:
            self._audit = Audit(state)
        index, self._index = self._index, self._index + 1
        try:
            recorded = from_state(flow.get_state(), "replay", index)
        except ExtractError as e:
            self._audit.problem(Problem("replay", "flow", index, 0, f"flow {flow.id}: {e}", fatal=False))
            self.last = None
            return
        except MALFORMED_STATE as e:
            self._audit.problem(Problem("replay", "flow", index, 0,
                                        f"flow {flow.id}: malformed flow ({type(e).__name__}: {e})", fatal=False))
            self.last = None
            return
        self.last = self._audit.add(recorded, state)

    @property
    def flows(self) -> int:
        return self._audit.aggregate.totals.flows if self._audit else 0

    @property
    def would_block(self) -> int:
        return self._audit.aggregate.totals.would_block if self._audit else 0

    def summary_text(self) -> str:
        """The `geogate audit` text report for the flows evaluated so far."""
        if self._audit is None:
            return "geogate audit of replayed flows: no flows\n"
        return text_report.render(self._audit.result([], source="replay"))
