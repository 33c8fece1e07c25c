"""Compare two mitmproxy scripts (two versions of geogate, say) by CPU per request (optional; not
part of `make bench`).

    .venv/bin/python bench/compare.py A.py B.py [--rounds 15] [--seconds 4] [--target ip|name]
                                      [--conn keepalive|close] [--policy FILE] [--out FILE.json --note TEXT]

Both run as `mitmdump -q -s SCRIPT --set geogate_policy=FILE` and are measured the way
`make bench` measures geogate against bare mitmdump (bench/proxy.py): loaded at the same time by
their own paced wrk, both on one CPU, CPU from /proc per completed request, pairs in rotating order.
A second copy of A is measured against A in the same rounds as the noise floor. Each process lives
for the whole comparison: a new process costs more per request for a while (with new processes
every round, a copy of A measured +3.9% against A), more than what is compared here.
Processes of the same script still differ by a percent or so for their whole life, so repeat a
comparison (new processes each time) before trusting a difference of that size.
Prints the median and mean of the per-round ratios B/A and A'/A, and every round; `--out` also
writes them, with the raw per-round CPU figures and the machine, to a JSON file (bench/results/
keeps the comparisons a change was measured with).

To compare an older version of the entry script, copy it out first (for example
`git show REV:addons/geogate_addon.py > /tmp/old_addon.py`); it imports the installed `geogate`
package, so both sides run the package of this checkout and differ only in the script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy as P  # noqa: E402
from lib import DEFAULT_POLICY  # noqa: E402
from lib import dump_json  # noqa: E402
from lib import log  # noqa: E402
from lib import machine_info  # noqa: E402
from lib import processes  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("a", type=Path, help="the base script")
    p.add_argument("b", type=Path, help="the script compared with it")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--target", choices=("ip", "name"), default="ip")
    p.add_argument("--conn", choices=("keepalive", "close"), default="keepalive")
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    p.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--note", default="", help="what A and B are, for --out")
    a = p.parse_args()
    for script in (a.a, a.b):
        if not script.is_file():
            print(f"{script}: no such script", file=sys.stderr)
            return 2
    policy = ["--set", f"geogate_policy={a.policy.resolve()}"]
    load_before = os.getloadavg()
    specs = [(name, False, ["-s", str(script.resolve())] + policy)
             for name, script in (("A", a.a), ("B", a.b), ("A2", a.a))]
    with tempfile.TemporaryDirectory(prefix="geogate-compare-") as tmpdir, processes() as procs:
        env = P.Env(tmp=Path(tmpdir), rounds=a.rounds, seconds=a.seconds, warmup=2, procs=procs)
        P.start_origin(env)
        host = "127.0.0.1" if a.target == "ip" else (env.hosts_name or "localhost")
        started = P.start_proxies(env, specs)
        time.sleep(2.0)
        target = (P._wrk_script(env, host, a.conn, delay_ms=P.PACE_DELAY_MS), P.PACED_CONNS[a.conn])
        pairs = [(("B",), target, "A", "B"), (("A2",), target, "A", "A2")]
        with P.proxy_cpus(env, [proc for proc, _port in started.values()]):
            results = P.run_http_pairs(env, pairs, started, "compare", time.perf_counter())
    log(f"{a.conn} to {host}, {a.rounds} rounds of {a.seconds}s")
    doc = {"note": a.note, "a": str(a.a), "b": str(a.b), "conn": a.conn, "target": host, "rounds": a.rounds,
           "seconds": a.seconds, "machine": machine_info(),
           "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}}
    for key, _target, _base, test in pairs:
        base_rounds, test_rounds = results[(key, "base")], results[(key, "test")]
        ratios = [t["cpu_ms_per_req"] / b["cpu_ms_per_req"] for b, t in zip(base_rounds, test_rounds, strict=True)]
        label = "B vs A          " if test == "B" else "A vs A (control)"
        print(f"{label} median {100 * (statistics.median(ratios) - 1):+.2f}%  "
              f"mean {100 * (statistics.mean(ratios) - 1):+.2f}%  rounds "
              + " ".join(f"{100 * (r - 1):+.1f}" for r in ratios), flush=True)
        doc["b_vs_a" if test == "B" else "control"] = {
            "median_pct": round(100 * (statistics.median(ratios) - 1), 2),
            "mean_pct": round(100 * (statistics.mean(ratios) - 1), 2),
            "rounds_pct": [round(100 * (r - 1), 2) for r in ratios],
            "cpu_ms_per_req": {"base": [b["cpu_ms_per_req"] for b in base_rounds],
                               "test": [t["cpu_ms_per_req"] for t in test_rounds]},
        }
    if a.out is not None:
        dump_json(a.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
