"""Prometheus metrics (geogate/metrics): what each decision, reload and failure adds, that label
values stay bounded, the endpoint's text, and the sum over worker processes (multiprocess mode)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import connection
from mitmproxy import exceptions
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import system_deps
from geogate.core.errors import GeogateError
from geogate.core.resolve import ResolveError
from geogate.gateway.daemon import Gateway
from geogate.metrics.address import parse_address
from geogate.metrics.families import Metrics
from geogate.metrics.families import decision_labels
from geogate.metrics.kernel import KernelCollector
from geogate.metrics.serve import WithDatabaseAge
from geogate.metrics.serve import aggregate_registry
from geogate.metrics.serve import endpoint_registry
from geogate.policy.state import GateState
from geogate.proxy.addon import GeoGate
from proxy_support import ALLOWED_IP
from proxy_support import BLOCKED_IP
from proxy_support import DEAD_RESOLVER
from proxy_support import free_port
from proxy_support import write_db
from proxy_support import write_hosts
from proxy_support import write_policy
from test_proxy_unit import client
from test_proxy_unit import connect_flow
from test_proxy_unit import hook
from test_proxy_unit import hook_data
from test_proxy_unit import proxy_request

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    hosts = write_hosts(tmp_path / "hosts", {"allowed.test": ALLOWED_IP, "blocked.test": BLOCKED_IP})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DEAD_RESOLVER}\noptions timeout:1 attempts:1\n")
    monkeypatch.setenv("GEOGATE_HOSTS_FILE", str(hosts))
    monkeypatch.setenv("GEOGATE_RESOLV_CONF", str(resolv))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return SimpleNamespace(tmp=tmp_path, db=write_db(tmp_path / "geo.mmdb"), policy=write_policy(tmp_path / "policy.yaml"),
                           log=tmp_path / "decisions.jsonl")


@pytest.fixture
async def gate(files):
    gg = GeoGate()
    port = free_port()
    with taddons.context(gg) as tctx:
        tctx.configure(gg, geogate_policy=str(files.policy), geogate_db=[str(files.db)], geogate_log=str(files.log),
                       geogate_resolve_timeout="0.5", geogate_reload_settle="0", geogate_metrics=f"127.0.0.1:{port}")
        yield SimpleNamespace(gg=gg, tctx=tctx, files=files, port=port)
        gg.done()


def value(gg: GeoGate, metric: str, **labels: str) -> float:
    return gg.metrics.registry.get_sample_value(metric, labels) or 0.0


def scrape(port: int) -> dict[str, list]:
    """name -> samples, as Prometheus reads the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def records(files) -> list[dict]:
    return [json.loads(line) for line in files.log.read_text().splitlines()]


# -- the address -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("", None),
])
def test_metrics_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "http", "host:", ":9464x", "::1:9464", "[nope]:9464", "a b:1"])
def test_bad_metrics_address_is_one_line(text):
    with pytest.raises(GeogateError) as e:
        parse_address(text)
    assert "\n" not in str(e.value) and "e.g. 9464" in str(e.value)


async def test_bad_metrics_option_is_refused(gate):
    gate.gg._running = True
    with pytest.raises(exceptions.OptionsError, match="geogate_metrics 99999"):
        gate.tctx.configure(gate.gg, geogate_metrics="99999")


