"""`geogate gateway run --metrics` for real, in network namespaces this test makes (see
gateway_netns.py): the kernel's refusals reach the endpoint as receipts and as decisions with
mode "kernel", equal to the receipts in the decision log; the transparent proxy's decisions (one
mitmdump, or N workers) reach the same endpoint, summed with the kernel side."""

from __future__ import annotations

import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_netns import BAD4
from gateway_netns import GatewayProcess
from gateway_netns import Topology
from gateway_netns import built
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
    with built(TAG) as (topo, stack):
        log = tmp_path / "decisions.jsonl"
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"),
                                 dbs=[write_db(tmp_path / "geo.mmdb")], log=log,
                                 args=["--tcp-ports", "", "--metrics", str(PORT)])
        stack.callback(gateway.stop)
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


@pytest.mark.parametrize("workers", [1, 2])
def test_the_proxys_decisions_reach_the_gateways_endpoint(tmp_path, workers):
    with built(f"{TAG}w{workers}") as (topo, stack):
        log = tmp_path / "decisions.jsonl"
        gateway = GatewayProcess(topo, tmp_path, policy=write_policy(tmp_path / "policy.yaml"),
                                 dbs=[write_db(tmp_path / "geo.mmdb")], log=log,
                                 args=["--tcp-ports", "80", "--workers", str(workers), "--metrics", str(PORT)])
        stack.callback(gateway.stop)
        gateway.wait_ready(proxy=False)
        gateway.wait_for_output(r"Transparent Proxy listening" if workers == 1
                                else rf"{workers} workers share the port")
        # HTTP to a KP address: the proxy (not the kernel) refuses it, and says so in a 403
        for _ in range(3):
            r = topo.sh("curl", "-sS", "--max-time", "8", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://{BAD4}/", ns="client", check=False)
            assert r.stdout == "403", r.stderr + gateway.output
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            proxied = [r for r in gateway.records() if r.get("mode") == "transparent" and r.get("action") == "block"]
            families = scrape(topo)
            if len(proxied) >= 3 and value(families, "geogate_decisions_total", mode="transparent") == len(proxied):
                break
            time.sleep(0.3)
        assert len(proxied) >= 3, gateway.output
        assert value(families, "geogate_decisions_total", mode="transparent", action="block", rule="doj",
                     country="KP") == len(proxied)
        # one endpoint for the whole gateway: the kernel side beside the proxy's numbers
        assert "geogate_gateway_receipts_written" in families and "geogate_gateway_restores" in families
        assert value(families, "geogate_gateway_restores_total") == 0
        # the gateway and its proxy both hold the policy: in force once, not counted twice
        assert value(families, "geogate_policy_info", name="test") == 1
        # the policy sets no geo.max_age: never stale
        assert [(s.labels, s.value) for s in families["geogate_database_stale"]] == [({"on_stale": "warn"}, 0.0)]
