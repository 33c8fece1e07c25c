"""Benchmark 1: the decision engine, in-process (run by run.py in its own interpreter).

    python bench/engine.py [--addresses 100000] [--rounds 5] [--v6-share 0.3] > engine.json

Variants, interleaved in chunks: the addresses of each family are cut into CHUNKS parts, and
every variant runs on a part before any runs on the next, in an order that rotates from part to
part and round to round. A shared virtual CPU changes speed from one second to the next (the raw
lookup has measured 2.5 µs and 4.2 µs in one run), so the ratios compare variants measured within
a second or so of each other rather than whole passes measured far apart:
  raw       the floor: maxminddb `Reader.get(ip)` of every address in every configured database
            (the bundled two), i.e. what any decision must at least do;
  least     a bound, not geogate: the least bookkeeping any decision written in Python does around
            those lookups (the time as seconds and the UTC day, a cache key with the day, a probe
            and insert in a bounded cache, the special-range check, the lookups (the first with
            the network's prefix length), records shared by country code, one tuple as the result;
            no rules at all). It shows how much of the uncached figure the interpreter costs
            whatever the engine does;
  geogate   a fresh GateState.load(policies/default.yaml, bundled databases) with every geogate
            lru_cache cleared every round, then
              uncached:    GateState.decide(Request(host, 443), [ip]) for every address once
                           (interleaved with raw and least as above);
              second_pass: the same addresses decided a second time, same order: 100k distinct
                           addresses are more than the 4096-entry outcome cache holds, so this is
                           mostly the uncached path again (kept as the figure it used to be);
              cached:      a fresh GateState that has decided the last OUTCOME_CACHE_SIZE (4096)
                           addresses of the mix once, deciding them again CACHED_PASSES more times:
                           the cost of a decision served from cache, over the whole working set
                           the cache holds (not a tiny one that would sit in the CPU caches);
              hot:         the last 1,000 addresses decided 10 more times each (a working set that
                           fits any cache of at least 1k entries).
Addresses: 100k distinct, 70% random global IPv4, 30% IPv6 from RIR allocations (addrgen.py).
The database pages are touched once before round 1 (a raw pass), so the first variant does not
pay for page faults the others don't. Wall time by perf_counter, CPU by process_time; the cyclic
GC stays on, but the harness's own input lists are gc.freeze()d so full collections do not walk
them.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from addrgen import public_addresses  # noqa: E402
from lib import DEFAULT_POLICY  # noqa: E402
from lib import log  # noqa: E402
from lib import rotate  # noqa: E402

HOT = 1_000  # the hot working set: small enough for any reasonable cache
CHUNKS = 10  # parts of the address list, see the module docstring
HOT_PASSES = 10
CACHED_PASSES = 5  # passes over the cached working set (OUTCOME_CACHE_SIZE addresses)


def _geogate_caches():
    """Every functools cache in a geogate module (module-level functions and class attributes)."""
    out = []
    for name, mod in list(sys.modules.items()):
        if not (name == "geogate" or name.startswith("geogate.")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if callable(getattr(obj, "cache_clear", None)) and getattr(obj, "__module__", "") == name:
                out.append(obj)
    return out


def _timed(fn) -> tuple[float, float]:
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:  # noqa: C901  one measurement script top to bottom; its closures are the passes it times
    p = argparse.ArgumentParser()
    p.add_argument("--addresses", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--v6-share", type=float, default=0.3)
    p.add_argument("--policy", default=str(DEFAULT_POLICY))
    p.add_argument("--profile-phase", choices=("uncached", "cached", "second_pass", "hot", "raw"),
                   help="for bench/hotspots.py: set up, print READY, wait for SIGUSR1, then run only this phase "
                        "repeatedly for --profile-seconds and print the decisions made")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    a = p.parse_args()
    if a.profile_phase:
        return profile_phase(a)

    import maxminddb

    from geogate.core.addresses import ip_key
    from geogate.core.addresses import special_range
    from geogate.core.cache import BoundedCache
    from geogate.core.decide import Request
    from geogate.policy.state import OUTCOME_CACHE_SIZE
    from geogate.policy.state import GateState
    from geogate.policy.state import utc_day

    t0 = time.perf_counter()
    addrs = public_addresses(a.addresses, seed=1, v6_share=a.v6_share)
    v4 = [ip for ip in addrs if ip.version == 4]
    v6 = [ip for ip in addrs if ip.version == 6]
    fams = {"v4": v4, "v6": v6}
    reqs = {k: [Request(host=str(ip), port=443) for ip in ips] for k, ips in fams.items()}
    hot = addrs[-HOT:]
    hot_reqs = [Request(host=str(ip), port=443) for ip in hot]
    # the cached working set: the most recent OUTCOME_CACHE_SIZE addresses of the mix, by family
    recent = addrs[-OUTCOME_CACHE_SIZE:]
    recent_fams = {"v4": [ip for ip in recent if ip.version == 4], "v6": [ip for ip in recent if ip.version == 6]}
    recent_reqs = {k: [Request(host=str(ip), port=443) for ip in ips] for k, ips in recent_fams.items()}
    log(f"engine: {len(v4)} IPv4 + {len(v6)} IPv6 addresses in {time.perf_counter() - t0:.1f}s")

    state = GateState.load(a.policy, None)
    db_paths = [db.info.path for db in state.databases.databases]
    readers = [maxminddb.open_database(p) for p in db_paths]
    reader_mode = type(readers[0]).__module__
    warm = public_addresses(2000, seed=99, v6_share=a.v6_share)
    for ip in addrs:  # fault in the database pages used by every address
        for r in readers:
            r.get(ip)
    for ip in warm:
        state.decide(Request(host=str(ip), port=443), [ip])
    sample_decision = state.decide(Request(host=str(addrs[0]), port=443), [addrs[0]])
    del state
    # The harness's own inputs (100k addresses and requests) are long-lived: keep them out of the
    # cyclic GC's full collections, which a proxy would not pay for (it holds no such list).
    gc.collect()
    gc.freeze()

    def raw_pass(ips):
        def run():
            for ip in ips:
                for r in readers:
                    r.get(ip)
        return run

    def raw_prefix_pass(ips):
        def run():
            for ip in ips:
                for r in readers:
                    r.get_with_prefix_len(ip)
        return run

    def least_state():
        """What the bound keeps between chunks of one round: its cache and shared records."""
        return BoundedCache(OUTCOME_CACHE_SIZE), [{} for _ in readers]

    def least_pass(reqs_, ips, kept):
        cache, shared = kept
        pairs = list(zip(readers, shared, strict=True))

        def run():
            _start, day_ends, today = utc_day(time.time())
            for req, ip in zip(reqs_, ips, strict=True):
                now = time.time()  # the cheapest clock a decision can keep; the day as GateState keeps it
                if now >= day_ends:
                    _start, day_ends, today = utc_day(now)
                key = (req.host, req.port, ip_key(ip), today)
                if cache.get(key) is None:
                    special = special_range(ip)
                    records, prefix = [], None
                    for reader, by_code in pairs:
                        # the network of the first record only, as any report of one needs
                        if prefix is None:
                            rec, prefix_len = reader.get_with_prefix_len(ip)
                        else:
                            rec = reader.get(ip)
                        if rec is not None:
                            code = rec.get("country_code")
                            records.append(by_code.get(code) or by_code.setdefault(code, (code,)))
                            if prefix is None:
                                prefix = prefix_len
                    cache.put(key, (ip, special, tuple(records), prefix, now))
        return run

    def decide_pass(state, reqs_, ips, passes=1):
        decide = state.decide

        def run():
            for _ in range(passes):
                for req, ip in zip(reqs_, ips, strict=True):
                    decide(req, [ip])
        return run

    def fresh_state():
        state = GateState.load(a.policy, None)
        for cache in _geogate_caches():
            cache.cache_clear()
        return state

    def parts(seq: list) -> list[list]:
        size = -(-len(seq) // CHUNKS)
        return [seq[i:i + size] for i in range(0, len(seq), size)] or [[]]

    chunked = {fam: list(zip(parts(reqs[fam]), parts(ips), strict=True)) for fam, ips in fams.items()}

    rounds: list[dict] = []
    cache_stats: list[dict] = []
    for rno in range(a.rounds):
        row: dict[str, float] = {}

        def add(name: str, fn, row: dict[str, float] = row) -> None:
            w, c = _timed(fn)
            row[f"{name}_wall"] = row.get(f"{name}_wall", 0.0) + w
            row[f"{name}_cpu"] = row.get(f"{name}_cpu", 0.0) + c

        state = fresh_state()
        kept = least_state()
        for part in range(CHUNKS):
            for variant in rotate(["raw", "least", "geogate"], rno + part):
                for fam, fam_parts in chunked.items():
                    if part >= len(fam_parts):
                        continue
                    part_reqs, part_ips = fam_parts[part]
                    if variant == "raw":
                        add(f"raw_{fam}", raw_pass(part_ips))
                        add(f"rawprefix_{fam}", raw_prefix_pass(part_ips))
                    elif variant == "least":
                        add(f"least_{fam}", least_pass(part_reqs, part_ips, kept))
                    else:
                        add(f"uncached_{fam}", decide_pass(state, part_reqs, part_ips))
        cache_stats.append(_cache_stats(state))
        for fam, ips in fams.items():
            add(f"second_pass_{fam}", decide_pass(state, reqs[fam], ips))
        decide_pass(state, hot_reqs, hot)()  # make sure the hot set is the most recent
        add("hot", decide_pass(state, hot_reqs * HOT_PASSES, hot * HOT_PASSES))
        del state
        # cached: a state whose outcome cache holds exactly the working set
        state = fresh_state()
        for fam, ips in recent_fams.items():
            decide_pass(state, recent_reqs[fam], ips)()
        for fam, ips in recent_fams.items():
            add(f"cached_{fam}", decide_pass(state, recent_reqs[fam], ips, CACHED_PASSES))
        del state
        rounds.append(row)
        n_recent = len(recent) * CACHED_PASSES
        log(f"engine round {rno + 1}/{a.rounds}: raw {1e6 * (row['raw_v4_wall'] + row['raw_v6_wall']) / len(addrs):.2f} µs, "
            f"uncached {1e6 * (row['uncached_v4_wall'] + row['uncached_v6_wall']) / len(addrs):.2f} µs, "
            f"cached {1e6 * (row['cached_v4_wall'] + row['cached_v6_wall']) / n_recent:.2f} µs, "
            f"second pass {1e6 * (row['second_pass_v4_wall'] + row['second_pass_v6_wall']) / len(addrs):.2f} µs, "
            f"hot {1e6 * row['hot_wall'] / (HOT * HOT_PASSES):.2f} µs per address")

    counts = {"v4": len(v4), "v6": len(v6)}
    cached_counts = {fam: len(ips) * CACHED_PASSES for fam, ips in recent_fams.items()}

    def per(kind: str, fam: str | None = None, clock: str = "wall") -> list[float]:
        if kind == "hot":
            return [1e6 * r[f"hot_{clock}"] / (HOT * HOT_PASSES) for r in rounds]
        n = cached_counts if kind == "cached" else counts
        if fam:
            return [1e6 * r[f"{kind}_{fam}_{clock}"] / n[fam] for r in rounds]
        return [1e6 * (r[f"{kind}_v4_{clock}"] + r[f"{kind}_v6_{clock}"]) / (n["v4"] + n["v6"]) for r in rounds]

    result = {
        "addresses": {"total": len(addrs), "v4": len(v4), "v6": len(v6)},
        "cached_working_set": {"addresses": len(recent), "v4": len(recent_fams["v4"]), "v6": len(recent_fams["v6"]),
                               "passes": CACHED_PASSES, "outcome_cache_size": OUTCOME_CACHE_SIZE},
        "databases": db_paths,
        "reader": reader_mode,
        "policy": a.policy,
        "sample_decision": {"action": getattr(sample_decision, "action", None),
                            "rule": getattr(sample_decision, "rule", None)},
        "cache_stats": cache_stats,
        "us_per_address": {
            kind: {
                "all": per(kind), "v4": per(kind, "v4"), "v6": per(kind, "v6"), "cpu_all": per(kind, clock="cpu"),
            } for kind in ("raw", "rawprefix", "least", "uncached", "cached", "second_pass")
        } | {"hot": {"all": per("hot"), "cpu_all": per("hot", clock="cpu")}},
        "rounds": a.rounds,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["ratio_uncached_raw"] = [u / r for u, r in zip(per("uncached"), per("raw"), strict=True)]
    result["ratio_least_raw"] = [u / r for u, r in zip(per("least"), per("raw"), strict=True)]
    result["medians"] = {k: statistics.median(v["all"]) for k, v in result["us_per_address"].items()}
    json.dump(result, sys.stdout, indent=1)


def _cache_stats(state) -> dict:
    """How full geogate's caches are after the uncached pass (private attributes: informative only)."""
    out = {}
    for name, obj in (("outcomes", getattr(state, "_outcomes", None)),
                      ("facts", getattr(getattr(state, "facts", None), "_cache", None)),
                      ("verdict_memo", getattr(getattr(state, "_verdicts", None), "judgements", None))):
        if obj is not None:
            out[f"{name}_entries"] = len(obj)
    return out