def test_geogate_run_refuses_a_bad_metrics_value(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", "run", "--metrics", "nope:port"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--metrics nope:port" in proc.stderr and "Traceback" not in proc.stderr


# -- decisions ---------------------------------------------------------------------------------------

async def test_decisions_are_counted_where_they_are_recorded(gate):
    gg = gate.gg
    for _ in range(2):
        await hook(gg.http_connect, connect_flow("blocked.test"))  # the second reuses the decision
    await hook(gg.http_connect, connect_flow("allowed.test"))
    await hook(gg.requestheaders, proxy_request("allowed.test", 8000))
    await gg.server_connect(hook_data(BLOCKED_IP, 443, client("socks5")))

    assert value(gg, "geogate_decisions_total", action="block", rule="doj", country="KP", mode="regular") == 2
    assert value(gg, "geogate_decisions_total", action="allow", rule="default", country="DE", mode="regular") == 2
    assert value(gg, "geogate_decisions_total", action="block", rule="doj", country="KP", mode="socks5") == 1
    # one count per decision line of the log, and each timed from its hook's entry
    decisions = [r for r in records(gate.files) if r["event"] == "decision"]
    assert len(decisions) == 5
    assert value(gg, "geogate_decision_seconds_count") == 5
    assert 0 < value(gg, "geogate_decision_seconds_sum") < 5 * 10


async def test_the_endpoint_serves_the_counts_and_no_host_or_address_as_a_label(gate):
    gg = gate.gg
    await hook(gg.http_connect, connect_flow("blocked.test"))
    await hook(gg.http_connect, connect_flow(ALLOWED_IP))
    await gg.server_connect(hook_data("no-such-name.invalid", 443, client("socks5")))  # resolve error
    families = scrape(gate.port)
    decisions = families["geogate_decisions"]
    counts = {s.labels["mode"]: 0 for s in decisions if s.name == "geogate_decisions_total"}
    for s in decisions:
        if s.name == "geogate_decisions_total":
            counts[s.labels["mode"]] += s.value
    # the resolver's name server is judged (and recorded) before the name is looked up: blocked
    # by this policy, so no name is resolved
    assert counts == {"regular": 2, "socks5": 1, "resolver": 1}
    assert [(s.labels, s.value) for s in families["geogate_resolve_errors"] if s.name.endswith("_total")] == [
        ({"kind": "no-name-server"}, 1)]
    for samples in families.values():
        for sample in samples:
            for label, text in sample.labels.items():
                assert ".test" not in text and ".invalid" not in text, (sample.name, label)
                if label != "sha256":
                    with pytest.raises(ValueError):
                        ipaddress.ip_address(text)


@pytest.mark.parametrize("raw, expected", [
    (("allow", "doj", "KP", "regular"), ("allow", "doj", "KP", "regular")),
    (("block", None, None, "kernel"), ("block", "none", "none", "kernel")),
    (("allow", "r", "127.0.0.1", "regular"), ("allow", "r", "other", "regular")),
    (("maybe", "x" * 200, "kp", "evil.example"), ("other", "x" * 64, "other", "other")),
    (("block", "bad\nname", "DE", "socks5"), ("block", "other", "DE", "socks5")),
])
def test_label_values_are_bounded(raw, expected):
    assert decision_labels(*raw) == expected


def test_resolve_error_kinds():
    kinds = {
        "DNS lookup of a.test timed out after 3s": "timeout",
        "a.test: no such host (NXDOMAIN)": "nxdomain",
        "a.test has no A or AAAA record": "no-address",
        "DNS lookup of a.test failed: no name server answered (x)": "no-answer",
        "no DNS resolver configured (/etc/resolv.conf: gone)": "no-resolver",
        "no name server of /etc/resolv.conf is allowed by the policy, so no name is resolved (fail closed)":
            "no-name-server",
        "DNS lookup of a.test failed: something else": "failed",
    }
    assert {m: ResolveError(m).kind for m in kinds} == kinds


async def test_a_failed_log_write_is_counted_and_the_decision_is_not(gate, tmp_path):
    gg = gate.gg
    gate.tctx.configure(gg, geogate_log="/dev/full")  # every write fails: no space left
    f = connect_flow("allowed.test")
    await hook(gg.http_connect, f)
    assert f.response.status_code == 403  # fail closed
    # the decision's line; and the refusal's, where the log still tries once it knows it is failing
    assert value(gg, "geogate_log_write_errors_total") in (1, 2)
    assert sum(s.value for m in gg.metrics.registry.collect() for s in m.samples
               if s.name == "geogate_decisions_total") == 0
    with contextlib.suppress(OSError):  # what is still buffered cannot be written either
        gg.log.close()
    gg.log = None


async def test_open_connections_by_decision(gate):
    gg = gate.gg
    f = connect_flow("allowed.test")
    await hook(gg.http_connect, f)
    data = hook_data("allowed.test", 443, f.client_conn)
    await gg.server_connect(data)
    connections = gg.addons[-1] if hasattr(gg, "addons") else gg.connections
    labels = dict(action="allow", rule="default", country="DE", mode="regular")
    connections.server_connected(data)
    assert value(gg, "geogate_open_connections", **labels) == 1
    connections.server_disconnected(data)
    connections.server_disconnected(data)  # said twice: counted once
    assert value(gg, "geogate_open_connections", **labels) == 0
    # a connection geogate did not decide is not counted
    other = server_hooks.ServerConnectionHookData(client=client(), server=connection.Server(address=("127.0.0.9", 1)))
    connections.server_connected(other)
    assert sum(s.value for m in gg.metrics.registry.collect() for s in m.samples
               if s.name == "geogate_open_connections") == 0


async def test_the_connection_hooks_exist_only_with_metrics_on(gate):
    hooked = getattr(gate.tctx.master.addons.get("geogate") or gate.gg, "addons", None)
    assert hooked is not None and gate.gg.connections in gate.gg.addons
    gate.tctx.configure(gate.gg, geogate_metrics="")
    assert gate.gg.metrics is None and "addons" not in gate.gg.__dict__


# -- policy, databases, reloads -----------------------------------------------------------------------

async def test_policy_and_databases_in_force_and_reloads(gate):
    gg = gate.gg
    first = gg.current_state().policy.ref
    info = gg.current_state().databases.infos[0]
    assert value(gg, "geogate_policy_info", name="test", sha256=first.sha256) == 1
    assert value(gg, "geogate_database_build_timestamp_seconds", name=info.name) == info.build_epoch
    age = scrape(gate.port)["geogate_database_age_seconds"]
    assert [s.labels["name"] for s in age] == [info.name]
    assert abs(age[0].value - (time.time() - info.build_epoch)) < 60

    write_policy(gate.files.policy, name="v2")
    assert any(gg.live.poll() for _ in range(3))
    second = gg.current_state().policy.ref
    assert value(gg, "geogate_reloads_total", kind="policy", result="success") == 1
    assert value(gg, "geogate_policy_info", name="v2", sha256=second.sha256) == 1
    assert value(gg, "geogate_policy_info", name="test", sha256=first.sha256) == 0

    gate.files.policy.write_text("version: 1\nname: v3\ndefault: allw\n")
    for _ in range(3):
        gg.live.poll()
    assert value(gg, "geogate_reloads_total", kind="policy", result="failure") == 1
    assert value(gg, "geogate_policy_info", name="v2", sha256=second.sha256) == 1

    gate.files.db.unlink()
    assert any(gg.live.poll() for _ in range(3))
    assert value(gg, "geogate_reloads_total", kind="database", result="missing") == 1


async def test_a_policy_changed_by_option_at_run_time_is_a_reload(gate, tmp_path):
    gg = gate.gg
    gg._running = True
    other = write_policy(tmp_path / "other.yaml", name="other")
    gate.tctx.configure(gg, geogate_policy=str(other))
    assert value(gg, "geogate_reloads_total", kind="options", result="success") == 1
    assert value(gg, "geogate_policy_info", name="other", sha256=gg.current_state().policy.ref.sha256) == 1
    with pytest.raises(exceptions.OptionsError):
        gate.tctx.configure(gg, geogate_policy=str(tmp_path / "missing.yaml"))
    assert value(gg, "geogate_reloads_total", kind="options", result="failure") == 1
    gg._running = False


def test_database_age_is_derived_at_each_scrape():
    metrics = Metrics()
    metrics.database_build.labels("geo").set(1000)
    now = [5000.0]
    registry = CollectorRegistry()
    registry.register(WithDatabaseAge(metrics.registry, clock=lambda: now[0]))
    assert registry.get_sample_value("geogate_database_age_seconds", {"name": "geo"}) == 4000
    now[0] = 6000.0
    assert registry.get_sample_value("geogate_database_age_seconds", {"name": "geo"}) == 5000


def test_database_staleness_follows_the_policys_limit_at_each_scrape(tmp_path):
    """geo.max_age over the databases in use (GateState.limit): stale turns at the moment, at a
    scrape and without a reload, with the policy's geo.on_stale as its label."""
    db = write_db(tmp_path / "geo.mmdb")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ndefault: allow\ngeo:\n  max_age: 30d\n  on_stale: block\n")
    state = GateState.load(policy, [db])
    metrics = Metrics()
    metrics.in_force(state.policy.ref, state.databases.infos, state.limit)
    now = [0.0]
    registry = CollectorRegistry()
    registry.register(WithDatabaseAge(metrics.registry, clock=lambda: now[0]))
    built = state.databases.infos[0].build_epoch
    assert registry.get_sample_value("geogate_database_max_age_seconds") == 30 * 86400
    for at, stale in ((built + 30 * 86400 - 1, 0), (built + 30 * 86400, 1)):
        now[0] = at
        assert registry.get_sample_value("geogate_database_stale", {"on_stale": "block"}) == stale
        assert state.freshness(at).stale is bool(stale)  # the engine's own answer, the same moment
    # a reload without a limit: never stale, and the old setting is out of force
    policy.write_text("version: 1\nname: t\ndefault: allow\n")
    relaxed = GateState.load(policy, [db])
    metrics.in_force(relaxed.policy.ref, relaxed.databases.infos, relaxed.limit)
    assert registry.get_sample_value("geogate_database_max_age_seconds") == float("inf")
    assert registry.get_sample_value("geogate_database_stale", {"on_stale": "block"}) == 0
    assert registry.get_sample_value("geogate_database_stale", {"on_stale": "warn"}) == 0


def test_without_a_limit_known_no_staleness_is_served():
    metrics = Metrics()
    registry = endpoint_registry(metrics.registry)
    assert registry.get_sample_value("geogate_database_stale", {"on_stale": "warn"}) is None


# -- the gateway's kernel side -------------------------------------------------------------------------

def test_kernel_counters_are_read_at_scrape_time():
    snapshot = {"allowed": {"default": {"DE": 5}}, "blocked": {"doj": {"KP": 4, "203.0.113.9": 2}},
                "kernel": {"allowed": 6, "blocked": 9}}
    gw = SimpleNamespace(receipts=SimpleNamespace(written=3, suppressed=7), restores=1,
                         counts=SimpleNamespace(snapshot=lambda: snapshot))  # the daemon's FlowCounts
    registry = endpoint_registry(Metrics().registry, KernelCollector(lambda: Gateway.metrics_counters(gw)))
    assert registry.get_sample_value("geogate_gateway_receipts_written_total") == 3
    assert registry.get_sample_value("geogate_gateway_receipts_suppressed_total") == 7
    assert registry.get_sample_value("geogate_gateway_restores_total") == 1
    flows = {"action": "block", "rule": "doj", "mode": "kernel"}
    assert registry.get_sample_value("geogate_gateway_flows_total", {**flows, "country": "KP"}) == 4
    assert registry.get_sample_value("geogate_gateway_flows_total", {**flows, "country": "other"}) == 2
    assert registry.get_sample_value("geogate_gateway_flows_total",
                                     {"action": "allow", "rule": "default", "country": "DE", "mode": "kernel"}) == 5
    assert registry.get_sample_value("geogate_gateway_kernel_flows_total", {"action": "block"}) == 9
    assert registry.get_sample_value("geogate_gateway_kernel_flows_total", {"action": "allow"}) == 6
    gw.receipts.written = 5
    assert registry.get_sample_value("geogate_gateway_receipts_written_total") == 5


def test_a_kernel_receipt_is_counted_with_mode_kernel(tmp_path):
    metrics = Metrics()
    gw = SimpleNamespace(log=None, metrics=metrics)
    Gateway._write(gw, {"event": "decision", "action": "block", "rule": "doj", "country": "KP", "mode": "kernel",
                        "host": None, "address": BLOCKED_IP})
    labels = {"action": "block", "rule": "doj", "country": "KP", "mode": "kernel"}
    assert metrics.registry.get_sample_value("geogate_decisions_total", labels) == 1


# -- workers: prometheus_client's multiprocess mode -----------------------------------------------------

WORKER = textwrap.dedent("""
    import sys
    from geogate.metrics.families import Metrics
    from geogate.core.rules import PolicyRef
    n = int(sys.argv[1])
    m = Metrics()
    m.in_force(PolicyRef("p", "/p.yaml", "ab" * 32), [])
    for _ in range(n):
        m.decided({"action": "block", "rule": "doj", "country": "KP", "mode": "regular"}, 0.001)
    m.decided({"action": "allow", "rule": None, "country": "DE", "mode": "transparent"}, 0.002)
    m.resolve_error("timeout")
    m.connection_opened(("allow", "none", "DE", "regular"))
    print("done", flush=True)
    sys.stdin.read()  # stay alive until the test has read the live gauges
""")


def test_two_worker_processes_are_summed(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT / "addons")}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for n in (3, 4)]
    try:
        for w in workers:
            assert w.stdout.readline().strip() == "done"
        registry = endpoint_registry(aggregate_registry(str(directory)))

        def get(metric, **labels):
            return registry.get_sample_value(metric, labels)

        assert get("geogate_decisions_total", action="block", rule="doj", country="KP", mode="regular") == 7
        assert get("geogate_decisions_total", action="allow", rule="none", country="DE", mode="transparent") == 2
        assert get("geogate_decision_seconds_count") == 9
        assert get("geogate_resolve_errors_total", kind="timeout") == 2
        assert get("geogate_open_connections", action="allow", rule="none", country="DE", mode="regular") == 2
        assert get("geogate_policy_info", name="p", sha256="ab" * 32) == 1  # max, not a sum

        # a worker that is gone: its counts stay in the sum, its open connections do not
        workers[0].communicate("", timeout=30)
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(workers[0].pid, str(directory))
        assert get("geogate_decisions_total", action="block", rule="doj", country="KP", mode="regular") == 7
        assert get("geogate_open_connections", action="allow", rule="none", country="DE", mode="regular") == 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.communicate("", timeout=30)


