"""Keep the live GateState in step with the policy and database files on disk.

A file is applied only once its writer has finished with it. Where Linux inotify is available
(through libc, no extra package) the directory of every watched file is watched, and a change is
acted on only after
- a close-after-write (IN_CLOSE_WRITE) or a rename/create/delete of the name (IN_MOVED_TO,
  IN_CREATE, IN_DELETE, IN_MOVED_FROM: editors and `mv` replace the inode), with no write since, and
- the content (sha256, not just mtime and size) unchanged for the settle time after that event
  (`settle`, the geogate_reload_settle option, 1 s by default).
A writer that stops half-way with the file still open has sent writes (IN_MODIFY) but no close, so
nothing is applied however long it pauses. Without inotify (another OS, no free watches, a lost
event queue, a change the kernel reported nothing about such as a symlink retargeted) the content
must stay unchanged for POLL_SETTLE_FACTOR times the settle time instead, checked every `interval`.
The new state is loaded and then checked against the settled hashes (policy and database sha256
are hashes of exactly the bytes loaded), so a file that changes during the load is not applied.
A new GateState is built completely before it replaces the old one in a single assignment, so no
decision ever sees half of a change. Databases go through exactly the same rules.

What happens on a change:
- everything loads: the new state is used for every decision from then on;
- the policy or a database is invalid (or the policy file is gone): the last good state stays,
  and one error line says why;
- a database file is gone: decisions fail closed at once (every address is a lookup error, which
  the engine blocks) until the file is back, because a vanished database usually means a broken
  update and the old data may be exactly what the update was meant to fix.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno as errno_module
import hashlib
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from geogate.core.addresses import IPAddress
from geogate.core.errors import GeogateError
from geogate.core.facts import IPFacts
from geogate.core.lookup import FactsSource
from geogate.policy.state import GateState
from geogate.policy.state import default_policy_path
from geogate.policy.state import named_database_files

logger = logging.getLogger("geogate")

Stamp = tuple[int, int, int, int] | None

DEFAULT_SETTLE = 1.0  # seconds a finished file must keep its content before it is applied
MAX_SETTLE = 60.0
POLL_SETTLE_FACTOR = 5  # without inotify the content must hold still this many settle times


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def file_sha256(path: str) -> str | None:
    """The sha256 of a file's content, None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


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

    def db_files(self) -> tuple[str, ...]:
        """The database files named now (state.named_database_files)."""
        return named_database_files(self.databases)

    @property
    def has_directories(self) -> bool:
        return any(os.path.isdir(d) for d in self.databases)

    def paths(self, state: GateState | None) -> tuple[str, ...] | None:
        """The files to watch; None while the bundled databases are not unpacked yet."""
        if self.databases:
            dbs = self.db_files()
        elif state is not None:
            dbs = tuple(info.path for info in state.databases.infos)
        else:
            return None
        return (str(self.policy or default_policy_path()), *dbs)


# -- inotify, through libc ---------------------------------------------------------------------

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
FINISHED = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM
DIR_MASK = FINISHED | IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_EVENT = struct.Struct("iIII")


