"""The loop shared by `geogate audit` and the replay addon: readers' flows into one Audit."""

from __future__ import annotations

from collections.abc import Iterable

from geogate.audit.auditor import Audit
from geogate.audit.auditor import InputSummary
from geogate.audit.model import NotSent
from geogate.audit.model import Problem
from geogate.audit.progress import Progress
from geogate.audit.readers import FlowFileInput
from geogate.audit.readers import HarInput
from geogate.policy.state import GateState


def run_inputs(audit: Audit, inputs: Iterable[FlowFileInput | HarInput], progress: Progress | None = None,
               state: GateState | None = None) -> list[InputSummary]:
    """Read every input to its end (or its damage) into `audit`; one summary per input."""
    summaries = []
    done_before = 0
    flows = 0
    for reader in inputs:
        summary = InputSummary(reader.path, reader.format, reader.size)
        summaries.append(summary)
        for item in reader.flows():
            if isinstance(item, Problem):
                audit.problem(item)
                summary.complete = summary.complete and not item.fatal
                continue
            if isinstance(item, NotSent):
                audit.not_sent(item)
                summary.not_sent += 1
                continue
            audit.add(item, state)
            summary.flows += 1
            flows += 1
            if progress is not None and not flows & 0xFF:
                progress.update(done_before + reader.position, flows, reader.path)
        summary.ignored = reader.ignored
        done_before += reader.size
    if progress is not None:
        progress.done()
    return summaries