# -- the command line ----------------------------------------------------------------------------------

def test_workers_take_the_metrics_address_from_the_flag_only(files):
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", "run", "--workers", "2", "--policy", str(files.policy),
                           "--db", str(files.db), "--listen-port", str(free_port()), "--",
                           "--set", "geogate_metrics=9464"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not --set geogate_metrics" in proc.stderr


@system_deps.needs("nft", "ip")  # checked before the metrics address
def test_gateway_run_refuses_a_bad_metrics_value():
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", "gateway", "run", "--lan", "lo", "--metrics", "x:y"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--metrics x:y" in proc.stderr and "Traceback" not in proc.stderr


@system_deps.needs("nft", "ip")  # checked before the metrics address
def test_gateway_run_refuses_a_second_endpoint_for_its_proxy():
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", "gateway", "run", "--lan", "lo", "--metrics", "9464",
                           "--", "--set", "geogate_metrics=9465"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "leave out --set geogate_metrics" in proc.stderr


def test_a_dead_processes_live_gauges_are_swept_at_scrape(tmp_path):
    """The gateway's endpoint sums processes it did not start itself (a supervisor's workers):
    a gone one's open connections leave the sum without anyone telling, its counts stay."""
    from geogate.metrics.serve import sweep_dead

    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT / "addons")}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, "2"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "done"
        registry = endpoint_registry(aggregate_registry(str(directory)))
        opened = {"action": "allow", "rule": "none", "country": "DE", "mode": "regular"}
        sweep_dead(str(directory))  # alive: kept
        assert registry.get_sample_value("geogate_open_connections", opened) == 1
    finally:
        worker.communicate("", timeout=30)
    sweep_dead(str(directory))
    assert registry.get_sample_value("geogate_open_connections", opened) is None
    assert registry.get_sample_value("geogate_decisions_total", {**opened, "action": "block", "rule": "doj",
                                                                 "country": "KP"}) == 2


def test_the_supervisor_hands_each_dead_workers_pid_to_the_metrics():
    from geogate.cli.workers import Supervisor

    supervisor = Supervisor(2, [], [], [], "regular")
    gone: list[int] = []
    supervisor.on_worker_exit = gone.append
    supervisor.up = True
    worker = supervisor.workers[0]
    worker.proc = subprocess.Popen([sys.executable, "-c", "pass"])
    worker.proc.wait(30)
    pid = worker.proc.pid
    supervisor._on_exit(worker, 0)
    assert gone == [pid]


def test_geogate_run_refuses_a_metrics_port_in_use_before_listening(files):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "geogate.cli", "run", "--policy", str(files.policy), "--db",
                               str(files.db), "--listen-port", "0", "--metrics", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"geogate: --metrics 127.0.0.1:{port}: cannot listen: Address already in use\n"
    assert "listening" not in proc.stdout
