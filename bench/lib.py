"""Shared helpers for the geogate benchmarks: /proc readings, processes, ports, figures.

Only the standard library here, so every section (and its subprocesses) can import it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
PY = sys.executable
MITMDUMP = str(VENV_BIN / "mitmdump") if (VENV_BIN / "mitmdump").exists() else (shutil.which("mitmdump") or "mitmdump")
GEOGATE = str(VENV_BIN / "geogate") if (VENV_BIN / "geogate").exists() else (shutil.which("geogate") or "geogate")
ADDON = ROOT / "addons" / "geogate_addon.py"
AUDIT_COMMAND = ROOT / "addons" / "geogate" / "cli" / "audit.py"
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- /proc ---------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads, exited ones too), in seconds, from
    /proc/<pid>/stat. Whole clock ticks (10 ms): too coarse for the difference between two
    proxies over a few seconds, see cpu_reading."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLK_TCK


@dataclass(frozen=True)
class CpuReading:
    """CPU time a process has used so far, two ways: `ticks` (cpu_seconds) and `threads`, the
    nanoseconds each live thread has run (first field of /proc/<pid>/task/<tid>/schedstat), or
    None where the kernel has no schedstat."""

    ticks: float
    threads: dict[int, int] | None


def _thread_ns(pid: int) -> dict[int, int] | None:
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    out[int(tid)] = int(f.read().split()[0])
            except FileNotFoundError:
                continue  # the thread exited while we listed: cpu_delta then uses the ticks
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return out or None


def cpu_reading(pid: int) -> CpuReading:
    return CpuReading(cpu_seconds(pid), _thread_ns(pid))


def cpu_delta(before: CpuReading, after: CpuReading) -> tuple[float, str]:
    """(seconds of CPU between two readings, source). Per-thread nanoseconds when every thread of
    the first reading is still there (its run time after the first reading would be lost
    otherwise) and the two agree to within what rounding to ticks explains (30 ms + 2%); else the
    clock-tick figure."""
    ticks = after.ticks - before.ticks
    if before.threads is not None and after.threads is not None and before.threads.keys() <= after.threads.keys():
        ns = sum(v - before.threads.get(tid, 0) for tid, v in after.threads.items()) / 1e9
        if abs(ns - ticks) <= 0.03 + 0.02 * ticks:
            return ns, "schedstat"
    return ticks, "stat"


def mem_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in MiB, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmPeak", "VmSize"):
                out[key] = int(value.split()[0]) / 1024
    return out


def system_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), seconds, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


# -- statistics ----------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: Sequence[float]) -> list[float] | None:
    xs = [x for x in xs if x is not None]
    return [rnd(min(xs)), rnd(max(xs))] if xs else None


def rnd(x: float | None, digits: int = 4) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{digits}g}")


# -- figures -------------------------------------------------------------------------------------

@dataclass
class Figure:
    """One reported number with everything needed to judge it."""

    id: str
    name: str
    value: float | None
    unit: str
    method: str
    target: str | None = None  # human-readable, e.g. "< 2 µs"
    passed: bool | None = None  # None: no target, or not measured
    rounds: int = 0
    raw: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "measured"  # measured | skipped | failed

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "pass": self.passed,
            "status": self.status,
            "method": self.method,
            "rounds": self.rounds,
            "raw": self.raw,
            **({"extra": self.extra} if self.extra else {}),
        }


def skipped(id: str, name: str, unit: str, target: str | None, why: str, method: str = "") -> Figure:
    return Figure(id, name, None, unit, method or why, target, None, 0, [], {"reason": why}, "skipped")


# -- ports and processes -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    logfile: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> CpuReading:
        return cpu_reading(self.pid)

    def mem(self) -> dict[str, float]:
        return mem_status(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        if self.logfile and self.logfile.exists():
            return self.logfile.read_text(errors="replace")[-n:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)


def start(name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    logfile = logdir / f"{name}.log"
    fh = open(logfile, "wb")
    popen = subprocess.Popen(
        argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, cwd=str(cwd or ROOT),
    )
    fh.close()
    return Proc(name, popen, logfile)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Every Proc appended to the yielded list is stopped on the way out, whatever happens."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()


def run_measured(argv: list[str], timeout: float, env: dict[str, str] | None = None,
                 stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run a child to completion; its CPU time and peak RSS come from wait4(2)'s rusage."""
    t0 = time.perf_counter()
    popen = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, cwd=str(ROOT))
    deadline = time.monotonic() + timeout
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            popen.kill()
            _, status, rusage = os.wait4(popen.pid, 0)
            popen.returncode = -9
            raise TimeoutError(f"{argv[:3]} did not finish within {timeout}s")
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    popen.returncode = os.waitstatus_to_exitcode(status)
    err = popen.stderr.read().decode(errors="replace") if popen.stderr else ""
    return {
        "rc": popen.returncode,
        "wall_s": wall,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "maxrss_mib": rusage.ru_maxrss / 1024,  # Linux: KiB
        "stderr": err[-3000:],
    }


# -- machine -------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions: dict[str, str | None] = {}
    for mod in ("mitmproxy", "maxminddb", "geoip2", "cryptography", "geogate"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:
            versions[mod] = None
    wrk = None
    with contextlib.suppress(Exception):
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5).stdout.splitlines()[0].strip()
    git = None
    with contextlib.suppress(Exception):
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "addons"], capture_output=True, text=True,
                               cwd=ROOT, timeout=5).stdout.strip()
        if dirty:
            git += " (addons/ has uncommitted changes)"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "wrk": wrk,
        "git": git,
        "clk_tck": CLK_TCK,
    }


def dump_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def rotate(variants: Sequence[Any], round_no: int) -> list[Any]:
    """Interleave: every round runs every variant, starting one further along each round."""
    k = round_no % len(variants)
    return list(variants[k:]) + list(variants[:k])


def bounded_loop(deadline: float, max_count: int, body: Callable[[], None]) -> int:
    n = 0
    while n < max_count and time.monotonic() < deadline:
        body()
        n += 1
    return n
