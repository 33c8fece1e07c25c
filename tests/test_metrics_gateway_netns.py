"""`geogate gateway run --metrics` for real, in network namespaces this test makes (see
gateway_netns.py): the kernel's refusals reach the endpoint as receipts and as decisions with
mode "kernel", equal to the receipts in the decision log."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_netns import BAD4
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import require_netns
from proxy_support import write_db
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

TAG = f"gm{os.getpid() % 100000}"
PORT = 9464  # inside the gateway's own namespace: nothing else listens there


def scrape(topo: Topology) -> dict[str, list]:
    text = topo.sh("curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{PORT}/metrics", ns="gw").stdout
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list], sample_name: str, **labels: str) -> float:
    family = families.get(sample_name.removesuffix("_total"), [])
    return sum(s.value for s in family if s.name == sample_name and labels.items() <= s.labels.items())


def test_kernel_refusals_reach_the_metrics(tmp_path):
    require_netns(TAG)
    topo = Topology(TAG)
    gateway = None
    try:
        topo.build()
        log = tmp_path / "decisions.jsonl"
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"),
                                 dbs=[write_db(tmp_path / "geo.mmdb")], log=log,
                                 args=["--tcp-ports", "", "--metrics", str(PORT)])
        gateway.wait_ready(proxy=False)
        families = scrape(topo)
        assert value(families, "geogate_gateway_receipts_written_total") == 0
        assert value(families, "geogate_policy_info", name="test") == 1
        # TCP to a KP address on a port no proxy takes: refused by the kernel's sets
        for port in (81, 82, 83):
            r = topo.sh("curl", "-sS", "--max-time", "3", f"http://{BAD4}:{port}/", ns="client", check=False)
            assert r.returncode != 0

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            receipts = [r for r in gateway.records() if r.get("mode") == "kernel"]
            families = scrape(topo)
            if len(receipts) >= 3 and value(families, "geogate_gateway_receipts_written_total") == len(receipts):
                break
            time.sleep(0.3)
        assert len(receipts) >= 3, gateway.output
        assert value(families, "geogate_gateway_receipts_written_total") == len(receipts)
        assert value(families, "geogate_decisions_total", mode="kernel", action="block", rule="doj",
                     country="KP") == len(receipts)
        assert value(families, "geogate_gateway_restores_total") == 0
    finally:
        try:
            if gateway is not None:
                gateway.stop()
        finally:
            topo.tear_down()
