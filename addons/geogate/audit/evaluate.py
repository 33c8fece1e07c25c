"""RecordedFlow -> Decision, through GateState.decide: the audit has no rules of its own.

Offline (the default) the only addresses are the recorded ones; a flow without one is decided
with no address and resolve_error "no recorded address", which the engine refuses (fail closed)
and the reports show as unresolved. With --resolve, names without a recorded address are looked
up once per audit (so every flow of one name gets the same answer) and marked as resolved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from geogate.audit.model import RECORDED
from geogate.audit.model import RESOLVED
from geogate.audit.model import UNRESOLVED
from geogate.audit.model import RecordedFlow
from geogate.core.addresses import IPAddress
from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.core.resolve import ResolveError
from geogate.core.resolve import Resolver
from geogate.core.resolve_defaults import DEFAULT_TIMEOUT
from geogate.policy.state import GateState

NO_ADDRESS = "no recorded address"


class NameLookup:
    """Synchronous, memoised lookups for --resolve (one event loop for the whole audit)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._resolver = Resolver(timeout)
        self._runner = asyncio.Runner()
        self._memo: dict[str, tuple[IPAddress, ...] | str] = {}
        self.source: dict[str, str] = {}  # name -> how it was resolved (dns, hosts, ...)

    def lookup(self, name: str) -> tuple[IPAddress, ...] | str:
        """The addresses of `name`, or why there are none."""
        if name not in self._memo:
            try:
                r = self._runner.run(self._resolver.resolve(name))
                self._memo[name] = r.addresses
                self.source[name] = r.source
            except ResolveError as e:
                self._memo[name] = str(e)
        return self._memo[name]

    def close(self) -> None:
        self._runner.close()


@dataclass(frozen=True, slots=True)
class Addressing:
    """Which addresses a flow is decided on, and how they were obtained."""

    addresses: tuple[IPAddress, ...]
    resolution: str  # recorded | resolved | unresolved
    resolve_error: str | None = None
    claimed: frozenset[IPAddress] | None = None  # what a claimed name resolves to (--resolve)


class Evaluator:
    def __init__(self, lookup: NameLookup | None = None) -> None:
        self.lookup = lookup

    def addressing(self, flow: RecordedFlow) -> Addressing:
        claimed = None
        if flow.host_is_claim and self.lookup is not None and flow.host:
            answer = self.lookup.lookup(flow.host)
            claimed = frozenset(answer) if isinstance(answer, tuple) else frozenset()
        if flow.address is not None:
            return Addressing((flow.address,), RECORDED, claimed=claimed)
        if self.lookup is None or not flow.host:
            return Addressing((), UNRESOLVED, NO_ADDRESS)
        answer = self.lookup.lookup(flow.host)
        if isinstance(answer, str):
            return Addressing((), UNRESOLVED, f"{NO_ADDRESS}; --resolve failed: {answer}")
        return Addressing(answer, RESOLVED, claimed=claimed)

    @staticmethod
    def request(flow: RecordedFlow, addressing: Addressing) -> Request:
        return Request(
            host=flow.host,
            port=flow.port,
            client_ip=flow.client_ip,
            user=flow.user,
            host_is_claim=flow.host_is_claim,
            host_addresses=addressing.claimed if flow.host_is_claim else None,
            flow_id=flow.flow_id,
            client=flow.client,
            mode="audit",
            sni=flow.sni,
        )

    def decide(self, state: GateState, flow: RecordedFlow, addressing: Addressing) -> Decision:
        return state.decide(self.request(flow, addressing), addressing.addresses,
                            resolve_error=addressing.resolve_error)
