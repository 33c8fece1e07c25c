"""Benchmarks 2 (proxy overhead), 3 (tunnels) and 5 (memory): mitmdump with geogate vs bare.

Everything on loopback: a local origin (origin.py), mitmdump processes on free ports, wrk and
tunnel_client.py as clients. CPU time of each mitmdump process is read from /proc before and
after each load unit: the nanoseconds every thread has run (/proc/<pid>/task/*/schedstat), or
utime+stime from /proc/<pid>/stat where a thread exited in between (see lib.cpu_delta); CPU per
request = delta / completed requests. (utime+stime come in 10 ms ticks: a side uses about 1.5 s of
CPU in a 4 s unit, so rounding alone could move it by up to 1.3%.)

How noise is kept out of the ratios (the test machine is a shared 2-core VM):
- the two sides of a comparison (bare vs geogate) are loaded *simultaneously*, each by its own
  client, so both see the same background load;
- the load is *paced* (wrk's delay(): each of PACED_CONNS connections waits PACE_DELAY_MS between
  requests; the tunnel client starts TUNNEL_RATE tunnels/s), well below what one core can serve:
  at saturation, a process that gets less CPU batches more events per loop iteration and its CPU
  per request drops, which made saturated ratios swing by +-40% even between two identical
  processes. Paced, each request costs what it costs;
- pairs run in an order that rotates every round (and which side starts first alternates);
- each process lives for the whole section: a new process costs more per request for a while,
  and with new processes every round the A/A pair measured +2% to +4%;
- an A/A pair (bare vs a second bare) is measured the same way and reported as the noise floor;
- plain HTTP: the proxies run on one CPU and the clients and the origin on the others
  (proxy_cpus), so both sides of a pair run on the same core. Left to the scheduler, the two
  sides of a pair often ran on different vCPUs, whose speed differs from moment to moment on a
  shared host: single rounds then differed by up to 15% between two identical processes.
Wall-clock capacity (req/s at saturation, one proxy at a time, alternating) is measured separately.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Callable

from lib import ADDON
from lib import BENCH
from lib import DEFAULT_POLICY
from lib import MITMDUMP
from lib import PY
from lib import Figure
from lib import Proc
from lib import cpu_delta
from lib import free_port
from lib import log
from lib import median
from lib import rnd
from lib import rotate
from lib import skipped
from lib import spread
from lib import start
from lib import system_cpu_seconds
from lib import wait_port

SETTLE = 0.3  # seconds after a load unit before reading CPU: connection teardown is included
WRK_CONNS = 10  # saturating runs (origin alone, capacity)
PACE_DELAY_MS = 100  # paced runs: each connection waits this long between requests...
PACED_CONNS = {"keepalive": 16, "close": 7}  # ...with this many connections: ~145 and ~64 req/s per proxy,
# so that the two proxies of a pair, sharing one CPU (proxy_cpus), keep it below about 70% busy
TUNNEL_CONCURRENCY = 4
TUNNEL_RATE = 45.0  # tunnels per second per proxy
OVERHEAD_TARGET_PCT = 3.0
MEMORY_TARGET_MIB = 30.0


@dataclass
class Env:
    tmp: Path
    rounds: int  # rounds of the paired (simultaneous) comparisons
    seconds: int
    warmup: int
    procs: list[Proc]
    capacity_rounds: int = 5
    capacity_seconds: int = 3
    origin: Proc | None = None
    http_port: int = 0
    https_port: int = 0
    cafile: Path | None = None
    hosts_name: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# -- origin --------------------------------------------------------------------------------------

def start_origin(env: Env) -> None:
    env.http_port, env.https_port = free_port(), free_port()
    certdir = env.tmp / "origin-cert"
    v6 = _has_ipv6_loopback()
    env.hosts_name = hosts_file_loopback_name()
    argv = [PY, str(BENCH / "origin.py"), "--http", str(env.http_port), "--https", str(env.https_port),
            "--certdir", str(certdir)] + (["--v6"] if v6 else []) + (["--san", env.hosts_name] if env.hosts_name else [])
    env.origin = start("origin", argv, env.tmp)
    env.procs.append(env.origin)
    wait_port(env.http_port, proc=env.origin.popen)
    wait_port(env.https_port, proc=env.origin.popen)
    env.cafile = certdir / "origin-cert.pem"
    env.notes["origin"] = {"http_port": env.http_port, "https_port": env.https_port, "ipv6_loopback": v6,
                           "hosts_file_name": env.hosts_name}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def hosts_file_loopback_name(path: str = "/etc/hosts") -> str | None:
    """A name other than localhost that the hosts file maps to 127.0.0.1 only (and that
    getaddrinfo agrees on), to measure a host name that geogate resolves from its hosts table."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    table: dict[str, set[str]] = {}
    for line in lines:
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            table.setdefault(name.lower(), set()).add(fields[0])
    for name, ips in table.items():
        if name == "localhost" or name.endswith(".localhost") or ips != {"127.0.0.1"}:
            continue
        try:
            got = {ai[4][0] for ai in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if got == {"127.0.0.1"}:
            return name
    return None


def origin_alone(env: Env) -> list[Figure]:
    """The origin measured directly with wrk: it must be far cheaper than the proxy."""
    out = []
    for conn in ("keepalive", "close"):
        script = _wrk_script(env, "127.0.0.1", conn, absolute=False)
        runs = []
        for _ in range(2):
            runs.append(_wrk(env.origin, env.http_port, script, env.seconds))
        rps = median([r["rps"] for r in runs])
        cpu = median([r["cpu_ms_per_req"] for r in runs])
        out.append(Figure(
            id=f"origin.{conn}", name=f"Origin alone ({'keep-alive' if conn == 'keepalive' else 'new connection per request'})",
            value=rnd(rps), unit="req/s",
            method=(f"wrk -t1 -c{WRK_CONNS} -d{env.seconds}s straight at the origin (bench/origin.py, asyncio Protocol), "
                    f"2 runs; the origin's own CPU per request is {rnd(cpu, 3)} ms (from /proc)"),
            rounds=len(runs), raw=runs, extra={"origin_cpu_ms_per_req": rnd(cpu)}))
    return out


# -- mitmdump processes --------------------------------------------------------------------------

def mitmdump_argv(env: Env, name: str, port: int, geogate: bool, extra: list[str] | None = None) -> list[str]:
    argv = [MITMDUMP, "-q", "--set", f"confdir={env.tmp / ('conf-' + name)}",
            "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    if geogate:
        argv += ["-s", str(ADDON), "--set", f"geogate_policy={DEFAULT_POLICY}"]
    return argv + (extra or [])


def start_proxies(env: Env, specs: list[tuple[str, bool, list[str]]],
                  environ: dict[str, str] | None = None) -> dict[str, tuple[Proc, int]]:
    """Start several mitmdump processes at once; wait until every one listens."""
    started = {}
    for name, geogate, extra in specs:
        port = free_port()
        proc = start(name, mitmdump_argv(env, name, port, geogate, extra), env.tmp, env=environ)
        env.procs.append(proc)
        started[name] = (proc, port)
    for name, (proc, port) in started.items():
        try:
            wait_port(port, timeout=90, proc=proc.popen)
        except Exception as e:
            raise RuntimeError(f"{name} did not start: {e}\n{proc.tail()}") from None
    return started


def check_http(port: int, authority: str, conn: str = "keepalive") -> tuple[bool, str]:
    """One request through the proxy: 200 and the origin's body, or why not."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Host": authority}
        if conn == "close":
            headers["Connection"] = "close"
        c.request("GET", f"http://{authority}/", headers=headers)
        r = c.getresponse()
        body = r.read()
        c.close()
        ok = r.status == 200 and body == b"hello geogate"
        return ok, f"{r.status} {body[:200]!r}"
    except Exception as e:
        return False, repr(e)


# -- load units ----------------------------------------------------------------------------------

def _authority(env: Env, host: str, tls: bool = False) -> str:
    port = env.https_port if tls else env.http_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wrk_script(env: Env, host: str, conn: str, absolute: bool = True, delay_ms: int | None = None,
                jitter: bool = False) -> Path:
    """jitter: each wait is drawn from 0..2 × delay_ms (same mean), so that the connections do not
    fire in lockstep bursts, which one process batches into fewer event-loop wake-ups than two."""
    authority = _authority(env, host)
    path = env.tmp / f"wrk-{'abs' if absolute else 'origin'}-{host}-{conn}-{delay_ms or 0}{'j' if jitter else ''}.lua"
    lines = [
        f'wrk.path = "{"http://" + authority + "/" if absolute else "/"}"',
        f'wrk.headers["Host"] = "{authority}"',
    ]
    if conn == "close":
        lines.append('wrk.headers["Connection"] = "close"')
    if delay_ms and jitter:
        lines.append(f"delay = function() return math.random(0, {2 * int(delay_ms)}) end")
    elif delay_ms:
        lines.append(f"delay = function() return {int(delay_ms)} end")
    lines.append(
        'done = function(summary, latency, requests)\n'
        '  local e = summary.errors\n'
        '  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"connect\\": %d, '
        '\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d}\\n",\n'
        '    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,\n'
        '    latency:percentile(50), latency:percentile(99)))\n'
        'end')
    path.write_text("\n".join(lines) + "\n")
    return path


def _wrk_argv(port: int, script: Path, seconds: int, conns: int = WRK_CONNS) -> list[str]:
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{port}/"]


def _wrk_parse(stdout: str, stderr: str, rc: int) -> dict[str, Any]:
    line = next((out for out in stdout.splitlines() if out.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (rc {rc}): {stdout[-500:]} {stderr[-500:]}")
    w = json.loads(line[8:])
    n = w["requests"]
    errors = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    return {"count": n, "requests": n, "rps": rnd(n / (w["duration_us"] / 1e6)),
            "p50_ms": rnd(w["p50_us"] / 1000), "p99_ms": rnd(w["p99_us"] / 1000),
            **({"errors": errors} if errors else {})}


def _tunnel_argv(env: Env, port: int, host: str, seconds: int, rate: float = TUNNEL_RATE) -> list[str]:
    return [PY, str(BENCH / "tunnel_client.py"), "--proxy-port", str(port), "--host", host,
            "--port", str(env.https_port), "--cafile", str(env.cafile), "--concurrency", str(TUNNEL_CONCURRENCY),
            "--seconds", str(seconds), "--max", "200000", "--rate", str(rate)]


def _tunnel_parse(stdout: str, stderr: str, rc: int) -> dict[str, Any]:
    try:
        r = json.loads(stdout.strip().splitlines()[-1])
    except Exception:
        raise RuntimeError(f"tunnel client failed (rc {rc}): {stdout[-500:]} {stderr[-1500:]}") from None
    n = r["tunnels"]
    return {"count": n, "tunnels": n, "per_s": rnd(n / r["seconds"]),
            **({"errors": r["errors"]} if r["errors"] else {})}


def run_together(units: list[tuple[Proc, list[str], Any]], seconds: int, per: str) -> list[dict[str, Any]]:
    """Start every client at once, each loading its own proxy; per proxy: CPU delta / completed
    count. Running the two sides of a comparison simultaneously exposes both to the same
    background load, which on a shared VM is the largest source of noise."""
    cpu0 = [proc.cpu() for proc, _argv, _parse in units]
    sys0, t0 = system_cpu_seconds(), time.perf_counter()
    popens = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
              for _proc, argv, _parse in units]
    outs = []
    for p in popens:
        try:
            outs.append(p.communicate(timeout=seconds + 60))
        except subprocess.TimeoutExpired:
            p.kill()
            outs.append(p.communicate())
    time.sleep(SETTLE)
    cpu1 = [proc.cpu() for proc, _argv, _parse in units]
    busy = (system_cpu_seconds() - sys0) / ((time.perf_counter() - t0) * len_cpus())
    results = []
    for (_proc, _argv, parse), (out, err), p, c0, c1 in zip(units, outs, popens, cpu0, cpu1, strict=True):
        r = parse(out, err, p.returncode)
        n = r.pop("count")
        cpu_s, source = cpu_delta(c0, c1)
        r.update(cpu_s=round(cpu_s, 4), cpu_source=source, machine_busy=rnd(busy, 3))
        r[f"cpu_ms_per_{per}"] = rnd(1000 * cpu_s / n) if n else None
        results.append(r)
    return results


def _wrk(proc: Proc, port: int, script: Path, seconds: int) -> dict[str, Any]:
    return run_together([(proc, _wrk_argv(port, script, seconds), _wrk_parse)], seconds, "req")[0]


def _tunnel(env: Env, proc: Proc, port: int, host: str, seconds: int) -> dict[str, Any]:
    return run_together([(proc, _tunnel_argv(env, port, host, seconds), _tunnel_parse)], seconds, "tunnel")[0]


def len_cpus() -> int:
    import os

    return os.cpu_count() or 1


def base_names(base: str | tuple[str, ...]) -> tuple[str, ...]:
    return (base,) if isinstance(base, str) else tuple(base)


def split_measurable(pairs: list[tuple], why_of: Callable[[str, Any], str | None]) -> tuple[list[tuple], dict]:
    """(the pairs that can be measured, {group key: why not} for the others). why_of(proc name,
    group key) says why that process failed its check for the pair's target, or None; a base
    that failed drops out of the turns, and a pair is lost only with its test or all its bases."""
    measurable, why_broken = [], {}
    for key, target, base, test in pairs:
        bases = tuple(b for b in base_names(base) if not why_of(b, key))
        why = why_of(test, key) or (None if bases else why_of(base_names(base)[0], key))
        if why:
            why_broken[key] = why
        else:
            measurable.append((key, target, bases if len(bases) > 1 else bases[0], test))
    return measurable, why_broken


def run_pairs(pairs: list[tuple[Any, Any, Any, str]], procs: dict, rounds: int, seconds: int,
              make_argv, parse, per: str, label: str, t0: float) -> dict[tuple, list[dict]]:
    """pairs: (group key, target, base, test proc name), where base is a proc name or a tuple of
    them taking turns round by round (round r uses base[r % len(base)]): every process keeps a
    speed offset of its own for its whole life (two bare mitmdumps started alike differ by a
    percent or so), and comparing with two bare processes in turn averages their offsets instead
    of carrying one of them into every figure. Every round runs every pair (rotating order), the
    two sides of a pair simultaneously, launched in alternating order. Results by (group key,
    "base" | "test"), each naming its process ("proc")."""
    results: dict[tuple, list[dict]] = {}
    for rno in range(rounds):
        for key, target, base, test in rotate(pairs, rno):
            bases = base_names(base)
            base_now = bases[rno % len(bases)]
            roles = [("base", base_now), ("test", test)]
            if rno % 2:
                roles.reverse()
            for _role, n in roles:
                if not procs[n][0].alive():
                    raise RuntimeError(f"{n} died:\n{procs[n][0].tail()}")
            rs = run_together([(procs[n][0], make_argv(procs[n][1], target, seconds), parse) for _role, n in roles],
                              seconds, per)
            for (role, n), r in zip(roles, rs, strict=True):
                results.setdefault((key, role), []).append(r | {"proc": n})
        log(f"{label} round {rno + 1}/{rounds} done ({time.perf_counter() - t0:.0f}s)")
    return results


def run_http_pairs(env: Env, pairs: list[tuple[tuple, tuple[Path, int], str | tuple[str, ...], str]], procs: dict,
                   label: str, t0: float) -> dict[tuple, list[dict]]:
    """Paced plain-HTTP pairs ((key, (wrk script, connections), base, test)): every pair warmed up
    for env.warmup seconds (none when 0), then env.rounds rounds of run_pairs."""
    for _key, (script, nconn), base, test in pairs if env.warmup > 0 else ():
        run_together([(procs[n][0], _wrk_argv(procs[n][1], script, env.warmup, nconn), _wrk_parse)
                      for n in (*base_names(base), test)], env.warmup, "req")
    return run_pairs(pairs, procs, env.rounds, env.seconds,
                     lambda port, target, s: _wrk_argv(port, target[0], s, target[1]), _wrk_parse, "req", label, t0)


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto `cpus` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def proxy_cpus(env: Env, proxies: list[Proc]):
    """Run the proxies on the last CPU, and this process, its children (the load generators)
    and the origin on the others; undone on exit. Yields the split, or None on one CPU."""
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    if len(cpus) < 2:
        yield None
        return
    split = ({cpus[-1]}, set(cpus[:-1]))
    for p in proxies:
        _pin(p.popen.pid, split[0])
    if env.origin is not None:
        _pin(env.origin.popen.pid, split[1])
    os.sched_setaffinity(0, split[1])
    try:
        yield split
    finally:
        os.sched_setaffinity(0, mine)
        if env.origin is not None and env.origin.alive():
            _pin(env.origin.popen.pid, mine)


# -- benchmark 2 + 5: plain HTTP -----------------------------------------------------------------

def name_targets(env: Env, all_names: bool) -> list[tuple[str, str]]:
    """The host-name targets: a hosts-file name (resolved by geogate's own resolver from its hosts
    table, as a real name would be from DNS or its cache) if the machine has one for 127.0.0.1,
    else `localhost` (which geogate answers without any lookup, RFC 6761); both with all_names."""
    out = []
    if env.hosts_name:
        out.append(("hostsfile", env.hosts_name))
    if all_names or not out:
        out.append(("localhost", "localhost"))
    return out


def _check_targets(env: Env, procs: dict, targets: list[tuple[str, str]],
                   conns: list[str]) -> dict[tuple[str, str, str], str]:
    """Sanity: every proxy answers every target, else that variant is not measured. What failed, by
    (proxy, target, connection)."""
    broken: dict[tuple[str, str, str], str] = {}
    for name, (_proc, port) in procs.items():
        for tkey, host in targets:
            for conn in conns:
                ok, detail = check_http(port, _authority(env, host), conn)
                if not ok:
                    broken[(name, tkey, conn)] = detail
                    log(f"check failed: {name} -> {host} ({conn}): {detail}")
    return broken


def _capacity(env: Env, procs: dict, broken: dict[tuple[str, str, str], str]) -> dict[str, list[dict]]:
    """Wall-clock capacity: saturating load, one proxy at a time, alternating (none when one of
    them failed its check)."""
    capacity: dict[str, list[dict]] = {}
    cap_names = [n for n in ("bare", "geogate") if n in procs and (n, "ip", "keepalive") not in broken]
    if len(cap_names) == 2:
        sat = _wrk_script(env, "127.0.0.1", "keepalive")
        for rno in range(env.capacity_rounds):
            for n in rotate(cap_names, rno):
                capacity.setdefault(n, []).append(_wrk(procs[n][0], procs[n][1], sat, env.capacity_seconds))
        log(f"capacity: bare {median([r['rps'] for r in capacity['bare']])} req/s, "
            f"geogate {median([r['rps'] for r in capacity['geogate']])} req/s")
    return capacity


def http_section(env: Env, have_addon: bool, all_names: bool = False,
                 null_addon: bool = True) -> tuple[list[Figure], dict[str, Any]]:
    targets = [("ip", "127.0.0.1")] + name_targets(env, all_names)
    conns = ["keepalive", "close"]
    specs = [("bare", False, []), ("bare2", False, [])]
    if have_addon:
        specs.append(("geogate", True, []))
        if null_addon:
            specs.append(("null", False, ["-s", str(BENCH / "null_addon.py")]))
    t0 = time.perf_counter()
    procs = start_proxies(env, specs)
    startup_s = time.perf_counter() - t0
    time.sleep(2.0)
    mem_start = {name: p.mem() for name, (p, _port) in procs.items()}
    log(f"proxies up in {startup_s:.1f}s; RSS after start-up: "
        + ", ".join(f"{k} {v.get('VmRSS', 0):.1f} MiB" for k, v in mem_start.items()))

    broken = _check_targets(env, procs, targets, conns)

    scripts = {(tkey, conn): (_wrk_script(env, host, conn, delay_ms=PACE_DELAY_MS), PACED_CONNS[conn])
               for tkey, host in targets for conn in conns}
    # (group key, wrk script, base(s), test): geogate and the null addon against the two bare
    # processes in turn (see run_pairs); the A/A pair compares those two
    pairs: list[tuple[tuple, tuple[Path, int], str | tuple[str, ...], str]] = []
    for tkey, _host in targets:
        for conn in conns:
            if have_addon:
                pairs.append(((tkey, conn), scripts[(tkey, conn)], ("bare", "bare2"), "geogate"))
    pairs.append((("control", "keepalive"), scripts[("ip", "keepalive")], "bare", "bare2"))  # A/A: noise floor
    if "null" in procs:
        pairs.append((("null", "keepalive"), scripts[("ip", "keepalive")], ("bare", "bare2"), "null"))
    target_of = {("control", "keepalive"): ("ip", "keepalive"), ("null", "keepalive"): ("ip", "keepalive")}
    pairs, why_broken = split_measurable(pairs, lambda n, key: broken.get((n, *target_of.get(key, key))))

    with proxy_cpus(env, [p for p, _port in procs.values()]) as split:
        log("CPUs: " + (f"proxies on {sorted(split[0])}, clients and origin on {sorted(split[1])}" if split
                        else "one CPU, nothing pinned"))
        log(f"warm-up: {env.warmup}s per pair")
        results = run_http_pairs(env, pairs, procs, "http", t0)

        capacity = _capacity(env, procs, broken)
    mem_load = {name: p.mem() for name, (p, _port) in procs.items()}
    log("RSS after load: " + ", ".join(f"{k} {v.get('VmRSS', 0):.1f} MiB" for k, v in mem_load.items()))

    figures: list[Figure] = []
    label = {"ip": "IP literal 127.0.0.1", "localhost": "host name localhost",
             "hostsfile": f"host name {env.hosts_name} (hosts file)"}
    conn_label = {"keepalive": "keep-alive", "close": "new connection per request"}
    for tkey, host in targets:
        for conn in conns:
            fid = f"proxy.{tkey}.{conn}"
            name = f"Proxy CPU/request overhead, {label[tkey]}, {conn_label[conn]}"
            method = (f"wrk -t1 -c{PACED_CONNS[conn]} -d{env.seconds}s paced (each connection waits {PACE_DELAY_MS} ms "
                      f"between requests, ~{1000 * PACED_CONNS[conn] // (PACE_DELAY_MS + 10)} req/s), absolute-form GET "
                      f"http://{_authority(env, host)}/ {'with Connection: close ' if conn == 'close' else ''}to the "
                      f"explicit proxy; mitmdump -q CPU (ns per thread from /proc/<pid>/task/*/schedstat) / completed "
                      f"requests, geogate "
                      f"(-s addons/geogate_addon.py, policies/default.yaml, bundled DBs) vs bare mitmdump (two bare processes "
                      f"taking turns from round to round, so that neither's own speed offset decides), both loaded "
                      f"at the same time by their own wrk (same background load), both proxies on one CPU and the "
                      f"clients and origin on the other(s), {env.rounds} rounds, pairs in "
                      f"rotating order after a {env.warmup}s warm-up; value = median of the per-round ratios - 1")
            if not have_addon:
                figures.append(skipped(fid, name, "%", f"<= +{OVERHEAD_TARGET_PCT:g}%",
                                       "addons/geogate_addon.py does not exist yet", method))
                continue
            figures.append(_ratio_figure(fid, name, method, results, (tkey, conn),
                                         "cpu_ms_per_req", "rps", OVERHEAD_TARGET_PCT, why_broken.get((tkey, conn))))
    figures.append(_ratio_figure(
        "proxy.control.bare_vs_bare", "Control: bare mitmdump vs a second bare mitmdump (noise floor)",
        "as proxy.ip.keepalive, but the two simultaneously loaded processes are the two bare mitmdumps",
        results, ("control", "keepalive"), "cpu_ms_per_req", "rps", None, why_broken.get(("control", "keepalive"))))

    if "null" in procs:
        figures.append(_ratio_figure(
            "proxy.diag.null_addon", "Diagnostic: an addon that does nothing, with geogate's hooks, vs bare (IP, keep-alive)",
            "as proxy.ip.keepalive, but the second process runs bench/null_addon.py: the same hook methods as "
            "geogate's addon class, each returning at once; what mitmproxy's dispatch of such an addon costs",
            results, ("null", "keepalive"), "cpu_ms_per_req", "rps", None, why_broken.get(("null", "keepalive"))))
    if capacity:
        b, g = rnd(median([r["rps"] for r in capacity["bare"]])), rnd(median([r["rps"] for r in capacity["geogate"]]))
        ratios = [y["rps"] / x["rps"] for x, y in zip(capacity["bare"], capacity["geogate"], strict=True) if x["rps"]]
        figures.append(Figure(
            "proxy.capacity.ip.keepalive", "Proxy capacity (wall clock), IP literal, keep-alive: geogate / bare req/s",
            rnd(median(ratios), 3), "x",
            f"saturating wrk -t1 -c{WRK_CONNS} -d{env.capacity_seconds}s (no pacing) at one proxy at a time, bare and "
            f"geogate alternating, {env.capacity_rounds} rounds; median of the per-round ratios. Indicative only: on a "
            f"shared machine a saturated proxy's rate follows the background load (the A/A spread of saturated runs "
            f"was +-40% when this suite was built); the paced CPU figures above are the precise ones",
            None, None, env.capacity_rounds,
            [{"bare": x, "geogate": y, "ratio": rnd(y["rps"] / x["rps"]) if x["rps"] else None}
             for x, y in zip(capacity["bare"], capacity["geogate"], strict=True)],
            {"bare_rps_median": b, "geogate_rps_median": g, "ratio_range": spread(ratios),
             "bare_cpu_ms_per_req_median": rnd(median([r["cpu_ms_per_req"] for r in capacity["bare"]])),
             "geogate_cpu_ms_per_req_median": rnd(median([r["cpu_ms_per_req"] for r in capacity["geogate"]]))}))
    figures += _memory_figures(mem_start, mem_load, have_addon)
    notes = {"startup_s": round(startup_s, 1), "broken_checks": {"/".join(k): v for k, v in broken.items()},
             "memory": {"after_start": mem_start, "after_load": mem_load},
             "cpus": {"proxies": sorted(split[0]), "clients_and_origin": sorted(split[1])} if split else None}
    for name, (p, _port) in procs.items():
        p.stop()
        notes.setdefault("logs", {})[name] = p.tail(1500)
    return figures, notes


def _ratio_figure(fid: str, name: str, method: str, results: dict, key: Any,
                  metric: str, rate: str, target_pct: float | None, why_broken: str | None) -> Figure:
    """The figure of one pair from run_pairs' results: median of the per-round ratios test/base."""
    if why_broken:
        return Figure(fid, name, None, "%", method, f"<= +{target_pct:g}%" if target_pct is not None else None,
                      False if target_pct is not None else None, 0, [], {"error": f"check request failed: {why_broken}"},
                      "failed")
    base, test = results.get((key, "base"), []), results.get((key, "test"), [])
    pairs = []
    for b, t in zip(base, test, strict=True):
        ratio = t[metric] / b[metric] if b.get(metric) and t.get(metric) else None
        pairs.append({"base": b, "test": t, "ratio": rnd(ratio)})
    ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
    med = median(ratios)
    value = rnd((med - 1) * 100, 3) if med is not None else None
    b_cpu, t_cpu = rnd(median([b.get(metric) for b in base])), rnd(median([t.get(metric) for t in test]))
    b_rate, t_rate = rnd(median([b.get(rate) for b in base])), rnd(median([t.get(rate) for t in test]))
    errors = [p["test"].get("errors") or p["base"].get("errors") for p in pairs
              if p["test"].get("errors") or p["base"].get("errors")]
    extra = {
        f"base_{metric}_median": b_cpu, f"test_{metric}_median": t_cpu,
        "ratio_of_medians": rnd(t_cpu / b_cpu) if b_cpu and t_cpu else None,
        f"base_{rate}_median": b_rate, f"test_{rate}_median": t_rate,
        "wallclock_rate_ratio": rnd(t_rate / b_rate) if b_rate and t_rate else None,
        "ratio_range": spread(ratios),
    }
    if errors:
        extra["load_errors"] = errors
    passed = None
    if target_pct is not None and value is not None:
        passed = value <= target_pct and not any((e or {}).get("status") for e in errors)
    return Figure(fid, name, value, "%", method, f"<= +{target_pct:g}%" if target_pct is not None else None,
                  passed, len(pairs), pairs, extra)


def _memory_figures(mem_start: dict, mem_load: dict, have_addon: bool) -> list[Figure]:
    out = []
    for when, mem in (("after_start", mem_start), ("after_load", mem_load)):
        fid = f"memory.{when}"
        name = ("Proxy resident memory above bare mitmdump, "
                + ("after start-up" if when == "after_start" else "after the load rounds"))
        method = ("VmRSS from /proc/<pid>/status of mitmdump with geogate minus bare mitmdump, "
                  + ("2 s after both listen (no request yet)" if when == "after_start"
                     else "after every plain-HTTP round and the saturating capacity runs")
                  + "; the second bare process shows the spread")
        if not have_addon:
            out.append(skipped(fid, name, "MiB", f"<= {MEMORY_TARGET_MIB:g} MiB",
                               "addons/geogate_addon.py does not exist yet", method))
            continue
        g, b, b2 = mem["geogate"], mem["bare"], mem.get("bare2", {})
        diff = g["VmRSS"] - b["VmRSS"]
        out.append(Figure(fid, name, rnd(diff, 3), "MiB", method, f"<= {MEMORY_TARGET_MIB:g} MiB",
                          diff <= MEMORY_TARGET_MIB, 1, [{"geogate": g, "bare": b, "bare2": b2}],
                          {"geogate_rss_mib": rnd(g["VmRSS"]), "bare_rss_mib": rnd(b["VmRSS"]),
                           "bare2_rss_mib": rnd(b2.get("VmRSS")), "geogate_hwm_mib": rnd(g.get("VmHWM")),
                           "bare_hwm_mib": rnd(b.get("VmHWM"))}))
    return out


# -- benchmark 3: CONNECT tunnels ----------------------------------------------------------------

def tunnel_section(env: Env, have_addon: bool, diagnostic: bool = False,
                   all_names: bool = False) -> tuple[list[Figure], dict[str, Any]]:
    targets = [("ip", "127.0.0.1")] + name_targets(env, all_names)
    specs = [("tbare", False, ["--ignore-hosts", ".*"]), ("tbare2", False, ["--ignore-hosts", ".*"])]
    if have_addon:
        specs.append(("tgeogate", True, []))
        if diagnostic:
            specs.append(("tgeogate_ignore", True, ["--ignore-hosts", ".*"]))
    t0 = time.perf_counter()
    procs = start_proxies(env, specs)
    time.sleep(1.0)
    names = [s[0] for s in specs]
    broken: dict[tuple[str, str], str] = {}
    for name in names:
        proc, port = procs[name]
        for tkey, host in targets:
            r = _tunnel(env, proc, port, host, 1)
            if not r["tunnels"]:
                broken[(name, tkey)] = json.dumps(r.get("errors"))
                log(f"tunnel check failed: {name} -> {host}: {r.get('errors')}\n{proc.tail(800)}")
    both = ("tbare", "tbare2")  # the two bare processes take turns as the base (see run_pairs)
    pairs: list[tuple[str, str, str | tuple[str, ...], str]] = [
        (tkey, host, both, "tgeogate") for tkey, host in targets if have_addon]
    if diagnostic and have_addon:
        pairs += [(tkey + ".diag", host, both, "tgeogate_ignore") for tkey, host in targets]
    pairs.append(("control", "127.0.0.1", "tbare", "tbare2"))
    pairs, why_broken = split_measurable(
        pairs, lambda n, key: broken.get((n, "ip" if key == "control" else key.split(".")[0])))
    results = run_pairs(pairs, procs, env.rounds, env.seconds,
                        lambda port, host, s: _tunnel_argv(env, port, host, s), _tunnel_parse, "tunnel", "tunnel", t0)
    figures = []
    label = {"ip": "CONNECT 127.0.0.1", "localhost": "CONNECT localhost",
             "hostsfile": f"CONNECT {env.hosts_name} (hosts file)"}
    for tkey, host in targets:
        fid = f"tunnel.{tkey}"
        name = f"Tunnel CPU overhead, TLS passthrough, {label[tkey]}"
        method = (f"{TUNNEL_CONCURRENCY} concurrent workers (bench/tunnel_client.py) paced to {TUNNEL_RATE:g} tunnels/s "
                  f"in all, each looping CONNECT {_authority(env, host, tls=True)} -> TLS handshake with the origin "
                  f"through the tunnel -> GET -> close, {env.seconds}s per unit; mitmdump CPU (/proc) / completed "
                  f"tunnels, geogate (default: TLS passthrough) "
                  f"vs bare mitmdump --ignore-hosts '.*' (two bare processes taking turns from round to round), loaded "
                  f"simultaneously by two clients, {env.rounds} rounds, pairs in "
                  f"rotating order; "
                  f"value = median of the per-round ratios - 1")
        if not have_addon:
            figures.append(skipped(fid, name, "%", f"<= +{OVERHEAD_TARGET_PCT:g}%",
                                   "addons/geogate_addon.py does not exist yet", method))
            continue
        figures.append(_ratio_figure(fid, name, method, results, tkey,
                                     "cpu_ms_per_tunnel", "per_s", OVERHEAD_TARGET_PCT, why_broken.get(tkey)))
        if diagnostic:
            figures.append(_ratio_figure(
                f"tunnel.{tkey}.diag_ignore_hosts", f"Diagnostic: geogate with --ignore-hosts '.*' vs bare, {label[tkey]}",
                "as the tunnel figure, but geogate also runs with --ignore-hosts '.*' (its tls_clienthello hook "
                "never fires), to split the cost of the ClientHello hook from geogate's decision cost",
                results, tkey + ".diag", "cpu_ms_per_tunnel", "per_s", None, why_broken.get(tkey + ".diag")))
    figures.append(_ratio_figure(
        "tunnel.control.bare_vs_bare", "Control: bare mitmdump --ignore-hosts vs a second one (noise floor)",
        "as tunnel.ip, but both simultaneously loaded processes are bare mitmdump --ignore-hosts '.*'",
        results, "control", "cpu_ms_per_tunnel", "per_s", None, why_broken.get("control")))
    notes = {"broken_checks": {"/".join(k): v for k, v in broken.items()}}
    for name, (p, _port) in procs.items():
        notes.setdefault("memory", {})[name] = p.mem()
        p.stop()
        notes.setdefault("logs", {})[name] = p.tail(1500)
    return figures, notes


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
