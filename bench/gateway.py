"""Gateway benchmarks: the kernel sets for the bundled databases, and a gateway in namespaces.

    .venv/bin/python bench/gateway.py [--rounds 3] [--seconds 5]     (root: namespaces, nft)
    .venv/bin/python bench/gateway.py --only restore --rounds 5        (the restore figures alone)

Alone it writes bench/results/gateway.json and gateway.md; `bench/run.py --only gateway` adds the
same figures to the suite's report.

- sets: time to walk the bundled databases, to build the sets (GateState.decide per signature)
  and to load them (`nft -f`, in a namespace of its own), the element counts, and the kernel
  memory they take (the rise of the Slab line of /proc/meminfo; other processes move it too, so
  it is indicative), for policies/us-doj-countries-of-concern.yaml and policies/eu-gdpr-adequacy.yaml;
- throughput: iperf3 (TCP 5201, not proxied) from a client namespace through a gateway namespace
  to a server namespace, with `geogate gateway run` (bundled databases, the DOJ policy) and with
  the same namespaces forwarding without any rules, three pairs per round, interleaved, iperf3's
  ends pinned to the first and second CPU;
- reload: from a policy write (one country added to a block rule) to the new sets in the kernel
  (the gateway names the new policy hash once nft has committed), through the running gateway;
- restore: `nft flush ruleset` in the gateway namespace while a client keeps one UDP flow going
  and opens a new one every 50 ms: when the established flow and new flows get through again,
  and what the gateway reports (holding table, full sets), for the DOJ policy and then the EU
  adequacy allow-list (the policy file is switched and the sets rebuilt in between).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import BENCH  # noqa: E402
from lib import PY  # noqa: E402
from lib import ROOT  # noqa: E402
from lib import Figure  # noqa: E402
from lib import dump_json  # noqa: E402
from lib import log  # noqa: E402
from lib import machine_info  # noqa: E402
from lib import rnd  # noqa: E402

POLICIES = {"doj": ROOT / "policies" / "us-doj-countries-of-concern.yaml",
            "eu-adequacy": ROOT / "policies" / "eu-gdpr-adequacy.yaml"}
GEOGATE = Path(PY).with_name("geogate")
TAG = f"gb{os.getpid() % 100000}"


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()[:500]}")
    return r


def slab_kb() -> int:
    m = re.search(r"^Slab:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) if m else 0


# -- sets ----------------------------------------------------------------------------------------

def sets_figures(rounds: int) -> tuple[list[Figure], dict]:
    from geogate.gateway import ruleset
    from geogate.gateway import sets
    from geogate.policy.state import GateState

    figures: list[Figure] = []
    notes: dict = {}
    ns = f"{TAG}m"
    sh("ip", "netns", "add", ns)
    try:
        walk = []
        pieces = None
        for _ in range(rounds):
            state = GateState.load(POLICIES["doj"], None)
            t = time.perf_counter()
            pieces = sets.DatabasePieces(state)
            walk.append(time.perf_counter() - t)
        dbs = [i.name for i in state.databases.infos]
        figures.append(Figure("gateway.sets.walk", "Walk of the bundled databases (every network, once per database load)",
                              rnd(statistics.median(walk), 2), "s",
                              f"sets.DatabasePieces: maxminddb Reader iteration of {', '.join(dbs)}, networks merged per "
                              f"record; {rounds} rounds, median", None, None, rounds, [rnd(x, 2) for x in walk]))
        for name, path in POLICIES.items():
            state = GateState.load(path, None)
            pieces.databases = state.databases
            build, load, memory = [], [], []
            ks = text = None
            for _ in range(rounds):
                ks = sets.build(state, pieces)
                build.append(ks.seconds)
                text = ruleset.render(ks, ruleset.GatewayConfig(lan=("lo",)))
                before = slab_kb()
                t = time.perf_counter()
                sh("nft", "-f", "-", ns=ns, input=text)
                load.append(time.perf_counter() - t)
                memory.append(slab_kb() - before)
                sh("nft", "delete", "table", "inet", "geogate", ns=ns)
                time.sleep(1)  # freed set memory goes back to the slab caches asynchronously
            counts = ks.element_counts()
            loaded = sum(len(body.split(",")) for body in re.findall(r"elements = \{(.*?)\}", text, re.S))
            common = f"bundled databases, {path.relative_to(ROOT)}, {rounds} rounds, median"
            figures += [
                Figure(f"gateway.sets.{name}.build", f"Set build, {name} (decisions, merging)",
                       rnd(statistics.median(build), 2), "s",
                       f"sets.build after the database walk: {ks.decisions} GateState.decide calls (one per signature and "
                       f"port class/profile), {ks.pieces[4]:,} IPv4 and {ks.pieces[6]:,} IPv6 pieces; {common}",
                       None, None, rounds, [rnd(x, 2) for x in build]),
                Figure(f"gateway.sets.{name}.load", f"nft -f of the ruleset, {name}", rnd(statistics.median(load), 2), "s",
                       f"one transaction creating table inet geogate with its sets, in an empty namespace; {common}",
                       None, None, rounds, [rnd(x, 2) for x in load]),
                Figure(f"gateway.sets.{name}.elements", f"Blocked intervals, {name}", counts["ipv4"] + counts["ipv6"],
                       "intervals",
                       f"{counts['ipv4']:,} IPv4 + {counts['ipv6']:,} IPv6 blocked intervals (the smaller of the blocked and "
                       f"the allowed side is loaded: {loaded:,} elements); {common}", None, None, 1,
                       [counts], {"ipv4": counts["ipv4"], "ipv6": counts["ipv6"], "loaded_elements": loaded}),
                Figure(f"gateway.sets.{name}.kernel_memory", f"Kernel memory of the sets, {name}",
                       rnd(statistics.median(memory) / 1024, 3), "MiB",
                       f"rise of Slab in /proc/meminfo across the nft -f (other processes move it too: indicative); {common}",
                       None, None, rounds, memory),
            ]
            notes[name] = {"notes": ks.notes, "decisions": ks.decisions}
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return figures, notes


# -- namespaces ----------------------------------------------------------------------------------

class Namespaces:
    """client -> gateway -> server, 10.<net>.1.0/24 and 10.<net>.2.0/24; an iperf3 server runs in the server."""

    def __init__(self, tag: str, net: int) -> None:
        self.tag, self.net = tag, net
        self.ns = {k: f"{tag}{k[0]}" for k in ("client", "gw", "server")}
        self.lan = f"{tag}b"
        self.server_ip = f"10.{net}.2.10"
        self.iperf: subprocess.Popen | None = None

    def __enter__(self) -> "Namespaces":
        n, t, net = self.ns, self.tag, self.net
        for name in n.values():
            sh("ip", "netns", "add", name)
        try:
            sh("ip", "link", "add", f"{t}a", "netns", n["client"], "type", "veth", "peer", "name", self.lan, "netns", n["gw"])
            sh("ip", "link", "add", f"{t}d", "netns", n["gw"], "type", "veth", "peer", "name", f"{t}e", "netns", n["server"])
            for ns, dev, addr in ((n["client"], f"{t}a", f"10.{net}.1.2/24"), (n["gw"], self.lan, f"10.{net}.1.1/24"),
                                  (n["gw"], f"{t}d", f"10.{net}.2.1/24"), (n["server"], f"{t}e", f"{self.server_ip}/24")):
                sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
                sh("ip", "link", "set", dev, "up", ns=ns)
                sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "route", "add", "default", "via", f"10.{net}.1.1", ns=n["client"])
            sh("ip", "route", "add", "default", "via", f"10.{net}.2.1", ns=n["server"])
            self.iperf = subprocess.Popen(["ip", "netns", "exec", n["server"], "iperf3", "-s", "-B", self.server_ip],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.iperf is not None:
            self.iperf.terminate()
            self.iperf.wait(5)
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# iperf3's client on the first CPU and its server on the second: left to the scheduler, the two
# ends and the forwarding softirqs land differently from one run to the next, and single rounds
# moved by 0.78-1.11x between identical setups
AFFINITY = ["-A", "0,1"] if (os.cpu_count() or 1) >= 2 else []
THROUGHPUT_ROUNDS = 3  # iperf3 pairs per gateway round: one pair is too noisy to say 0.95x from 0.9x


def iperf(nsx: Namespaces, seconds: int) -> float:
    for _attempt in range(3):
        r = sh("iperf3", "-c", nsx.server_ip, "-t", str(seconds), "-J", *AFFINITY, ns=nsx.ns["client"],
               timeout=seconds + 30, check=False)
        if r.returncode == 0:
            return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        time.sleep(0.5)  # the server was not listening yet
    raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")


class Lines:
    """A child's output, read all along (a full pipe would stop it)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.proc, self.lines = proc, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter(), line.rstrip("\n")))

    def wait(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in self.lines:
                if text in line:
                    return t
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"no {text!r} from the gateway:\n" + "\n".join(line for _t, line in self.lines[-30:]))


