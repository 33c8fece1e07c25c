"""Scaling benchmarks: 1 vs 2 workers, the same load through Squid, bulk transfer through a tunnel.

Sections of `bench/run.py` (selectable with --only):

- scale: `geogate run --workers 1` and `--workers 2` (SO_REUSEPORT workers), for keep-alive plain
  HTTP, a new connection per request, and CONNECT + TLS passthrough tunnels:
  spread (each worker's share of the client connections, counted from the decision log's records,
  which name their worker), efficiency (proxy CPU per request, every process of the tree, 2 workers
  vs 1, loaded at the same time with each worker as busy as the single one; the same figure at the
  same total load beside it), capacity (req/s at saturation, one at a time, 2/1), each with the load
  generator's own CPU (wait4 rusage) beside;
- squid: Squid 5 as a forward proxy (no cache, `workers 1` and `workers 2`) under the same loads:
  CPU per request against `geogate run` (paced, loaded at the same time), capacity at saturation;
- bulk: MB/s of one TLS download through a CONNECT tunnel, geogate (TLS passthrough) vs bare
  mitmdump --ignore-hosts '.*' vs straight to the server, with the proxy's user and system CPU.

Loopback only; every load is bounded in time. Numbers are for a shared 2-core machine: the load
generator, the origin and the proxies all compete for the same two cores, which the capacity
figures say beside each number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Callable

import proxy as proxy_bench
from lib import ADDON
from lib import BENCH
from lib import CLK_TCK
from lib import DEFAULT_POLICY
from lib import GEOGATE
from lib import PY
from lib import CpuReading
from lib import Figure
from lib import Proc
from lib import cpu_delta
from lib import cpu_reading
from lib import free_port
from lib import log
from lib import median
from lib import rnd
from lib import skipped
from lib import start
from lib import system_cpu_seconds
from lib import wait_port

KINDS = ("keepalive", "close", "tunnel")
KIND_LABEL = {"keepalive": "keep-alive plain HTTP", "close": "new connection per request",
              "tunnel": "CONNECT + TLS passthrough tunnel"}
PER = {"keepalive": "req", "close": "req", "tunnel": "tunnel"}
# paced loads of the 2-worker tree (each proxy well below one core). The kernel hashes each
# connection to a worker, so a fair spread of N connections is binomial, with a standard deviation
# of 50/sqrt(N) %: keep-alive opens 96 connections per round (480 over the 5 rounds of a default run,
# 2.3%; 32 per round gave 5.1%, and 60.4% was a 2-sigma draw), each waiting long enough to keep the
# request rate well below a core
PACED = {"keepalive": (96, 600), "close": (16, 200), "tunnel": 40.0}  # (connections, delay ms) / tunnels/s
SATURATING = {"keepalive": 10, "close": 10, "tunnel": 8}  # connections / tunnel workers, no pacing
SPREAD_TARGET = (40.0, 60.0)
EFFICIENCY_TARGET_PCT = 5.0


def saturating_seconds(seconds: int) -> int:
    """Saturated units are shorter than paced ones: a rate needs less time than a CPU ratio, and
    `make bench` has to stay under 15 minutes."""
    return max(1, seconds - 1)


# -- process trees ---------------------------------------------------------------------------------

def descendants(root: int) -> list[int]:
    """root and every process below it (from the ppid field of /proc/*/stat)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        parent[int(name)] = int(data[data.rindex(b")") + 2:].split()[1])
    out, todo = [root], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    except OSError:
        pass
    return out


def tcp_sockets(port: int) -> dict[int, str]:
    """inode -> state (hex, 0A listening) of the IPv4 TCP sockets whose local port is `port`, from
    /proc/net/tcp (read once per start: it lists every TIME_WAIT socket too)."""
    out = {}
    want = f":{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(want):
                out[int(parts[9])] = parts[3]
    return out


@dataclass
class Tree:
    """A proxy made of one or more processes: every process counts for CPU; the workers are the
    ones holding a listening socket on the proxy's port."""

    name: str
    root: int
    port: int
    pids: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    proc: Proc | None = None
    log: Path | None = None  # geogate's decision log: one record per request, naming worker and client

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log is not None and self.log.exists() else 0

    def connections_since(self, offset: int) -> list[int] | None:
        """Distinct client connections (address:port) each worker decided for, from the records
        written after `offset`: exact, where sampling open sockets misses short connections."""
        if self.log is None:
            return None
        clients: list[set[str]] = [set() for _ in self.workers]
        with open(self.log, "rb") as f:
            f.seek(offset)
            for line in f:
                rec = json.loads(line)
                if rec.get("event") == "decision" and rec.get("client"):
                    clients[rec.get("worker") or 0].add(rec["client"])
        return [len(c) for c in clients]

    def discover(self, expect_workers: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.pids = descendants(self.root)
            listening = {i for i, st in tcp_sockets(self.port).items() if st == "0A"}
            # Squid's SMP coordinator holds the listening socket too, and hands it to the workers
            self.workers = [p for p in self.pids if socket_inodes(p) & listening and b"coord" not in _cmdline(p)]
            if len(self.workers) >= expect_workers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if len(self.workers) != expect_workers:
            raise RuntimeError(f"{self.name}: {len(self.workers)} processes listen on {self.port}, "
                               f"expected {expect_workers} (tree {self.pids})")

    def cpu(self) -> dict[int, CpuReading]:
        out = {}
        for pid in self.pids:
            try:
                out[pid] = cpu_reading(pid)
            except OSError:
                continue
        return out


def tree_cpu(before: dict[int, CpuReading], after: dict[int, CpuReading]) -> dict[int, float]:
    if before.keys() != after.keys():
        raise RuntimeError(f"a process of the proxy ended during the load: {sorted(before)} -> {sorted(after)}")
    return {pid: cpu_delta(before[pid], after[pid])[0] for pid in before}


def user_system(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK


# -- loads ----------------------------------------------------------------------------------------

def client_argv(env: proxy_bench.Env, kind: str, port: int, seconds: int, paced: bool,
                factor: float = 1.0) -> list[str]:
    """factor scales a paced load (connections or tunnel rate and workers), each connection's wait kept."""
    if kind == "tunnel":
        argv = proxy_bench._tunnel_argv(env, port, "127.0.0.1", seconds, factor * PACED["tunnel"] if paced else 0.0)
        concurrency = max(1, round(factor * proxy_bench.TUNNEL_CONCURRENCY)) if paced else SATURATING["tunnel"]
        argv[argv.index("--concurrency") + 1] = str(concurrency)
        return argv
    conns, delay = (round(factor * PACED[kind][0]), PACED[kind][1]) if paced else (SATURATING[kind], None)
    script = proxy_bench._wrk_script(env, "127.0.0.1", kind, delay_ms=delay, jitter=paced)
    return proxy_bench._wrk_argv(port, script, seconds, conns)


def parse_client(kind: str) -> Callable[[str, str, int], dict[str, Any]]:
    return proxy_bench._tunnel_parse if kind == "tunnel" else proxy_bench._wrk_parse


def _run_client(argv: list[str], seconds: int, out: dict) -> None:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    timer = threading.Timer(seconds + 60, p.kill)
    timer.start()
    stdout, stderr = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    out.update(stdout=stdout, stderr=stderr, rc=p.returncode, gen_cpu_s=ru.ru_utime + ru.ru_stime)


def load(units: list[tuple[Tree, str]], kind: str, seconds: int, paced: bool,
         factors: list[float] | None = None) -> list[dict[str, Any]]:
    """Load every tree at once, each by its own client (its load scaled by `factors`); per tree:
    completed count, rate, CPU per request (all its processes), each worker's CPU and connections
    (from geogate's decision log), the client's CPU."""
    offsets = [t.log_size() for t, _ in units]
    before = [t.cpu() for t, _ in units]
    sys0, t0 = system_cpu_seconds(), time.perf_counter()
    outs: list[dict] = [{} for _ in units]
    factors = factors or [1.0] * len(units)
    threads = [threading.Thread(target=_run_client, args=(client_argv(env_of(t), kind, t.port, seconds, paced, f),
                                                          seconds, out))
               for (t, _), out, f in zip(units, outs, factors, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    time.sleep(proxy_bench.SETTLE)
    wall = time.perf_counter() - t0
    busy = (system_cpu_seconds() - sys0) / (wall * (os.cpu_count() or 1))
    results = []
    for (t, _), b, out, offset, f in zip(units, before, outs, offsets, factors, strict=True):
        r = parse_client(kind)(out["stdout"], out["stderr"], out["rc"])
        n = r.pop("count")
        per_pid = tree_cpu(b, t.cpu())
        cpu = sum(per_pid.values())
        r.update(proxy=t.name, cpu_s=rnd(cpu), cpu_cores=rnd(cpu / seconds, 3),
                 worker_cpu_s=[rnd(per_pid[p]) for p in t.workers], load_factor=f,
                 worker_connections=t.connections_since(offset),
                 gen_cpu_s=rnd(out["gen_cpu_s"]), gen_cores=rnd(out["gen_cpu_s"] / seconds, 3),
                 machine_busy=rnd(busy, 3))
        r[f"cpu_ms_per_{PER[kind]}"] = rnd(1000 * cpu / n) if n else None
        results.append(r)
    return results


_ENVS: dict[str, proxy_bench.Env] = {}


def env_of(tree: Tree) -> proxy_bench.Env:
    return _ENVS[tree.name]


def rate_of(r: dict) -> float:
    return r.get("rps") or r.get("per_s") or 0.0


# -- the proxies -----------------------------------------------------------------------------------

def workers_supported() -> str | None:
    """None when `geogate run --workers` exists, else why not."""
    try:
        out = subprocess.run([GEOGATE, "run", "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"geogate run --help failed: {e}"
    return None if "--workers" in out else "geogate run has no --workers option yet (the workers change is not merged)"


def start_geogate(env: proxy_bench.Env, name: str, workers: int | None) -> Tree:
    port = free_port()
    argv = [GEOGATE, "run", "--listen-host", "127.0.0.1", "--listen-port", str(port), "--policy", str(DEFAULT_POLICY)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    decision_log = env.tmp / f"{name}-decisions.jsonl"
    argv += ["--log", str(decision_log), "--", "-q", "--set", f"confdir={env.tmp / ('conf-' + name)}"]
    proc = start(name, argv, env.tmp)
    env.procs.append(proc)
    return _tree(env, name, proc, port, workers or 1, decision_log)


def _tree(env: proxy_bench.Env, name: str, proc: Proc, port: int, workers: int, decision_log: Path | None = None) -> Tree:
    try:
        wait_port(port, timeout=120, proc=proc.popen)
    except Exception as e:
        raise RuntimeError(f"{name} did not start: {e}\n{proc.tail()}") from None
    tree = Tree(name, proc.pid, port, proc=proc, log=decision_log)
    tree.discover(workers)
    _ENVS[name] = env
    return tree


SQUID_CONF = """\
http_port 127.0.0.1:{port}
workers {workers}
http_access allow all
cache deny all
cache_mem 0 MB
memory_pools off
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
forwarded_for delete
via off
client_persistent_connections on
server_persistent_connections on
shutdown_lifetime 1 seconds
"""


def squid_binary() -> str | None:
    return shutil.which("squid") or next((p for p in ("/usr/sbin/squid",) if os.path.exists(p)), None)


def start_squid(env: proxy_bench.Env, name: str, workers: int) -> Tree:
    port = free_port()
    d = env.tmp / name
    d.mkdir(mode=0o777, exist_ok=True)
    os.chmod(d, 0o777)  # run as root, squid drops to its cache_effective_user, which writes here
    conf = d / "squid.conf"
    conf.write_text(SQUID_CONF.format(port=port, workers=workers, dir=d))
    argv = [squid_binary(), "-f", str(conf), "--foreground", "-n", f"gb{os.getpid() % 10000}{name[-2:]}"]
    proc = start(name, argv, env.tmp)
    env.procs.append(proc)
    return _tree(env, name, proc, port, workers)


def stop_tree(t: Tree) -> None:
    if t.proc is not None:
        t.proc.stop(timeout=15)


def check(t: Tree, kind: str, env: proxy_bench.Env) -> None:
    if kind == "tunnel":
        r = proxy_bench._tunnel_parse(*_once(proxy_bench._tunnel_argv(env, t.port, "127.0.0.1", 1, 20.0)))
        ok, why = bool(r["count"]), r.get("errors")
    else:
        ok, why = proxy_bench.check_http(t.port, f"127.0.0.1:{env.http_port}", kind)
    if not ok:
        raise RuntimeError(f"{t.name}: {kind} check failed: {why}\n{t.proc.tail(1500) if t.proc else ''}")


def _once(argv: list[str]) -> tuple[str, str, int]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.stdout, r.stderr, r.returncode


# -- section: 1 vs 2 workers -----------------------------------------------------------------------

def scale_section(env: proxy_bench.Env, rounds: int, seconds: int) -> tuple[list[Figure], dict]:
    why = workers_supported()
    if why:
        figs = []
        for kind in KINDS:
            for what, unit, target in (("spread", "%", f"{SPREAD_TARGET[0]:g}-{SPREAD_TARGET[1]:g}% each"),
                                       ("efficiency", "%", f"<= +{EFFICIENCY_TARGET_PCT:g}%"),
                                       ("same_total_load", "%", None), ("capacity", "x", None)):
                figs.append(skipped(f"scale.{kind}.{what}", f"2 workers vs 1, {KIND_LABEL[kind]}: {what}", unit,
                                    target, why))
        return figs, {"skipped": why}
    t0 = time.perf_counter()
    # a second 1-worker tree, loaded like the first in the efficiency rounds: the A/A noise floor
    one, two, again = start_geogate(env, "w1", 1), start_geogate(env, "w2", 2), start_geogate(env, "w1b", 1)
    log(f"scale: geogate run --workers 1 (pids {one.pids}, A/A {again.pids}) and --workers 2 (workers {two.workers}, "
        f"tree {two.pids}) up in {time.perf_counter() - t0:.1f}s")
    figures: list[Figure] = []
    notes: dict[str, Any] = {"trees": {"w1": one.pids, "w1b": again.pids,
                                       "w2": {"tree": two.pids, "workers": two.workers}}}
    try:
        time.sleep(2)  # the workers finish loading in the background after they listen
        notes["idle_cpu_ms_per_s"] = idle_cpu([one, two], IDLE_SECONDS)
        log(f"scale: CPU without load, ms per second: {notes['idle_cpu_ms_per_s']}")
        half, full = PER_WORKER_FACTORS
        for kind in KINDS:
            for t in (one, two, again):
                check(t, kind, env)
            paced = [together([(one, half), (two, full), (again, half)], kind, seconds, i) for i in range(rounds)]
            same_total = [together([(one, 1.0), (two, 1.0)], kind, seconds, i) for i in range(max(2, rounds - 1))]
            saturated = []
            for i in range(max(2, rounds - 1)):
                pair = []
                for t in ((one, two) if i % 2 == 0 else (two, one)):
                    pair.append(load([(t, kind)], kind, saturating_seconds(seconds), paced=False)[0])
                saturated.append(pair if i % 2 == 0 else pair[::-1])
            figures += scale_figures(kind, paced, same_total, saturated, seconds)
            log(f"scale {kind}: " + "; ".join(f"{f.id.split('.')[-1]} {f.value}{f.unit}" for f in figures[-4:]))
        notes["memory_mib"] = {t.name: {pid: _rss(pid) for pid in t.pids} for t in (one, two)}
    finally:
        for t in (one, two, again):
            stop_tree(t)
    return figures, notes


IDLE_SECONDS = 3
# Efficiency is measured with each worker as busy as the single process: the 1-worker tree gets half
# the paced load, the 2-worker tree all of it. An event loop's CPU per request falls as its load
# rises (more events per wake-up), so at the same total load two half-busy workers pay more per
# request than one, which says nothing about what a second core adds: capacity grows by adding
# workers as the load grows. The same-total-load figure is reported beside it.
PER_WORKER_FACTORS = (0.5, 1.0)


def together(units: list[tuple[Tree, float]], kind: str, seconds: int, i: int) -> list[dict]:
    """One paced round, every tree loaded at once (each load scaled by its factor), the starting
    order rotated by i; results in the order of `units`."""
    k = i % len(units)
    order = units[k:] + units[:k]
    got = load([(t, kind) for t, _ in order], kind, seconds, True, [f for _, f in order])
    return got[len(units) - k:] + got[:len(units) - k]



def idle_cpu(trees: list[Tree], seconds: float) -> dict[str, float | None]:
    """CPU each tree uses with no load at all (timers, file watchers), ms per second: a cost per
    process, paid once per worker whatever the load."""
    before = [t.cpu() for t in trees]
    time.sleep(seconds)
    return {t.name: rnd(1000 * sum(tree_cpu(b, t.cpu()).values()) / seconds, 3)
            for t, b in zip(trees, before, strict=True)}


def _rss(pid: int) -> float | None:
    try:
        from lib import mem_status

        return rnd(mem_status(pid).get("VmRSS"))
    except OSError:
        return None


def shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [100.0 * c / total for c in counts] if total else []


def predicted_ratio(cores: int, cpu_ratio: float, max_share_pct: float) -> float:
    """Capacity of `cores` workers over one, when each worker has a core of its own and the
    busiest saturates first: cores × (CPU per request with 1 worker / with N) × (fair share /
    busiest share), the imbalance measured at 2 workers assumed to stay in proportion."""
    return cores / cpu_ratio * (50.0 / max_share_pct)


def scale_figures(kind: str, paced: list[list[dict]], same_total: list[list[dict]], saturated: list[list[dict]],
                  seconds: int) -> list[Figure]:
    per = PER[kind]
    metric = f"cpu_ms_per_{per}"
    label = KIND_LABEL[kind]
    rounds = paced + same_total
    counts = [sum(col) for col in zip(*(r[1]["worker_connections"] for r in rounds), strict=True)]
    sat_counts = [sum(col) for col in zip(*(r[1]["worker_connections"] for r in saturated), strict=True)]
    sh = shares(counts)
    max_share = max(sh) if sh else None
    cpu_share = shares([sum(col) for col in zip(*(r[1]["worker_cpu_s"] for r in rounds), strict=True)])

    def load_text(factor: float) -> str:
        if kind == "tunnel":
            return (f"{factor * PACED['tunnel']:g} tunnels/s from "
                    f"{max(1, round(factor * proxy_bench.TUNNEL_CONCURRENCY))} client workers")
        return (f"wrk -c{round(factor * PACED[kind][0])}, each connection waiting 0-{2 * PACED[kind][1]} ms (mean "
                f"{PACED[kind][1]} ms, drawn afresh each time) between requests")

    def ratios(pairs: list[list[dict]]) -> list[float]:
        return [r[1][metric] / r[0][metric] for r in pairs if r[0].get(metric) and r[1].get(metric)]

    def raw(pairs: list[list[dict]]) -> list[dict]:
        out = []
        for r in pairs:
            row = {"w1": r[0], "w2": r[1], "ratio": rnd(r[1][metric] / r[0][metric])
                   if r[0].get(metric) and r[1].get(metric) else None}
            if len(r) > 2:
                row |= {"w1b": r[2], "aa_ratio": rnd(r[2][metric] / r[0][metric])
                        if r[0].get(metric) and r[2].get(metric) else None}
            out.append(row)
        return out

    eff, light = median(ratios(paced)), median(ratios(same_total))
    aa = median([r[2][metric] / r[0][metric] for r in paced if r[0].get(metric) and r[2].get(metric)])
    caps = [rate_of(r[1]) / rate_of(r[0]) for r in saturated if rate_of(r[0])]
    cap = median(caps)
    sat = {name: {"rate": rnd(median([rate_of(r[i]) for r in saturated])),
                  "proxy_cores": rnd(median([r[i]["cpu_cores"] for r in saturated]), 3),
                  "generator_cores": rnd(median([r[i]["gen_cores"] for r in saturated]), 3),
                  "machine_busy": rnd(median([r[i]["machine_busy"] for r in saturated]), 3),
                  metric: rnd(median([r[i][metric] for r in saturated]))}
           for i, name in enumerate(("w1", "w2"))}
    prediction = {n: rnd(predicted_ratio(n, eff, max_share), 3) for n in (2, 4, 8)} if eff and max_share else None
    common = (f"`geogate run --workers 1` and `--workers 2` (policies/default.yaml, bundled databases, --log) on "
              f"loopback, {label} to the local origin")
    cpu_text = (f"CPU of every process of each tree (supervisor and workers, /proc schedstat) / completed {per}s; "
                "value = median of the per-round ratios 2 workers / 1 - 1")
    jitter_text = ("" if kind == "tunnel" else "; with a fixed wait wrk's connections fire in lockstep bursts, which "
                   "one process handles in fewer event-loop wake-ups than two, a gap real clients do not make")

    def medians(pairs: list[list[dict]]) -> dict[str, Any]:
        return {"w1_" + metric: rnd(median([r[0][metric] for r in pairs])),
                "w2_" + metric: rnd(median([r[1][metric] for r in pairs])),
                "w1_rate": rnd(median([rate_of(r[0]) for r in pairs])),
                "w2_rate": rnd(median([rate_of(r[1]) for r in pairs])),
                "generator_cores_median": rnd(median([r[1]["gen_cores"] for r in pairs]), 3),
                "machine_busy_median": rnd(median([r[0]["machine_busy"] for r in pairs]), 3)}

    return [
        Figure(f"scale.{kind}.spread", f"2 workers, {label}: busiest worker's share of connections",
               rnd(max_share, 3), "% of connections",
               f"{common}; distinct client connections (address:port) each worker decided, counted from the "
               f"decision log's records (each names its worker), over all {len(rounds)} paced rounds of {seconds} s; "
               "target: every worker 50% +- 10%. The kernel hashes each connection to a worker, so even a fair "
               "spread of N connections varies by 50/sqrt(N) % (one standard deviation, extra.binomial_sd_pct)",
               f"{SPREAD_TARGET[0]:g}-{SPREAD_TARGET[1]:g}% each",
               bool(sh) and all(SPREAD_TARGET[0] <= s <= SPREAD_TARGET[1] for s in sh), len(rounds),
               [r[1]["worker_connections"] for r in rounds],
               {"connections": counts, "shares_pct": [rnd(s, 3) for s in sh],
                "binomial_sd_pct": rnd(50.0 / sum(counts) ** 0.5, 3) if sum(counts) else None,
                "cpu_shares_pct": [rnd(s, 3) for s in cpu_share],
                "saturated_connections": sat_counts, "saturated_shares_pct": [rnd(s, 3) for s in shares(sat_counts)]}),
        Figure(f"scale.{kind}.efficiency", f"2 workers vs 1, {label}: proxy CPU per {per}, each worker as busy as one",
               rnd((eff - 1) * 100, 3) if eff else None, "%",
               f"{common}; both loaded at the same time, each worker of the 2-worker tree as busy as the single "
               f"worker: 1 worker {load_text(PER_WORKER_FACTORS[0])}, 2 workers {load_text(PER_WORKER_FACTORS[1])}"
               f"{jitter_text}; {len(paced)} rounds of {seconds} s, starting order rotating; {cpu_text}. A second "
               "1-worker tree loaded like the first in the same rounds gives the noise floor (extra.noise_floor_pct, "
               "the same ratio for two identical trees). This is the figure that predicts capacity per core "
               f"(workers are added as load grows); at the same total load see scale.{kind}.same_total_load",
               f"<= +{EFFICIENCY_TARGET_PCT:g}%", eff is not None and (eff - 1) * 100 <= EFFICIENCY_TARGET_PCT,
               len(paced), raw(paced),
               medians(paced) | {"noise_floor_pct": rnd((aa - 1) * 100, 3) if aa else None,
                                 "round_ratios": [rnd(x, 4) for x in ratios(paced)]}),
        Figure(f"scale.{kind}.same_total_load", f"2 workers vs 1, {label}: proxy CPU per {per}, same total load",
               rnd((light - 1) * 100, 3) if light else None, "%",
               f"{common}; both loaded at the same time by the same paced load ({load_text(1.0)}), so each of the "
               "two workers is half as busy as the single one and handles fewer events per event-loop wake-up; "
               f"{len(same_total)} rounds of {seconds} s, order alternating; {cpu_text}. What a lightly loaded "
               "gateway pays for spare workers, not what a second core adds",
               None, None, len(same_total), raw(same_total), medians(same_total)),
        Figure(f"scale.{kind}.capacity", f"2 workers vs 1, {label}: capacity at saturation (wall clock)",
               rnd(cap, 3), "x",
               f"{common}; unpaced load (" + (f"{SATURATING['tunnel']} tunnel workers" if kind == "tunnel" else
                                             f"wrk -t1 -c{SATURATING[kind]}") + f"), one proxy at a time, "
               f"alternating, {len(saturated)} rounds of {saturating_seconds(seconds)} s; median of per-round ratios of "
               f"completed "
               f"{per}s/s. On this 2-core machine the load generator and the origin run on the same cores as the "
               "workers (their CPU is beside each rate), so this is not what 2 cores of proxy give; "
               "`predicted` is what spread and efficiency predict with a core per worker",
               None, None, len(saturated),
               [{"w1": r[0], "w2": r[1], "ratio": rnd(rate_of(r[1]) / rate_of(r[0])) if rate_of(r[0]) else None}
                for r in saturated],
               {"saturated": sat, "predicted_ratio_for_cores": prediction}),
    ]


# -- section: Squid --------------------------------------------------------------------------------

def squid_section(env: proxy_bench.Env, rounds: int, seconds: int) -> tuple[list[Figure], dict]:
    if squid_binary() is None:
        return [skipped(f"squid.{k}.per_core", f"geogate vs Squid per core, {KIND_LABEL[k]}", "x", None,
                        "squid is not installed (apt-get install squid)") for k in KINDS], {}
    t0 = time.perf_counter()
    g = start_geogate(env, "sg", None)
    s1, s2 = start_squid(env, "s1", 1), start_squid(env, "s2", 2)
    log(f"squid: geogate {g.pids}, squid workers 1 {s1.workers} (tree {s1.pids}), workers 2 {s2.workers} "
        f"(tree {s2.pids}) up in {time.perf_counter() - t0:.1f}s")
    figures: list[Figure] = []
    try:
        for kind in KINDS:
            for t in (g, s1, s2):
                check(t, kind, env)
            paced = []
            for i in range(max(2, rounds - 1)):
                r = load([(g, kind), (s1, kind)] if i % 2 == 0 else [(s1, kind), (g, kind)], kind, seconds, True)
                paced.append(r if i % 2 == 0 else r[::-1])
            saturated = []
            for i in range(max(1, rounds - 2)):
                order = (g, s1, s2) if i % 2 == 0 else (s2, s1, g)
                got = {t.name: load([(t, kind)], kind, saturating_seconds(seconds), paced=False)[0] for t in order}
                saturated.append([got["sg"], got["s1"], got["s2"]])
            figures += squid_figures(kind, paced, saturated, seconds)
            log(f"squid {kind}: " + "; ".join(f"{f.id.split('.')[-1]} {f.value}{f.unit}" for f in figures[-2:]))
    finally:
        for t in (g, s1, s2):
            stop_tree(t)
    version = subprocess.run([squid_binary(), "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    return figures, {"squid": version, "config": SQUID_CONF}


def squid_figures(kind: str, paced: list[list[dict]], saturated: list[list[dict]], seconds: int) -> list[Figure]:
    per = PER[kind]
    metric = f"cpu_ms_per_{per}"
    label = KIND_LABEL[kind]
    ratios = [r[1][metric] / r[0][metric] for r in paced if r[0].get(metric) and r[1].get(metric)]
    per_core = median(ratios)  # squid CPU / geogate CPU per request = geogate's requests per core / squid's
    sat = {name: {"rate": rnd(median([rate_of(r[i]) for r in saturated])),
                  "proxy_cores": rnd(median([r[i]["cpu_cores"] for r in saturated]), 3),
                  "generator_cores": rnd(median([r[i]["gen_cores"] for r in saturated]), 3),
                  metric: rnd(median([r[i][metric] for r in saturated]))}
           for i, name in enumerate(("geogate", "squid_w1", "squid_w2"))}
    load_text = (f"{PACED[kind]:g} tunnels/s" if kind == "tunnel"
                 else f"wrk -c{PACED[kind][0]}, each connection waiting 0-{2 * PACED[kind][1]} ms (mean "
                      f"{PACED[kind][1]} ms, drawn afresh each time) between requests")
    return [
        Figure(f"squid.{kind}.per_core", f"geogate / Squid, {label}: {per}s per CPU-second", rnd(per_core, 3), "x",
               f"`geogate run` (one process, policies/default.yaml) and Squid (workers 1, no cache, cache deny all, "
               f"no logs) loaded at the same time by the same paced load ({load_text}), {len(paced)} rounds of "
               f"{seconds} s; CPU of every process of each (/proc) / completed {per}s; value = median of per-round "
               f"Squid CPU per {per} / geogate CPU per {per}: geogate's {per}s per core as a fraction of Squid's",
               None, None, len(paced),
               [{"geogate": r[0], "squid": r[1], "ratio": rnd(r[1][metric] / r[0][metric])
                 if r[0].get(metric) and r[1].get(metric) else None} for r in paced],
               {"geogate_" + metric: rnd(median([r[0][metric] for r in paced])),
                "squid_" + metric: rnd(median([r[1][metric] for r in paced]))}),
        Figure(f"squid.{kind}.capacity", f"Squid workers 2 / workers 1, {label}: capacity at saturation",
               rnd(median([rate_of(r[2]) / rate_of(r[1]) for r in saturated if rate_of(r[1])]), 3), "x",
               "unpaced load (" + (f"{SATURATING['tunnel']} tunnel workers" if kind == "tunnel" else
                                    f"wrk -t1 -c{SATURATING[kind]}") + f"), one proxy at a time (geogate, Squid "
               f"workers 1, Squid workers 2), {len(saturated)} rounds of {saturating_seconds(seconds)} s; rates, the "
               "proxies' and the "
               "load generator's CPU (cores) in extra.saturated; same 2-core caveat as scale.*.capacity",
               None, None, len(saturated),
               [{"geogate": r[0], "squid_w1": r[1], "squid_w2": r[2]} for r in saturated], {"saturated": sat}),
    ]


# -- section: bulk transfer --------------------------------------------------------------------------

BULK_MIB = 200


def bulk_section(env: proxy_bench.Env, rounds: int, mib: int = BULK_MIB) -> tuple[list[Figure], dict]:
    port = free_port()
    server = start("bulk", [PY, str(BENCH / "bulk.py"), "serve", "--port", str(port), "--certdir",
                            str(env.tmp / "bulk-cert")], env.tmp)
    env.procs.append(server)
    wait_port(port, proc=server.popen)
    cafile = env.tmp / "bulk-cert" / "origin-cert.pem"
    specs = [("bbare", False, ["--ignore-hosts", ".*"])] + ([("bgeogate", True, [])] if ADDON.exists() else [])
    procs = proxy_bench.start_proxies(env, specs)
    variants: list[tuple[str, Proc | None, int | None]] = [("direct", None, None)] + [
        (name, p, pt) for name, (p, pt) in procs.items()]
    runs: dict[str, list[dict]] = {name: [] for name, _p, _pt in variants}
    try:
        for i in range(rounds):
            for name, p, pt in (variants if i % 2 == 0 else variants[::-1]):
                argv = [PY, str(BENCH / "bulk.py"), "fetch", "--port", str(port), "--cafile", str(cafile),
                        "--mib", str(mib)] + (["--proxy-port", str(pt)] if pt else [])
                us0 = user_system(p.pid) if p else (0.0, 0.0)
                srv0 = cpu_reading(server.pid)
                out: dict = {}
                _run_client(argv, 120, out)
                if out["rc"] != 0:
                    raise RuntimeError(f"bulk fetch via {name} failed: {out['stderr'][-1500:]}")
                r = json.loads(out["stdout"].strip().splitlines()[-1])
                us1 = user_system(p.pid) if p else (0.0, 0.0)
                r.update(client_cpu_s=rnd(out["gen_cpu_s"]), server_cpu_s=rnd(cpu_delta(srv0, cpu_reading(server.pid))[0]),
                         proxy_user_s=rnd(us1[0] - us0[0]), proxy_system_s=rnd(us1[1] - us0[1]))
                runs[name].append({k: rnd(v) if isinstance(v, float) else v for k, v in r.items()})
        mbs = {name: median([r["mb_per_s"] for r in rs]) for name, rs in runs.items()}
    finally:
        for p, _pt in procs.values():
            p.stop()
    figures = []
    method = (f"one TLS download of {mib} MiB (bench/bulk.py: Python ssl both ends, 256 KiB writes) per run, "
              f"straight to the server or after CONNECT through the proxy; MB/s from the request to the last byte, "
              f"{rounds} rounds, variants in alternating order, median")
    for name, label in (("bgeogate", "geogate (TLS passthrough)"), ("bbare", "bare mitmdump --ignore-hosts '.*'")):
        if name not in runs:
            figures.append(skipped(f"bulk.{name[1:]}_vs_direct", f"Bulk transfer through {label} vs direct", "x", None,
                                   "addons/geogate_addon.py does not exist yet", method))
            continue
        rs = runs[name]
        cpu = [(r["proxy_user_s"] + r["proxy_system_s"]) for r in rs]
        figures.append(Figure(
            f"bulk.{name[1:]}_vs_direct", f"Bulk transfer through {label}: MB/s relative to direct",
            rnd(mbs[name] / mbs["direct"], 3), "x", method, None, None, rounds, rs,
            {"mb_per_s": rnd(mbs[name]), "direct_mb_per_s": rnd(mbs["direct"]),
             "proxy_cpu_s_per_gb": rnd(median([c / (r["bytes"] / 1e9) for c, r in zip(cpu, rs, strict=True)])),
             "proxy_system_share": rnd(median([r["proxy_system_s"] / c for c, r in zip(cpu, rs, strict=True) if c]), 3)}))
    figures.append(Figure("bulk.direct", "Bulk transfer straight to the server (no proxy)", rnd(mbs["direct"]), "MB/s",
                          method, None, None, rounds, runs["direct"]))
    return figures, {"mib": mib}
