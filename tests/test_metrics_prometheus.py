"""End to end: a real Prometheus scrapes a running `geogate run --metrics`, and PromQL returns
the counts of the requests made through the proxy. The example alert rules and the Grafana
dashboard are checked with promtool and against the metrics geogate really serves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

import system_deps
from geogate.metrics.families import Metrics
from geogate.metrics.kernel import KernelCollector
from geogate.metrics.serve import endpoint_registry
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import ROOT
from proxy_support import Origin
from proxy_support import free_port
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy

pytestmark = [pytest.mark.e2e, system_deps.needs("curl", "prometheus")]

ALERTS = ROOT / "docs" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
ALLOWED, BLOCKED = 3, 2


def promtool() -> str:
    """promtool comes in the prometheus package, beside the server."""
    return str(Path(system_deps.path("prometheus") or "prometheus").with_name("promtool"))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {last!r} after {timeout:g} s")


class Prometheus:
    """The real prometheus binary, scraping `target` every second, on a free loopback port."""

    def __init__(self, tmp: Path, target: str) -> None:
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "geogate", "static_configs": [{"targets": [target]}]}],
        }))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [system_deps.path("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"), start_new_session=True)
        wait_until(lambda: self._ready(), "prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode})")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
            return r.status == 200

    def query(self, expr: str) -> list[dict]:
        reply = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def names(self) -> set[str]:
        return set(get_json(f"{self.url}/api/v1/label/__name__/values")["data"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def by(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """geogate run --metrics, a loopback origin on an allowed and a blocked address, and a
    Prometheus scraping the proxy."""
    tmp = tmp_path_factory.mktemp("metrics")
    allowed, blocked = Origin(ALLOWED_IP), None
    blocked = Origin(BLOCKED_IP, allowed.port)
    hosts = write_hosts(tmp / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP})
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.3.53\noptions timeout:1 attempts:1\n")
    policy, db = write_policy(tmp / "policy.yaml"), write_db(tmp / "test.mmdb")
    port, metrics_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).with_name("geogate")), "run", "--policy", str(policy), "--db", str(db),
           "--listen-port", str(port), "--log", str(tmp / "decisions.jsonl"), "--metrics", str(metrics_port),
           "--", "--set", f"confdir={tmp / 'confdir'}"]
    proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             env=dict(os.environ, GEOGATE_HOSTS_FILE=str(hosts), GEOGATE_RESOLV_CONF=str(resolv)))
    prometheus = None
    try:
        lines = []
        assert proxy.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proxy.stdout.readline()
            lines.append(line)
            if "Prometheus metrics at" in line or not line:
                break
        assert f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in "".join(lines), "".join(lines)
        prometheus = Prometheus(tmp, f"127.0.0.1:{metrics_port}")
        yield dict(proxy=f"http://127.0.0.1:{port}", origin_port=allowed.port, allowed=allowed, blocked=blocked,
                   prometheus=prometheus, policy=policy, metrics_port=metrics_port)
    finally:
        if prometheus is not None:
            prometheus.stop()
        os.killpg(proxy.pid, signal.SIGTERM)
        proxy.wait(20)
        allowed.close()
        blocked.close()


def curl(proxy: str, url: str) -> str:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, url],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def test_promql_returns_the_counts_of_the_requests(running):
    for i in range(ALLOWED):
        assert curl(running["proxy"], f"http://allowed.test:{running['origin_port']}/{i}") == "200"
    for i in range(BLOCKED):
        assert curl(running["proxy"], f"http://blocked.test:{running['origin_port']}/{i}") == "403"
    assert running["blocked"].connections == []
    prom = running["prometheus"]

    def counts():
        found = by(prom.query("sum by (action) (geogate_decisions_total)"), "action")
        return found if found == {"allow": ALLOWED, "block": BLOCKED} else None

    wait_until(counts, "sum by (action) (geogate_decisions_total)")
    assert by(prom.query('sum by (country) (geogate_decisions_total{action="block"})'), "country") == {"KP": BLOCKED}
    assert by(prom.query('sum by (rule) (geogate_decisions_total{action="block"})'), "rule") == {"doj": BLOCKED}
    assert by(prom.query("sum by (mode) (geogate_decisions_total)"), "mode") == {"regular": ALLOWED + BLOCKED}
    assert float(prom.query("sum(geogate_decision_seconds_count)")[0]["value"][1]) == ALLOWED + BLOCKED
    # no host name or address became a label value
    for series in prom.query('{__name__=~"geogate_.*"}'):
        for label, value in series["metric"].items():
            if label != "instance":
                assert ".test" not in value and ALLOWED_IP not in value and BLOCKED_IP not in value, series


def test_policy_and_database_age_reach_prometheus(running):
    prom = running["prometheus"]
    import hashlib

    sha = hashlib.sha256(running["policy"].read_bytes()).hexdigest()
    info = wait_until(lambda: prom.query("geogate_policy_info == 1"), "geogate_policy_info")
    assert [(s["metric"]["name"], s["metric"]["sha256"]) for s in info] == [("test", sha)]
    age = wait_until(lambda: prom.query("geogate_database_age_seconds"), "geogate_database_age_seconds")
    assert len(age) == 1 and float(age[0]["value"][1]) > 0
    # the test policy sets no geo.max_age: never stale, the limit +Inf
    stale = wait_until(lambda: prom.query("geogate_database_stale"), "geogate_database_stale")
    assert [(s["metric"]["on_stale"], float(s["value"][1])) for s in stale] == [("warn", 0.0)]
    assert [float(s["value"][1]) for s in prom.query("geogate_database_max_age_seconds")] == [float("inf")]


def test_the_endpoint_passes_promtool_lint(running):
    with urllib.request.urlopen(f"http://127.0.0.1:{running['metrics_port']}/metrics", timeout=10) as r:
        text = r.read()
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_alert_rules_are_valid():
    out = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def alert_expressions() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_every_dashboard_expression_parses(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"geogate:dashboard_{i}", "expr": e} for i, e in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_and_alerts_name_only_metrics_that_exist(running):
    """Every geogate_* name in an expression is one the proxy's endpoint (as scraped) or the
    gateway's kernel side serves."""
    prom = running["prometheus"]
    # a name no one can resolve, and a reload: the last families that have no series until then
    assert curl(running["proxy"], f"http://nowhere.invalid:{running['origin_port']}/") == "403"
    write_policy(running["policy"], name="renamed")
    wanted = {"geogate_decisions_total", "geogate_resolve_errors_total", "geogate_reloads_total"}
    wait_until(lambda: wanted <= prom.names(), "scraped names")
    assert by(prom.query("sum by (kind, result) (geogate_reloads_total)"), "result") == {"success": 1}
    served = prom.names()
    # a revocation needs a connection held open across a reload that blocks it (test_revoke_e2e.py):
    # its family as the proxy's Metrics makes it, counted once
    offline = Metrics()
    offline.revoked("r", "KP")
    kernel = endpoint_registry(offline.registry, KernelCollector(
        lambda: {"receipts_written": 0, "receipts_suppressed": 0, "restores": 0, "flows": {("block", "r", "KP"): 0},
                 "kernel_flows": {"block": 0}}))
    served |= {s.name for family in kernel.collect() for s in family.samples}
    named = {n for e in dashboard_expressions() + alert_expressions() for n in re.findall(r"\bgeogate_[a-z0-9_]+", e)}
    assert len(named) >= 10
    assert sorted(named - served) == []


