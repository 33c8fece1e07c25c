"""Benchmark 4: `geogate audit` vs `mitmdump -nr FILE -q` on the same generated flow files.

Each run is a child process measured with wait4(2): wall time, CPU (ru_utime + ru_stime) and peak
resident memory (ru_maxrss). Rounds alternate the two tools in rotating order on the rate file
(the first N flows of the 100k file); a 1-flow file gives each tool's start-up cost; the full
100k-flow file is then audited once by geogate (rate at scale, and peak memory compared with the
small file to show whether memory stays flat). `mitmdump -nr` on the full file takes ~2 ms per
flow on a 2-core VM (over 3 minutes), so it runs on the full file only with --audit-full-baseline.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lib import AUDIT_COMMAND
from lib import BENCH
from lib import GEOGATE
from lib import MITMDUMP
from lib import PY
from lib import Figure
from lib import log
from lib import median
from lib import rnd
from lib import rotate
from lib import run_measured
from lib import skipped
from lib import spread

FULL_FLOWS = 100_000
# Distinct destinations in the generated files. An audit report keeps one row per destination, so
# its memory grows with distinct destinations whatever it does per flow; with 2,000 the 5k-flow
# rate file already holds ~92% of them, and the 100k/5k peak-memory ratio shows per-flow growth.
DESTINATIONS = 2_000
CACHE = BENCH / ".cache"
FLAT_TARGET = 1.25  # peak RSS on 100k flows at most 25% above the peak on the small file


def rmed(xs):
    return rnd(median(xs))


def flows_text(n: int) -> str:
    """100000 -> "100k", for figure names; other counts in full."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def flow_files(rate_flows: int, full_flows: int = FULL_FLOWS) -> tuple[Path, Path, Path, dict[str, Any]]:
    """(full file, rate file, 1-flow file), generated once and cached under bench/.cache."""
    if not 1 <= rate_flows <= full_flows:
        raise ValueError(f"the rate file ({rate_flows} flows) is a prefix of the full file ({full_flows} flows)")
    src = b"".join((BENCH / f).read_bytes() for f in ("flowgen.py", "addrgen.py"))
    key = hashlib.sha256(src + f"{full_flows}/{DESTINATIONS}/{rate_flows}".encode()).hexdigest()[:12]
    d = CACHE / f"flows-{key}"
    full, rate, one = d / f"flows-{full_flows}.mitm", d / f"flows-{rate_flows}.mitm", d / "flows-1.mitm"
    info: dict[str, Any] = {"cached": True, "dir": str(d.relative_to(BENCH.parent))}
    if not (full.exists() and rate.exists() and one.exists()):
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for tmp_name, flows, prefix in ((full, full_flows, rate), (one, 1, None)):
            tmp = tmp_name.with_suffix(".part")
            argv = [PY, str(BENCH / "flowgen.py"), str(tmp), "--flows", str(flows), "--destinations", str(DESTINATIONS)]
            if prefix is not None:
                argv += ["--prefix", str(prefix.with_suffix(".part2")), "--prefix-flows", str(rate_flows)]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"flowgen failed: {res.stderr[-2000:]}")
            info.setdefault("generator", []).append(res.stdout.strip())
            tmp.replace(tmp_name)
            if prefix is not None:
                prefix.with_suffix(".part2").replace(prefix)
        info.update(cached=False, seconds=round(time.perf_counter() - t0, 1))
    info.update(full_bytes=full.stat().st_size, rate_bytes=rate.stat().st_size)
    return full, rate, one, info


def _argv(tool: str, path: Path, tmp: Path) -> list[str]:
    if tool == "mitmdump":
        return [MITMDUMP, "-nr", str(path), "-q", "--set", f"confdir={tmp / 'conf-replay'}"]
    return [GEOGATE, "audit", str(path), "--format", "json"]


def _run(tool: str, path: Path, tmp: Path, flows: int, timeout: float) -> dict[str, Any]:
    r = run_measured(_argv(tool, path, tmp), timeout)
    ok = r["rc"] == 0
    out = {
        "flows": flows, "rc": r["rc"], "wall_s": round(r["wall_s"], 3), "cpu_s": round(r["cpu_s"], 3),
        "maxrss_mib": rnd(r["maxrss_mib"]), "flows_per_s": rnd(flows / r["wall_s"]),
    }
    if not ok:
        out["stderr"] = r["stderr"][-1500:]
    return out


