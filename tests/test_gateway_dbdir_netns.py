"""`geogate gateway run --db DIRECTORY` for real, in network namespaces this test makes (see
gateway_netns.py): a database added to the directory while the gateway runs reaches the
kernel's sets, as it reaches the proxy (tests/test_freshness.py has the same at unit level)."""

from __future__ import annotations

import os
import time

import pytest

from gateway_netns import BAD4
from gateway_netns import OK4
from gateway_netns import GatewayProcess
from gateway_netns import built
from proxy_support import NETWORKS
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gy{os.getpid() % 100000}"
OK_NET = "10.77.2.0/28"  # OK4's network: DE in the test database


def refused_to(gateway: GatewayProcess, address: str, port: int) -> bool:
    return any(r.get("mode") == "kernel" and r.get("address") == address and r.get("port") == port
               for r in gateway.records())


def wait_refused(gateway: GatewayProcess, address: str, port: int) -> None:
    deadline = time.monotonic() + 20
    while not refused_to(gateway, address, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert refused_to(gateway, address, port), gateway.output


def test_a_database_added_to_the_directory_reaches_the_kernel_sets(tmp_path):
    with built(TAG) as (topo, stack):
        directory = tmp_path / "GeoIP"
        directory.mkdir()
        # OK4's network in no database: unknown, and the test policy blocks the unknown
        write_db(directory / "a.mmdb", {k: v for k, v in NETWORKS.items() if k != OK_NET})
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"), dbs=[directory],
                                 log=tmp_path / "decisions.jsonl", args=["--tcp-ports", ""])
        stack.callback(gateway.stop)
        gateway.wait_ready(proxy=False)

        def connect(address: str, port: int) -> None:
            topo.sh("curl", "-sS", "--max-time", "3", f"http://{address}:{port}/", ns="client", check=False)

        connect(OK4, 81)
        wait_refused(gateway, OK4, 81)
        mark = len(gateway.lines)
        staged = write_db(tmp_path / "b.mmdb", {OK_NET: "DE"})
        staged.replace(directory / "b.mmdb")  # as geoipupdate does: a complete file renamed in
        gateway.wait_for_output(r"kernel sets rebuilt", start=mark)
        connect(OK4, 82)
        connect(BAD4, 83)  # still refused: its receipt says the reader has caught up
        wait_refused(gateway, BAD4, 83)
        assert not refused_to(gateway, OK4, 82), gateway.output