class Inotify:
    """Directory watches on one inotify descriptor (Linux). `open()` is None where unavailable."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self.fd = fd
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory

    @classmethod
    def open(cls) -> "Inotify | None":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            init1, add = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
        add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            logger.warning(f"geogate: inotify unavailable ({os.strerror(ctypes.get_errno())}); "
                           "policy and database changes are found by polling, with a longer settle time")
            return None
        return cls(libc, fd)

    def watch(self, directory: str) -> bool:
        if directory in self.dirs.values():
            return True
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), DIR_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err != errno_module.ENOENT:
                logger.warning(f"geogate: cannot watch {directory} ({os.strerror(err)}); "
                               "changes there are found by polling, with a longer settle time")
            return False
        self.dirs[wd] = directory
        return True

    def read(self) -> list[tuple[str | None, str, int]]:
        """Pending events as (directory, name, mask); directory None for a queue overflow."""
        out: list[tuple[str | None, str, int]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            if not buf:
                return out
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                name = os.fsdecode(buf[off + _EVENT.size:off + _EVENT.size + length].rstrip(b"\0"))
                off += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    out.append((None, "", mask))
                    continue
                directory = self.dirs.get(wd)
                if directory is None:
                    continue
                if mask & IN_IGNORED:
                    del self.dirs[wd]  # the directory is gone or was moved: watched again later
                out.append((directory, name, mask))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.dirs.clear()


# -- one watched file --------------------------------------------------------------------------

STALE: Stamp = (-1, -1, -1, -1)  # a stamp no file has: look again from scratch
MISSING = "missing"  # the digest of a file that does not exist
UNKNOWN = ""  # not hashed yet


@dataclass
class Watched:
    """What is known about one watched file: what is applied, and what its writer is doing."""

    path: str
    applied: str  # sha256 of the content the live state was built from (MISSING: none)
    applied_stamp: Stamp
    keys: tuple[tuple[str, str], ...] = ()  # (directory, name) pairs inotify reports it under
    stamp: Stamp = None
    digest: str = UNKNOWN  # sha256 of the content at `stamp`, once known
    since: float = 0.0  # when `stamp`/`digest` last changed
    events: bool = False  # inotify reported on this file since it last matched `applied`
    writing: bool = False  # a write (IN_MODIFY) with no close-after-write or rename since
    finished: float | None = None  # when it was last closed after writing, renamed, created or deleted

    def __post_init__(self) -> None:
        self.stamp = self.applied_stamp
        self.digest = self.applied
        p = os.path.abspath(self.path)
        keys = [(os.path.dirname(p), os.path.basename(p))]
        real = os.path.realpath(p)
        if real != p:
            keys.append((os.path.dirname(real), os.path.basename(real)))
        self.keys = tuple(keys)

    def forget_events(self) -> None:
        self.events, self.writing, self.finished = False, False, None


class LiveState:
    """The current GateState of a running proxy, and how it follows the files."""

    def __init__(self, source: Source, *, interval: float = 0.5, settle: float = DEFAULT_SETTLE,
                 use_inotify: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.interval = interval
        self.settle = settle
        self.clock = clock
        self._use_inotify = use_inotify
        self._inotify: Inotify | None = Inotify.open() if use_inotify else None
        self._by_key: dict[tuple[str, str], list[Watched]] = {}
        self._failed: tuple[str, ...] | None = None
        # called after each reload attempt: (kind "policy" or "database", result "success",
        # "failure" or "missing", the state in force)
        self.on_reload: Callable[[str, str, GateState], None] | None = None
        self._task: asyncio.Task | None = None
        # called with the state before, after each change of state and each freshness crossing
        self.on_change: Callable[[GateState], None] | None = None
        self._freshness_said: tuple[bool, str | None] | None = None
        self._wake: asyncio.Event | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        # Watches and stamps from before the load: a change made while loading is seen later.
        early = source.paths(None)
        if early and self._inotify is not None:
            for p in early:
                self._inotify.watch(os.path.dirname(os.path.abspath(p)))
        before = {p: stamp(p) for p in early} if early else {}
        try:
            self.good = source.load()  # raises GeogateError: the caller refuses to start
        except BaseException:
            self._close_inotify()
            raise
        self.state = self.good
        self._directories = source.has_directories
        self._listing_failed: tuple | None = None
        self._track(self.good, before)

    def _track(self, state: GateState, before: dict[str, Stamp]) -> None:
        """Watch the files `state` was built from (`before`: stamps taken before it was loaded)."""
        self.paths: tuple[str, ...] = self.source.paths(state) or ()
        self.db_paths = self.paths[1:]
        loaded = self._loaded_digests(state)
        self.files = [Watched(p, loaded.get(p) or file_sha256(p) or MISSING,
                              before[p] if p in before else stamp(p)) for p in self.paths]
        self._by_key = {}
        for f in self.files:
            for key in f.keys:
                self._by_key.setdefault(key, []).append(f)
        self._watch_dirs()

    @property
    def poll_settle(self) -> float:
        """How long content must hold still when inotify cannot say its writer is done."""
        return max(self.settle * POLL_SETTLE_FACTOR, 2 * self.interval)

    def _loaded_digests(self, state: GateState) -> dict[str, str]:
        """Path -> sha256 of the bytes `state` was built from."""
        out = {self.paths[0]: state.policy.ref.sha256} if self.paths else {}
        by_path = {info.path: info.sha256 for info in state.databases.infos}
        for p in self.db_paths:
            if str(Path(p)) in by_path:
                out[p] = by_path[str(Path(p))]
        return out

    # -- inotify -----------------------------------------------------------------------------
    def _watch_dirs(self) -> None:
        if self._inotify is None:
            return
        for f in self.files:
            for directory, _name in f.keys:
                self._inotify.watch(directory)

    def _watched(self, f: Watched) -> bool:
        if self._inotify is None:
            return False
        dirs = self._inotify.dirs.values()
        return all(directory in dirs for directory, _name in f.keys)

    def _drain(self, now: float) -> bool:
        """Take in what inotify reported; True when a file may have become ready."""
        if self._inotify is None:
            return False
        ready = False
        for directory, name, mask in self._inotify.read():
            if directory is None:  # events were lost: nobody can say who is writing now
                logger.warning("geogate: inotify event queue overflowed; waiting the polling settle time")
                for f in self.files:
                    f.forget_events()
                    f.since = now
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) and not name:
                for f in self.files:  # its directory went away: poll it until it is watched again
                    if any(d == directory for d, _n in f.keys):
                        f.forget_events()
                        f.since = now
                continue
            for f in self._by_key.get((directory, name), ()):
                f.events = True
                if mask & IN_MODIFY:
                    f.writing, f.finished = True, None
                if mask & FINISHED:
                    f.writing, f.finished = False, now
                    ready = True
        return ready

    def _stop_reading(self) -> None:
        if self._reader_loop is not None and self._inotify is not None:
            try:
                self._reader_loop.remove_reader(self._inotify.fd)
            except (RuntimeError, ValueError, OSError):  # the loop is already closed
                pass
        self._reader_loop = None

    def _close_inotify(self) -> None:
        self._stop_reading()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # -- one look at the files ---------------------------------------------------------------
    def _ready_at(self, f: Watched) -> float | None:
        """When a changed file may be applied (given no further change); None: not while its
        writer is still at it."""
        if self._watched(f) and f.events:
            if f.writing or f.finished is None:
                return None
            return max(f.finished, f.since) + self.settle
        return f.since + self.poll_settle

    def _look(self, f: Watched, now: float) -> None:
        """Bring `f.stamp`/`f.digest` up to date, hashing only content that may be final."""
        st = stamp(f.path)
        if st != f.stamp:
            f.stamp, f.digest, f.since = st, (UNKNOWN if st else MISSING), now
            if st is None:
                return
            if not (self._watched(f) and f.events):
                return  # polling: hash once the stamp has held still for one look
        if f.digest == UNKNOWN and not f.writing:
            f.digest, f.since = file_sha256(f.path) or MISSING, now
        if st == f.applied_stamp or f.digest == f.applied:
            if f.digest == f.applied:
                f.applied_stamp = st  # same content (a touch, a copy of the same file)
            if not f.writing:
                f.forget_events()

    def _pending(self) -> list[Watched]:
        return [f for f in self.files if f.stamp != f.applied_stamp and f.digest != f.applied]

    def _all_ready(self, pending: list[Watched], now: float) -> bool:
        for f in pending:
            at = self._ready_at(f)
            if at is None or now < at or f.digest == UNKNOWN:
                return False
        return True

    def poll(self, now: float | None = None) -> bool:
        """Check the files once; True when the state was replaced."""
        now = self.clock() if now is None else now
        self._drain(now)
        self._watch_dirs()
        listing = self._new_listing()
        if listing is not None:
            return self._relist(listing)
        for f in self.files:
            self._look(f, now)
        pending = self._pending()
        if not pending:
            return False
        missing = [f for f in pending if f.path in self.db_paths and f.stamp is None]
        if missing:
            return self._fail_closed(missing)
        if any(f.writing for f in self.files):
            return False
        if not self._all_ready(pending, now):
            return False
        # Settled: a file touched since it was hashed starts again (the content itself is
        # compared after loading, with the sha256 of the bytes the new state was built from).
        for f in pending:
            if f.stamp is not None and stamp(f.path) != f.stamp:
                f.stamp, f.digest, f.since = STALE, UNKNOWN, now
                return False
        digests = tuple(f.digest for f in self.files)
        if digests == self._failed:
            return False
        try:
            new = self.source.load()
        except GeogateError as e:
            self._failed = digests
            logger.error(f"geogate: reload failed, still using policy {self.good.policy.ref.name} "
                         f"(sha256 {shown_sha256(self.good.policy.ref.sha256)}): {one_line(e)}")
            self._said(pending, "failure")
            return False
        loaded = self._loaded_digests(new)
        moved = [f for f in self.files if f.path in loaded and loaded[f.path] != f.digest]
        if moved:  # written to while it loaded: what was read is not what settled
            for f in moved:
                f.stamp, f.digest, f.since = STALE, UNKNOWN, now
            logger.info(f"geogate: {', '.join(f.path for f in moved)} changed while loading; waiting for it to settle")
            return False
        self._failed = None
        was_closed = self.state is not self.good
        self.good = self.state = new
        for f in self.files:
            f.applied, f.applied_stamp = f.digest, f.stamp
            f.forget_events()
        for w in new.warnings:
            logger.warning(f"geogate: {w}")
        what = "databases are back; " if was_closed else ""
        logger.info(f"geogate: {what}reloaded policy {new.policy.ref.name} (sha256 {shown_sha256(new.policy.ref.sha256)}) "
                    f"with {', '.join(i.name for i in new.databases.infos)}")
        self._said(pending, "success")
        return True

    def _said(self, changed: list[Watched], result: str) -> None:
        if self.on_reload is not None:
            kind = "database" if all(f.path in self.db_paths for f in changed) else "policy"
            self.on_reload(kind, result, self.state)

    def _new_listing(self) -> tuple[str, ...] | None:
        """The database files named now, when a database directory has gained one; else None.
        (A file gone is a missing database, as anywhere: see poll.)"""
        if not self._directories:
            return None
        listing = self.source.db_files()
        return listing if set(listing) - set(self.db_paths) else None

    def _relist(self, listing: tuple[str, ...]) -> bool:
        """A database directory gained .mmdb files: load the new set whole."""
        attempt = (listing, tuple(stamp(p) for p in listing))
        if attempt == self._listing_failed:
            return False
        before = {p: stamp(p) for p in (self.paths[:1] + listing)}
        try:
            new = self.source.load()
        except GeogateError as e:
            self._listing_failed = attempt
            logger.error(f"geogate: the database directory changed, but the new set does not load; still using "
                         f"{', '.join(i.name for i in self.good.databases.infos)}: {one_line(e)}")
            if self.on_reload is not None:
                self.on_reload("database", "failure", self.state)
            return False
        self._listing_failed = None
        added = sorted(set(listing) - set(self.db_paths))
        removed = sorted(set(self.db_paths) - set(listing))
        self.good = self.state = new
        self._track(new, before)
        for w in new.warnings:
            logger.warning(f"geogate: {w}")
        change = "; ".join(filter(None, (f"added {', '.join(added)}" if added else "",
                                         f"removed {', '.join(removed)}" if removed else "")))
        logger.info(f"geogate: reloaded policy {new.policy.ref.name} (sha256 {shown_sha256(new.policy.ref.sha256)}) with "
                    f"{', '.join(i.name for i in new.databases.infos)} (database directory: {change})")
        if self.on_reload is not None:
            self.on_reload("database", "success", self.state)
        return True

    def check_freshness(self, wall: float | None = None) -> bool:
        """Say, once, that the databases have passed `geo.max_age` (or are within it again after
        a reload); True when that changed since the last look. Checked on every look at the
        files (at least every `interval`), so a database that ages past the limit while the
        proxy runs is said within that time."""
        f = self.state.freshness(wall)
        now = (f.stale, f.warning)
        before, self._freshness_said = self._freshness_said, now
        if before == now or before is None and not f.stale:
            return False
        if f.stale:
            logger.warning(f"geogate: {f.warning}; geo.on_stale: {f.on_stale}: {STALE_EFFECT[f.on_stale]}")
        else:
            logger.info("geogate: the databases are within geo.max_age again; decisions follow the policy")
        return before is not None

    def _fail_closed(self, missing: list[Watched]) -> bool:
        names = ", ".join(f.path for f in missing)
        reason = f"database {names} is missing; every connection is refused until it is back"
        self.state = GateState(self.good.policy, self.good.databases, UnavailableFacts(self.good.facts, reason))
        for f in missing:  # what is applied now is "no such file": its return is a change
            f.applied, f.applied_stamp = MISSING, None
            f.forget_events()
        self._failed = None
        logger.error(f"geogate: {reason}")
        self._said(missing, "missing")
        return True

    def next_check(self, now: float) -> float:
        """Seconds until the next look is worth taking (at most `interval`)."""
        wait = self.interval
        for f in self._pending():
            at = self._ready_at(f)
            if at is not None:
                wait = min(wait, at - now)
        return max(wait, 0.01)

    # -- the watcher task --------------------------------------------------------------------
    def _on_events(self) -> None:
        try:
            if self._drain(self.clock()) and self._wake is not None:
                self._wake.set()
        except Exception as e:  # never let a reader callback die
            logger.error(f"geogate: reading file events failed: {e!r}")

    async def watch(self) -> None:
        self._wake = asyncio.Event()
        if self._inotify is None and self._use_inotify:
            self._inotify = Inotify.open()
            self._watch_dirs()
        if self._inotify is not None:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._inotify.fd, self._on_events)
            self._reader_loop = loop
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.next_check(self.clock()))
                except TimeoutError:
                    pass
                self._wake.clear()
                before = self.state
                try:
                    changed = self.poll()
                    crossed = self.check_freshness()
                    if (changed or crossed) and self.on_change is not None:
                        self.on_change(before)
                except Exception as e:  # the watcher must outlive any surprise; the next poll retries
                    logger.error(f"geogate: reload check failed: {e!r}")
        finally:
            self._stop_reading()

    def start(self) -> None:
        from mitmproxy.utils import asyncio_utils

        if self._task is None:
            self._task = asyncio_utils.create_task(self.watch(), name="geogate reload", keep_ref=True)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._close_inotify()


STALE_EFFECT = {
    "warn": "decisions go on, each recording the warning, until the databases are updated",
    "monitor": "the policy is observe-only (nothing is blocked, every decision is recorded) until the databases are updated",
    "block": "every connection is refused (fail closed) until the databases are updated",
}


def shown_sha256(sha: str) -> str:
    """A policy hash as the log names it: 12 digits, all 64 when GEOGATE_LOG_SHA256=full (the
    gateway sets it for its proxy child, to compare with the kernel's hash exactly)."""
    return sha if os.environ.get("GEOGATE_LOG_SHA256") == "full" else sha[:12]


def describe(state: GateState) -> list[str]:
    """Lines that say which policy and databases a state is made of."""
    p = state.policy.ref
    out = [f"policy {p.name} ({p.path}, sha256 {shown_sha256(p.sha256)}), mode {state.policy.mode}, "
           f"default {state.policy.default}"]
    out += [f"database {i.name} ({i.path}, {i.type})" for i in state.databases.infos]
    return out