def test_with_workers_prometheus_sees_the_sum_over_them(tmp_path):
    """geogate run --workers 2 --metrics: each worker counts into one directory, the supervisor
    serves the sum; the requests (spread over the workers by the kernel) add up in PromQL."""
    allowed, blocked = Origin(ALLOWED_IP), None
    blocked = Origin(BLOCKED_IP, allowed.port)
    hosts = write_hosts(tmp_path / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP})
    log = tmp_path / "decisions.jsonl"
    port, metrics_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).with_name("geogate")), "run", "--workers", "2", "--policy",
           str(write_policy(tmp_path / "policy.yaml")), "--db", str(write_db(tmp_path / "test.mmdb")),
           "--listen-port", str(port), "--log", str(log), "--metrics", f"127.0.0.1:{metrics_port}",
           "--", "--set", f"confdir={tmp_path / 'confdir'}"]
    proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             env=dict(os.environ, GEOGATE_HOSTS_FILE=str(hosts)))
    prometheus = None
    try:
        assert proxy.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proxy.stdout.readline()
            lines.append(line)
            if "workers share the port" in line or not line:
                break
        assert "workers share the port" in lines[-1], "".join(lines)
        assert f"Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics" in "".join(lines)
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
        allow_n, block_n = 12, 8
        for i in range(allow_n):
            assert curl(f"http://127.0.0.1:{port}", f"http://allowed.test:{allowed.port}/{i}") == "200"
        for i in range(block_n):
            assert curl(f"http://127.0.0.1:{port}", f"http://blocked.test:{allowed.port}/{i}") == "403"

        def counts():
            found = by(prometheus.query("sum by (action) (geogate_decisions_total)"), "action")
            return found if found == {"allow": allow_n, "block": block_n} else None

        wait_until(counts, "sum by (action) (geogate_decisions_total) over the workers")
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(records) == allow_n + block_n and {r["worker"] for r in records} <= {0, 1}
        # the gauges of the workers: one policy in force, not one per worker
        info = prometheus.query("geogate_policy_info == 1")
        assert [s["metric"]["name"] for s in info] == ["test"]
    finally:
        if prometheus is not None:
            prometheus.stop()
        os.killpg(proxy.pid, signal.SIGTERM)
        proxy.wait(30)
        allowed.close()
        blocked.close()
