"""A progress bar on stderr, for people watching a long audit; silent when stderr is not a terminal
(CI logs, pipes), so it never mixes into output that tools read."""

from __future__ import annotations

import sys
import time
from typing import TextIO

INTERVAL = 0.1  # seconds between redraws
WIDTH = 28


class Progress:
    def __init__(self, total_bytes: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(total_bytes, 1)
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False
        encoding = (getattr(self.stream, "encoding", None) or "").lower()
        self._full, self._empty = ("█", "░") if "utf" in encoding else ("#", ".")

    def update(self, done_bytes: int, flows: int, label: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < INTERVAL:
            return
        self._last = now
        fraction = min(done_bytes / self.total, 1.0)
        filled = int(fraction * WIDTH)
        rate = flows / max(now - self.started, 1e-6)
        bar = self._full * filled + self._empty * (WIDTH - filled)
        self.stream.write(f"\r{bar} {fraction:4.0%}  {flows:,} flows  {rate:,.0f}/s  {label}"[:200] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def done(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
