"""The benchmark suite's own arithmetic and reports, and one tiny end-to-end run of `bench/run.py`.

The committed results are only as good as the code that computes them: the CPU readings, the
address mix, the report. The smoke run keeps `make bench` from rotting between benchmark runs;
its numbers (one round of one second) mean nothing and are not checked.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

import system_deps

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench():
    """The bench modules (they import each other by top-level name), without leaving bench/ on
    sys.path or its module names in sys.modules for other tests."""
    names = ("lib", "addrgen", "flowgen", "audit", "proxy", "scale", "run")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(BENCH))
    try:
        mods = {n: importlib.import_module(n) for n in names}
    finally:
        sys.path.remove(str(BENCH))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
    return type("Bench", (), mods)


# -- CPU readings ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "before, after, expected",
    [
        # every thread still there and the two clocks agree: the nanosecond figure
        ((1.00, {1: 0, 2: 0}), (1.50, {1: 300_000_000, 2: 205_000_000}), (0.505, "schedstat")),
        # a thread started during the unit counts from zero
        ((1.00, {1: 0}), (1.50, {1: 300_000_000, 3: 200_000_000}), (0.5, "schedstat")),
        # a thread of the first reading exited: its time since then is lost, so the ticks
        ((1.00, {1: 0, 2: 0}), (1.50, {1: 300_000_000}), (0.5, "stat")),
        # the two disagree by more than tick rounding explains: the ticks
        ((1.00, {1: 0}), (2.00, {1: 500_000_000}), (1.0, "stat")),
        # no schedstat on this kernel
        ((1.00, None), (1.25, None), (0.25, "stat")),
        ((1.00, {1: 0}), (1.25, None), (0.25, "stat")),
    ],
)
def test_cpu_delta_prefers_thread_nanoseconds_only_when_they_are_complete(bench, before, after, expected):
    seconds, source = bench.lib.cpu_delta(bench.lib.CpuReading(*before), bench.lib.CpuReading(*after))
    assert (round(seconds, 6), source) == expected


def test_cpu_reading_of_a_busy_process_grows_by_what_it_ran(bench):
    r0 = bench.lib.cpu_reading(os.getpid())
    t0 = time.process_time()
    while time.process_time() - t0 < 0.2:
        pass
    spent = time.process_time() - t0
    seconds, source = bench.lib.cpu_delta(r0, bench.lib.cpu_reading(os.getpid()))
    assert source in ("schedstat", "stat")
    assert spent - 0.03 <= seconds <= spent + 0.1


# -- statistics and interleaving ------------------------------------------------------------------

@pytest.mark.parametrize(
    "variants, round_no, expected",
    [
        (["a", "b", "c"], 0, ["a", "b", "c"]),
        (["a", "b", "c"], 1, ["b", "c", "a"]),
        (["a", "b", "c"], 2, ["c", "a", "b"]),
        (["a", "b", "c"], 3, ["a", "b", "c"]),
        (["a"], 5, ["a"]),
    ],
)
def test_rotate_runs_every_variant_each_round_starting_one_further(bench, variants, round_no, expected):
    assert bench.lib.rotate(variants, round_no) == expected


def test_median_and_spread_ignore_missing_rounds(bench):
    assert bench.lib.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bench.lib.median([None]) is None
    assert bench.lib.spread([0.98, None, 1.031, 1.0]) == [0.98, 1.031]
    assert bench.lib.rnd(1.234567, 3) == 1.23
    assert bench.lib.rnd(None) is None


@pytest.mark.parametrize(
    "broken, measured, why",
    [
        ({}, [("k", "t", ("bare", "bare2"), "geogate")], {}),
        # a base that failed its check leaves the turns to the other
        ({"bare2": "refused"}, [("k", "t", "bare", "geogate")], {}),
        ({"bare": "refused", "bare2": "refused"}, [], {"k": "refused"}),
        ({"geogate": "timeout"}, [], {"k": "timeout"}),
    ],
)
def test_a_pair_is_measured_while_its_test_and_one_base_work(bench, broken, measured, why):
    pairs = [("k", "t", ("bare", "bare2"), "geogate")]
    assert bench.proxy.split_measurable(pairs, lambda name, key: broken.get(name)) == (measured, why)


# -- the address mix of the engine benchmark ------------------------------------------------------

def test_address_mix_is_distinct_global_and_repeatable(bench):
    """Every address must take the full lookup path: a special-purpose or transition-form address
    would be decided without touching the databases and flatter the uncached figure."""
    from geogate.core.addresses import classify

    addrs = bench.addrgen.public_addresses(3000, seed=1, v6_share=0.3)
    assert len(addrs) == len(set(addrs)) == 3000
    v6 = [ip for ip in addrs if ip.version == 6]
    assert 0.25 <= len(v6) / len(addrs) <= 0.35
    for ip in addrs:
        address = classify(ip)
        assert address.special is None, ip
        assert address.embedded_ipv4 is None, ip
    assert bench.addrgen.public_addresses(3000, seed=1, v6_share=0.3) == addrs
    assert bench.addrgen.public_addresses(3000, seed=2, v6_share=0.3) != addrs


def test_ipv6_mix_lies_in_delegated_ranges(bench):
    from geogate.core.bundled import default_database_paths
    from geogate.core.databases import Database

    whois = next(Database(p) for p in default_database_paths() if "whois" in Path(p).name)
    v6 = [ip for ip in bench.addrgen.public_addresses(1000, seed=3, v6_share=1.0) if ip.version == 6]
    assert v6
    assert all(whois.lookup(ip) is not None for ip in v6)


# -- the report -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flows, text", [(100_000, "100k"), (5_000, "5k"), (1_500, "1,500"), (200, "200")])
def test_flow_counts_in_figure_names(bench, flows, text):
    assert bench.audit.flows_text(flows) == text


def test_error_line_names_the_exception_not_the_last_line_of_its_message(bench):
    try:
        raise RuntimeError("wrk gave no result (rc 1): usage\n    -d <T> duration\n")
    except RuntimeError:
        text = traceback.format_exc()
    assert bench.run.error_line(text) == "RuntimeError: wrk gave no result (rc 1): usage"
    assert bench.run.error_line("not run: the time budget was used up") == "not run: the time budget was used up"


def _doc(figures: list, **settings) -> dict:
    return {
        "machine": {"date": "2026-01-01T00:00:00+00:00", "nproc": 2, "cpu_model": "cpu", "mem_total_gib": 1,
                    "kernel": "k", "python": "3.12", "versions": {}, "git": "abc"},
        "settings": {"rounds": 3, "load_rounds": 1, "seconds": 1, "addresses": 2000} | settings,
        "elapsed_s": 1.0,
        "figures": figures,
        "errors": {"tunnel": "Traceback (most recent call last):\n  File \"x\", line 1\nOSError: boom\n"},
        "notes": {},
    }


def _fig(bench, id, value, target, passed, status="measured"):
    return bench.lib.Figure(id, f"name of {id}", value, "%", "method", target, passed, 1, [], {}, status).to_json()


def test_markdown_gives_every_figure_its_result_and_the_settings_it_ran_with(bench, tmp_path):
    doc = _doc([
        _fig(bench, "a.pass", 1.0, "<= +3%", True),
        _fig(bench, "b.fail", 4.0, "<= +3%", False),
        _fig(bench, "c.info", 0.5, None, None),
        _fig(bench, "d.skipped", None, "<= +3%", None, "skipped"),
        _fig(bench, "e.failed", None, "<= +3%", False, "failed"),
    ])
    path = tmp_path / "latest.md"
    bench.run.write_markdown(path, doc)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in path.read_text().splitlines()
            if line.startswith("| name of ")}
    assert rows["name of a.pass"].startswith("| name of a.pass | +1.0% | <= +3% | pass |")
    assert rows["name of b.fail"].startswith("| name of b.fail | +4.0% | <= +3% | **FAIL** |")
    assert rows["name of c.info"].startswith("| name of c.info | +0.5% | — |  |")
    assert rows["name of d.skipped"].startswith("| name of d.skipped | — | <= +3% | skipped |")
    assert rows["name of e.failed"].startswith("| name of e.failed | — | <= +3% | **FAIL** (error) |")
    text = path.read_text()
    assert "In-process, 2,000 distinct public IPv4/IPv6 addresses" in text
    assert "median of 3 rounds" in text
    assert "- tunnel: OSError: boom" in text


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--warmup", "-1"], "--warmup"),
        (["--rounds", "0"], "--rounds"),
        (["--audit-rate-flows", "5000", "--audit-full-flows", "1000"], "--audit-rate-flows"),
        (["--only", "engine,nonsense"], "nonsense"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(args, complaint, tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "run.py"), *args, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert complaint in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())


# -- the scale sections ---------------------------------------------------------------------------

def test_connections_per_worker_come_from_the_decision_log(bench, tmp_path):
    log = tmp_path / "decisions.jsonl"
    tree = bench.scale.Tree("w2", 1, 8080, workers=[101, 102], log=log)
    assert tree.log_size() == 0
    old = [{"event": "decision", "worker": 0, "client": "127.0.0.1:1000"}]
    log.write_text("".join(json.dumps(r) + "\n" for r in old))
    offset = tree.log_size()
    new = [
        {"event": "decision", "worker": 0, "client": "127.0.0.1:2000"},
        {"event": "decision", "worker": 0, "client": "127.0.0.1:2000"},  # a second request on one connection
        {"event": "decision", "worker": 1, "client": "127.0.0.1:2001"},
        {"event": "decision", "worker": 1, "client": "127.0.0.1:2002"},
        {"event": "decision", "worker": 1, "client": None},
        {"event": "reload", "worker": 1},
    ]
    with open(log, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new))
    assert tree.connections_since(offset) == [1, 2]
    assert tree.connections_since(0) == [2, 2]
    single = bench.scale.Tree("w1", 1, 8080, workers=[101], log=log)  # one worker writes no "worker" field
    log.write_text(json.dumps({"event": "decision", "client": "127.0.0.1:3000"}) + "\n")
    assert single.connections_since(0) == [1]
    assert bench.scale.Tree("s1", 1, 8080, workers=[101]).connections_since(0) is None


def test_a_process_tree_is_found_from_its_root(bench):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = bench.scale.descendants(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert bench.scale.descendants(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    "cores, cpu_ratio, busiest, expected",
    [
        (2, 1.0, 50.0, 2.0),  # even spread, no extra cost: linear
        (2, 1.1, 50.0, 2 / 1.1),  # each request costs 10% more with two workers
        (2, 1.0, 60.0, 2 * 50 / 60),  # the busiest worker saturates first
        (4, 1.0, 50.0, 4.0),
    ],
)
def test_capacity_prediction_from_spread_and_efficiency(bench, cores, cpu_ratio, busiest, expected):
    assert bench.scale.predicted_ratio(cores, cpu_ratio, busiest) == pytest.approx(expected)


def test_shares_are_percentages_of_what_was_seen(bench):
    assert bench.scale.shares([30, 10]) == [75.0, 25.0]
    assert bench.scale.shares([0, 0]) == []


@pytest.mark.e2e
@system_deps.needs("wrk", "squid")
def test_scale_squid_and_bulk_sections_report_every_figure(bench, tmp_path):
    argv = [sys.executable, str(BENCH / "run.py"), "--only", "scale,squid,bulk", "--seconds", "1", *SHORT_SCALE,
            "--out", str(tmp_path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["errors"] == {}
    by_id = {f["id"]: f for f in doc["figures"]}
    for kind in ("keepalive", "close", "tunnel"):
        spread = by_id[f"scale.{kind}.spread"]
        assert spread["status"] == "measured" and isinstance(spread["pass"], bool)
        assert sum(spread["extra"]["shares_pct"]) == pytest.approx(100, abs=0.2)
        assert len(spread["extra"]["connections"]) == 2 and min(spread["extra"]["connections"]) > 0
        # a fair hash of N connections still varies by 50/sqrt(N) %, said beside the figure
        n = sum(spread["extra"]["connections"])
        assert spread["extra"]["binomial_sd_pct"] == pytest.approx(50 / n ** 0.5, rel=0.01)
        eff = by_id[f"scale.{kind}.efficiency"]
        assert isinstance(eff["value"], float) and isinstance(eff["pass"], bool)
        # efficiency is measured with each worker as busy as the single one: the 2-worker tree
        # carries twice the 1-worker tree's load; the same-total-load figure beside it, equal loads
        for r in eff["raw"]:
            assert r["w2"]["load_factor"] == 2 * r["w1"]["load_factor"] == 2 * r["w1b"]["load_factor"]
        assert isinstance(eff["extra"]["noise_floor_pct"], float)  # the A/A pair of two 1-worker trees
        same = by_id[f"scale.{kind}.same_total_load"]
        assert isinstance(same["value"], float) and same["target"] is None
        assert all(r["w2"]["load_factor"] == r["w1"]["load_factor"] for r in same["raw"])
        if kind == "close":
            # one connection per request: the log's count is exact (a request cut off by the end of
            # a round is decided but not completed, at most one per client connection)
            served = sum(r["w2"]["requests"] for r in eff["raw"] + same["raw"])
            cut_off = sum(r["w2"]["load_factor"] * bench.scale.PACED["close"][0] for r in eff["raw"] + same["raw"])
            assert served <= n <= served + cut_off
        cap = by_id[f"scale.{kind}.capacity"]
        assert set(cap["extra"]["saturated"]) == {"w1", "w2"}
        assert all(x["generator_cores"] > 0 and x["proxy_cores"] > 0 for x in cap["extra"]["saturated"].values())
        assert by_id[f"squid.{kind}.per_core"]["value"] > 0
        assert set(by_id[f"squid.{kind}.capacity"]["extra"]["saturated"]) == {"geogate", "squid_w1", "squid_w2"}
    assert doc["notes"]["scale"]["trees"]["w2"]["workers"] and len(doc["notes"]["scale"]["trees"]["w2"]["workers"]) == 2
    for fid in ("bulk.geogate_vs_direct", "bulk.bare_vs_direct"):
        assert by_id[fid]["value"] > 0 and by_id[fid]["extra"]["proxy_cpu_s_per_gb"] > 0
    assert by_id["bulk.direct"]["value"] > 0
    md = (tmp_path / "latest.md").read_text()
    for f in doc["figures"]:
        assert f"| {f['name']} |" in md


# -- the whole suite, tiny ------------------------------------------------------------------------

TARGETS = ("engine.cached", "engine.uncached_vs_raw", "proxy.ip.keepalive", "proxy.ip.close", "memory.after_start",
           "memory.after_load", "tunnel.ip", "audit.rate_ratio", "audit.memory_flat")
SHORT_SCALE = ["--scale-rounds", "1", "--scale-seconds", "1", "--bulk-mib", "8"]


@pytest.mark.e2e
@system_deps.needs("wrk")
def test_make_bench_sections_report_every_target(tmp_path):
    argv = [sys.executable, str(BENCH / "run.py"), "--rounds", "1", "--gateway-rounds", "1", "--load-rounds", "2",
            "--seconds", "1",
            "--warmup", "0", "--addresses", "2000", "--audit-rate-flows", "200", "--audit-full-flows", "1000",
            # the scale, squid and bulk sections have their own smoke test above; the gateway section
            # walks the bundled databases and starts gateways (about 100 s even at one round): it is
            # run by `make bench`, and the gateway it measures by the namespace tests
            "--only", "engine,proxy,tunnel,audit", "--out", str(tmp_path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["errors"] == {}
    by_id = {f["id"]: f for f in doc["figures"]}
    for fid in TARGETS:
        f = by_id[fid]
        assert f["status"] == "measured", fid
        assert isinstance(f["value"], (int, float)), fid
        assert f["target"] and isinstance(f["pass"], bool), fid
        assert f["method"], fid
    # a host name is measured next to the IP literal, for plain HTTP and for tunnels
    assert {i for i in by_id if i.startswith("proxy.") and i.endswith(".keepalive")} - {"proxy.ip.keepalive",
                                                                                         "proxy.capacity.ip.keepalive"}
    assert [i for i in by_id if i.startswith("tunnel.") and i not in ("tunnel.ip", "tunnel.control.bare_vs_bare")]
    # geogate is compared with the two bare processes in turn; the A/A pair compares those two
    assert [(r["base"]["proc"], r["test"]["proc"]) for r in by_id["proxy.ip.keepalive"]["raw"]] == [
        ("bare", "geogate"), ("bare2", "geogate")]
    assert [(r["base"]["proc"], r["test"]["proc"]) for r in by_id["tunnel.ip"]["raw"]] == [
        ("tbare", "tgeogate"), ("tbare2", "tgeogate")]
    assert {(r["base"]["proc"], r["test"]["proc"]) for r in by_id["proxy.control.bare_vs_bare"]["raw"]} == {
        ("bare", "bare2")}
    md = (tmp_path / "latest.md").read_text()
    for f in doc["figures"]:
        assert f"| {f['name']} |" in md
