"""Database freshness as policy: `geo.max_age` and `geo.on_stale` (warn | monitor | block).

Databases are written here and their build_epoch rewritten to a chosen age; decisions are asked
at fixed times, so a database crosses its max_age between two decisions of the same state.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import textwrap
import time
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest

from geogate.core.decide import Request
from geogate.core.record import decision_record
from geogate.policy.loader import PolicyError
from geogate.policy.loader import load_policy_text
from geogate.policy.state import GateState

sys.path.insert(0, str(Path(__file__).parent))
from mmdbs import maxmind_record  # noqa: E402
from mmdbs import rewrite_metadata  # noqa: E402
from mmdbs import write_maxmind  # noqa: E402
from record_schema import check_record  # noqa: E402

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = 86400


def old_db(directory: Path, age_days: float, name: str = "geo.mmdb", built: int | None = None) -> Path:
    """A City database (1.0.0.0/24 CN, 2.0.0.0/24 US) built `age_days` before NOW."""
    fresh = write_maxmind(directory / f"fresh-{name}", {
        "1.0.0.0/24": maxmind_record("CN"), "2.0.0.0/24": maxmind_record("US"),
    })
    epoch = built if built is not None else int(NOW.timestamp() - age_days * DAY)
    out = rewrite_metadata(fresh, directory / name, build_epoch=epoch)
    fresh.unlink()
    return out


def state(tmp_path: Path, geo: str, db: Path) -> GateState:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ndefault: allow\n" + textwrap.dedent(geo)
                      + "rules:\n  - name: no-cn\n    action: block\n    countries: [CN]\n")
    return GateState.load(policy, [db])


def ask(s: GateState, address: str, now: datetime = NOW):
    return s.decide(Request(host=address, port=443), [ipaddress.ip_address(address)], now=now)


# -- the policy language ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("45d", 45 * DAY), ("36h", 36 * 3600), ("6w", 42 * DAY), ("1D", DAY)])
def test_max_age_units(text: str, seconds: int) -> None:
    p = load_policy_text(f"version: 1\nname: t\ndefault: allow\ngeo:\n  max_age: {text}\n", "p.yaml")
    assert p.max_age == seconds and p.on_stale == "warn"


@pytest.mark.parametrize(("value", "key", "words"), [
    ("max_age: 45x", "45x", ["geo.max_age: `45x` is not an age", "e.g. `45d`"]),
    ("max_age: 45", "45", ["e.g. `45d`"]),
    ("max_age: 0d", "0d", ["is not an age"]),
    ("on_stale: maybe", "maybe", ["geo.on_stale: `maybe` is not one of warn, monitor, block"]),
    ("on_stale: blok", "blok", ["did you mean `block`?"]),
])
def test_bad_values_are_one_error_at_their_position(value: str, key: str, words: list[str]) -> None:
    text = f"version: 1\nname: t\ndefault: allow\ngeo:\n  {value}\n"
    with pytest.raises(PolicyError) as err:
        load_policy_text(text, "p.yaml")
    (issue,) = err.value.issues
    column = text.splitlines()[4].index(key) + 1
    assert str(issue).startswith(f"p.yaml:5:{column}: error: ")
    for w in words:
        assert w in str(issue)


# -- the engine -------------------------------------------------------------------------------

def test_a_fresh_database_changes_nothing(tmp_path: Path) -> None:
    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 10))
    d = ask(s, "2.0.0.1")
    assert not d.blocked and d.stale is None and d.warnings == ()
    assert "stale" not in decision_record(d)
    assert not s.freshness(NOW.timestamp()).stale


def test_warn_records_the_warning_and_decides_as_usual(tmp_path: Path) -> None:
    s = state(tmp_path, "geo:\n  max_age: 45d\n", old_db(tmp_path, 60))
    allowed, blocked = ask(s, "2.0.0.1"), ask(s, "1.0.0.1")
    assert not allowed.blocked and blocked.blocked and blocked.rule == "no-cn"
    for d in (allowed, blocked):
        assert d.stale == "warn"
        (w,) = d.warnings
        assert "database geo is older than geo.max_age 45d" in w.replace(" (built 2026-04-02)", "")
        assert "geo.on_stale: warn" in w
        rec = decision_record(d)
        check_record(rec)
        assert rec["stale"] == "warn" and rec["warnings"] == [w]


def test_monitor_turns_the_policy_observe_only(tmp_path: Path) -> None:
    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: monitor\n", old_db(tmp_path, 60))
    d = ask(s, "1.0.0.1")
    assert not d.blocked and not d.enforced and d.would_block and d.rule == "no-cn"
    rec = decision_record(d)
    check_record(rec)
    assert (rec["action"], rec["enforced"], rec["stale"]) == ("allow", False, "monitor")


def test_block_fails_closed_even_for_allowed_destinations(tmp_path: Path) -> None:
    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 60))
    d = ask(s, "2.0.0.1")
    assert d.blocked and d.enforced and d.rule == "geo.stale" and d.stale == "block"
    assert "older than geo.max_age 45d" in d.reason and "geo.on_stale: block" in d.reason
    check_record(decision_record(d))


def test_block_fails_closed_in_a_monitor_mode_policy_too(tmp_path: Path) -> None:
    s = state(tmp_path, "mode: monitor\ngeo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 60))
    assert ask(s, "2.0.0.1").blocked


def test_a_database_turns_stale_while_the_state_is_in_use(tmp_path: Path) -> None:
    """The same loaded state (its outcome cache included) answers fresh before the crossing and
    stale after it: staleness is an input of every decision, not a property fixed at load."""
    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 40))
    before, after = NOW + timedelta(days=4, hours=23), NOW + timedelta(days=5, seconds=1)
    assert not ask(s, "2.0.0.1", before).blocked
    assert ask(s, "2.0.0.1", after).blocked
    assert not ask(s, "2.0.0.1", before).blocked
    f = s.freshness(after.timestamp())
    assert f.stale and f.database == "geo" and f.on_stale == "block" and f.max_age == 45 * DAY
    assert f.stale_at == pytest.approx((NOW + timedelta(days=5)).timestamp(), abs=1)
    assert f.age == pytest.approx(45 * DAY + 1, abs=1)
    assert not s.freshness(before.timestamp()).stale and s.freshness(before.timestamp()).warning is None


def test_the_oldest_database_decides(tmp_path: Path) -> None:
    young, old = old_db(tmp_path, 5, "young.mmdb"), old_db(tmp_path, 50, "old.mmdb")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ndefault: allow\ngeo:\n  max_age: 45d\n")
    s = GateState.load(policy, [young, old])
    assert s.freshness(NOW.timestamp()).database == "old"
    assert ask(s, "2.0.0.1").stale == "warn"


def test_no_usable_build_time_counts_as_stale(tmp_path: Path) -> None:
    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 0, built=2**40))
    d = ask(s, "2.0.0.1")
    assert d.blocked and "no usable build time" in d.reason


def test_without_max_age_nothing_is_ever_stale(tmp_path: Path) -> None:
    s = state(tmp_path, "", old_db(tmp_path, 4000))
    assert ask(s, "2.0.0.1").stale is None and not s.freshness().stale
    assert s.freshness(NOW.timestamp()).age == pytest.approx(4000 * DAY, abs=1)
    json.dumps(decision_record(ask(s, "1.0.0.1")))


# -- a database directory (geoipupdate's) and the proxy's reload --------------------------------

def test_a_directory_stands_for_its_mmdb_files_by_name(tmp_path: Path) -> None:
    from geogate.core.errors import GeogateError
    from geogate.policy.state import database_paths

    d = tmp_path / "GeoIP"
    old_db(d, 1, "GeoLite2-Country.mmdb")
    old_db(d, 1, "GeoLite2-ASN.mmdb")
    (d / "GeoLite2-City.mmdb.temp").write_bytes(b"half")  # geoipupdate's file being written
    (d / ".geoipupdate.lock").write_text("")
    assert [p.name for p in database_paths([d])] == ["GeoLite2-ASN.mmdb", "GeoLite2-Country.mmdb"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GeogateError, match="holds no .mmdb file"):
        database_paths([empty])


def test_live_state_takes_in_a_new_file_in_the_directory_and_says_staleness_once(tmp_path: Path, caplog) -> None:
    import logging

    from geogate.proxy.reload import LiveState
    from geogate.proxy.reload import Source

    d = tmp_path / "GeoIP"
    old_db(d, 0, "GeoLite2-Country.mmdb", built=int(time.time()) - 100 * DAY)
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ndefault: allow\ngeo:\n  max_age: 45d\n  on_stale: monitor\n")
    live = LiveState(Source(str(policy), (str(d),)), use_inotify=False)
    try:
        caplog.set_level(logging.INFO, logger="geogate")
        assert live.check_freshness() is False  # stale from the start: said, but no crossing
        assert live.check_freshness() is False  # and said once
        said = [r.message for r in caplog.records if "older than geo.max_age" in r.message]
        assert len(said) == 1 and "observe-only" in said[0]
        # geoipupdate adds a database: taken in whole, without a restart
        young = old_db(tmp_path, 0, "GeoLite2-ASN.mmdb", built=int(time.time()) - DAY)
        young.replace(d / "GeoLite2-ASN.mmdb")
        assert live.poll() is True
        assert [i.name for i in live.state.databases.infos] == ["GeoLite2-ASN", "GeoLite2-Country"]
        # and replaces the stale one with a fresh one (atomic rename): applied after the settle time
        fresh = old_db(tmp_path, 0, "new.mmdb", built=int(time.time()) - DAY)
        fresh.replace(d / "GeoLite2-Country.mmdb")
        deadline = time.monotonic() + 30
        while not live.poll() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live.state.freshness().stale
        assert live.check_freshness() is True
        assert live.check_freshness() is False
        assert len([r for r in caplog.records if "within geo.max_age again" in r.message]) == 1
    finally:
        live.stop()


def test_db_info_shows_age_and_stale_state_by_the_policy(tmp_path: Path, capsys, monkeypatch) -> None:
    from geogate.cli.main import main

    monkeypatch.setenv("GEOGATE_CACHE_DIR", str(tmp_path / "cache"))
    db = old_db(tmp_path, 0, built=int(time.time()) - 20 * DAY)
    policy = tmp_path / "p.yaml"
    for max_age, stale in (("10d", True), ("30d", False)):
        policy.write_text(f"version: 1\nname: t\ndefault: allow\ngeo:\n  max_age: {max_age}\n  on_stale: block\n")
        assert main(["db", "info", "--db", str(db), "--policy", str(policy), "--json"]) == 0
        (entry,) = json.loads(capsys.readouterr().out)
        assert (entry["age_days"], entry["stale"], entry["max_age"], entry["on_stale"]) == (20, stale, max_age, "block")
        assert main(["db", "info", "--db", str(db), "--policy", str(policy)]) == 0
        text = capsys.readouterr().out
        assert "(20 days ago)" in text
        assert (f"stale: older than geo.max_age {max_age}; geo.on_stale: block" in text) is stale
        assert (f"fresh: within geo.max_age {max_age}; geo.on_stale: block" in text) is not stale


def test_on_stale_without_max_age_is_a_warning() -> None:
    p = load_policy_text("version: 1\nname: t\ndefault: allow\ngeo:\n  on_stale: block\n", "p.yaml")
    assert p.max_age is None
    (w,) = p.warnings
    assert w.startswith("p.yaml:5:13: warning: geo.on_stale does nothing without geo.max_age")


def test_gateway_kernel_sets_follow_the_same_staleness(tmp_path: Path) -> None:
    """The gateway's sets are built from the same engine: with on_stale: block, a stale database
    makes every public address blocked in the kernel; before the crossing only the rule's."""
    from geogate.gateway import sets

    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 40))
    fresh, stale = sets.build(s, now=NOW), sets.build(s, now=NOW + timedelta(days=6))
    us, cn = ipaddress.ip_address("2.0.0.1"), ipaddress.ip_address("1.0.0.1")
    assert fresh.is_blocked(0, 0, cn) and not fresh.is_blocked(0, 0, us)
    assert stale.is_blocked(0, 0, cn) and stale.is_blocked(0, 0, us)
    assert stale.is_blocked(0, 0, ipaddress.ip_address("9.9.9.9"))


