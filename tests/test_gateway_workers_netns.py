"""`geogate gateway run --workers 2`: the proxied ports served by two transparent workers on one
port, in namespaces this test makes (see gateway_netns.py): connections spread over both, each
keeps the client's address and original destination, a dead worker comes back, stopping the
gateway leaves no worker behind."""

from __future__ import annotations

import hashlib
import json
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
from gateway_netns import built
from proxy_support import Origin
from proxy_support import close_all
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
    with built(TAG) as (topo, stack):
        origins: list[Origin] = []
        stack.callback(close_all, origins)
        with topo.inside("servers"):
            origins += [Origin(OK4, 80), Origin(BAD4, 80)]
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"),
                                 dbs=[write_db(tmp_path / "geo.mmdb")], log=tmp_path / "decisions.jsonl",
                                 args=["--workers", "2"])
        stack.callback(gateway.stop)
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
        os.kill(gateway.proc.pid, signal.SIGHUP)  # passed on to the proxy's supervisor, then to each worker
        deadline = time.monotonic() + 20
        while sum("SIGHUP, reopening the decision log" in x for x in gateway.lines[mark:]) < 2:
            assert time.monotonic() < deadline, gateway.output
            time.sleep(0.1)

        # one policy: an edit reaches both workers (and the kernel sets) without a restart
        policy = tmp_path / "policy.yaml"
        write_policy(policy, name="v2", before='  - name: no-de\n    action: block\n    countries: ["DE"]\n')
        new_sha = hashlib.sha256(policy.read_bytes()).hexdigest()
        changed, seen, flipped = time.monotonic(), len(gateway.records()), {}
        while len(flipped) < 2 and time.monotonic() < changed + 15:
            curl(f"http://{OK4}/flip")
            records = gateway.records()
            for r in records[seen:]:
                if r.get("mode") == "transparent" and r["action"] == "block" and r["worker"] not in flipped:
                    assert r["rule"] == "no-de" and r["policy"]["sha256"] == new_sha, r
                    flipped[r["worker"]] = time.monotonic() - changed
            seen = len(records)
        assert set(flipped) == {0, 1}, gateway.output
        print(f"gateway workers flipped after {flipped}")

        mark = len(gateway.lines)
        os.kill(pids[1], signal.SIGKILL)
        gateway.wait_for_output(rf"worker 1 \(pid {pids[1]}\) was killed by SIGKILL; restarting it", start=mark)
        for i in range(5):  # the other serves meanwhile (and blocks, under v2)
            assert curl(f"http://{OK4}/meanwhile{i}", "-D", "-").stdout.startswith("HTTP/1.1 403")
        back = gateway.wait_for_output(r"worker 1 is back \(pid \d+\)", start=mark)
        pids[1] = int(re.search(r"pid (\d+)", back).group(1))
        assert all(alive(p) for p in pids)

        # the workers' supervisor itself killed: the gateway starts it again, and it stays up
        supervisor = json.loads(gateway.state_file.read_text())["proxy"]["pid"]
        mark = len(gateway.lines)
        os.kill(supervisor, signal.SIGKILL)
        gateway.wait_for_output(r"ERROR: the proxy exited \(-9\)", start=mark)
        line = gateway.wait_for_output(r"2 workers share the port \(pids \d+, \d+\)", start=mark)
        old, pids = pids, [int(p) for p in re.findall(r"\d+", line.split("pids", 1)[1])]
        assert not any(alive(p) for p in old)  # the old workers ended with their supervisor
        time.sleep(3)  # a proxy restarted by a thread that then ended would be gone by now
        assert all(alive(p) for p in pids)
        assert curl(f"http://{OK4}/again", "-D", "-").stdout.startswith("HTTP/1.1 403")
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), "a proxy worker outlived the gateway"
