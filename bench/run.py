"""geogate benchmarks: the single entry point (`make bench`).

    .venv/bin/python bench/run.py [--only engine,proxy,tunnel,audit,gateway,scale,squid,bulk] [--rounds 5] [--seconds 4]

Writes bench/results/latest.json (every figure: value, unit, target, pass, method, rounds, raw
per-round numbers) and bench/results/latest.md (the short table). Loopback only; every load loop
is bounded in time and count. Sections whose piece of geogate does not exist yet (the addon, the
audit command) are reported as skipped, so the suite runs at any stage of the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit as audit_bench  # noqa: E402
import gateway as gateway_bench  # noqa: E402
import proxy as proxy_bench  # noqa: E402
import scale as scale_bench  # noqa: E402
from lib import ADDON  # noqa: E402
from lib import AUDIT_COMMAND  # noqa: E402
from lib import BENCH  # noqa: E402
from lib import PY  # noqa: E402
from lib import ROOT  # noqa: E402
from lib import Figure  # noqa: E402
from lib import dump_json  # noqa: E402
from lib import log  # noqa: E402
from lib import machine_info  # noqa: E402
from lib import processes  # noqa: E402
from lib import rnd  # noqa: E402
from lib import spread  # noqa: E402

RESULTS = BENCH / "results"
SECTIONS = ("engine", "proxy", "tunnel", "audit", "gateway", "scale", "squid", "bulk")
NEEDS_ORIGIN = ("proxy", "tunnel", "scale", "squid")
BUDGET_S = 14 * 60  # stop starting new sections after this: `make bench` must stay under 15 minutes


# -- benchmark 1: decision engine ----------------------------------------------------------------

def engine_section(rounds: int, addresses: int) -> tuple[list[Figure], dict]:
    argv = [PY, str(BENCH / "engine.py"), "--addresses", str(addresses), "--rounds", str(rounds)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=480, cwd=ROOT)
    sys.stderr.write(res.stderr[-3000:] if res.returncode else "".join(
        line + "\n" for line in res.stderr.splitlines() if "engine" in line))
    if res.returncode != 0:
        raise RuntimeError(f"engine.py failed (rc {res.returncode}): {res.stderr[-2000:]}")
    d = json.loads(res.stdout)
    us = d["us_per_address"]
    n = d["addresses"]
    common = (f"{n['total']:,} distinct addresses ({n['v4']:,} random global IPv4, {n['v6']:,} IPv6 from RIR "
              f"allocations), bundled databases ({len(d['databases'])}), policies/default.yaml, in one process, "
              f"{rounds} rounds; within a round the variants take turns on each tenth of the addresses, in an order "
              f"that rotates, so that all see the same machine speed; median of per-round µs per address (wall clock)")
    def med(xs: list[float]) -> float | None:
        s = sorted(xs)
        return rnd(s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)

    def raw_rounds(kind: str) -> list[dict]:
        return [{"all_us": rnd(a), "v4_us": rnd(b), "v6_us": rnd(c), "cpu_us": rnd(e)}
                for a, b, c, e in zip(us[kind]["all"], us[kind]["v4"], us[kind]["v6"], us[kind]["cpu_all"], strict=True)]

    cached = med(us["cached"]["all"])
    ratio = med(d["ratio_uncached_raw"])
    ws = d.get("cached_working_set") or {}
    figs = [
        Figure("engine.cached", f"Decision, cached (the {ws.get('addresses', 4096):,} most recent addresses, the whole "
               "outcome cache, decided again)", cached, "µs",
               f"GateState.decide(Request(host, 443), [ip]) on a fresh state that has decided the last "
               f"{ws.get('addresses', 4096):,} addresses of the mix ({ws.get('v4')} IPv4, {ws.get('v6')} IPv6) once, "
               f"i.e. exactly what its {ws.get('outcome_cache_size', 4096)}-entry outcome cache holds; they are decided "
               f"{ws.get('passes')} more times, by family; bundled databases, policies/default.yaml, in one process, "
               f"{rounds} rounds (after the interleaved variants of each round), median of per-round µs per decision "
               "(wall clock)",
               "< 2 µs", cached is not None and cached < 2.0, rounds, raw_rounds("cached"),
               {"v4_us": med(us["cached"]["v4"]), "v6_us": med(us["cached"]["v6"]),
                "cpu_us": med(us["cached"]["cpu_all"]), "working_set": ws}),
        Figure("engine.uncached_vs_raw", "Decision, uncached, relative to the raw maxminddb lookup", ratio, "x",
               "first decision of each address on a fresh GateState (all geogate lru_caches cleared), divided by the "
               "raw floor: maxminddb Reader.get(ip) in every configured database (C extension, pages already "
               "faulted in); " + common, "<= 2.0x", ratio is not None and ratio <= 2.0, rounds,
               [{"uncached_us": rnd(u), "raw_us": rnd(r), "ratio": rnd(q)} for u, r, q in
                zip(us["uncached"]["all"], us["raw"]["all"], d["ratio_uncached_raw"], strict=True)],
               {"uncached_us": med(us["uncached"]["all"]), "raw_us": med(us["raw"]["all"]),
                "uncached_v4_us": med(us["uncached"]["v4"]), "uncached_v6_us": med(us["uncached"]["v6"]),
                "raw_v4_us": med(us["raw"]["v4"]), "raw_v6_us": med(us["raw"]["v6"]),
                "raw_get_with_prefix_len_us": med(us["rawprefix"]["all"]), "ratio_range": spread(d["ratio_uncached_raw"]),
                "cache_stats": d.get("cache_stats")}),
        Figure("engine.uncached", "Decision, uncached (first decision of an address)", med(us["uncached"]["all"]), "µs",
               "see engine.uncached_vs_raw; " + common, None, None, rounds, raw_rounds("uncached")),
        Figure("engine.least_vs_raw", "Bound: the least a decision written in Python does around the lookups "
               "(no rules), relative to the raw lookup", med(d["ratio_least_raw"]), "x",
               "not geogate: a loop doing only what any decision must do around the lookups (time.time() and the "
               "UTC day, cache key with the day, a probe and insert in a 4096-entry FIFO cache, the special-range "
               "check, the lookup in every database (get_with_prefix_len until a record gives the network, then "
               "get), records shared by country code, one tuple as the result), divided by the raw floor; "
               "it shows how much of engine.uncached_vs_raw the interpreter costs whatever the engine does (see "
               "bench/engine.py); " + common, None, None, rounds,
               [{"least_us": rnd(u), "raw_us": rnd(r), "ratio": rnd(q)} for u, r, q in
                zip(us["least"]["all"], us["raw"]["all"], d["ratio_least_raw"], strict=True)],
               {"least_us": med(us["least"]["all"]), "raw_us": med(us["raw"]["all"]),
                "ratio_range": spread(d["ratio_least_raw"])}),
        Figure("engine.raw", "Raw maxminddb lookup in every configured database (the floor)", med(us["raw"]["all"]), "µs",
               f"Reader.get(ip) of {d['reader']} for each of the {len(d['databases'])} databases; " + common,
               None, None, rounds, raw_rounds("raw"),
               {"get_with_prefix_len_us": med(us["rawprefix"]["all"])}),
        Figure("engine.second_pass", f"Decision, second pass over {n['total']:,} distinct addresses, "
               f"{'more' if n['total'] > ws.get('outcome_cache_size', 4096) else 'no more'} than the "
               f"{ws.get('outcome_cache_size', 4096):,}-entry cache", med(us["second_pass"]["all"]), "µs",
               "GateState.decide(Request(host, 443), [ip]) on the state that has just decided every address once, "
               "same order: the outcome cache holds only the most recent addresses, so this is mostly the uncached "
               "path again (informational); " + common, None, None, rounds, raw_rounds("second_pass"),
               {"v4_us": med(us["second_pass"]["v4"]), "v6_us": med(us["second_pass"]["v6"]),
                "cpu_us": med(us["second_pass"]["cpu_all"])}),
        Figure("engine.hot", "Decision from cache, working set of 1k addresses", med(us["hot"]["all"]), "µs",
               "the last 1,000 addresses decided 10 more times each, after the passes above (fits any cache of "
               ">= 1k entries): the cost of a decision served from cache; " + common,
               None, None, rounds, [{"us": rnd(x)} for x in us["hot"]["all"]]),
    ]
    return figs, {k: d[k] for k in ("addresses", "databases", "reader", "sample_decision", "seconds")}


# -- report --------------------------------------------------------------------------------------

SHORT_METHOD = {
    "engine": "In-process, {addresses:,} distinct public IPv4/IPv6 addresses, bundled databases, default policy; µs per "
              "decision (wall clock), median of {rounds} rounds, the variants taking turns on each tenth of the "
              "addresses; raw = maxminddb Reader.get in every database.",
    "origin": "wrk straight at the local asyncio origin, to show it is not the bottleneck.",
    "proxy": "paced wrk (16 keep-alive or 7 new-connection clients, each waiting 100 ms between requests) sending "
             "absolute-form GETs to mitmdump -q; CPU of the mitmdump process from /proc (ns per thread) per completed "
             "request, geogate "
             "and bare mitmdump loaded at the same time on the same CPU (clients and origin on the other), median of "
             "per-round ratios; an A/A pair of two bare processes gives the noise floor; capacity = saturating wrk, "
             "one proxy at a time.",
    "tunnel": "4 Python workers paced to 45 tunnels/s looping CONNECT → TLS handshake → GET → close through "
              "mitmdump; CPU per tunnel from /proc, geogate (TLS passthrough) vs bare mitmdump --ignore-hosts '.*' "
              "loaded at the same time; A/A pair as noise floor.",
    "memory": "VmRSS of the geogate mitmdump minus bare mitmdump, after start-up and after the plain-HTTP load.",
    "scale": "`geogate run --workers 1` and `--workers 2` loaded at the same time by paced loads (efficiency: "
             "CPU of every process per request with each worker as busy as the single one, and again at the same "
             "total load; spread: each worker's share of the client connections, from the decision log), then "
             "saturated one at a time (capacity, with the load generator's CPU beside); {scale_rounds} rounds of "
             "{scale_seconds} s.",
    "squid": "Squid 5 (no cache, workers 1 and 2) and `geogate run` under the same loads: CPU per request paced "
             "and loaded at the same time, then capacity at saturation one at a time.",
    "bulk": "One TLS download of {bulk_mib} MiB straight, through bare mitmdump --ignore-hosts '.*' and through "
            "geogate (TLS passthrough); MB/s and the proxy's user/system CPU.",
    "audit": "Fresh processes measured with wait4 (wall, CPU, ru_maxrss); geogate audit vs mitmdump -nr -q on the "
             "same generated .mitm file.",
}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "%":
        return f"{v:+.1f}%"
    if unit.startswith("% of"):
        return f"{v:.1f}%"
    if unit == "x":
        return f"{v:.2f}x"
    if unit in ("µs", "MiB"):
        return f"{v:.2f} {unit}" if abs(v) < 100 else f"{v:.0f} {unit}"
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:.3g} {unit}"


def _detail(f: dict) -> str:
    e = f.get("extra") or {}
    fid = f["id"]
    if fid.startswith(("proxy.", "tunnel.")) and "base_cpu_ms_per_req_median" in e:
        return (f"CPU/req {e['base_cpu_ms_per_req_median']} → {e['test_cpu_ms_per_req_median']} ms; "
                f"{e['base_rps_median']:.0f} → {e['test_rps_median']:.0f} req/s")
    if fid.startswith("tunnel.") and "base_cpu_ms_per_tunnel_median" in e:
        return (f"CPU/tunnel {e['base_cpu_ms_per_tunnel_median']} → {e['test_cpu_ms_per_tunnel_median']} ms; "
                f"{e['base_per_s_median']:.0f} → {e['test_per_s_median']:.0f} tunnels/s")
    if fid == "engine.uncached_vs_raw":
        return f"uncached {e.get('uncached_us')} µs vs raw {e.get('raw_us')} µs"
    if fid == "engine.least_vs_raw":
        return f"{e.get('least_us')} µs vs raw {e.get('raw_us')} µs"
    if fid.startswith("memory.") and e:
        return f"{e.get('geogate_rss_mib')} vs {e.get('bare_rss_mib')} MiB (2nd bare: {e.get('bare2_rss_mib')})"
    if fid == "audit.rate_ratio" and e:
        return (f"{e.get('geogate_flows_per_s')} vs {e.get('mitmdump_flows_per_s')} flows/s; "
                f"peak RSS {e.get('geogate_maxrss_mib_median')} vs {e.get('mitmdump_maxrss_mib_median')} MiB")
    if fid == "audit.memory_flat" and e:
        full = audit_bench.flows_text(e["full_flows"]) if e.get("full_flows") else "full file"
        return f"{e.get('full_maxrss_mib')} MiB ({full}) vs {e.get('small_maxrss_mib')} MiB"
    if fid.startswith("proxy.capacity") and e:
        r = e.get("ratio_range") or [0, 0]
        return (f"{e.get('bare_rps_median')} → {e.get('geogate_rps_median')} req/s (per-round ratios "
                f"{r[0]:.2f}–{r[1]:.2f}x); indicative only, see method")
    if fid.startswith("origin.") and e:
        return f"origin CPU {e.get('origin_cpu_ms_per_req')} ms/req"
    if fid.startswith(("scale.", "squid.", "bulk.")) and f.get("status") == "measured":
        return scale_detail(fid, e)
    if f.get("status") != "measured":
        return (e.get("reason") or e.get("error") or f.get("status", ""))[:120]
    return ""


def _rate(x: dict | None, unit: str = "/s") -> str:
    return f"{x['rate']:,.0f}{unit} ({x['proxy_cores']:.2f} proxy + {x['generator_cores']:.2f} client cores)" if x else "—"


def scale_detail(fid: str, e: dict) -> str:
    """The detail column of the scale, squid and bulk figures."""
    kind = fid.split(".")[1]
    per = "tunnel" if kind == "tunnel" else "req"
    if fid.endswith(".spread"):
        return (f"connections {' / '.join(f'{x:.0f}%' for x in e.get('shares_pct') or [])} "
                f"({sum(e.get('connections') or [])} seen); CPU {' / '.join(f'{x:.0f}%' for x in e.get('cpu_shares_pct') or [])}")
    if fid.endswith(".efficiency") or fid.endswith(".same_total_load"):
        floor = e.get("noise_floor_pct")
        return (f"CPU/{per} {e.get(f'w1_cpu_ms_per_{per}')} → {e.get(f'w2_cpu_ms_per_{per}')} ms; "
                f"client {e.get('generator_cores_median')} cores" + (f"; A/A {floor:+.1f}%" if floor is not None else ""))
    if fid.startswith("scale.") and fid.endswith(".capacity"):
        sat, pred = e.get("saturated") or {}, e.get("predicted_ratio_for_cores") or {}
        return (f"1 worker {_rate(sat.get('w1'))} → 2 workers {_rate(sat.get('w2'))}; predicted with a core per "
                f"worker: " + ", ".join(f"{n} cores {v}x" for n, v in pred.items()))
    if fid.endswith(".per_core"):
        return f"CPU/{per} geogate {e.get(f'geogate_cpu_ms_per_{per}')} vs Squid {e.get(f'squid_cpu_ms_per_{per}')} ms"
    if fid.startswith("squid.") and fid.endswith(".capacity"):
        sat = e.get("saturated") or {}
        return (f"geogate {_rate(sat.get('geogate'))}; Squid 1 worker {_rate(sat.get('squid_w1'))}, "
                f"2 workers {_rate(sat.get('squid_w2'))}")
    if fid.startswith("bulk.") and "mb_per_s" in e:
        return (f"{e['mb_per_s']:.0f} vs {e['direct_mb_per_s']:.0f} MB/s; proxy {e.get('proxy_cpu_s_per_gb')} CPU s/GB, "
                f"{100 * (e.get('proxy_system_share') or 0):.0f}% of it in the kernel")
    return ""


def _range_pct(f: dict) -> str:
    r = (f.get("extra") or {}).get("ratio_range")
    return f"{(r[0] - 1) * 100:+.1f}% … {(r[1] - 1) * 100:+.1f}%" if r else "—"


def error_line(text: str) -> str:
    """The line of a section's traceback that says what went wrong: the exception's first line."""
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    rest = lines[frames[-1] + 1:] if frames else lines
    return next((line for line in rest if line and not line[0].isspace()), text.strip()[:200])


def write_markdown(path: Path, doc: dict) -> None:
    m = doc["machine"]
    lines = [
        "# geogate benchmark results",
        "",
        f"Run {m['date']} on {m['nproc']} × {m['cpu_model']} ({m.get('mem_total_gib')} GiB), Linux {m['kernel']}, "
        f"Python {m['python']}, mitmproxy {m['versions'].get('mitmproxy')}, maxminddb {m['versions'].get('maxminddb')}, "
        f"{m.get('wrk') or 'wrk'}; git {m.get('git')}. Whole run: {doc['elapsed_s']:.0f} s "
        f"({doc['settings']['rounds']} rounds for engine/audit/capacity, {doc['settings'].get('load_rounds')} rounds × "
        f"{doc['settings']['seconds']} s per paired load unit). "
        "Generated by `make bench` (bench/run.py); every figure, its method and the raw per-round numbers are in "
        "latest.json.",
        "",
        "| Benchmark | Measured | Target | Result | Detail (median) |",
        "|---|---|---|---|---|",
    ]
    for f in doc["figures"]:
        result = {True: "pass", False: "**FAIL**", None: ""}[f["pass"]]
        if f["status"] == "skipped":
            result = "skipped"
        elif f["status"] == "failed":
            result = "**FAIL** (error)" if f["target"] else "error"
        lines.append(f"| {f['name']} | {_fmt(f['value'], f['unit'])} | {f['target'] or '—'} | {result} | "
                     f"{_detail(f)} |")
    by_id = {f["id"]: f for f in doc["figures"]}
    floors = [(label, by_id[k]) for label, k in (("plain HTTP", "proxy.control.bare_vs_bare"),
                                                 ("tunnels", "tunnel.control.bare_vs_bare")) if k in by_id]
    if floors:
        lines += ["", "Noise floor of the overhead figures in this run (two identical bare mitmdump processes measured "
                  "the same way; median, and the range of the per-round ratios): "
                  + "; ".join(f"{label} {_fmt(f['value'], '%')} (rounds {_range_pct(f)})" for label, f in floors)
                  + ". An overhead closer to its target than this is not significant."]
    la = (doc.get("notes") or {}).get("load_average") or {}
    if la:
        lines += ["", "Background load on the machine (1-minute load average at the start of each section; "
                  "the proxy and tunnel ratios are measured so that background load hits both sides alike): "
                  + ", ".join(f"{k} {v['before'][0]:.2f}" for k, v in la.items()) + "."]
    lines += ["", "Method, in a sentence each (full wording per figure in latest.json):", ""]
    settings = {"addresses": 100_000, "rounds": 5, "scale_rounds": 3, "scale_seconds": 3, "bulk_mib": 200} | doc["settings"]
    for key, text in SHORT_METHOD.items():
        lines.append(f"- **{key}**: {text.format(**settings)}")
    if doc.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {k}: {error_line(v)}" for k, v in doc["errors"].items()]
    path.write_text("\n".join(lines) + "\n")


def run_section(section: str, a: argparse.Namespace, env: proxy_bench.Env, figures: list[Figure],
                notes: dict) -> tuple[list[Figure], dict]:
    """One section's figures and notes (the origin is started by the first section that needs it)."""
    if section == "engine":
        figs, n = engine_section(a.rounds, a.addresses)
    elif section in NEEDS_ORIGIN:
        if env.origin is None:
            proxy_bench.start_origin(env)
            figures.extend(proxy_bench.origin_alone(env))
            notes["origin"] = env.notes.get("origin")
        have_addon = ADDON.exists()
        if section == "scale":
            figs, n = scale_bench.scale_section(env, a.scale_rounds, a.scale_seconds)
        elif section == "squid":
            figs, n = scale_bench.squid_section(env, a.scale_rounds, a.scale_seconds)
        elif section == "proxy":
            figs, n = proxy_bench.http_section(env, have_addon, a.all_names)
        else:
            figs, n = proxy_bench.tunnel_section(env, have_addon, a.tunnel_diagnostic, a.all_names)
    elif section == "bulk":
        figs, n = scale_bench.bulk_section(env, a.scale_rounds, a.bulk_mib)
    elif section == "gateway":
        figs, n = gateway_bench.gateway_section(env.tmp, a.gateway_rounds, a.seconds)
    else:
        figs, n = audit_bench.audit_section(env.tmp, a.rounds, a.audit_rate_flows, a.audit_full_baseline,
                                            a.audit_full_flows)
    return figs, n


