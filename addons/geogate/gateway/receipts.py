"""Receipts for kernel verdicts: each refused flow becomes a decision record, `"mode": "kernel"`.

The kernel logs each new refused flow (conntrack state new; a refused flow never gets past new,
so a client's retries are new again) at a bounded rate. Here a flow (protocol, client,
destination, port) is written once per `window` seconds; the repeats in between are counted and
the count goes into the next record of that flow (`kernel.suppressed`). At most `per_second`
records are written in any second; the rest are counted the same way.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Callable

from geogate.core.decide import Decision
from geogate.core.record import decision_record
from geogate.core.record import to_json_line
from geogate.gateway.flowcount import decide as decide_packet
from geogate.gateway.nflog import Refused
from geogate.policy.state import GateState

MAX_FLOWS = 65536


class JsonLines:
    """An append-only JSON-lines file shared with the proxy: each record is one write(2) of one
    whole line on an O_APPEND descriptor, so lines of the two processes never interleave."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def write(self, record: dict) -> None:
        os.write(self.fd, (to_json_line(record) + "\n").encode("utf-8"))

    def reopen(self) -> None:
        old, self.fd = self.fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.close(old)

    def close(self) -> None:
        os.close(self.fd)


class Receipts:
    def __init__(self, state: Callable[[], GateState], write: Callable[[dict], None], kernel_sha: Callable[[], str],
                 window: float = 10.0, per_second: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.write = write
        self.kernel_sha = kernel_sha
        self.window = window
        self.per_second = per_second
        self.clock = clock
        self.flows: dict[tuple, list] = {}  # key -> [time last written, repeats since]
        self.second = (0, 0)  # (whole second, records written in it)
        self.ids = itertools.count(1)
        self.written = 0
        self.suppressed = 0

    def refused(self, packet: Refused) -> dict | None:
        """Record one logged packet (refused here; allowed in AllowedReceipts); the record
        written, or None when it was only counted."""
        now = self.clock()
        key = (packet.protocol, packet.source, packet.destination, packet.port)
        flow = self.flows.get(key)
        if flow is not None and now - flow[0] < self.window:
            flow[1] += 1
            self.suppressed += 1
            return None
        second, count = self.second
        if int(now) != second:
            second, count = int(now), 0
        if count >= self.per_second:
            self.second = (second, count)
            if flow is not None:
                flow[1] += 1
            else:
                self._remember(key, [now - self.window, 1])
            self.suppressed += 1
            return None
        self.second = (second, count + 1)
        repeats = flow[1] if flow is not None else 0
        self._remember(key, [now, 0])
        record = self.record(packet, repeats)
        self.write(record)
        self.written += 1
        return record

    def _remember(self, key: tuple, value: list) -> None:
        if len(self.flows) >= MAX_FLOWS:
            self.flows.clear()  # bounded; a forgotten flow is only written once more
        self.flows[key] = value

    kernel_blocks = True  # what the kernel did with the flows these receipts are for

    def record(self, packet: Refused, suppressed: int) -> dict:
        d = decide_packet(self.state(), packet, flow_id=f"kernel-{os.getpid()}-{next(self.ids)}")
        rec = decision_record(d)
        if d.blocked != self.kernel_blocks:
            # the kernel's verdict stands; the record says why the engine alone differs
            rec["action"] = "block" if self.kernel_blocks else "allow"
            rec["rule"] = "kernel"
            rec["reason"] = self.disagreement(d)
        rec["kernel"] = {"protocol": packet.protocol, "suppressed": suppressed}
        return rec

    def disagreement(self, d: Decision) -> str:
        # the kernel refused what the engine alone would let through: a range blocked whole
        # (Teredo, IPv4-mapped) or sets built from another policy than the one loaded now
        return (f"refused by the kernel's sets (policy sha256 {self.kernel_sha()[:12]}), which block more "
                f"than the policy here ({d.reason}); see `geogate gateway check`")


class AllowedReceipts(Receipts):
    """`gateway run --log-allowed`: a record for each new flow the kernel let through, limited
    like the refusals (`kernel.suppressed` counts the repeats of a flow in its window)."""

    kernel_blocks = False

    def disagreement(self, d: Decision) -> str:
        # only while sets of another policy are live (a swap in progress): say what happened
        return (f"let through by the kernel's sets (policy sha256 {self.kernel_sha()[:12]}), which "
                f"the policy here would not ({d.reason})")

    allowed = Receipts.refused