def test_the_live_path_turns_stale_at_the_limit_not_at_the_end_of_the_day(tmp_path: Path, monkeypatch) -> None:
    """Decisions without an explicit time (the proxy's) keep the day and the staleness for the
    interval they hold; the limit falls inside a day, and decisions turn at it."""
    import geogate.policy.state as state_module

    s = state(tmp_path, "geo:\n  max_age: 45d\n  on_stale: block\n", old_db(tmp_path, 0, built=int(NOW.timestamp())))
    limit = NOW.timestamp() + 45 * DAY
    clock = {"now": limit - 60}
    monkeypatch.setattr(state_module.time, "time", lambda: clock["now"])
    live = Request(host="2.0.0.1", port=443)
    assert not s.decide(live, [ipaddress.ip_address("2.0.0.1")]).blocked
    clock["now"] = limit + 1  # same UTC day (12:00 + 1 s)
    assert s.decide(live, [ipaddress.ip_address("2.0.0.1")]).blocked
    clock["now"] = limit - 60  # a clock stepped back: fresh again
    assert not s.decide(live, [ipaddress.ip_address("2.0.0.1")]).blocked


def test_gateway_file_watch_takes_in_a_new_file_in_the_directory(tmp_path: Path, monkeypatch) -> None:
    """The gateway's kernel sets follow a --db directory as the proxy does: a database added to it
    is loaded with the others, the sets built from the whole new set."""
    import threading

    from geogate.gateway import ruleset
    from geogate.gateway.daemon import Gateway
    from geogate.gateway.daemon import Options

    monkeypatch.setenv("GEOGATE_GATEWAY_STATE", str(tmp_path / "gateway.json"))
    d = tmp_path / "GeoIP"
    old_db(d, 1, "GeoLite2-Country.mmdb")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: t\ndefault: allow\n")
    options = Options(policy=str(policy), dbs=[str(d)], log=None, proxy_argv=None, file_interval=0.1, settle=0.1)
    said: list[str] = []
    gateway = Gateway(ruleset.GatewayConfig(lan=("lan0",)), options, GateState.load(str(policy), [str(d)]),
                      say=said.append)
    applied: list[GateState] = []
    monkeypatch.setattr(gateway, "_apply", applied.append)  # the kernel is not touched here
    looked = threading.Event()
    paths = gateway._paths

    def watched(*args):
        listing = paths(*args)
        looked.set()  # after the directory was listed: a file added from here on is new to the watcher
        return listing

    monkeypatch.setattr(gateway, "_paths", watched)
    watcher = threading.Thread(target=gateway._watch_files, daemon=True)
    watcher.start()
    try:
        assert looked.wait(30)  # the watcher has taken its first look: the new file comes after it
        young = old_db(tmp_path, 0, "GeoLite2-ASN.mmdb")
        young.replace(d / "GeoLite2-ASN.mmdb")
        deadline = time.monotonic() + 30
        while not applied and time.monotonic() < deadline:
            time.sleep(0.1)
        assert applied, f"the new file in the directory was not taken in: {said}"
        assert [i.name for i in applied[0].databases.infos] == ["GeoLite2-ASN", "GeoLite2-Country"]
    finally:
        gateway.stopping.set()
        watcher.join(10)
