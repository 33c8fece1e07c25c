"""The replay path: ReplayAudit (what the addon calls for non-live flows) and
`mitmdump -nr FILE -s addons/geogate_addon.py`, against what `geogate audit` says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader

import audit_fixtures as af
from geogate.audit.replay import ReplayAudit
from geogate.cli.main import main
from geogate.policy.state import GateState

ROOT = af.ROOT
SAMPLE = af.EXAMPLES / "sample.mitm"
MAXMIND = ROOT / "tests" / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb"
POLICY = ROOT / "policies" / "default.yaml"
ADDON = ROOT / "addons" / "geogate_addon.py"


def recorded_flows(path: Path) -> list:
    with open(path, "rb") as fo:
        return list(FlowReader(fo).stream())


def report_body(text: str) -> list[str]:
    """The report from its destination table on: the header differs (file name vs replay)."""
    lines = text.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("DESTINATION")):]


@pytest.fixture(scope="module")
def state() -> GateState:
    return GateState.load(POLICY, [MAXMIND])


def cli_text(capsys) -> str:
    assert main(["audit", str(SAMPLE), "--policy", str(POLICY), "--db", str(MAXMIND)]) == 0
    return capsys.readouterr().out


def test_replay_summary_is_the_cli_report(capsys, state: GateState) -> None:
    replay = ReplayAudit()
    for flow in recorded_flows(SAMPLE):
        replay.evaluate(flow, state)
    assert replay.flows == 18 and replay.would_block == 7
    summary = replay.summary_text()
    assert summary.startswith("geogate audit of replayed flows: 18 flows")
    assert report_body(summary) == report_body(cli_text(capsys))


def test_replay_never_touches_flows_and_counts_each_once(state: GateState) -> None:
    flows = recorded_flows(SAMPLE)
    before = [f.get_state() for f in flows]
    replay = ReplayAudit()
    for f in flows:
        replay.evaluate(f, state)  # e.g. from `request`...
        replay.evaluate(f, state)  # ...and again from `response`: the same flow counts once
    assert replay.flows == len(flows)
    assert [f.get_state() for f in flows] == before
    assert all(not f.live for f in flows)
    assert replay.last is not None and replay.last.request.mode == "audit"


def test_replay_of_har_converted_flows_uses_server_ip_address(state: GateState) -> None:
    """mitmdump -nr on a HAR: mitmproxy turns serverIPAddress into server_conn.address (port
    guessed from the scheme); the audit still takes the port from the URL."""
    replay = ReplayAudit()
    flows = recorded_flows(af.DATA / "firefox.har")[:3]  # the entries that went to the network
    for f in flows:
        replay.evaluate(f, state)
    assert replay.flows == 3
    assert "[2001:db8::9]:8080" in replay.summary_text()


def test_a_replayed_har_is_read_by_the_audits_own_reader(state: GateState) -> None:
    """mitmproxy's conversion loses the browser's cache markers and sizes; given the file, the
    replay audit reads it as `geogate audit` does, whatever flows mitmdump hands over."""
    path = str(af.DATA / "firefox.har")
    replay = ReplayAudit(path)
    for f in recorded_flows(af.DATA / "firefox.har"):
        replay.evaluate(f, state)
    assert replay.flows == 4
    summary = replay.summary_text()
    assert summary.startswith(f"geogate audit of {path} (replayed by mitmdump): 4 flows (HAR file)")
    assert "NOT SENT: 3 HAR entries never went to the network" in summary


def test_empty_replay_summary() -> None:
    assert "no flows" in ReplayAudit().summary_text()


REPLAYED = sorted(str(p.relative_to(ROOT)) for p in af.EXAMPLES.iterdir() if p.suffix in (".mitm", ".har")) + [
    "tests/data/audit/flows.mitm"]  # every flow kind: UDP and DNS too
DB = "tests/data/maxmind/GeoIP2-Country-Test.mmdb"


def mitmdump_replay(path: str, tmp_path: Path, *options: str) -> str:
    mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which("mitmdump")
    assert mitmdump, "mitmdump is installed with mitmproxy"
    proc = subprocess.run(
        [mitmdump, "-nr", path, "-s", str(ADDON), "-q", "--set", f"confdir={tmp_path / 'conf'}",
         "--set", "geogate_policy=policies/default.yaml", "--set", f"geogate_db={DB}", *options],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def cli_audit(capsys, monkeypatch: pytest.MonkeyPatch, path: str, *options: str) -> str:
    monkeypatch.chdir(ROOT)  # paths as given, as mitmdump is given them
    main(["audit", path, "--policy", "policies/default.yaml", "--db", DB, *options])
    return capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.skipif(not ADDON.exists(), reason="addons/geogate_addon.py (the proxy addon) is not in this checkout")
@pytest.mark.parametrize("path", REPLAYED)
def test_mitmdump_replay_prints_the_report_geogate_audit_prints(capsys, monkeypatch, tmp_path: Path, path: str) -> None:
    """The same report, byte for byte, but for the title saying it was a replay: raw TCP bytes
    and HAR sizes included (a TCP flow's messages arrive after its start in a replay)."""
    log = tmp_path / "decisions.jsonl"
    replayed = mitmdump_replay(path, tmp_path, "--set", f"geogate_log={log}")
    cli = cli_audit(capsys, monkeypatch, path)
    title, _, body = cli.partition("\n")
    assert replayed == title.replace(f"{path}:", f"{path} (replayed by mitmdump):", 1) + "\n" + body
    if path.endswith("sample.mitm"):
        chat = next(line.split() for line in replayed.splitlines() if line.startswith("chat.acmeshop.example:5222"))
        assert chat[-2:] == ["48", "93"]
    # with a decision log, each replayed flow is the line --format json writes for it
    cli_records = [json.loads(line) for line in cli_audit(capsys, monkeypatch, path, "--format", "json").splitlines()]
    logged = [json.loads(line) for line in log.read_text().splitlines()]

    def without_time(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "ts"}

    decisions = [r for r in cli_records if r["event"] == "decision"]  # not the entries that were not sent
    assert [without_time(r) for r in logged] == [without_time(r) for r in decisions]
    assert len(logged) == cli_records[-1]["totals"]["flows"] > 0


class _FakeFlow:
    live = False

    def __init__(self, flow_id: str, state: dict) -> None:
        self.id, self._state = flow_id, state

    def get_state(self) -> dict:
        return self._state


def test_replay_skips_a_malformed_flow_as_the_file_reader_does(state: GateState, tmp_path: Path) -> None:
    """A state shaped wrongly (here client_conn a list: AttributeError inside extraction) is one
    skipped flow in both paths, never an exception out of the audit."""
    from mitmproxy.io import tnetstring

    from geogate.audit.model import Problem
    from geogate.audit.readers import open_input

    bad = recorded_flows(SAMPLE)[0].get_state()
    bad["client_conn"] = ["not", "a", "connection"]
    replay = ReplayAudit()
    replay.evaluate(_FakeFlow("bad", bad), state)
    for f in recorded_flows(SAMPLE)[:2]:
        replay.evaluate(f, state)
    assert replay.flows == 2
    summary = replay.summary_text()
    assert "INCOMPLETE" in summary and "malformed flow (AttributeError" in summary

    path = tmp_path / "bad.mitm"
    with open(path, "wb") as fo:
        tnetstring.dump(bad, fo)
    items = list(open_input(str(path)).flows())
    assert len(items) == 1 and isinstance(items[0], Problem) and not items[0].fatal
    assert "malformed flow (AttributeError" in items[0].message
