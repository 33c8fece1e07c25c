"""Find damaged MMDB files that crash maxminddb's C extension (not a Python exception: a signal).

Mutates tests/data/maxmind/*.mmdb with a seeded RNG (bit flips and byte writes in the search
tree and the data section), and opens each mutant in a child process with the C extension
(MODE_MMAP_EXT): the child walks every record (iterating the reader, as `_detect` does for the
first ones) and looks up a few addresses. A child that dies by a signal is a crash; its recipe
(source file, [(offset, byte), ...]) is printed as a line of JSON, ready for
tests/mmdb_crashes.py.

    .venv/bin/python tools/find_mmdb_crashes.py [--seed N] [--tries N] [--want N]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MAXMIND = Path(__file__).resolve().parents[1] / "tests" / "data" / "maxmind"
MARKER = b"\xab\xcd\xefMaxMind.com"

CHILD = r"""
import sys, maxminddb
r = maxminddb.open_database(sys.argv[1], maxminddb.MODE_MMAP_EXT)
try:
    for _ in r: pass
except Exception: pass
for ip in ("1.1.1.1", "2.125.160.216", "81.2.69.160", "::1.128.0.0", "2001:218::", "8.8.8.8", "216.160.83.56", "89.160.20.128"):
    try: r.get_with_prefix_len(ip)
    except Exception: pass
"""


def layout(data: bytes) -> tuple[int, int]:
    """(end of the search tree, start of the metadata marker)."""
    import maxminddb

    meta_at = data.rindex(MARKER)
    with tempfile.NamedTemporaryFile(suffix=".mmdb") as f:
        f.write(data)
        f.flush()
        with maxminddb.open_database(f.name, maxminddb.MODE_MMAP) as r:
            m = r.metadata()
    return m.node_count * m.record_size * 2 // 8, meta_at


def mutate(rng: random.Random, data: bytes, tree_end: int, meta_at: int) -> list[tuple[int, int]]:
    patches = []
    for _ in range(rng.randint(1, 4)):
        lo, hi = rng.choice(((0, tree_end), (tree_end + 16, meta_at)))
        at = rng.randrange(lo, hi)
        byte = data[at] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
        patches.append((at, byte))
    return patches


def apply(data: bytes, patches: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, byte in patches:
        out[at] = byte
    return bytes(out)


def run(path: Path) -> int:
    try:
        return subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, timeout=20).returncode
    except subprocess.TimeoutExpired:
        return 999


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tries", type=int, default=400)
    ap.add_argument("--want", type=int, default=6)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    files = sorted(MAXMIND.glob("*.mmdb"))
    sources = {p.name: (p.read_bytes(), *layout(p.read_bytes())) for p in files}
    found = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.tries):
            name = rng.choice(sorted(sources))
            data, tree_end, meta_at = sources[name]
            patches = mutate(rng, data, tree_end, meta_at)
            path = Path(tmp) / name
            path.write_bytes(apply(data, patches))
            rc = run(path)
            if rc < 0 or rc == 999:
                sig = "timeout" if rc == 999 else signal.Signals(-rc).name
                print(json.dumps({"source": name, "patches": patches, "signal": sig, "try": i}), flush=True)
                found += 1
                if found >= args.want:
                    break
    print(f"# {found} crashes in {i + 1} tries (seed {args.seed})", file=sys.stderr)


if __name__ == "__main__":
    main()
