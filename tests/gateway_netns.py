"""Three network namespaces for the gateway tests, made and removed by the tests themselves.

    client ns                     gateway ns (geogate gateway run)          servers ns
    10.77.1.2, fd77:1::2  <-veth->  10.77.1.1 | 10.77.2.1           <-veth->  10.77.2.10 / fd77:2::10 (DE)
                                   fd77:1::1 | fd77:2::1                     10.77.2.20 / fd77:2::20 (KP)

Traffic goes from the client to the servers by address, as through any router; the gateway's
rules (geogate gateway run) judge it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from pathlib import Path

import pytest

import system_deps
from proxy_support import DEAD_RESOLVER
from proxy_support import ReadsOutput

GEOGATE = Path(sys.executable).with_name("geogate")
OK4, BAD4, OK6, BAD6 = "10.77.2.10", "10.77.2.20", "fd77:2::10", "fd77:2::20"


class Namespaces:
    """Named network namespaces: `ns` maps a role ("client", "gw", ...) to a namespace's name; a
    name that is no role is taken as a namespace's own name."""

    ns: dict[str, str]

    def sh(self, *cmd: str, ns: str | None = None, check: bool = True, env: dict | None = None,
           timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        full = ["ip", "netns", "exec", self.ns.get(ns, ns), *cmd] if ns else list(cmd)
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    @contextmanager
    def inside(self, ns: str):
        """Run the body in namespace `ns` (this thread only): sockets made there stay there."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.ns.get(ns, ns)}", os.O_RDONLY)
        try:
            os.setns(there, os.CLONE_NEWNET)
            yield
        finally:
            os.setns(here, os.CLONE_NEWNET)
            os.close(here)
            os.close(there)

    def tear_down(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # the veths go with them


class Topology(Namespaces):
    def __init__(self, tag: str) -> None:
        self.ns = {"client": f"{tag}c", "gw": f"{tag}g", "servers": f"{tag}s"}
        self.ifs = {"client": f"{tag}a", "gw_lan": f"{tag}b", "gw_wan": f"{tag}d", "servers": f"{tag}e"}

    def build(self) -> None:
        for ns in self.ns.values():
            self.sh("ip", "netns", "add", ns)
        ifs = self.ifs
        self.sh("ip", "link", "add", ifs["client"], "type", "veth", "peer", "name", ifs["gw_lan"])
        self.sh("ip", "link", "add", ifs["gw_wan"], "type", "veth", "peer", "name", ifs["servers"])
        for ifname, ns in ((ifs["client"], "client"), (ifs["gw_lan"], "gw"), (ifs["gw_wan"], "gw"),
                           (ifs["servers"], "servers")):
            self.sh("ip", "link", "set", ifname, "netns", self.ns[ns])
        addrs = {("client", ifs["client"]): ["10.77.1.2/24", "fd77:1::2/64"],
                 ("gw", ifs["gw_lan"]): ["10.77.1.1/24", "fd77:1::1/64"],
                 ("gw", ifs["gw_wan"]): ["10.77.2.1/24", "fd77:2::1/64"],
                 ("servers", ifs["servers"]): [f"{OK4}/24", f"{BAD4}/24", f"{OK6}/64", f"{BAD6}/64"]}
        for (ns, ifname), nets in addrs.items():
            for net in nets:
                self.sh("ip", "addr", "add", net, "dev", ifname, *(["nodad"] if ":" in net else []), ns=ns)
            self.sh("ip", "link", "set", ifname, "up", ns=ns)
        for ns in self.ns:
            self.sh("ip", "link", "set", "lo", "up", ns=ns)
        for ns, via4, via6 in (("client", "10.77.1.1", "fd77:1::1"), ("servers", "10.77.2.1", "fd77:2::1")):
            self.sh("ip", "route", "add", "default", "via", via4, ns=ns)
            self.sh("ip", "-6", "route", "add", "default", "via", via6, ns=ns)


def require_netns(tag: str) -> None:
    system_deps.skip_unless("ip", "nft", "curl")
    probe = subprocess.run(["ip", "netns", "add", f"{tag}probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (`ip netns add` said: {probe.stderr.strip()}); "
                    "this test needs root and CAP_SYS_ADMIN")
    subprocess.run(["ip", "netns", "del", f"{tag}probe"], capture_output=True)


@contextmanager
def built(tag: str) -> Iterator[tuple[Topology, ExitStack]]:
    """A built Topology (the test skips where namespaces cannot be made) and a stack for what the
    test starts in it (servers, gateways), unwound last first before the namespaces go."""
    require_netns(tag)
    topo = Topology(tag)
    with ExitStack() as stack:
        stack.callback(topo.tear_down)
        topo.build()
        yield topo, stack


def wait_until(check, timeout: float, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


class GatewayProcess(ReadsOutput):
    """`geogate gateway run` in the gateway namespace; stop() ends it and takes the rules down."""

    def __init__(self, topo: Topology, tmp: Path, *, policy: Path, dbs: list[Path], log: Path | None = None,
                 args: list[str] = (), hosts: Path | None = None) -> None:
        self.topo = topo
        self.log_path = log
        self.state_file = tmp / "gateway-state.json"
        resolv = tmp / "resolv.conf"
        resolv.write_text(f"nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n")
        if hosts is None:
            hosts = tmp / "hosts"
            hosts.write_text("")
        self.env = dict(os.environ, GEOGATE_GATEWAY_STATE=str(self.state_file), PYTHONUNBUFFERED="1",
                        GEOGATE_HOSTS_FILE=str(hosts), GEOGATE_RESOLV_CONF=str(resolv))
        cmd = ["ip", "netns", "exec", topo.ns["gw"], str(GEOGATE), "gateway", "run", "--lan", topo.ifs["gw_lan"],
               "--policy", str(policy), *(a for db in dbs for a in ("--db", str(db))),
               *(["--log", str(log)] if log else []), *args, "--", "--set", f"confdir={tmp / 'confdir'}"]
        self._read_output_of(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=self.env, start_new_session=True))

    def wait_for_output(self, pattern: str, timeout: float = 30, start: int = 0) -> str:
        return super().wait_for_output(pattern, timeout, start)

    def wait_ready(self, proxy: bool = True) -> None:
        self.wait_for_output(r"forwarding on")
        if proxy:
            self.wait_for_output(r"Transparent Proxy listening")

    def geogate(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.topo.sh(str(GEOGATE), *args, ns="gw", env=self.env, check=check)

    def status(self) -> dict:
        return json.loads(self.geogate("gateway", "status", "--json").stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            down = self.geogate("gateway", "down")
            if self.proc.poll() is None:
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            assert down.returncode == 0, down.stderr
        else:
            self.geogate("gateway", "down")
        self._reader.join(5)
