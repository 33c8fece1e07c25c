"""`geogate check` and `explain` say what a user can act on, once, and are quiet when all is well:
a stale built-in group is noted once per run however many policies cite it, and a rule the
databases cannot answer is mentioned only where it could change a decision."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from geogate.cli import main as cli
from geogate.core.databases import DatabaseSet
from geogate.policy.groups import STALE_AFTER_DAYS
from geogate.policy.groups import builtin_groups
from geogate.policy.loader import load_policy
from geogate.policy.state import database_warnings

PROJECT = Path(__file__).resolve().parents[1]
PRESETS = sorted(str(p.relative_to(PROJECT)) for p in (PROJECT / "policies").glob("*.yaml"))
TEST_DB = str(PROJECT / "tests/data/maxmind/GeoIP2-Country-Test.mmdb")


@pytest.fixture
def presets(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "geogate-cache"))
    monkeypatch.delenv("GEOGATE_POLICY", raising=False)
    monkeypatch.delenv("GEOGATE_GEOIP_DIR", raising=False)
    monkeypatch.chdir(PROJECT)
    return PRESETS


def cited_groups() -> dict[str, object]:
    names = {name for path in PRESETS for name in load_policy(PROJECT / path).group_citations}
    return {name: builtin_groups()[name] for name in names}


def check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], today, paths: list[str]):
    monkeypatch.setattr(cli, "_today", lambda: today)
    code = cli.main(["check", *paths])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_make_check_on_a_fresh_clone_is_one_ok_line_per_policy(presets, monkeypatch, capsys):
    groups = cited_groups()
    today = min(g.as_of for g in groups.values()) + timedelta(days=STALE_AFTER_DAYS)  # every group still current
    assert all(g.age_days(today) <= STALE_AFTER_DAYS for g in groups.values())
    code, out, err = check(monkeypatch, capsys, today, presets)
    assert code == 0
    assert [line.split(": ok (")[0] for line in out] == presets
    # The one thing left to say: the enforcing OFAC preset blocks Crimea, Sevastopol, Donetsk and
    # Luhansk only with a City database, which a fresh clone does not have. observe.yaml, the same
    # rule in monitor mode, blocks nothing either way and says nothing.
    assert err == ["policies/ofac-comprehensive.yaml: warning: rule ofac-regions matches subdivisions, but no City "
                   "database is loaded (dbip-country, geo-whois-asn-country); it can never match: add a City "
                   "database with --db, e.g. MaxMind GeoLite2-City (docs/databases.md)."]


def test_a_stale_group_is_noted_once_per_run_with_what_to_do(presets, monkeypatch, capsys):
    groups = cited_groups()
    today = max(g.as_of for g in groups.values()) + timedelta(days=STALE_AFTER_DAYS + 1)
    code, out, err = check(monkeypatch, capsys, today, presets)
    assert code == 0 and len(out) == len(presets)
    notes = [line for line in err if "built-in group" in line]
    assert len(notes) == len(groups) > 1
    for name, g in groups.items():
        (note,) = [n for n in notes if f"@{name} " in n]
        assert note.startswith(f"geogate: note: built-in group @{name} was last checked against its source on {g.as_of}")
        assert f"`geogate groups {name}`" in note


def test_a_group_checked_within_the_threshold_is_not_noted(presets, monkeypatch, capsys):
    g = builtin_groups()["us-doj-countries-of-concern"]
    policy = "policies/us-doj-countries-of-concern.yaml"
    for age, noted in ((STALE_AFTER_DAYS, False), (STALE_AFTER_DAYS + 1, True)):
        _code, _out, err = check(monkeypatch, capsys, g.as_of + timedelta(days=age), [policy])
        assert any("@us-doj-countries-of-concern" in line for line in err) is noted, (age, err)


@pytest.mark.parametrize("preset, countries, warned", [
    ("observe.yaml", None, False),            # monitor mode: blocks nothing, whatever matches
    ("observe.yaml", {"US"}, False),          # a decision about a US address: no Ukrainian region to miss
    ("observe.yaml", {"UA"}, True),           # ... about a Ukrainian one: the region flag could not be set
    ("ofac-comprehensive.yaml", None, True),  # enforce: Crimea would be allowed
    ("ofac-comprehensive.yaml", {"RU", "US"}, False),
    ("ofac-comprehensive.yaml", {"UA"}, True),
])
def test_the_city_database_warning_only_where_it_could_change_a_decision(preset, countries, warned):
    policy = load_policy(PROJECT / "policies" / preset)
    databases = DatabaseSet.open([Path(TEST_DB)])
    try:
        warnings = database_warnings(policy, databases, countries)
    finally:
        databases.close()
    assert any("City database" in w for w in warnings) is warned, warnings


def test_the_database_warnings_agree_in_number(tmp_path):
    rule = "  - name: {0}\n    action: block\n    subdivisions: [UA-43]\n    asns: [64512]\n"
    databases = DatabaseSet.open([Path(TEST_DB)])
    try:
        for names, words in ((["r1"], ("rule r1 matches", "it can never match")),
                             (["r1", "r2"], ("rules r1, r2 match", "they can never match"))):
            path = tmp_path / f"{len(names)}.yaml"
            path.write_text("version: 1\nname: p\ndefault: allow\nrules:\n" + "".join(rule.format(n) for n in names))
            warnings = database_warnings(load_policy(path), databases)
            assert len(warnings) == 2  # subdivisions and asns
            for w in warnings:
                assert all(word in w for word in words), w
                assert "(s)" not in w
    finally:
        databases.close()
