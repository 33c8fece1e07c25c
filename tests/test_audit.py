"""`geogate audit`: decisions, the four report formats, exit codes, --against, --resolve,
corrupt inputs, user errors and the progress bar, run in-process through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

import audit_fixtures as af
from geogate.audit import evaluate
from geogate.audit import progress
from geogate.cli import audit as command
from geogate.cli.main import main
from mmdbs import write_flat

DATA = af.DATA
POLICY = str(DATA / "policy.yaml")
STRICT = str(DATA / "policy-strict.yaml")
MONITOR = str(DATA / "policy-monitor.yaml")
FLOWS = str(DATA / "flows.mitm")

# seed -> (action label, rule, country, address, resolution); see audit_fixtures.test_flows
EXPECTED = {
    "plain-http": ("allow", "default", "DE", "192.0.2.10", "recorded"),
    "connect-https": ("block", "doj", "CN", "198.51.100.7", "recorded"),
    "websocket": ("monitor", "watch-us", "US", "203.0.113.5", "recorded"),
    "tcp": ("allow", "default", "DE", "192.0.2.25", "recorded"),
    "mirror-named": ("allow", "mirror", "CN", "198.51.100.50", "recorded"),
    "mirror-claimed": ("block", "doj", "CN", "198.51.100.99", "recorded"),  # a claimed name never allows
    "upstream": ("unresolved", "resolve-error", "(unresolved)", "", "unresolved"),
    "no-address": ("unresolved", "resolve-error", "(unresolved)", "", "unresolved"),
    "ipv6": ("block", "doj", "RU", "2001:db8::5", "recorded"),
    "mapped": ("block", "doj", "CN", "::ffff:198.51.100.9", "recorded"),
    "streamed": ("allow", "default", "DE", "192.0.2.80", "recorded"),
    "dns": ("allow", "default", "DE", "192.0.2.53", "recorded"),
    "udp": ("monitor", "watch-us", "US", "203.0.113.77", "recorded"),
    "proxyauth": ("allow", "default", "DE", "192.0.2.44", "recorded"),
    "geogate-pinned": ("allow", "mirror", "CN", "198.51.100.50", "recorded"),
    "geogate-blocked": ("block", "doj", "CN", "198.51.100.9", "recorded"),
}
SEED_OF = {af._id("flow", seed): seed for seed in EXPECTED}


@pytest.fixture(scope="session")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_flat(tmp_path_factory.mktemp("audit-db") / "audit-test.mmdb", af.TEST_NETWORKS))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1]["event"] == "audit_summary"
    return lines[:-1], lines[-1]


# -- decisions --------------------------------------------------------------------------------

def test_every_flow_is_decided_by_the_engine_and_recorded_as_spec_7(capsys, db: str) -> None:
    code, out, err = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--format", "json")
    assert code == 0, err
    records, summary = json_lines(out)
    assert len(records) == 16
    for r in records:
        seed = SEED_OF[r["flow_id"]]
        label, rule, country, address, resolution = EXPECTED[seed]
        assert r["event"] == "decision" and r["mode"] == "audit"
        assert (r["rule"], r["audit"]["resolution"]) == (rule, resolution), seed
        assert (r["address"] or "") == address.replace("::ffff:198.51.100.9", "::ffff:c633:6409"), seed
        assert r["action"] == ("block" if label in ("block", "unresolved") else "allow"), seed
        assert r["would_block"] == (label != "allow"), seed
        for key in ("ts", "client", "user", "host", "port", "sni", "enforced", "reason", "citation",
                    "host_mismatch", "addresses", "policy", "databases"):
            assert key in r, key
        assert r["client"] == "10.0.0.5:51000"
        assert r["policy"]["name"] == "audit-test"
    by_seed = {SEED_OF[r["flow_id"]]: r for r in records}
    assert by_seed["no-address"]["reason"] == "no recorded address"
    assert by_seed["mirror-claimed"]["host_mismatch"] is True and by_seed["mirror-named"]["host_mismatch"] is False
    assert by_seed["connect-https"]["sni"] == "api.example.cn"
    assert by_seed["proxyauth"]["user"] == "alice"
    assert by_seed["ipv6"]["port"] == 8443
    assert summary["complete"] is True
    assert summary["totals"]["flows"] == 16 and summary["totals"]["would_block"] == 9
    assert summary["totals"]["by_action"] == {"allow": 7, "block": 5, "monitor": 2, "unresolved": 2}
    # recorded through a live geogate: its pinned name is trusted, its refusal's address is used
    assert by_seed["geogate-pinned"]["host"] == "mirror.example" and by_seed["geogate-pinned"]["host_mismatch"] is False
    assert by_seed["geogate-blocked"]["audit"]["address_source"] == "geogate-decision"
    assert by_seed["geogate-blocked"]["audit"]["bytes_received"] == 0  # geogate's own 403 is not traffic


def test_summary_per_country_and_rule(capsys, db: str) -> None:
    _, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--format", "json")
    records, summary = json_lines(out)
    countries = {c["country"]: c for c in summary["countries"]}
    assert set(countries) == {"CN", "US", "RU", "DE", "(unresolved)"}
    de = [r for r in records if r["country"] == "DE"]
    assert countries["DE"]["flows"] == len(de) == 5
    assert countries["DE"]["bytes_sent"] == sum(r["audit"]["bytes_sent"] for r in de)
    assert countries["DE"]["bytes_received"] == sum(r["audit"]["bytes_received"] for r in de)
    assert countries["CN"]["hosts"] == 3  # api.example.cn, mirror.example, cdn.example.cn
    assert countries["CN"]["would_block"] == 4
    rules = {r["rule"]: r for r in summary["rules"]}
    assert rules["doj"]["flows"] == 5 and rules["mirror"]["flows"] == 2 and rules["mirror"]["would_block"] == 0
    assert sum(c["flows"] for c in summary["countries"]) == 16


def test_monitor_mode_policy_reports_would_block(capsys, db: str) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", MONITOR, "--db", db, "--fail-on-block")
    assert code == 1
    assert "would-block" in out and "would be blocked in enforce mode (doj 7" in out


# -- text -------------------------------------------------------------------------------------

def test_text_report_table_blocked_first_then_country_totals(capsys, db: str) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db)
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("DESTINATION"))
    assert lines[header].split() == ["DESTINATION", "ADDRESS", "COUNTRY", "ACTION", "RULE", "FLOWS", "SENT", "RECEIVED"]
    rows = lines[header + 1: lines.index("", header)]
    assert len(rows) == 16
    actions = [row.split()[3] if not row.split()[1] == "-" else row.split()[3] for row in rows]
    order = ["block", "unresolved", "would-block", "monitor", "allow"]
    assert [order.index(a) for a in actions] == sorted(order.index(a) for a in actions)
    assert any(row.startswith("api.example.cn:443") and "198.51.100.7" in row and " CN " in row for row in rows)
    countries = next(i for i, line in enumerate(lines) if line.startswith("COUNTRY"))
    assert lines[countries].split() == ["COUNTRY", "FLOWS", "BLOCKED", "HOSTS", "SENT", "RECEIVED"]
    assert any(line.startswith("all ") and line.split()[1] == "16" for line in lines[countries:])
    assert "9 of 16 flows would be blocked: 5 blocked (doj 5); 2 unresolved" in out
    assert "--resolve looks names up" in out
    assert "::ffff:198.51.100.9" in out


# -- csv --------------------------------------------------------------------------------------

def test_csv_has_one_row_per_flow(capsys, db: str) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 16
    by_seed = {SEED_OF[r["flow_id"]]: r for r in rows}
    for seed, (label, rule, country, address, resolution) in EXPECTED.items():
        r = by_seed[seed]
        assert (r["action"], r["rule"], r["country"], r["address"], r["resolution"]) == (
            label, rule, country, address, resolution), seed
    assert by_seed["tcp"]["bytes_sent"] == "21" and by_seed["tcp"]["kind"] == "tcp"


# -- html -------------------------------------------------------------------------------------

def test_html_is_one_self_contained_escaped_file(capsys, db: str, tmp_path: Path) -> None:
    hostile = {"log": {"entries": [
        {"request": {"method": "GET", "url": 'https://evil.example/<img src=x onerror="alert(1)">'},
         "response": {"status": 200}, "serverIPAddress": "198.51.100.66"}]}}
    har = tmp_path / "hostile.har"
    har.write_text(json.dumps(hostile))
    out_path = tmp_path / "report.html"
    code, out, _ = run(capsys, FLOWS, str(har), "--policy", POLICY, "--db", db, "--format", "html", "-o", str(out_path))
    assert (code, out) == (0, "")
    page = out_path.read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    for external in ("<script", "<link", "src=\"http", "href=\"http", "url(", "@import"):
        assert external not in page, external
    assert "<img" not in page and "&lt;img src=x" in page
    assert page.count('<rect class="bar sent') == 5  # CN (with the hostile entry), RU, US, (unresolved), DE
    assert "Blocked flows" in page and "Traffic per destination country" in page
    assert page.index("Blocked flows") < page.index("Destinations")


# -- exit codes -------------------------------------------------------------------------------

def test_fail_on_block_exit_codes(capsys, db: str) -> None:
    assert run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--fail-on-block")[0] == 1
    assert run(capsys, FLOWS, "--policy", POLICY, "--db", db)[0] == 0
    clean = str(DATA / "fiddler.har")  # one DE flow
    assert run(capsys, clean, "--policy", POLICY, "--db", db, "--fail-on-block")[0] == 0


def test_unresolved_flows_alone_fail_the_gate(capsys, db: str) -> None:
    """No address means nothing was checked: the engine refuses it, and so does the CI gate."""
    code, out, _ = run(capsys, str(DATA / "insomnia.har"), "--policy", STRICT, "--db", db, "--fail-on-block")
    assert code == 1
    assert "2 unresolved" in out


# -- --against --------------------------------------------------------------------------------

def test_against_reports_only_changes(capsys, db: str) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--against", STRICT, "--db", db, "--format", "json")
    assert code == 0
    changes, summary = json_lines(out)
    got = {SEED_OF[c["flow_id"]]: c["change"] for c in changes}
    de = {"plain-http", "tcp", "streamed", "dns", "proxyauth"}
    cn = {"connect-https", "mirror-claimed", "mapped", "geogate-blocked"}
    assert got == {**{s: "newly-blocked" for s in de}, **{s: "newly-allowed" for s in cn},
                   **{s: "no-longer-flagged" for s in ("websocket", "udp")}}
    assert all(c["event"] == "audit_change" and c["before"]["policy"]["name"] == "audit-test"
               and c["after"]["policy"]["name"] == "audit-test-strict" for c in changes)
    assert summary["totals"]["unchanged"] == 16 - len(got)
    assert summary["totals"]["newly_blocked"]["flows"] == 5
    assert summary["totals"]["newly_allowed"]["flows"] == 4 and summary["totals"]["no_longer_flagged"]["flows"] == 2
    assert summary["totals"]["newly_flagged"]["flows"] == 0
    assert summary["against"]["name"] == "audit-test-strict"


def test_against_text_and_gate(capsys, db: str) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--against", STRICT, "--db", db, "--fail-on-block")
    assert code == 1  # the proposed policy newly blocks traffic
    assert "NEWLY BLOCKED: 5 flows" in out and "NEWLY ALLOWED: 4 flows" in out and "NO LONGER FLAGGED: 2 flows" in out
    assert "NEWLY FLAGGED" not in out  # a section only for a kind of change that happened
    assert "allow -> block" in out and "default -> no-de" in out
    assert "5 newly blocked, 0 newly flagged, 4 newly allowed, 2 no longer flagged, 5 unchanged (of 16 flows)" in out
    # the same policy on both sides changes nothing
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--against", POLICY, "--db", db, "--fail-on-block")
    assert code == 0 and "0 newly blocked, 0 newly flagged, 0 newly allowed, 0 no longer flagged, 16 unchanged" in out


def test_against_csv_and_html(capsys, db: str, tmp_path: Path) -> None:
    _, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--against", STRICT, "--db", db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 11 and {r["change"] for r in rows} == {"newly-blocked", "newly-allowed", "no-longer-flagged"}
    page_path = tmp_path / "changes.html"
    run(capsys, FLOWS, "--policy", POLICY, "--against", STRICT, "--db", db, "--format", "html", "-o", str(page_path))
    page = page_path.read_text()
    assert "policy change" in page and "Newly blocked" in page and '<rect class="bar sent blocked' in page


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + ":"))
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def test_against_gives_each_kind_of_change_its_heading_in_every_format(capsys, db: str, tmp_path: Path) -> None:
    """STRICT -> POLICY: DE allowed again, CN blocked again, US flagged again by a monitor rule
    (allow -> monitor): flagged is not blocked, and is listed as what it is."""
    code, out, _ = run(capsys, FLOWS, "--policy", STRICT, "--against", POLICY, "--db", db, "--fail-on-block")
    assert code == 1  # a new flag fails the gate, as a flag does without --against
    flagged = _section(out, "NEWLY FLAGGED")
    assert flagged[0].startswith("NEWLY FLAGGED: 2 flows")
    assert all("allow -> monitor" in line for line in flagged[2:]) and len(flagged) == 4
    assert not any("-> monitor" in line for line in _section(out, "NEWLY BLOCKED"))
    assert "4 newly blocked, 2 newly flagged, 5 newly allowed, 0 no longer flagged" in out

    _, out, _ = run(capsys, FLOWS, "--policy", STRICT, "--against", POLICY, "--db", db, "--format", "json")
    changes, summary = json_lines(out)
    by_seed = {SEED_OF[c["flow_id"]]: c["change"] for c in changes}
    assert by_seed["websocket"] == by_seed["udp"] == "newly-flagged"
    assert summary["totals"]["newly_flagged"]["flows"] == 2 and summary["totals"]["newly_blocked"]["flows"] == 4
    assert {r["change"] for r in summary["changes"] if r["after"] == "monitor"} == {"newly-flagged"}
    assert [c["country"] for c in summary["countries"]["newly_flagged"]] == ["US"]

    _, out, _ = run(capsys, FLOWS, "--policy", STRICT, "--against", POLICY, "--db", db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["change"] for r in rows if (r["before"], r["after"]) == ("allow", "monitor")} == {"newly-flagged"}

    page_path = tmp_path / "changes.html"
    run(capsys, FLOWS, "--policy", STRICT, "--against", POLICY, "--db", db, "--format", "html", "-o", str(page_path))
    page = page_path.read_text()
    flagged_html = page[page.index("<h2>Newly flagged"):]
    flagged_html = flagged_html[:flagged_html.index("</section>")]
    assert flagged_html.count('<span class="pill monitor">monitor</span>') == 2
    blocked_html = page[page.index("<h2>Newly blocked"):]
    assert "pill monitor" not in blocked_html[:blocked_html.index("</section>")]


# -- --resolve --------------------------------------------------------------------------------

@pytest.fixture
def hosts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.77 telemetry.example.org\n198.51.100.3 secret.example.net\n"
                     "198.51.100.99 mirror.example\n")
    real = evaluate.Resolver
    monkeypatch.setattr(evaluate, "Resolver", lambda timeout: real(timeout, hosts_path=str(hosts),
                                                                   resolv_conf=str(tmp_path / "no-resolv.conf")))
    return hosts


def test_resolve_looks_up_only_flows_without_an_address_and_says_so(capsys, db: str, hosts_file: Path) -> None:
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--resolve", "--format", "json")
    records, summary = json_lines(out)
    by_seed = {SEED_OF[r["flow_id"]]: r for r in records}
    assert (by_seed["no-address"]["audit"]["resolution"], by_seed["no-address"]["address"],
            by_seed["no-address"]["rule"]) == ("resolved", "192.0.2.77", "default")
    assert (by_seed["upstream"]["address"], by_seed["upstream"]["rule"]) == ("198.51.100.3", "doj")
    # the claimed name resolves to the recorded address, so now the hosts rule may match
    assert by_seed["mirror-claimed"]["rule"] == "mirror" and by_seed["mirror-claimed"]["host_mismatch"] is False
    assert by_seed["plain-http"]["audit"]["resolution"] == "recorded"
    assert summary["addresses"] == "recorded+resolve"
    _, text, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--resolve")
    assert "looked up now (--resolve)" in text and "192.0.2.77 *" in text


def test_resolve_failure_stays_unresolved(capsys, db: str, hosts_file: Path) -> None:
    code, out, _ = run(capsys, str(DATA / "chrome.har"), "--policy", POLICY, "--db", db, "--resolve", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    blocked = next(r for r in rows if r["host"] == "upload.example.net")  # sent, then reset: traffic
    assert blocked["resolution"] == "unresolved" and "--resolve failed" in blocked["reason"]


# -- corrupt input ----------------------------------------------------------------------------

@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    data = (DATA / "flows.mitm").read_bytes()
    path = tmp_path / "truncated.mitm"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_corrupt_file_keeps_results_marks_report_and_exits_2(capsys, db: str, truncated: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, str(truncated), "--policy", POLICY, "--db", db)
    assert code == 2
    assert out.startswith("geogate audit of") and "INCOMPLETE" in out
    assert f"{truncated}: unreadable from flow #" in err and "byte offset" in err
    assert "Traceback" not in err
    code, out, _ = run(capsys, str(truncated), "--policy", POLICY, "--db", db, "--format", "json")
    records, summary = json_lines(out)
    assert code == 2 and summary["complete"] is False and len(records) == summary["files"][0]["flows"] > 0
    problem = summary["problems"][0]
    assert problem["fatal"] and problem["index"] == len(records) and problem["offset"] > 0
    _, out, _ = run(capsys, str(truncated), "--policy", POLICY, "--db", db, "--format", "csv")
    assert list(csv.DictReader(io.StringIO(out)))[-1]["action"] == "error"
    page = tmp_path / "r.html"
    code, _, _ = run(capsys, str(truncated), "--policy", POLICY, "--db", db, "--format", "html", "-o", str(page))
    assert code == 2 and "Incomplete:" in page.read_text()


def test_corrupt_file_among_good_ones_and_fail_on_block(capsys, db: str, truncated: Path) -> None:
    code, out, _ = run(capsys, str(DATA / "chrome.har"), str(truncated), str(DATA / "firefox.har"),
                       "--policy", POLICY, "--db", db, "--fail-on-block")
    assert code == 2  # an incomplete audit is an error even when something would be blocked
    assert "firefox.har  har  4 flows" in out and "chrome.har  har  5 flows" in out


# -- user errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/capture.mitm"], "/nonexistent/capture.mitm: no such file"),
    (["README.md"], "not a mitmproxy flow file or HAR"),
    ([FLOWS, "--policy", "/nonexistent.yaml"], "does not exist"),
    ([FLOWS, "-o", "/nonexistent-dir/out.txt"], "does not exist"),
])
def test_user_errors_are_one_line_exit_2(capsys, db: str, argv: list[str], message: str) -> None:
    if "--policy" not in argv:
        argv = [*argv, "--policy", POLICY]
    code, out, err = run(capsys, *argv, "--db", db)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_output_file_is_complete_or_absent(capsys, db: str, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    code, out, _ = run(capsys, FLOWS, "--policy", POLICY, "--db", db, "--format", "json", "-o", str(target))
    assert code == 0 and out == ""
    assert json_lines(target.read_text())[1]["totals"]["flows"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind
    assert target.stat().st_mode & 0o044  # an ordinary, readable file (not mkstemp's 0600)


# -- several inputs, every format at once -----------------------------------------------------

def test_mixed_inputs_in_one_audit(capsys, db: str) -> None:
    files = [FLOWS, str(DATA / "legacy-v11.mitm"), str(DATA / "legacy-v18.mitm"),
             *[str(DATA / f"{n}.har") for n in af.HAR_DIALECTS]]
    code, out, _ = run(capsys, *files, "--policy", POLICY, "--db", db, "--format", "json")
    records, summary = json_lines(out)
    assert code == 0 and summary["complete"]
    assert [f["flows"] for f in summary["files"]] == [16, 6, 6, 5, 4, 2, 2, 3, 1]
    assert [f["not_sent"] for f in summary["files"]] == [0, 0, 0, 5, 3, 1, 0, 0, 0]
    assert [f["not_traffic"] for f in summary["files"]] == [0, 0, 0, 7, 3, 1, 0, 0, 0]  # + data: and blob: URLs
    decisions = [r for r in records if r["event"] == "decision"]
    assert len(decisions) == summary["totals"]["flows"] == 45
    assert len(records) - len(decisions) == summary["not_sent"]["entries"] == 9


# -- progress ---------------------------------------------------------------------------------

class _Tty(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(capsys, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "many.mitm"
    big.write_bytes(af.flow_file_bytes(af.test_flows()) * 40)  # 640 flows
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    code, out, err = run(capsys, str(big), "--policy", POLICY, "--db", db)
    assert code == 0 and "\r" not in err and "flows/s" not in err  # captured stderr is not a terminal
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    code = main(["audit", str(big), "--policy", POLICY, "--db", db, "-o", str(tmp_path / "r.txt")])
    drawn = tty.getvalue()
    assert code == 0 and "\r" in drawn and "█" in drawn and "flows" in drawn
    assert drawn.endswith("\r\x1b[K")  # the bar is cleared when done
    assert "█" not in (tmp_path / "r.txt").read_text()


def test_progress_disabled_writes_nothing() -> None:
    stream = _Tty()
    p = progress.Progress(100, stream=stream, enabled=False)
    p.update(50, 10)
    p.done()
    assert stream.getvalue() == ""


def test_exit_status_helper_prefers_error_over_block() -> None:
    assert command.EXIT_ERROR == 2 and command.EXIT_BLOCKED == 1


# -- report headers name their inputs ---------------------------------------------------------

def test_headers_name_the_input_files(capsys, db: str, tmp_path: Path) -> None:
    two = [FLOWS, str(DATA / "chrome.har")]
    code, out, _ = run(capsys, *two, "--policy", POLICY, "--db", db)
    assert out.splitlines()[0] == f"geogate audit of {FLOWS} and {two[1]}: 21 flows"
    html = tmp_path / "r.html"
    run(capsys, *two, "--policy", POLICY, "--db", db, "--format", "html", "-o", str(html))
    page = html.read_text()
    assert f"<title>geogate audit: {FLOWS} and {two[1]}</title>" in page and "2 files" not in page


def test_headers_stay_readable_for_many_files(capsys, db: str, tmp_path: Path) -> None:
    files = []
    for n in range(14):
        path = tmp_path / f"part-{n:02}.har"
        path.write_bytes((DATA / "fiddler.har").read_bytes())
        files.append(str(path))
    code, out, _ = run(capsys, *files, "--policy", POLICY, "--db", db)
    lines = out.splitlines()
    assert lines[0] == f"geogate audit of {files[0]}, {files[1]}, {files[2]} and 11 more files: 14 flows"
    listed = [line for line in lines if line.startswith("  ") and ".har" in line]
    assert [line.split()[0] for line in listed] == files[:10]
    assert "  ... and 4 more files, 4 flows" in lines
    html = tmp_path / "r.html"
    run(capsys, *files, "--policy", POLICY, "--db", db, "--format", "html", "-o", str(html))
    page = html.read_text()
    assert f"<h1>{files[0]}, {files[1]}, {files[2]} and 11 more files</h1>" in page
    assert page.count("<div>input ") == 10 and "… and 4 more input files, 4 flows" in page


# -- HAR entries that never went to the network -----------------------------------------------

DEFAULT_POLICY = str(af.ROOT / "policies" / "default.yaml")  # documentation ranges: allowed as special


def test_har_entries_never_sent_are_listed_apart_and_never_fail_the_gate(capsys, db: str, tmp_path: Path) -> None:
    firefox = str(DATA / "firefox.har")
    code, out, _ = run(capsys, firefox, "--policy", DEFAULT_POLICY, "--db", db, "--fail-on-block")
    assert code == 0, out  # Firefox's cache hits and a failed request are not unresolved traffic
    assert "none of the 4 flows would be blocked" in out and "unresolved" not in out
    section = _section(out, "NOT SENT")
    assert section[0] == ("NOT SENT: 3 HAR entries never went to the network (2 served from the browser cache, "
                          "1 failed before anything was sent); not judged, no bytes counted")
    rows = {line.split()[0]: line for line in section[2:-1]}
    assert set(rows) == {"www.example.de:443", "fonts.example.net:443", "tracker.example.cn:443"}
    assert "inferred 192.0.2.10 (DE)" in rows["www.example.de:443"]
    assert "none recorded for this host" in rows["fonts.example.net:443"]
    assert section[-1].startswith("inferred: an address the same host's recorded traffic went to elsewhere")
    before = out[:out.index("NOT SENT")]
    assert "fonts.example.net" not in before and "tracker.example.cn" not in before

    _, out, _ = run(capsys, firefox, "--policy", DEFAULT_POLICY, "--db", db, "--format", "json")
    records, summary = json_lines(out)
    assert summary["totals"]["flows"] == 4 and summary["totals"]["bytes_received"] == 5_896  # no cached bytes
    not_sent = [r for r in records if r["event"] == "audit_not_sent"]
    assert [(r["host"], r["why"], r["audit"]["bytes_received"]) for r in not_sent] == [
        ("www.example.de", "cache", 0), ("fonts.example.net", "cache", 0), ("tracker.example.cn", "failed", 0)]
    assert summary["not_sent"]["entries"] == 3 and summary["not_sent"]["by_reason"] == {"cache": 2, "failed": 1}
    inferred = {d["destination"]: d["inferred_addresses"] for d in summary["not_sent"]["destinations"]}
    assert inferred["www.example.de:443"] == [{"address": "192.0.2.10", "country": "DE"}]
    assert inferred["fonts.example.net:443"] == []

    _, out, _ = run(capsys, firefox, "--policy", DEFAULT_POLICY, "--db", db, "--format", "csv")
    rows_csv = [r for r in csv.DictReader(io.StringIO(out)) if r["action"] == "not-sent"]
    assert [(r["host"], r["bytes_sent"], r["bytes_received"]) for r in rows_csv] == [
        ("www.example.de", "0", "0"), ("fonts.example.net", "0", "0"), ("tracker.example.cn", "0", "0")]
    assert rows_csv[0]["reason"] == "served from the browser cache"

    page_path = tmp_path / "r.html"
    run(capsys, firefox, "--policy", DEFAULT_POLICY, "--db", db, "--format", "html", "-o", str(page_path))
    page = page_path.read_text()
    panel = page[page.index("<h2>Not sent to the network"):]
    panel = panel[:panel.index("</section>")]
    assert "3 HAR entries" in panel and "fonts.example.net:443" in panel and "none recorded" in panel
    assert '<span class="mono">192.0.2.10</span>' in panel and "inferred" in panel
    assert "3 HAR entries not sent to the network, listed apart" in page


def test_chrome_entries_never_sent_and_one_that_was(capsys, db: str) -> None:
    """Chrome's cache, service-worker and offline entries are apart (the failures with their
    error); a request reset after it was sent stays traffic without an address: fail closed."""
    code, out, _ = run(capsys, str(DATA / "chrome.har"), "--policy", DEFAULT_POLICY, "--db", db, "--fail-on-block")
    assert code == 1 and "1 of 5 flows would be blocked: 1 unresolved" in out
    assert next(line for line in out.splitlines() if line.startswith("upload.example.net")).split()[3] == "unresolved"
    section = _section(out, "NOT SENT")
    assert section[0].startswith("NOT SENT: 5 HAR entries never went to the network (2 failed before anything "
                                 "was sent, 2 served from the browser cache, 1 answered by a service worker)")
    assert any("api.example.cn:8443" in line and "net::ERR_INTERNET_DISCONNECTED" in line
               and "inferred 198.51.100.7" in line for line in section)
    code, out, _ = run(capsys, str(DATA / "chrome.har"), "--policy", POLICY, "--against", STRICT, "--db", db)
    assert _section(out, "NOT SENT")[0].startswith("NOT SENT: 5 HAR entries")  # policy changes list them too
