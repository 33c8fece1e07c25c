"""Keep the live GateState in step with the policy and database files on disk.

mitmproxy has no file watcher for addon data, so a task polls (mtime, size, inode, device) of
every watched file. A change is acted on only once the stamps have stayed the same for one more
poll, so an editor that writes a file in several steps is not read half-way (a change still
applies within about two poll intervals). A new GateState is built completely before it replaces
the old one in a single assignment, so no decision ever sees half of a change.

What happens on a change:
- everything loads: the new state is used for every decision from then on;
- the policy or a database is invalid (or the policy file is gone): the last good state stays,
  and one error line says why;
- a database file is gone: decisions fail closed (every address is a lookup error, which the
  engine blocks) until the file is back, because a vanished database usually means a broken
  update and the old data may be exactly what the update was meant to fix.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from .addresses import IPAddress
from .errors import GeogateError
from .facts import FactsSource
from .facts import IPFacts
from .state import GateState
from .state import default_policy_path

logger = logging.getLogger("geogate")

Stamp = tuple[int, int, int, int] | None


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def one_line(error: BaseException) -> str:
    """The first line of an error message, with a count of the lines left out."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    more = len(lines) - 1
    return lines[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


class UnavailableFacts(FactsSource):
    """Facts for a state whose database vanished: every address is a lookup error."""

    def __init__(self, base: FactsSource, reason: str) -> None:
        super().__init__(base.databases)
        self.reason = reason

    def _lookup_ip(self, ip: IPAddress) -> IPFacts:
        return IPFacts(ip, (), self.reason)


@dataclass(frozen=True)
class Source:
    """Where a state comes from: what the options name (empty = the defaults)."""

    policy: str | None
    databases: tuple[str, ...]

    def load(self) -> GateState:
        return GateState.load(self.policy or None, list(self.databases) or None)

    def paths(self, state: GateState | None) -> tuple[str, ...] | None:
        """The files to watch; None while the bundled databases are not unpacked yet."""
        if not self.databases and state is None:
            return None
        dbs = self.databases or tuple(info.path for info in state.databases.infos)
        return (str(self.policy or default_policy_path()), *dbs)


class LiveState:
    """The current GateState of a running proxy, and how it follows the files."""

    def __init__(self, source: Source, *, interval: float = 0.5) -> None:
        self.source = source
        self.interval = interval
        # Stamps from before the load: a change made while loading is seen by the first poll.
        early = source.paths(None)
        before = {p: stamp(p) for p in early} if early else None
        self.good = source.load()  # raises GeogateError: the caller refuses to start
        self.state = self.good
        self.generation = 1
        self.paths: tuple[str, ...] = source.paths(self.good) or ()
        self.db_paths = self.paths[1:]
        self._seen = before if before is not None else self._stamps()
        self._pending: dict[str, Stamp] | None = None
        self._failed: dict[str, Stamp] | None = None
        self._task: asyncio.Task | None = None

    def _stamps(self) -> dict[str, Stamp]:
        return {p: stamp(p) for p in self.paths}

    # -- one look at the files ---------------------------------------------------------------
    def poll(self) -> bool:
        """Check the files once; True when the state was replaced."""
        current = self._stamps()
        if current == self._seen:
            self._pending = None
            return False
        if current != self._pending:
            self._pending = current  # changed since the last look: wait until it holds still
            return False
        self._pending = None
        self._seen = current
        missing = [p for p in self.db_paths if current.get(p) is None]
        if missing:
            return self._fail_closed(missing)
        try:
            new = self.source.load()
        except GeogateError as e:
            if self._failed != current:
                self._failed = current
                logger.error(f"geogate: reload failed, still using policy {self.good.policy.ref.name} "
                             f"(sha256 {self.good.policy.ref.sha256[:12]}): {one_line(e)}")
            return False
        self._failed = None
        was_closed = self.state is not self.good
        self.good = self.state = new
        self.generation += 1
        for w in new.warnings:
            logger.warning(f"geogate: {w}")
        what = "databases are back; " if was_closed else ""
        logger.info(f"geogate: {what}reloaded policy {new.policy.ref.name} (sha256 {new.policy.ref.sha256[:12]}) "
                    f"with {', '.join(i.name for i in new.databases.infos)}")
        return True

    def _fail_closed(self, missing: list[str]) -> bool:
        names = ", ".join(missing)
        reason = f"database {names} is missing; every connection is refused until it is back"
        self.state = GateState(self.good.policy, self.good.databases, UnavailableFacts(self.good.facts, reason))
        self.generation += 1
        logger.error(f"geogate: {reason}")
        return True

    # -- the watcher task --------------------------------------------------------------------
    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception as e:  # the watcher must outlive any surprise; the next poll retries
                logger.error(f"geogate: reload check failed: {e!r}")

    def start(self) -> None:
        from mitmproxy.utils import asyncio_utils

        if self._task is None:
            self._task = asyncio_utils.create_task(self.watch(), name="geogate reload", keep_ref=True)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None



def describe(state: GateState) -> list[str]:
    """Lines that say which policy and databases a state is made of."""
    p = state.policy.ref
    out = [f"policy {p.name} ({p.path}, sha256 {p.sha256[:12]}), mode {state.policy.mode}, default {state.policy.default}"]
    out += [f"database {i.name} ({i.path}, {i.type})" for i in state.databases.infos]
    return out
