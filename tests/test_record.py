"""Record helpers that the proxy uses on every request."""

from __future__ import annotations

import json
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest

from geogate.core.record import timestamp
from geogate.core.record import timestamp_at

UTC = timezone.utc


@pytest.mark.parametrize("ts, text", [
    (datetime(2026, 11, 28, 15, 4, 5, 123456, tzinfo=UTC), "2026-11-28T15:04:05.123Z"),
    (datetime(2026, 11, 28, 15, 4, 5, 999999, tzinfo=UTC), "2026-11-28T15:04:05.999Z"),  # truncated, not rounded
    (datetime(2026, 11, 28, 15, 4, 5, tzinfo=UTC), "2026-11-28T15:04:05.000Z"),
    (datetime(2026, 12, 28, 15, 4, 5, 1000, tzinfo=UTC), "2026-12-28T15:04:05.001Z"),  # same h:m:s, next month
    (datetime(2027, 12, 28, 15, 4, 5, 1000, tzinfo=UTC), "2027-12-28T15:04:05.001Z"),  # and next year
    (datetime(2026, 1, 1, 5, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))), "2026-01-01T05:00:00.250+02:00"),
])
def test_timestamp(ts, text):
    assert timestamp(ts) == text


def test_timestamp_agrees_with_isoformat_across_seconds():
    start = datetime(2026, 11, 28, 23, 59, 58, tzinfo=UTC)
    for ms in range(0, 4000, 7):
        ts = start + timedelta(milliseconds=ms, microseconds=ms % 1000)
        assert timestamp(ts) == ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_timestamp_at_spells_the_time_as_timestamp_does():
    start = datetime(2026, 11, 28, 23, 59, 58, tzinfo=UTC).timestamp()
    for step in range(0, 3_000_000, 4_999):  # microseconds, across seconds and midnight
        wall = start + step / 1_000_000
        assert timestamp_at(wall) == timestamp(datetime.fromtimestamp(wall, UTC)), wall
    assert timestamp_at(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp_at(1798761599.9995) == "2026-12-31T23:59:59.999Z"  # 999.5 ms: not rounded up into 2027


# -- the documented schema --------------------------------------------------------------------------

def test_the_sample_line_in_the_docs_matches_the_schema():
    from record_schema import SCHEMA_PATH
    from record_schema import check_record

    text = (SCHEMA_PATH.parent / "decision-record.md").read_text()
    sample = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    check_record(json.loads(sample))


@pytest.mark.parametrize("target", ["8.8.8.8", "175.45.176.1", "[64:ff9b:1:af2d:b0:100::]", "[::ffff:127.0.0.1]:443"])
def test_explain_json_matches_the_schema(target, capsys):
    from geogate.cli.main import main
    from record_schema import check_record

    main(["explain", target, "--no-resolve", "--json"])
    check_record(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("record, complaint", [
    ({"event": "decision"}, "'ts' is a required property"),
    ({"event": "error", "ts": "2026-12-03T00:00:00.000Z"}, "'enforced' is a required property"),
    ({"event": "decision", "ts": "yesterday"}, "'yesterday' does not match"),
])
def test_the_schema_rejects_incomplete_records(record, complaint):
    from record_schema import check_record

    with pytest.raises(AssertionError, match=complaint):
        check_record(record)


# -- the outcome's part of a record, rendered once per outcome ----------------------------------------

def _decision(policy_body: str, address: str, now: datetime | None = None):
    import ipaddress

    from geogate.core.addresses import classify
    from geogate.core.decide import Request
    from geogate.core.decide import decide
    from geogate.core.facts import AddressFacts
    from geogate.core.facts import IPFacts
    from geogate.policy.loader import load_policy_text

    policy = load_policy_text("version: 1\nname: t\n" + policy_body, "t.yaml")
    ip = ipaddress.ip_address(address)
    return decide(policy, Request(host=address, port=443), [AddressFacts(classify(ip), IPFacts(ip))],
                  now=now or datetime(2026, 6, 1, tzinfo=UTC))


def test_record_values_are_plain_text_not_enum_members():
    from geogate.core.record import decision_record
    from geogate.core.record import to_json_line

    d = _decision("default: block\n", "9.9.9.9")
    rec = decision_record(d)
    assert type(rec["action"]) is str and type(rec["addresses"][0]["action"]) is str
    assert rec["action"] == "block" and '"action":"block"' in to_json_line(rec)


def test_an_outcome_is_rendered_once_and_its_rendering_serves_no_other():
    from geogate.core.decide import Decision
    from geogate.core.record import decision_record

    d = _decision("default: block\n", "9.9.9.9")
    again = Decision(d.request, d.outcome, wall=d.wall + 5)  # the same outcome, later
    assert decision_record(again)["addresses"] is decision_record(d)["addresses"]
    other = _decision("default: allow\ngeo: {unknown: allow}\n", "9.9.9.9")
    rec = decision_record(other)
    assert rec["addresses"] is not decision_record(d)["addresses"]
    assert (rec["action"], decision_record(d)["action"]) == ("allow", "block")


def test_the_renderings_kept_are_bounded(monkeypatch):
    from geogate.core import record
    from geogate.core.cache import BoundedCache

    monkeypatch.setattr(record, "_rendered", BoundedCache(3))
    decisions = [_decision(f"default: {a}\ngeo: {{unknown: {a}}}\n", f"9.9.9.{i}") for i, a in
                 enumerate(["allow", "block"] * 4)]
    records = [record.decision_record(d) for d in decisions]
    assert len(record._rendered) == 3
    # an outcome whose rendering was dropped is rendered again, the same
    assert record.decision_record(decisions[0]) == records[0]
    assert [r["action"] for r in records] == ["allow", "block"] * 4
