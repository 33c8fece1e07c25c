"""Generate mitmproxy flow files for the audit benchmark.

    python bench/flowgen.py OUT.mitm --flows 100000 --destinations 25000 [--prefix SMALL.mitm --prefix-flows 10000]

Each flow is an HTTPS flow made with mitmproxy.test.tflow (request + 200 response) whose server
connection has a host name as `address` and a public IPv4 or IPv6 address as `peername` (port
443), the way a recorded proxy session looks. Destinations are drawn from `--destinations` distinct
addresses (70% IPv4, 30% IPv6, from allocated ranges, see addrgen.py) in random order, so the file
has repeats like real traffic. With --prefix, the first --prefix-flows flows are also written to a
second file (same bytes as the start of OUT).

Speed: one tflow's state is taken once (Flow.get_state(), as mitmproxy.io.FlowWriter.add does) and
its tnetstring fragments are reused; per flow only the changed fields (ids, addresses, host, time)
are serialised with mitmproxy.io.tnetstring. The first flow is written with FlowWriter itself, and
the output is checked by reading flows back with FlowReader and comparing them with the intended
states.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from addrgen import public_addresses  # noqa: E402


def _fast_dumps(value: Any, slow: Callable[[Any], bytes]) -> bytes:
    """tnetstring for the few value types the per-flow fields have; anything else goes to `slow`."""
    if isinstance(value, str):
        b = value.encode("utf-8", "surrogateescape")
        return b"%d:%s;" % (len(b), b)
    if isinstance(value, bytes):
        return b"%d:%s," % (len(value), value)
    if isinstance(value, bool) or value is None:
        return slow(value)
    if isinstance(value, int):
        b = str(value).encode()
        return b"%d:%s#" % (len(b), b)
    if isinstance(value, tuple):
        payload = b"".join(_fast_dumps(v, slow) for v in value)
        return b"%d:%s]" % (len(payload), payload)
    return slow(value)


class _Fragments:
    """tnetstring of a (nested) dict from pre-serialised key/value fragments."""

    def __init__(self, state: dict[str, Any], dumps: Callable[[Any], bytes]) -> None:
        self.dumps = lambda v: _fast_dumps(v, dumps)
        self.state = state
        self.top_frags = {k: dumps(k) + dumps(v) for k, v in state.items()}
        self.sub_frags = {
            name: {k: dumps(k) + dumps(v) for k, v in state[name].items()}
            for name in ("client_conn", "server_conn", "request")
        }
        self.keys = {name: dumps(name) for name in state}
        self.keys_of: dict[str, dict[str, bytes]] = {}

    @staticmethod
    def _dict(parts) -> bytes:
        payload = b"".join(parts)
        return b"%d:%s}" % (len(payload), payload)

    def sub(self, name: str, changes: dict[str, Any]) -> bytes:
        frags = self.sub_frags[name]
        d = self.dumps
        keys = self.keys_of.setdefault(name, {k: d(k) for k in frags})
        return self._dict(keys[k] + d(changes[k]) if k in changes else v for k, v in frags.items())

    def top(self, changes: dict[str, Any], serialised: dict[str, bytes]) -> bytes:
        d = self.dumps
        parts = []
        for k, v in self.top_frags.items():
            if k in serialised:
                parts.append(self.keys[k] + serialised[k])
            elif k in changes:
                parts.append(d(k) + d(changes[k]))
            else:
                parts.append(v)
        return self._dict(parts)


def generate(out: Path, flows: int, destinations: int, seed: int = 7,
             prefix_out: Path | None = None, prefix_flows: int = 10_000) -> dict:
    from mitmproxy import io as mio
    from mitmproxy.io import tnetstring
    from mitmproxy.test import tflow

    t0 = time.perf_counter()
    rng = random.Random(seed)
    addrs = public_addresses(destinations, seed=seed, v6_share=0.3)
    hosts = [f"h{i}.example{i % 97}.com" for i in range(len(addrs))]
    template = tflow.tflow(resp=True)
    template.request.scheme = "https"
    template.request.port = 443
    template.request.path = "/api/v1/items?page=1"
    template.server_conn.tls = True
    base = template.get_state()
    frag = _Fragments(base, tnetstring.dumps)
    expected: dict[int, tuple[str, str]] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    small = open(prefix_out, "wb") if prefix_out is not None else None
    try:
        with open(out, "wb") as fo:
            for n in range(flows):
                i = rng.randrange(len(addrs))
                ip, host = str(addrs[i]), hosts[i]
                if n < 3 or n == flows - 1:
                    expected[n] = (host, ip)
                if n == 0:
                    f = tflow.tflow(resp=True)
                    f.request.host, f.request.port, f.request.scheme = host, 443, "https"
                    f.request.path = template.request.path
                    f.server_conn.address = (host, 443)
                    f.server_conn.peername = (ip, 443)
                    f.server_conn.sni = host
                    f.server_conn.tls = True
                    data = tnetstring.dumps(f.get_state())  # what FlowWriter.add writes
                else:
                    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3)]
                    cc = frag.sub("client_conn", {
                        "id": ids[1],
                        "peername": ("10.1.%d.%d" % (n >> 8 & 255, n & 255), 40000 + n % 20000),
                    })
                    sc = frag.sub("server_conn", {"id": ids[2], "address": (host, 443),
                                                  "peername": (ip, 443), "sni": host})
                    req = frag.sub("request", {
                        "host": host,
                        "headers": tuple((k, host.encode()) if k.lower() == b"host" else (k, v)
                                         for k, v in base["request"]["headers"]),
                    })
                    data = frag.top({"id": ids[0], "timestamp_created": base["timestamp_created"] + n * 0.01},
                                    {"client_conn": cc, "server_conn": sc, "request": req})
                fo.write(data)
                if small is not None and n < prefix_flows:
                    small.write(data)
    finally:
        if small is not None:
            small.close()
    # check: flows read back with mitmproxy's reader carry the intended destinations
    with open(out, "rb") as fo:
        for n, f in enumerate(mio.FlowReader(fo).stream()):
            if n in expected:
                host, ip = expected[n]
                assert f.server_conn.address == (host, 443) and f.server_conn.peername == (ip, 443), (n, f)
                assert f.request.host == host and f.response.status_code == 200, n
            if n >= 3:
                break
    return {
        "flows": flows,
        "distinct_destinations": len(addrs),
        "v6_share": round(sum(1 for a in addrs if a.version == 6) / len(addrs), 3),
        "bytes": out.stat().st_size,
        "prefix_flows": prefix_flows if prefix_out is not None else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def count_flows(path: Path) -> int:
    from mitmproxy import io as mio

    with open(path, "rb") as fo:
        return sum(1 for _ in mio.FlowReader(fo).stream())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--destinations", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--prefix", type=Path)
    p.add_argument("--prefix-flows", type=int, default=10_000)
    p.add_argument("--count", action="store_true", help="read the file back and count its flows")
    a = p.parse_args()
    info = generate(a.out, a.flows, a.destinations, a.seed, a.prefix, a.prefix_flows)
    if a.count:
        info["read_back"] = count_flows(a.out)
    print(info)


if __name__ == "__main__":
    main()