def audit_section(tmp: Path, rounds: int, rate_flows: int, full_baseline: bool,
                  full_flows: int = FULL_FLOWS) -> tuple[list[Figure], dict[str, Any]]:
    have = AUDIT_COMMAND.exists()
    full, rate, one, info = flow_files(rate_flows, full_flows)
    big = flows_text(full_flows)
    log(f"flow files ready ({info})")
    method_rate = (f"wall-clock flows/s of `geogate audit FILE --format json` (stdout to /dev/null) vs `mitmdump -nr FILE -q` "
                   f"(no addon) on the same file: the first {rate_flows:,} flows of the generated {big}-flow file "
                   f"(tflow HTTPS flows, peernames on {DESTINATIONS:,} public IPv4/IPv6 addresses), {rounds} rounds, "
                   f"tools alternating in rotating order; each run is a fresh process (start-up included; start-up "
                   f"alone measured on a 1-flow file); value = median geogate rate / median mitmdump rate")
    if not have:
        return [skipped("audit.rate_ratio", "Audit speed vs mitmdump -nr", "x", ">= 1.0x",
                        "addons/geogate/cli/audit.py does not exist yet", method_rate),
                skipped("audit.memory_flat", f"Audit peak memory, {big} vs {rate_flows:,} flows", "x",
                        f"<= {FLAT_TARGET}x", "addons/geogate/cli/audit.py does not exist yet")], {"files": info}
    runs: dict[str, list[dict]] = {"mitmdump": [], "geogate": []}
    starts: dict[str, list[dict]] = {"mitmdump": [], "geogate": []}
    t0 = time.perf_counter()
    for rno in range(rounds):
        for tool in rotate(["mitmdump", "geogate"], rno):
            runs[tool].append(_run(tool, rate, tmp, rate_flows, timeout=rate_flows * 0.02 + 60))
            starts[tool].append(_run(tool, one, tmp, 1, timeout=120))
        log(f"audit round {rno + 1}/{rounds}: mitmdump {runs['mitmdump'][-1]['flows_per_s']} flows/s, "
            f"geogate {runs['geogate'][-1]['flows_per_s']} flows/s ({time.perf_counter() - t0:.0f}s)")
    log(f"audit: geogate on the full {big}-flow file")
    full_geo = _run("geogate", full, tmp, full_flows, timeout=900)
    log(f"audit full: {full_geo}")
    full_md = None
    if full_baseline:
        full_md = _run("mitmdump", full, tmp, full_flows, timeout=1200)
        log(f"audit full mitmdump: {full_md}")

    failed = [r for tool in runs for r in runs[tool] + starts[tool] if "stderr" in r]
    g_rate, m_rate = rmed([r["flows_per_s"] for r in runs["geogate"]]), rmed([r["flows_per_s"] for r in runs["mitmdump"]])
    g_start = rmed([r["wall_s"] for r in starts["geogate"]])
    m_start = rmed([r["wall_s"] for r in starts["mitmdump"]])
    g_wall, m_wall = rmed([r["wall_s"] for r in runs["geogate"]]), rmed([r["wall_s"] for r in runs["mitmdump"]])
    ratio = g_rate / m_rate if g_rate and m_rate else None
    figures = [Figure(
        "audit.rate_ratio", f"Audit speed: geogate audit vs mitmdump -nr ({rate_flows:,} flows)", rnd(ratio, 3), "x",
        method_rate, ">= 1.0x", (ratio is not None and ratio >= 1.0 and not failed), rounds,
        [{"geogate": g, "mitmdump": m} for g, m in zip(runs["geogate"], runs["mitmdump"], strict=True)],
        {"geogate_flows_per_s": g_rate, "mitmdump_flows_per_s": m_rate,
         "geogate_startup_s": g_start, "mitmdump_startup_s": m_start,
         "geogate_flows_per_s_excl_startup": (rnd(rate_flows / (g_wall - g_start))
                                              if g_wall and g_start and g_wall > g_start else None),
         "mitmdump_flows_per_s_excl_startup": (rnd(rate_flows / (m_wall - m_start))
                                               if m_wall and m_start and m_wall > m_start else None),
         "geogate_cpu_s_median": rmed([r["cpu_s"] for r in runs["geogate"]]),
         "mitmdump_cpu_s_median": rmed([r["cpu_s"] for r in runs["mitmdump"]]),
         "geogate_maxrss_mib_median": rmed([r["maxrss_mib"] for r in runs["geogate"]]),
         "mitmdump_maxrss_mib_median": rmed([r["maxrss_mib"] for r in runs["mitmdump"]]),
         "rate_range_geogate": spread([r["flows_per_s"] for r in runs["geogate"]]),
         "rate_range_mitmdump": spread([r["flows_per_s"] for r in runs["mitmdump"]]),
         "startup_runs": starts,
         **({"failed_runs": failed} if failed else {})},
        status="failed" if failed else "measured")]
    small_rss = rmed([r["maxrss_mib"] for r in runs["geogate"]])
    flat = full_geo["maxrss_mib"] / small_rss if small_rss and full_geo.get("maxrss_mib") else None
    figures.append(Figure(
        "audit.memory_flat", f"Audit peak memory: {big} flows vs {rate_flows:,} flows (geogate audit)", rnd(flat, 3), "x",
        f"ru_maxrss of `geogate audit` on the full {big}-flow file ({rnd(full_geo['maxrss_mib'])} MiB) divided by the median "
        f"on the {rate_flows:,}-flow file ({rnd(small_rss)} MiB), both drawn from the same {DESTINATIONS:,} destinations "
        f"(most already in the small file), so the ratio shows growth per flow; flat = at most {FLAT_TARGET}x for "
        f"{full_flows // rate_flows}x the flows",
        f"<= {FLAT_TARGET}x", (flat is not None and flat <= FLAT_TARGET and "stderr" not in full_geo), 1, [full_geo],
        {"full_flows": full_flows, "full_flows_per_s": full_geo.get("flows_per_s"), "full_wall_s": full_geo.get("wall_s"),
         "full_maxrss_mib": full_geo.get("maxrss_mib"), "small_maxrss_mib": small_rss,
         "mitmdump_small_maxrss_mib": rmed([r["maxrss_mib"] for r in runs["mitmdump"]]),
         **({"mitmdump_full": full_md} if full_md else {})},
        status="failed" if "stderr" in full_geo else "measured"))
    figures.append(Figure(
        "audit.full_rate", f"Audit speed on the full {big}-flow file (geogate audit, one run)", full_geo.get("flows_per_s"),
        "flows/s", f"one run of `geogate audit FILE --format json` on the {big}-flow file, wall clock incl. start-up"
        + (f"; mitmdump -nr on the same file: {full_md['flows_per_s']} flows/s" if full_md else
           f"; mitmdump -nr on the full file is not run by default (about {rnd(full_flows / m_rate / 60, 2) if m_rate else '?'} "
           f"minutes at the rate measured above)"),
        None, None, 1, [full_geo] + ([full_md] if full_md else [])))
    return figures, {"files": info, "python": sys.version.split()[0]}