def network_figures(rounds: int, seconds: int, tmp: Path, only_restore: bool = False) -> tuple[list[Figure], dict]:
    if shutil.which("iperf3") is None:
        return [Figure("gateway.throughput.ratio", "Forwarding throughput with the kernel sets vs without", None, "x",
                       "iperf3 is not installed (apt-get install iperf3)", ">= 0.95", None, status="skipped")], {}
    figures: list[Figure] = []
    policy = tmp / "policy.yaml"
    policy.write_text(POLICIES["doj"].read_text())
    env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(tmp / "state.json"))
    with Namespaces(f"{TAG}p", 78) as plain, Namespaces(f"{TAG}g", 79) as guarded:
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=plain.ns["gw"])
        started = time.perf_counter()
        proc = subprocess.Popen(["ip", "netns", "exec", guarded.ns["gw"], str(GEOGATE), "gateway", "run", "--lan",
                                 guarded.lan, "--policy", str(policy), "--tcp-ports", ""],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out = Lines(proc)
        try:
            startup = out.wait("forwarding on", 900) - started
            if only_restore:
                return restore_figures(guarded, tmp / "state.json", policy, rounds), {}
            with_sets, without = [], []
            pairs, iperf_seconds = rounds * THROUGHPUT_ROUNDS, min(seconds, 3)
            for i in range(pairs):
                # interleaved, the order alternating: both see the same machine
                for which in ((plain, guarded) if i % 2 == 0 else (guarded, plain)):
                    (without if which is plain else with_sets).append(iperf(which, iperf_seconds))
            ratios = [a / b for a, b in zip(with_sets, without, strict=True)]
            ratio = statistics.median(ratios)
            figures += [
                Figure("gateway.throughput.ratio", "Forwarding throughput with the kernel sets vs without (iperf3, TCP)",
                       rnd(ratio, 3), "x",
                       f"iperf3 -t {iperf_seconds} {' '.join(AFFINITY)}, one TCP stream to port 5201 (not proxied), "
                       f"client -> gateway -> server namespaces over veth; with `geogate gateway run` (bundled "
                       f"databases, DOJ policy: a flow's first packet through the interval sets, every packet through "
                       f"conntrack and the mark) vs identical namespaces forwarding with no rules (and so without "
                       f"conntrack); {pairs} pairs interleaved, median of the per-pair ratios", ">= 0.95",
                       ratio >= 0.95, pairs,
                       [{"with_gbps": rnd(a, 3), "without_gbps": rnd(b, 3)} for a, b in zip(with_sets, without, strict=True)]),
                Figure("gateway.throughput.with_sets", "Throughput through the gateway with the kernel sets",
                       rnd(statistics.median(with_sets), 3), "Gbit/s", "see gateway.throughput.ratio", None, None,
                       pairs, [rnd(x, 3) for x in with_sets]),
                Figure("gateway.startup", "geogate gateway run, start to forwarding on (bundled databases, DOJ)",
                       rnd(startup, 1), "s", "database walk, set build, nft -f, latch, forwarding on", None, None, 1,
                       [rnd(startup, 1)]),
                reload_figure(tmp / "state.json", policy, rounds),
            ]
            figures += restore_figures(guarded, tmp / "state.json", policy, rounds)
        finally:
            sh(str(GEOGATE), "gateway", "down", ns=guarded.ns["gw"], env=env, check=False)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return figures, {}


def kernel_sha(state_file: Path) -> str | None:
    """The policy the kernel's sets were built from, as the gateway writes it right after the nft
    transaction committed (reading it back with `nft list chain` takes a second with these sets)."""
    try:
        return json.loads(state_file.read_text())["kernel"]["policy_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reload_figure(state_file: Path, policy: Path, rounds: int) -> Figure:
    import hashlib

    base = POLICIES["doj"].read_text()
    delays = []
    for i in range(rounds):
        text = base.replace("countries: [", f"countries: [{['FR', 'DE', 'IT', 'ES', 'NL'][i % 5]}, ", 1) if i % 2 == 0 else base
        tmp = policy.with_name("policy.yaml.tmp")
        tmp.write_text(text)
        want = hashlib.sha256(text.encode()).hexdigest()
        written = time.perf_counter()
        tmp.replace(policy)
        while kernel_sha(state_file) != want:
            if time.perf_counter() - written > 300:
                raise RuntimeError("the new sets did not arrive within 300 s")
            time.sleep(0.05)
        delays.append(time.perf_counter() - written)
    return Figure("gateway.reload", "Policy write to new kernel sets live (bundled databases)", rnd(statistics.median(delays), 2),
                  "s", f"atomic write of the policy (a country added to or removed from the DOJ block rule) until the "
                  f"gateway's state names the new sha256 (written once nft has committed): file poll, settle, load, "
                  f"set build (the database walk is reused), nft -f; {rounds} rounds, median", None, None, rounds,
                  [rnd(x, 2) for x in delays])


@contextmanager
def inside(ns: str):
    """This thread in namespace `ns`: sockets made in the body stay there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        os.setns(there, os.CLONE_NEWNET)
        yield
    finally:
        os.setns(here, os.CLONE_NEWNET)
        os.close(here)
        os.close(there)


UDP_ECHO = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],5300))\n"
            "while True:\n d,a=s.recvfrom(64)\n s.sendto(d,a)\n")


_PROBE_PORTS = iter(range(20000, 60000))  # each probe a source port of its own: truly a new flow


def one_restore(nsx: Namespaces, state_file: Path) -> dict:
    """Flush the ruleset once; when the established flow (sent every 20 ms) and a new flow (a new
    socket every 50 ms) got through again, from the flush, and the gateway's own figures."""
    with inside(nsx.ns["client"]):
        flow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flow.connect((nsx.server_ip, 5300))
    flow.settimeout(0.2)
    stop = threading.Event()
    echoed: list[float] = []
    new_ok: list[float] = []

    def established() -> None:
        while not stop.is_set():
            flow.send(struct.pack("!d", time.monotonic()))
            try:
                while True:
                    data = flow.recv(64)
                    echoed.append(struct.unpack("!d", data)[0])
            except OSError:
                pass  # the 20 ms are up (or an ICMP error from the gateway)

    def newcomers() -> None:
        while not stop.is_set():
            with inside(nsx.ns["client"]):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.05)
            sent = time.monotonic()
            try:
                # an ephemeral port may be one a recent probe used: its conntrack entry, allowed
                # before the flush, would pass as established
                s.bind(("0.0.0.0", next(_PROBE_PORTS)))
                s.connect((nsx.server_ip, 5300))
                s.send(b"new")
                if s.recv(64) == b"new":
                    new_ok.append(sent)
            except OSError:
                pass
            finally:
                s.close()
            stop.wait(0.05)

    flow.settimeout(0.02)
    threads = [threading.Thread(target=t, daemon=True) for t in (established, newcomers)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        if not echoed or not new_ok:
            raise RuntimeError("no traffic through the gateway before the flush")
        restores = json.loads(state_file.read_text()).get("restores", 0)
        sh("nft", "flush", "ruleset", ns=nsx.ns["gw"])
        flushed = time.monotonic()  # after nft returned: what was sent before went through the old table
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = json.loads(state_file.read_text())
            if state.get("restores", 0) > restores and any(t >= flushed for t in new_ok):
                break
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        flow.close()
    after = [t for t in echoed if t >= flushed]
    fresh = [t for t in new_ok if t >= flushed]
    if not after or not fresh:
        raise RuntimeError("traffic did not come back after the flush")
    last = state["last_restore"]
    return {"established_s": min(after) - flushed, "new_flows_s": min(fresh) - flushed,
            "holding_ms": last["holding_ms"], "full_ms": last["full_ms"]}


def restore_figures(nsx: Namespaces, state_file: Path, policy: Path, rounds: int) -> list[Figure]:
    import hashlib

    echo = subprocess.Popen(["ip", "netns", "exec", nsx.ns["server"], PY, "-c", UDP_ECHO, nsx.server_ip])
    figures: list[Figure] = []
    try:
        for name, path in POLICIES.items():
            text = path.read_text()
            want = hashlib.sha256(text.encode()).hexdigest()
            if kernel_sha(state_file) != want:
                tmp = policy.with_name("policy.yaml.tmp")
                tmp.write_text(text)
                tmp.replace(policy)
                deadline = time.monotonic() + 300
                while kernel_sha(state_file) != want and time.monotonic() < deadline:
                    time.sleep(0.1)
            time.sleep(2)  # the swap's own restore of the flows settles
            runs = [one_restore(nsx, state_file) for _ in range(rounds)]
            common = (f"bundled databases, {path.relative_to(ROOT)}; `nft flush ruleset` in the gateway namespace, "
                      f"the watchdog looks for the table every 0.05 s; {rounds} rounds, median")
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            figures += [
                Figure(f"gateway.restore.{name}.established", f"Flush to an established allowed flow passing again, {name}",
                       rnd(med["established_s"], 2), "s",
                       f"a UDP flow sending every 20 ms: first datagram sent after the flush that was echoed (the holding "
                       f"table lets flows the sets allowed go on); {common}", "< 2 s", med["established_s"] < 2, rounds,
                       [rnd(r["established_s"], 3) for r in runs]),
                Figure(f"gateway.restore.{name}.new_flows", f"Flush to new allowed flows passing again, {name}",
                       rnd(med["new_flows_s"], 2), "s",
                       f"a new UDP socket every 50 ms: first one sent after the flush that was echoed (needs the full "
                       f"sets back: the holding table, then each set by an nft process of its own in parallel, "
                       f"then the chains in one transaction); {common}", "< 2 s", med["new_flows_s"] < 2, rounds,
                       [rnd(r["new_flows_s"], 3) for r in runs]),
                Figure(f"gateway.restore.{name}.holding", f"Holding table in place, {name} (gateway's figure)",
                       rnd(med["holding_ms"], 3), "ms",
                       f"from the watchdog noticing the flush to the holding table committed; {common}", None, None,
                       rounds, [r["holding_ms"] for r in runs]),
                Figure(f"gateway.restore.{name}.full", f"Full sets back, {name} (gateway's figure)",
                       rnd(med["full_ms"], 4), "ms",
                       f"from the watchdog noticing the flush to the full ruleset committed (new flows are refused "
                       f"until then); {common}", None, None, rounds,
                       [r["full_ms"] for r in runs]),
            ]
    finally:
        echo.terminate()
        echo.wait(5)
    return figures


def gateway_section(tmp: Path, rounds: int, seconds: int = 5) -> tuple[list[Figure], dict]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return [Figure("gateway.sets.walk", "gateway benchmarks", None, "s", "need root and nft", status="skipped")], {}
    figures, notes = sets_figures(rounds)
    more, _ = network_figures(rounds, seconds, tmp)
    return figures + more, notes


def kept_figures(path: Path, fresh: list[Figure]) -> list[Figure]:
    """The figures of an earlier run, those measured again replaced in place."""
    by_id = {f.id: f for f in fresh}
    try:
        earlier = json.loads(path.read_text())["figures"]
    except (OSError, ValueError, KeyError):
        return fresh
    out = []
    for d in earlier:
        if d["id"] in by_id:
            out.append(by_id.pop(d["id"]))
        else:
            out.append(Figure(d["id"], d["name"], d["value"], d["unit"], d["method"], d.get("target"), d.get("pass"),
                              d.get("rounds", 0), d.get("raw", []), d.get("extra", {}), status=d.get("status", "measured")))
    return out + list(by_id.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--only", choices=["restore"],
                   help="restore: only the flush-and-restore figures, the others kept from the results file")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="geogate-gwbench-") as tmp:
        if a.only == "restore":
            if os.geteuid() != 0 or shutil.which("nft") is None:
                raise SystemExit("the restore figures need root and nft")
            figures, notes = network_figures(a.rounds, a.seconds, Path(tmp), only_restore=True)
            figures = kept_figures(a.out / "gateway.json", figures)
        else:
            figures, notes = gateway_section(Path(tmp), a.rounds, a.seconds)
    doc = {"machine": machine_info(), "settings": {"rounds": a.rounds, "seconds": a.seconds},
           "figures": [f.to_json() for f in figures], "notes": notes}
    a.out.mkdir(parents=True, exist_ok=True)
    dump_json(a.out / "gateway.json", doc)
    lines = ["# Gateway benchmarks", "", f"{doc['machine'].get('nproc')} CPUs, {doc['machine'].get('cpu_model')}; "
             f"{a.rounds} rounds", "", "| figure | value | target | method |", "|---|---|---|---|"]
    for f in figures:
        value = "skipped" if f.value is None else f"{f.value:,} {f.unit}"
        lines.append(f"| {f.name} | {value} | {f.target or ''} | {f.method} |")
    (a.out / "gateway.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