# -- main ----------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the engine, audit and capacity benchmarks")
    p.add_argument("--load-rounds", type=int, default=7, help="rounds of the paired proxy and tunnel comparisons")
    p.add_argument("--seconds", type=int, default=4, help="seconds per paired load unit (wrk / tunnel client)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load per proxy pair (0: none)")
    p.add_argument("--addresses", type=int, default=100_000)
    p.add_argument("--audit-rate-flows", type=int, default=5_000)
    p.add_argument("--audit-full-flows", type=int, default=audit_bench.FULL_FLOWS,
                   help="flows in the large audit file (memory and rate at scale)")
    p.add_argument("--audit-full-baseline", action="store_true",
                   help="also run mitmdump -nr on the full file (~4 min at 100k flows)")
    p.add_argument("--tunnel-diagnostic", action="store_true",
                   help="also run geogate with --ignore-hosts '.*' in the tunnel benchmark (splits ClientHello cost)")
    p.add_argument("--all-names", action="store_true",
                   help="measure both a hosts-file name and localhost (default: the hosts-file name if there is one)")
    p.add_argument("--gateway-rounds", type=int, default=3,
                   help="rounds of the gateway benchmarks (set builds, iperf3 pairs, restores)")
    p.add_argument("--scale-rounds", type=int, default=3, help="rounds of the scale, squid and bulk benchmarks")
    p.add_argument("--scale-seconds", type=int, default=3, help="seconds per load unit of the scale and squid benchmarks")
    p.add_argument("--bulk-mib", type=int, default=scale_bench.BULK_MIB, help="MiB per bulk download")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite latest.md from the existing latest.json")
    a = p.parse_args()
    if a.render:
        write_markdown(a.out / "latest.md", json.loads((a.out / "latest.json").read_text()))
        print((a.out / "latest.md").read_text())
        return 0
    for name in ("rounds", "load_rounds", "gateway_rounds", "seconds", "addresses", "audit_rate_flows", "audit_full_flows",
                 "scale_rounds", "scale_seconds", "bulk_mib"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.audit_rate_flows > a.audit_full_flows:
        p.error("--audit-rate-flows must not exceed --audit-full-flows (the rate file is its first flows)")
    if a.warmup < 0:
        p.error("--warmup must be 0 or more")
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}")
    a.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    figures: list[Figure] = []
    notes: dict = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    loads: dict[str, dict] = {}
    machine = machine_info()
    log(f"geogate bench: sections {only}, {a.rounds} rounds, {a.load_rounds} load rounds × {a.seconds}s; "
        f"{machine['nproc']} CPUs, {machine['cpu_model']}")

    with tempfile.TemporaryDirectory(prefix="geogate-bench-") as tmpdir, processes() as procs:
        tmp = Path(tmpdir)
        env = proxy_bench.Env(tmp=tmp, rounds=a.load_rounds, seconds=a.seconds, warmup=a.warmup, procs=procs,
                              capacity_rounds=a.rounds)
        for section in only:
            elapsed = time.perf_counter() - t_start
            if elapsed > BUDGET_S:
                errors[section] = f"not run: the time budget ({BUDGET_S}s) was used up after {elapsed:.0f}s"
                continue
            t0 = time.perf_counter()
            load_before = os.getloadavg()
            log(f"== {section} == (load average {load_before[0]:.2f})")
            try:
                figs, n = run_section(section, a, env, figures, notes)
                figures.extend(figs)
                notes[section] = n
            except Exception:
                errors[section] = traceback.format_exc()
                log(f"{section} failed:\n{errors[section]}")
            timings[section] = round(time.perf_counter() - t0, 1)
            loads[section] = {"before": [round(x, 2) for x in load_before],
                              "after": [round(x, 2) for x in os.getloadavg()]}
            log(f"== {section} done in {timings[section]:.0f}s ==")
            # partial results are written after every section
            _write(a, machine, figures, notes | {"load_average": loads}, errors, timings, t_start, only)
    doc = _write(a, machine, figures, notes | {"load_average": loads}, errors, timings, t_start, only)
    _print_summary(doc, a.out)
    return 1 if errors else 0


def _write(a, machine, figures, notes, errors, timings, t_start, only) -> dict:
    doc = {
        "machine": machine,
        "settings": {"sections": only, "rounds": a.rounds, "load_rounds": a.load_rounds, "seconds": a.seconds,
                     "warmup": a.warmup,
                     "addresses": a.addresses, "audit_rate_flows": a.audit_rate_flows,
                     "audit_full_flows": a.audit_full_flows, "scale_rounds": a.scale_rounds,
                     "scale_seconds": a.scale_seconds, "bulk_mib": a.bulk_mib},
        "pieces": {"addon": ADDON.exists(), "audit_command": AUDIT_COMMAND.exists()},
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "section_seconds": timings,
        "figures": [f.to_json() for f in figures],
        "errors": errors,
        "notes": notes,
    }
    dump_json(a.out / "latest.json", doc)
    write_markdown(a.out / "latest.md", doc)
    return doc


def _print_summary(doc: dict, out: Path) -> None:
    print((out / "latest.md").read_text())
    log(f"done in {doc['elapsed_s']:.0f}s: {out / 'latest.json'}, {out / 'latest.md'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
