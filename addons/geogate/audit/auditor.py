"""One audit: flows in, decisions folded into an Aggregate (or, with a second policy, Changes).

Shared by `geogate audit` and the replay addon, so both decide and count flows the same way.
A sink, when given, sees every decision as it is made (the JSON and CSV reports stream from
there); nothing here keeps per-flow data beyond the aggregate's bounded samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timezone
from typing import Protocol

from geogate.audit.aggregate import Aggregate
from geogate.audit.aggregate import Changes
from geogate.audit.aggregate import NotSentEntries
from geogate.audit.aggregate import Tally
from geogate.audit.evaluate import Addressing
from geogate.audit.evaluate import Evaluator
from geogate.audit.evaluate import NameLookup
from geogate.audit.model import NotSent
from geogate.audit.model import Problem
from geogate.audit.model import RecordedFlow
from geogate.core.decide import Decision
from geogate.core.geo import DatabaseInfo
from geogate.core.rules import PolicyRef
from geogate.policy.state import GateState

PROBLEM_LIMIT = 100  # problems listed one by one; beyond that only counted


class Sink(Protocol):
    def decision(self, flow: RecordedFlow, d: Decision, addressing: Addressing) -> None: ...

    def not_sent(self, entry: NotSent) -> None: ...

    def change(self, flow: RecordedFlow, before: Decision, after: Decision, addressing: Addressing,
               change: str) -> None: ...


@dataclass
class InputSummary:
    path: str
    format: str  # mitmproxy | har
    size: int
    flows: int = 0
    complete: bool = True
    ignored: int = 0  # HAR entries that name no destination (data:, blob: URLs)
    not_sent: int = 0  # HAR entries that never went to the network (NotSent)

    def as_dict(self) -> dict:
        return {"file": self.path, "format": self.format, "bytes": self.size, "flows": self.flows,
                "complete": self.complete, "not_traffic": self.ignored + self.not_sent, "not_sent": self.not_sent}


@dataclass
class AuditResult:
    """What the reports render."""

    policy: PolicyRef
    databases: tuple[DatabaseInfo, ...]
    resolve: bool
    inputs: list[InputSummary]
    problems: list[Problem]
    problems_unlisted: int
    counts: Aggregate | Changes  # Changes exactly when there is a second policy (against)
    against: PolicyRef | None = None
    not_sent: NotSentEntries = field(default_factory=NotSentEntries)
    source: str = "files"  # files | replay
    generated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def complete(self) -> bool:
        return not self.problems and not self.problems_unlisted

    @property
    def flows(self) -> int:
        return self.counts.totals.flows


@dataclass
class _Against:
    """A second policy and the changes counted against it."""

    state: GateState
    changes: Changes = field(default_factory=Changes)


class Audit:
    def __init__(self, state: GateState, *, against: GateState | None = None,
                 lookup: NameLookup | None = None, sink: Sink | None = None) -> None:
        self.state = state
        self.evaluator = Evaluator(lookup)
        self.sink = sink
        # one policy counts into an Aggregate, two into Changes: one field, so neither is ever missing
        self._counts: Aggregate | _Against = Aggregate() if against is None else _Against(against)
        self.problems: list[Problem] = []
        self.problems_unlisted = 0
        self.not_sent_entries = NotSentEntries()

    def add(self, flow: RecordedFlow, state: GateState | None = None) -> Decision:
        """Decide one flow and count it; returns the decision (under the second policy with --against)."""
        if state is not None:
            self.state = state  # the replay addon passes its current state: reloads apply
        addressing = self.evaluator.addressing(flow)
        d = self.evaluator.decide(self.state, flow, addressing)
        self.not_sent_entries.seen(flow, d, addressing)
        counts = self._counts
        if isinstance(counts, Aggregate):
            counts.add(flow, d, addressing)
            if self.sink:
                self.sink.decision(flow, d, addressing)
            return d
        after = self.evaluator.decide(counts.state, flow, addressing)
        change = counts.changes.add(flow, d, after, addressing)
        if change and self.sink:
            self.sink.change(flow, d, after, addressing, change)
        return after

    @property
    def totals(self) -> Tally:
        """Every flow evaluated so far."""
        counts = self._counts
        return counts.totals if isinstance(counts, Aggregate) else counts.changes.totals

    def not_sent(self, entry: NotSent) -> None:
        """Count an entry that never went to the network: no decision, no bytes."""
        self.not_sent_entries.add(entry)
        if self.sink:
            self.sink.not_sent(entry)

    def problem(self, p: Problem) -> None:
        if len(self.problems) < PROBLEM_LIMIT:
            self.problems.append(p)
        else:
            self.problems_unlisted += 1

    def result(self, inputs: list[InputSummary], *, source: str = "files") -> AuditResult:
        counts = self._counts
        return AuditResult(
            policy=self.state.policy.ref,
            databases=tuple(self.state.facts.infos),
            resolve=self.evaluator.lookup is not None,
            inputs=inputs,
            problems=list(self.problems),
            problems_unlisted=self.problems_unlisted,
            counts=counts if isinstance(counts, Aggregate) else counts.changes,
            against=None if isinstance(counts, Aggregate) else counts.state.policy.ref,
            not_sent=self.not_sent_entries,
            source=source,
        )
