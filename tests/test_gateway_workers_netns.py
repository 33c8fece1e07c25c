"""`geogate gateway run --workers 2`: the proxied ports served by two transparent workers on one
port, in namespaces this test makes (see gateway_netns.py): connections spread over both, each
keeps the client's address and original destination, a dead worker comes back, stopping the
gateway leaves no worker behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway_netns import BAD4
from gateway_netns import OK4
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import require_netns
from proxy_support import Origin
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gw{os.getpid() % 100000}"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_gateway_workers_share_the_proxied_ports(tmp_path):
    require_netns(TAG)
    topo = Topology(TAG)
    origins: list[Origin] = []
    gateway = None
    try:
        topo.build()
        with topo.inside("servers"):
            origins += [Origin(OK4, 80), Origin(BAD4, 80)]
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"),
                                 dbs=[write_db(tmp_path / "geo.mmdb")], log=tmp_path / "decisions.jsonl",
                                 args=["--workers", "2"])
        gateway.wait_ready()
        line = gateway.wait_for_output(r"2 workers share the port \(pids \d+, \d+\)")
        pids = [int(p) for p in re.findall(r"\d+", line.split("pids", 1)[1])]
        assert sum("Transparent Proxy listening" in x for x in gateway.lines) == 1, gateway.output

        def curl(*args: str) -> subprocess.CompletedProcess:
            return topo.sh("curl", "-sS", "--max-time", "8", *args, ns="client", check=False)

        for i in range(24):
            got = curl(f"http://{OK4}/{i}")
            assert got.stdout == f"hello from {OK4}:80 /{i}\n", got.stderr + gateway.output
        assert curl(f"http://{BAD4}/no", "-D", "-").stdout.startswith("HTTP/1.1 403")
        assert origins[1].connections == []
        deadline = time.monotonic() + 10
        while len(gateway.records()) < 25 and time.monotonic() < deadline:
            time.sleep(0.1)
        records = [r for r in gateway.records() if r.get("mode") == "transparent"]
        assert len(records) == 25, gateway.output
        assert {r["worker"] for r in records} == {0, 1}  # the kernel spread them over both
        assert all(r["client"].startswith("10.77.1.2:") for r in records)  # the client's own address
        assert {r["address"] for r in records} == {OK4, BAD4}  # and the destination it dialled

        mark = len(gateway.lines)
        os.kill(pids[1], signal.SIGKILL)
        gateway.wait_for_output(rf"worker 1 \(pid {pids[1]}\) was killed by SIGKILL; restarting it", start=mark)
        for i in range(5):  # the other serves meanwhile
            assert curl(f"http://{OK4}/meanwhile{i}").stdout == f"hello from {OK4}:80 /meanwhile{i}\n"
        back = gateway.wait_for_output(r"worker 1 is back \(pid \d+\)", start=mark)
        pids[1] = int(re.search(r"pid (\d+)", back).group(1))
        assert all(alive(p) for p in pids)
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            for o in origins:
                o.close()
            topo.tear_down()
    if gateway is not None:
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in pids), "a proxy worker outlived the gateway"
