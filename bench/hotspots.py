"""Where does geogate's time go inside mitmdump? (optional; not part of `make bench`)

    .venv/bin/pip install py-spy
    .venv/bin/python bench/hotspots.py [--target ip|name|localhost] [--conn keepalive|close|tunnel]
                                      [--seconds 15] [--rate paced|saturate] [--hooktimer] [--no-pyspy]
                                      [--bare | --null] [--out DIR]

Starts the local origin and `mitmdump -q -s addons/geogate_addon.py` (default policy, bundled
databases), drives the same load as bench/run.py and reports, per request:
- the mitmdump CPU time (from /proc);
- with py-spy (default): samples the proxy with `py-spy record --format raw --nonblocking`
  (collapsed stacks, 997 Hz) and prints the share and µs of every function in geogate's files
  (inclusive), the outermost geogate frames, and the top self time of all code. asyncio stacks
  are cut at task boundaries, so "inclusive" means within the same task step;
- with --hooktimer: loads bench/hooktimer.py, which times the execution of each geogate hook
  (every coroutine step separately) and prints calls and µs per request per hook.
--bare profiles bare mitmdump, --null the do-nothing addon of bench/null_addon.py. The raw
collapsed stacks stay in --out (default bench/.cache/profile) for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy as P  # noqa: E402
from lib import BENCH  # noqa: E402
from lib import VENV_BIN  # noqa: E402
from lib import log  # noqa: E402
from lib import processes  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?(?::\d+)?)\)$")


def parse_collapsed(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            frames.append((m.group("func"), m.group("file")) if m else (f, ""))
        out.append((frames, int(count)))
    return out


def is_geogate(file: str) -> bool:
    return file.startswith("geogate/") or "/geogate/" in file or "geogate_addon" in file


def _short(file: str) -> str:
    """geogate/x.py:12 -> geogate/x.py; mitmproxy/a/b.py:3 -> mitmproxy/a/b.py (line numbers dropped)."""
    if not file:
        return "?"
    head, _, tail = file.rpartition(":")
    return head if head and tail.isdigit() else file


def _called_from_geogate(frames) -> list[str]:
    """The other code below the outermost geogate frame of one stack, each function once, outermost first."""
    gi = next((i for i, (_f, fl) in enumerate(frames) if is_geogate(fl)), None)
    if gi is None:
        return []
    return list(dict.fromkeys(f"{func} ({_short(file)})" for func, file in frames[gi:] if not is_geogate(file)))


def summarise(stacks, cpu_ms_per_unit: float, units: int, top: int = 40) -> str:
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples"
    idle = sum(c for fr, c in stacks if fr and fr[-1][0] in ("select", "poll", "epoll_wait") or
               any(f[0] == "select" and "selectors" in f[1] for f in fr[-2:]))
    busy = total - idle
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    geo_any = 0
    geo_entry: collections.Counter = collections.Counter()  # outermost geogate frame per stack
    under_geo: collections.Counter = collections.Counter()  # any function called from geogate code
    for frames, c in stacks:
        for key in _called_from_geogate(frames):
            under_geo[key] += c
        seen = set()
        first_geo = None
        for func, file in frames:
            key = f"{func} ({_short(file)})"
            if key not in seen:
                incl[key] += c
                seen.add(key)
            if first_geo is None and is_geogate(file):
                first_geo = key
        if frames:
            f, fl = frames[-1]
            self_[f"{f} ({_short(fl)})"] += c
        if first_geo:
            geo_any += c
            geo_entry[first_geo] += c
    # share of on-CPU samples x CPU per unit (from /proc) = µs per unit
    per_sample_us = (cpu_ms_per_unit * 1000) / busy if busy else 0.0
    lines = [f"samples: {total} ({busy} on CPU, {idle} in select); CPU {cpu_ms_per_unit:.4f} ms per unit "
             f"over {units} units",
             f"geogate frames anywhere on the stack: {100 * geo_any / busy:.1f}% of on-CPU samples = "
             f"{geo_any * per_sample_us:.0f} µs per unit" if busy else ""]
    lines.append("\ngeogate entry points (outermost geogate frame), inclusive:")
    lines += _rows(geo_entry.most_common(15), busy, per_sample_us)
    lines.append("\ngeogate functions, inclusive (any depth):")
    lines += _rows([(k, c) for k, c in incl.most_common() if is_geogate(k.rsplit("(", 1)[-1])][:top], busy, per_sample_us)
    lines.append("\nother code called from geogate code (inclusive):")
    lines += _rows(under_geo.most_common(20), busy, per_sample_us)
    self_lines: collections.Counter = collections.Counter()
    for frames, c in stacks:
        if frames:
            self_lines[f"{frames[-1][0]} ({frames[-1][1]})"] += c
    lines.append("\ntop self time by line (file:line as sampled):")
    lines += _rows(self_lines.most_common(15), busy, per_sample_us, places=2)
    lines.append("\ntop self time (all code):")
    lines += _rows(self_.most_common(25), busy, per_sample_us)
    return "\n".join(lines)


def _rows(counts: list[tuple[str, int]], busy: int, per_sample_us: float, places: int = 1) -> list[str]:
    """One line per (function, samples): share of the on-CPU samples, µs per unit."""
    return [f"  {100 * c / busy:5.1f}%  {c * per_sample_us:7.{places}f} µs/unit  {k}" for k, c in counts]


def _timer(proc, path: Path) -> dict:
    """Ask bench/hooktimer.py inside the proxy for its counters (SIGUSR1 -> JSON file)."""
    import json
    import os
    import signal

    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise RuntimeError(f"hooktimer did not answer: {proc.tail(1000)}")


def engine_profile(a) -> int:
    """py-spy on bench/engine.py while it runs one phase; µs per decision from its own timing."""
    import json
    import os
    import signal

    from lib import PY

    pyspy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not pyspy:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    raw = a.out / f"engine-{a.engine}.txt"
    eng = subprocess.Popen([PY, str(BENCH / "engine.py"), "--profile-phase", a.engine,
                            "--profile-seconds", str(a.seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "READY" not in line:
        line = eng.stderr.readline()
        if not line and eng.poll() is not None:
            print("engine.py exited before it was ready", file=sys.stderr)
            return 1
    spy = subprocess.Popen([pyspy, "record", "--pid", str(eng.pid), "--rate", "997", "--format", "raw",
                            "--nonblocking", "--duration", str(int(a.seconds) + 3), "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    os.kill(eng.pid, signal.SIGUSR1)
    out, _err = eng.communicate(timeout=a.seconds + 120)
    spy.wait(timeout=a.seconds + 30)
    result = json.loads(out.strip().splitlines()[-1])
    us = result["us_per_decision"]
    stacks = parse_collapsed(raw)
    # only the samples inside the timed loop (profile_phase) count
    stacks = [(fr, c) for fr, c in stacks if any(f[0] == "profile_phase" for f in fr)]
    header = (f"# engine, phase {a.engine}: {result['decisions']} decisions in {result['seconds']:.1f}s = "
              f"{us:.2f} µs per decision (µs/unit below = µs per decision)\n")
    report = summarise(stacks, us / 1000, result["decisions"])
    (a.out / f"engine-{a.engine}.summary.txt").write_text(header + report + "\n")
    print(header + report)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", choices=("ip", "name", "localhost"), default="ip")
    p.add_argument("--conn", choices=("keepalive", "close", "tunnel"), default="keepalive")
    p.add_argument("--rate", choices=("paced", "saturate"), default="paced")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--bare", action="store_true", help="profile bare mitmdump instead (for comparison)")
    p.add_argument("--null", action="store_true", help="profile mitmdump with bench/null_addon.py instead")
    p.add_argument("--hooktimer", action="store_true", help="time geogate's hooks in-process (bench/hooktimer.py)")
    p.add_argument("--no-pyspy", action="store_true", help="do not sample with py-spy")
    p.add_argument("--extra", default="", help="extra mitmdump arguments, space separated")
    p.add_argument("--engine", choices=("uncached", "cached", "hot", "raw"),
                   help="profile the decision engine (bench/engine.py) in this phase instead of the proxy")
    p.add_argument("--out", type=Path, default=BENCH / ".cache" / "profile")
    a = p.parse_args()
    if a.engine:
        return engine_profile(a)
    pyspy = None if a.no_pyspy else (shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy"))
    if not pyspy and not a.no_pyspy:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="geogate-prof-") as tmpdir, processes() as procs:
        env = P.Env(tmp=Path(tmpdir), rounds=1, seconds=a.seconds, warmup=1, procs=procs)
        P.start_origin(env)
        host = {"ip": "127.0.0.1", "localhost": "localhost", "name": env.hosts_name or "localhost"}[a.target]
        name = "bare" if a.bare else "null" if a.null else "geogate"
        extra = a.extra.split() if a.extra else []
        if a.conn == "tunnel" and (a.bare or a.null) and "--ignore-hosts" not in extra:
            extra += ["--ignore-hosts", ".*"]
        if a.null:
            extra += ["-s", str(BENCH / "null_addon.py")]
        timer_out = Path(tmpdir) / "hooktimer.json"
        if a.hooktimer and name == "geogate":
            extra += ["-s", str(BENCH / "hooktimer.py")]
        proc, port = P.start_proxies(env, [(name, name == "geogate", extra)],
                                     environ={"GEOGATE_HOOKTIMER_OUT": str(timer_out)})[name]
        if a.conn == "tunnel":
            argv = lambda s: P._tunnel_argv(env, port, host, s, P.TUNNEL_RATE if a.rate == "paced" else 0)  # noqa: E731
            parse, per = P._tunnel_parse, "tunnel"
        else:
            script = P._wrk_script(env, host, a.conn, delay_ms=P.PACE_DELAY_MS if a.rate == "paced" else None)
            conns = P.PACED_CONNS[a.conn] if a.rate == "paced" else P.WRK_CONNS
            argv = lambda s: P._wrk_argv(port, script, s, conns)  # noqa: E731
            parse, per = P._wrk_parse, "req"
        P.run_together([(proc, argv(2), parse)], 2, per)  # warm-up
        stem = f"{name}-{a.target}-{a.conn}-{a.rate}"
        raw = a.out / f"{stem}.txt"
        spy = None
        if pyspy:
            spy = subprocess.Popen([pyspy, "record", "--pid", str(proc.pid), "--rate", "997", "--format", "raw",
                                    "--nonblocking", "--threads", "--duration", str(a.seconds + 2), "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
        timer0 = _timer(proc, timer_out) if a.hooktimer else {}
        r = P.run_together([(proc, argv(a.seconds), parse)], a.seconds, per)[0]
        timer1 = _timer(proc, timer_out) if a.hooktimer else {}
        n = r.get("requests") or r.get("tunnels")
        cpu_ms = r[f"cpu_ms_per_{per}"]
        log(f"{name}: {n} {per}s, {cpu_ms} ms CPU per {per}")
        header = (f"# {stem}: mitmdump ({name}), {a.conn} to {host}, {a.rate}; {n} {per}s in {a.seconds}s; "
                  f"CPU per {per} {cpu_ms} ms (µs/unit below = µs per {per})\n")
        report = ""
        if a.hooktimer:
            lines = ["geogate hooks, timed in-process (bench/hooktimer.py), per " + per + ":"]
            total = 0.0
            for hook in sorted(timer1, key=lambda h: -(timer1[h]["ns"] - timer0.get(h, {}).get("ns", 0))):
                calls = timer1[hook]["calls"] - timer0.get(hook, {}).get("calls", 0)
                ns = timer1[hook]["ns"] - timer0.get(hook, {}).get("ns", 0)
                if calls:
                    total += ns / 1000 / n
                    lines.append(f"  {hook:22s} {calls / n:5.2f} calls, {ns / 1000 / n:8.1f} µs "
                                 f"({ns / 1000 / calls:.1f} µs per call)")
            lines.append(f"  {'total':22s} {total:20.1f} µs per {per} = {100 * total / (cpu_ms * 1000):.1f}% "
                         f"of the process's CPU per {per}")
            report += "\n".join(lines) + "\n\n"
        if spy is not None:
            spy.wait(timeout=a.seconds + 30)
            if not raw.exists():
                print(f"py-spy wrote nothing: {spy.stderr.read().decode()[-1500:]}", file=sys.stderr)
                return 1
            report += summarise(parse_collapsed(raw), cpu_ms, n)
        (a.out / f"{stem}.summary.txt").write_text(header + report + "\n")
        print(header + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
