"""`geogate run --workers N`: N mitmdump processes behind one listening address, kept as one.

Each worker is the same in-process mitmdump run as `geogate run` with one worker, in a process
of its own. Every worker binds the same address with SO_REUSEPORT, so the kernel spreads the
connections over them and each keeps the client's address (no balancer in front). Each worker
loads and reloads the policy itself and appends whole lines to the one decision log.

The supervisor (this process) says the start-up lines once: what the workers print while
starting is held back and said once, then "listening on" once every worker is bound. A worker
that fails to start ends the run with its own error (a port in use is one line, as with one
worker). Later, a worker that dies is said and restarted while the others serve; SIGTERM and
SIGINT stop them all; SIGHUP is passed on to every worker (the addon reopens the log).
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import IO
from typing import Any

from geogate.core.errors import GeogateError
from geogate.proxy.worker import WORKER_ENV

RESTART_DELAY = 2.0  # a worker that dies soon after starting is restarted only after this pause
STOP_GRACE = 10.0  # seconds the workers get to close their connections after SIGTERM


def check_shareable(specs: list[str], host: str, port: int) -> int:
    """The listening port every worker binds (a free one when `port` is 0); raises GeogateError
    for a mode whose listener cannot be shared (UDP ones, a per-mode port 0)."""
    from mitmproxy.proxy.mode_specs import ProxyMode

    from geogate.proxy.mitmproxy_private import share_listening_ports

    for spec in specs:
        mode = ProxyMode.parse(spec)
        if mode.transport_protocol != "tcp":
            raise GeogateError(f"--workers: mode {spec} listens on UDP (or a system redirector), which workers "
                               "cannot share; run it with --workers 1")
        if mode.custom_listen_port == 0:
            raise GeogateError(f"--workers: mode {spec} asks for any free port, which would differ per worker; "
                               "give it a port number")
    undo = share_listening_ports()
    if undo is None:
        raise GeogateError("--workers: this mitmproxy binds its listeners in a way geogate cannot share "
                           "(see geogate/proxy/mitmproxy_private.py); run with --workers 1")
    undo()
    if port == 0:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            port = s.getsockname()[1]
    return port


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


_TIME = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\]")


def _untimed(line: str) -> str:
    """A line as said once for all workers: without mitmproxy's time of day (which differs)."""
    return _TIME.sub("", line, count=1)


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    generation: int = 0
    ready: bool = False
    started: float = 0.0
    restart_at: float | None = None
    pending: list[tuple[str, str]] = field(default_factory=list)  # (stream, line) held until it is bound