def profile_phase(a) -> None:  # noqa: C901  one set-up, then one loop choosing the phase: read as a table
    """One phase in a loop, so a sampling profiler attached from outside sees only that phase."""
    import os
    import signal
    import threading

    import maxminddb

    from geogate.core.decide import Request
    from geogate.policy.state import OUTCOME_CACHE_SIZE
    from geogate.policy.state import GateState

    n = a.addresses
    if a.profile_phase == "uncached":  # enough never-seen addresses for the whole run
        n = max(n, 300_000)
    addrs = public_addresses(n, seed=1, v6_share=a.v6_share)
    reqs = [Request(host=str(ip), port=443) for ip in addrs]
    state = GateState.load(a.policy, None)
    readers = [maxminddb.open_database(db.info.path) for db in state.databases.databases]
    for ip in addrs:
        for r in readers:
            r.get(ip)
    # cached: the most recent OUTCOME_CACHE_SIZE addresses, exactly what the outcome cache holds
    recent = slice(max(0, a.addresses - OUTCOME_CACHE_SIZE), a.addresses)
    if a.profile_phase == "cached":
        for req, ip in zip(reqs[recent], addrs[recent], strict=True):
            state.decide(req, [ip])
    elif a.profile_phase == "second_pass":
        for req, ip in zip(reqs[:a.addresses], addrs[:a.addresses], strict=True):
            state.decide(req, [ip])
    go = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    print(f"READY {os.getpid()}", file=sys.stderr, flush=True)
    go.wait(60)
    decide = state.decide
    done, t0 = 0, time.perf_counter()
    deadline = t0 + a.profile_seconds
    i = 0
    hot_r, hot_a = reqs[a.addresses - HOT:a.addresses], addrs[a.addresses - HOT:a.addresses]
    if a.profile_phase == "hot":
        for req, ip in zip(hot_r, hot_a, strict=True):
            decide(req, [ip])
    while time.perf_counter() < deadline:
        if a.profile_phase == "uncached":
            chunk = range(i, min(i + 1000, len(addrs)))
            for k in chunk:
                decide(reqs[k], [addrs[k]])
            i = chunk.stop
            done += len(chunk)
            if i >= len(addrs):
                break
        elif a.profile_phase == "cached":
            for req, ip in zip(reqs[recent], addrs[recent], strict=True):
                decide(req, [ip])
            done += recent.stop - recent.start
        elif a.profile_phase == "second_pass":
            for req, ip in zip(reqs[:a.addresses], addrs[:a.addresses], strict=True):
                decide(req, [ip])
            done += a.addresses
        elif a.profile_phase == "hot":
            for req, ip in zip(hot_r, hot_a, strict=True):
                decide(req, [ip])
            done += HOT
        else:
            for ip in addrs[:a.addresses]:
                for r in readers:
                    r.get(ip)
            done += a.addresses
    wall = time.perf_counter() - t0
    print(json.dumps({"phase": a.profile_phase, "decisions": done, "seconds": wall,
                      "us_per_decision": 1e6 * wall / done if done else None}), flush=True)


if __name__ == "__main__":
    main()