class Supervisor:
    def __init__(self, count: int, argv: list[str], said: list[str], announce: list[str], mode: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.count = count
        self.spec = {"argv": argv, "said": said, "mode": mode}
        self.announce = announce
        self.extra_env = dict(extra_env or {})
        self.workers = [_Worker(i) for i in range(count)]
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.up = False  # every worker bound once, "listening on" said
        self.startup_lines: set[str] = set()  # said once at start: a restarted worker does not repeat them
        self.stop_signal: int | None = None
        self.hups = 0

    # -- the workers' environment: the hook for settings every worker of this run shares ----
    def worker_env(self, index: int) -> dict[str, str]:
        """The environment of worker `index`: the supervisor's own, untouched, plus `extra_env`
        (where a per-run directory such as PROMETHEUS_MULTIPROC_DIR belongs) and its index."""
        return {**os.environ, **self.extra_env, WORKER_ENV: f"{index}/{self.count}"}

    def _spawn(self, w: _Worker) -> None:
        ready_r, ready_w = os.pipe()
        spec = dict(self.spec, index=w.index, ready_fd=ready_w, parent=os.getpid())
        try:
            proc = subprocess.Popen([sys.executable, "-u", "-m", "geogate.cli.workers", json.dumps(spec)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, errors="replace", bufsize=1, pass_fds=(ready_w,),
                                    env=self.worker_env(w.index))
        finally:
            os.close(ready_w)
        w.generation += 1
        w.proc, w.ready, w.started, w.restart_at = proc, False, time.monotonic(), None
        threading.Thread(target=self._watch, args=(w.index, w.generation, proc, ready_r),
                         name=f"geogate-worker-{w.index}", daemon=True).start()

    def _watch(self, index: int, generation: int, proc: subprocess.Popen, ready_r: int) -> None:
        """Everything a worker says, its readiness, then its exit, as events in that order."""
        def lines(stream: IO[str], name: str) -> None:
            for line in stream:
                self.events.put(("line", index, generation, name, line.rstrip("\n")))

        def ready() -> None:
            with os.fdopen(ready_r, "rb") as f:
                if f.read(1):
                    self.events.put(("ready", index, generation))

        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=lines, args=(proc.stdout, "stdout"), daemon=True),
                   threading.Thread(target=lines, args=(proc.stderr, "stderr"), daemon=True),
                   threading.Thread(target=ready, daemon=True)]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        self.events.put(("exit", index, generation, proc.wait()))

    # -- output -------------------------------------------------------------------------------
    @staticmethod
    def _say(stream: str, line: str) -> None:
        out = sys.stderr if stream == "stderr" else sys.stdout
        print(line, file=out, flush=True)

    def _flush(self, w: _Worker, skip: set[str]) -> None:
        for stream, line in w.pending:
            key = _untimed(line)
            if key not in skip:
                self._say(stream, line)
                skip.add(key)
        w.pending.clear()

    # -- events -------------------------------------------------------------------------------
    def _on_line(self, w: _Worker, stream: str, line: str) -> None:
        if self.up and w.ready:
            self._say(stream, line)
        elif not (self.up and _untimed(line) in self.startup_lines):
            w.pending.append((stream, line))

    def _on_ready(self, w: _Worker) -> None:
        w.ready = True
        if self.up:
            self._flush(w, set(self.startup_lines))
            pid = w.proc.pid if w.proc else "?"
            self._say("stdout", f"geogate: worker {w.index} is back (pid {pid}) and serving")
        elif all(x.ready for x in self.workers):
            self.up = True
            for x in self.workers:
                self._flush(x, self.startup_lines)
            self._say("stdout", "\n".join(self.announce))
            self._say("stdout", f"geogate: {self.count} workers share the port (pids "
                                f"{', '.join(str(x.proc.pid) for x in self.workers if x.proc)})")

    def _on_exit(self, w: _Worker, returncode: int) -> int | None:
        """The run's exit status when this exit ends it, else None."""
        pid = w.proc.pid if w.proc else "?"
        w.proc, w.ready = None, False
        if self.stop_signal is not None:
            return None
        if not self.up:  # a failed start: its own error is the one said, the others are ended quietly
            self._flush(w, set())
            self._terminate_all(signal.SIGTERM)
            self._wait_all(STOP_GRACE)
            return returncode or 1
        w.pending.clear()
        soon = time.monotonic() - w.started < RESTART_DELAY * 5
        w.restart_at = time.monotonic() + (RESTART_DELAY if soon else 0)
        others = self.count - 1
        self._say("stderr", f"geogate: worker {w.index} (pid {pid}) {describe_exit(returncode)}; "
                            f"restarting it{f' in {RESTART_DELAY:.0f} s' if soon else ''}"
                            f"{f'; the other {others} serve meanwhile' if others > 1 else '; the other serves meanwhile'}")
        return None

    # -- stopping -----------------------------------------------------------------------------
    def _terminate_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()

    def _signals(self) -> None:
        def stop(sig: int, _frame: Any) -> None:
            self.stop_signal = sig

        def hup(_sig: int, _frame: Any) -> None:
            self.hups += 1

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        self._signals()
        for w in self.workers:
            self._spawn(w)
        stopping_since: float | None = None
        while True:
            try:
                status = self._handle(self.events.get(timeout=0.2))
            except queue.Empty:
                status = None
            if status is not None:
                return status
            if self.hups:
                self.hups = 0
                for w in self.workers:  # a worker still starting opens the log afresh anyway
                    if w.ready and w.proc is not None:
                        w.proc.send_signal(signal.SIGHUP)
            if self.stop_signal is None:
                self._restart_due()
                continue
            if stopping_since is None:
                stopping_since = time.monotonic()
                self._terminate_all(signal.SIGTERM)
            if all(w.proc is None or w.proc.poll() is not None for w in self.workers):
                self._wait_all(STOP_GRACE)
                return 0
            if time.monotonic() - stopping_since > STOP_GRACE:
                self._terminate_all(signal.SIGKILL)

    def _handle(self, event: tuple[Any, ...]) -> int | None:
        kind, index, generation, *rest = event
        w = self.workers[index]
        if generation != w.generation:
            return None  # from a worker already replaced
        if kind == "line":
            self._on_line(w, *rest)
        elif kind == "ready":
            self._on_ready(w)
        else:
            return self._on_exit(w, rest[0])
        return None

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None and w.restart_at is not None and w.restart_at <= now:
                self._spawn(w)


# -- in the worker ----------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """End with the supervisor, however it ends (PR_SET_PDEATHSIG), and not start after it."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(1)


def worker_main(spec_text: str) -> int:
    from geogate.cli.run_proxy import _run_mitmdump
    from geogate.proxy.mitmproxy_private import share_listening_ports

    spec = json.loads(spec_text)
    _die_with_parent(spec["parent"])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the addon takes SIGHUP over, once running
    if share_listening_ports() is None:
        print("geogate: this mitmproxy cannot share its listening port; run with --workers 1", file=sys.stderr)
        return 2
    ready_fd = spec["ready_fd"]

    def ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    _run_mitmdump(spec["argv"], spec["said"], ready, spec["mode"])
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
