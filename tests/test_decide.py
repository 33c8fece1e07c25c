"""The decision engine, through GateState (policy file + MMDB files -> Decision), with small
databases written here and policies written inline.

Test databases (networks chosen so that each row below has exactly one reason to match):
  geo   (MaxMind City schema)  1.0.0.0/24 CN · 2.0.0.0/24 US · 3.0.0.0/24 DE · 4.0.0.0/24 GB
        registered US · 5.0.0.0/24 UA-43 · 5.0.1.0/24 UA-30 · 6.0.0.0/24 anycast, no country ·
        6.1.0.0/24 continent only · 8.0.0.0/24 PH representing US · 11.0.0.0/24 RU ·
        12.0.0.0/24 AU · 127.0.1.0/24 FR (a custom record inside loopback) · 2400:cb00::/32 CN ·
        2001:4860::/32 US · 2002:200:1::/48 CN (a 6to4 prefix whose IPv4 2.0.0.1 is US) ·
        2002:100:2::/48 US (6to4 of 1.0.0.2, which is CN) · ::ffff:2.0.0.0/120 US and
        ::ffff:3.0.0.0/120 DE (IPv4-mapped aliases, as MaxMind's own databases have)
  flat  (flat schema)          1.0.0.0/24 CN · 2.0.0.0/24 US · 12.0.0.0/24 AU · 13.0.0.0/24 BR
  other (flat schema)          3.0.0.0/24 RU · 7.0.0.0/24 RU
  asn   (MaxMind ASN schema)   2.0.0.0/24 AS15169 · 14.0.0.0/24 AS64500
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import sys
import textwrap
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
from maxminddb.errors import InvalidDatabaseError

from geogate.core.addresses import canonical_host
from geogate.core.addresses import classify
from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.core.decide import decide
from geogate.core.lookup import FactsSource
from geogate.core.record import block_body
from geogate.core.record import decision_record
from geogate.core.record import proxy_status
from geogate.core.record import to_json_line
from geogate.policy.groups import builtin_groups
from geogate.policy.state import GateState

sys.path.insert(0, str(Path(__file__).parent))
from mmdbs import MAXMIND_DATA  # noqa: E402
from mmdbs import maxmind_record  # noqa: E402
from mmdbs import write_flat  # noqa: E402
from mmdbs import write_maxmind  # noqa: E402

ip = ipaddress.ip_address
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DOJ = builtin_groups()["us-doj-countries-of-concern"]


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dbs")
    r = maxmind_record
    geo = write_maxmind(d / "geo.mmdb", {
        "1.0.0.0/24": r("CN", continent="AS"),
        "2.0.0.0/24": r("US", continent="NA"),
        "3.0.0.0/24": r("DE", continent="EU"),
        "4.0.0.0/24": r("GB", registered="US", continent="EU"),
        "5.0.0.0/24": r("UA", continent="EU", subdivisions=("43",)),
        "5.0.1.0/24": r("UA", continent="EU", subdivisions=("30",)),
        "6.0.0.0/24": r(None, anycast=True),
        "6.1.0.0/24": {"continent": {"code": "EU"}},
        "8.0.0.0/24": r("PH", represented="US", continent="AS"),
        "11.0.0.0/24": r("RU", continent="EU"),
        "12.0.0.0/24": r("AU", continent="OC"),
        "127.0.1.0/24": r("FR", continent="EU"),
        "2400:cb00::/32": r("CN", continent="AS"),
        "2001:4860::/32": r("US", continent="NA"),
        "2002:200:1::/48": r("CN", continent="AS"),
        "2002:100:2::/48": r("US", continent="NA"),
        "::ffff:2.0.0.0/120": r("US", continent="NA"),
        "::ffff:3.0.0.0/120": r("DE", continent="EU"),
    })
    flat = write_flat(d / "flat.mmdb", {"1.0.0.0/24": "CN", "2.0.0.0/24": "US", "12.0.0.0/24": "AU", "13.0.0.0/24": "BR"})
    other = write_flat(d / "other.mmdb", {"3.0.0.0/24": "RU", "7.0.0.0/24": "RU"})
    asn = write_maxmind(d / "asn.mmdb", {
        "2.0.0.0/24": {"autonomous_system_number": 15169, "autonomous_system_organization": "Google LLC"},
        "14.0.0.0/24": {"autonomous_system_number": 64500, "autonomous_system_organization": "Example AS"},
    }, database_type="GeoLite2-ASN")
    return {"geo": geo, "flat": flat, "other": other, "asn": asn}


_counter = itertools.count()


@pytest.fixture
def gate(tmp_path: Path, dbs: dict[str, Path]):
    """gate(policy body, db names...) -> GateState; the body gets `version` and `name` prepended."""
    opened: list[GateState] = []

    def make(body: str, *names: str, paths: list[Path] | None = None) -> GateState:
        path = tmp_path / f"policy-{next(_counter)}.yaml"
        path.write_text("version: 1\nname: t\n" + textwrap.dedent(body))
        state = GateState.load(path, paths if paths is not None else [dbs[n] for n in names or ("geo",)])
        opened.append(state)
        return state

    yield make
    for s in opened:
        s.databases.close()


def ask(state: GateState, *addresses: str, host: str | None = None, port: int | None = 443,
        now: datetime = NOW, resolve_error: str | None = None, **req) -> Decision:
    if host is None and addresses:
        host = addresses[0]
    req = Request(host=canonical_host(host) if host else None, port=port, **req)
    return state.decide(req, [ip(a) for a in addresses], now=now, resolve_error=resolve_error)


def test_a_policy_written_with_plain_words_decides_as_the_loaded_one(gate) -> None:
    """The engine compares actions and settings by identity; a Policy or Rule built by hand with
    plain strings (a test, a tool) must decide exactly as the loaded one, never fail open."""
    from dataclasses import replace

    loaded = gate(FIRST_MATCH + "geo:\n  unknown: block\n")
    plain = replace(loaded.policy, default="allow", unknown="block", mode="enforce", special="block",
                    rules=tuple(replace(r, action=str(r.action)) for r in loaded.policy.rules))
    by_hand = GateState(plain, loaded.databases, loaded.facts)
    for addr in ("3.0.0.1", "3.0.0.200", "2.0.0.1", "10.0.0.1"):
        want, got = ask(loaded, addr), ask(by_hand, addr)
        assert (got.action, got.rule) == (want.action, want.rule), addr
    assert ask(by_hand, "3.0.0.200").blocked
    with pytest.raises(ValueError):
        replace(loaded.policy.rules[0], action="deny")


# -- first match -----------------------------------------------------------------------------------

FIRST_MATCH = """\
default: allow
rules:
  - name: allow-3-low
    action: allow
    networks: [3.0.0.0/25]
  - name: block-de
    action: block
    countries: [DE]
"""


@pytest.mark.parametrize(("reverse", "addr", "action", "rule"), [
    (False, "3.0.0.1", "allow", "allow-3-low"),  # the network rule comes first
    (False, "3.0.0.200", "block", "block-de"),  # outside the /25: the country rule
    (False, "2.0.0.1", "allow", "default"),  # nothing matches
    (True, "3.0.0.1", "block", "block-de"),  # same rules reversed: the country rule wins
])
def test_first_match_wins(gate, reverse: bool, addr: str, action: str, rule: str) -> None:
    body = FIRST_MATCH
    if reverse:
        head, r1, r2 = body.split("  - ")
        body = head + "  - " + r2 + "  - " + r1
    d = ask(gate(body), addr)
    assert (d.action, d.rule) == (action, rule)


# -- every match key -------------------------------------------------------------------------------

MATCH_KEYS = """\
default: allow
special: allow
geo: {unknown: allow}
rules:
  - name: host-exact
    action: block
    hosts: [exact.example.com]
  - name: host-wild
    action: block
    hosts: ["*.wild.example.com"]
  - name: host-idn
    action: block
    hosts: ["bücher.example"]
  - name: net-v4
    action: block
    networks: [9.9.9.0/24]
  - name: net-v6
    action: block
    networks: ["2001:4860:4860::/48"]
  - name: asn
    action: block
    asns: [AS64500]
  - name: ports
    action: block
    ports: [25, 6660-6669]
  - name: subdivision
    action: block
    subdivisions: [UA-43]
  - name: continent
    action: block
    continents: [OC]
  - name: listed-country
    action: block
    countries: [CN]
  - name: group-country
    action: block
    countries: ["@us-doj-countries-of-concern"]
"""

# (address, host or None for the address itself, port, expected rule)
MATCH_ROWS = [
    ("2.0.0.1", "exact.example.com", 443, "host-exact"),  # exact host
    ("2.0.0.1", "EXACT.Example.COM.", 443, "host-exact"),  # canonicalised before matching
    ("2.0.0.1", "sub.exact.example.com", 443, "default"),  # exact means exact
    ("1.0.0.1", "exact.example.com", 443, "host-exact"),  # a CN address, but the host rule is first
    ("2.0.0.1", "a.wild.example.com", 443, "host-wild"),  # one label below
    ("2.0.0.1", "a.b.wild.example.com", 443, "host-wild"),  # several labels below
    ("2.0.0.1", "wild.example.com", 443, "default"),  # "*." does not match the apex
    ("2.0.0.1", "notwild.example.com", 443, "default"),  # suffix without the dot
    ("2.0.0.1", "BÜCHER.example", 443, "host-idn"),  # IDNA: the same A-label
    ("2.0.0.1", "xn--bcher-kva.example", 443, "host-idn"),  # given as punycode
    ("9.9.9.9", None, 443, "net-v4"),  # IPv4 network (no database record at all)
    ("2001:4860:4860::8888", None, 443, "net-v6"),  # IPv6 network
    ("2001:4860:1::1", None, 443, "default"),  # US, outside the /48
    ("14.0.0.1", None, 443, "asn"),  # AS64500 from the ASN database
    ("2.0.0.1", None, 25, "ports"),  # single port
    ("2.0.0.1", None, 6665, "ports"),  # port range
    ("2.0.0.1", None, 6670, "default"),  # just outside the range
    ("2.0.0.1", None, None, "default"),  # no port: a ports rule cannot match
    ("5.0.0.1", None, 443, "subdivision"),  # UA-43 (Crimea)
    ("5.0.1.1", None, 443, "default"),  # UA-30 (Kyiv)
    ("12.0.0.1", None, 443, "continent"),  # AU is in OC
    ("1.0.0.1", None, 443, "listed-country"),  # CN, listed
    ("2400:cb00::1", None, 443, "listed-country"),  # CN over IPv6
    ("11.0.0.1", None, 443, "group-country"),  # RU, through @us-doj-countries-of-concern
    ("3.0.0.1", None, 443, "default"),  # DE: nothing matches
]


@pytest.mark.parametrize(("addr", "host", "port", "rule"), MATCH_ROWS,
                         ids=[f"{a}-{h}-{p}" for a, h, p, _ in MATCH_ROWS])
def test_match_keys(gate, addr: str, host: str | None, port: int | None, rule: str) -> None:
    d = ask(gate(MATCH_KEYS, "geo", "asn"), addr, host=host, port=port)
    assert d.rule == rule
    assert d.action == ("allow" if rule == "default" else "block")


def test_group_match_explains_itself(gate) -> None:
    d = ask(gate(MATCH_KEYS, "geo", "asn"), "11.0.0.1")
    rec = decision_record(d)
    assert rec["match"]["group"] == "us-doj-countries-of-concern"
    assert (rec["match"]["key"], rec["match"]["value"], rec["match"]["field"], rec["match"]["source"]) == (
        "countries", "RU", "country", "geo")
    assert d.citation == DOJ.citation  # the rule has none: the group's citation is used
    assert "@us-doj-countries-of-concern" in d.reason and "RU" in d.reason


def test_rule_citation_and_reason_win_over_the_group(gate) -> None:
    state = gate("""\
        default: allow
        rules:
          - name: doj
            action: block
            countries: ["@us-doj-countries-of-concern"]
            reason: Country of concern
            citation: 28 CFR 202.601
        """)
    d = ask(state, "1.0.0.1")
    assert (d.action, d.rule, d.reason, d.citation, d.country) == ("block", "doj", "Country of concern", "28 CFR 202.601", "CN")


@pytest.mark.parametrize(("addr", "host", "port", "action", "rule"), [
    ("1.0.0.1", None, 443, "block", "cn-https"),  # CN and 443
    ("1.0.0.1", None, 80, "allow", "default"),  # CN but not 443
    ("2.0.0.1", None, 443, "allow", "default"),  # 443 but not CN
    ("3.0.0.1", "a.example.de", 443, "block", "de-net-host"),  # all three keys
    ("3.0.0.200", "a.example.de", 443, "allow", "default"),  # network misses
    ("3.0.0.1", "a.example.com", 443, "allow", "default"),  # host misses
])
def test_keys_are_anded(gate, addr, host, port, action, rule) -> None:
    state = gate("""\
        default: allow
        rules:
          - name: cn-https
            action: block
            countries: [CN]
            ports: [443]
          - name: de-net-host
            action: block
            countries: [DE]
            networks: [3.0.0.0/25]
            hosts: ["*.example.de"]
        """)
    d = ask(state, addr, host=host, port=port)
    assert (d.action, d.rule) == (action, rule)


@pytest.mark.parametrize(("addr", "action", "would_block", "rule", "continent"), [
    ("12.0.0.1", "block", True, "oceania", "OC"),  # AU -> OC, from the country
    ("13.0.0.1", "allow", True, "south-america", "SA"),  # BR -> SA, monitor rule
    ("1.0.0.1", "allow", False, "default", "AS"),  # CN -> AS: no rule
])
def test_flat_database_gets_the_continent_from_the_country(gate, addr, action, would_block, rule, continent) -> None:
    state = gate("""\
        default: allow
        rules:
          - name: oceania
            action: block
            continents: [OC]
          - name: south-america
            action: monitor
            continents: [SA]
        """, "flat")
    d = ask(state, addr)
    assert (d.action, d.would_block, d.rule) == (action, would_block, rule)
    assert decision_record(d)["addresses"][0]["continent"] == continent


# -- client profiles -------------------------------------------------------------------------------

CLIENTS = """\
default: allow
clients:
  - name: ci
    sources: [10.20.0.0/16, "fd00:20::/32"]
    rules:
      - name: ci-allow-cn
        action: allow
        countries: [CN]
  - name: alice
    users: [alice]
    rules:
      - name: alice-blocks-us
        action: block
        countries: [US]
  - name: both
    sources: [10.30.0.0/16]
    users: [bob]
    rules:
      - name: bob-blocks-de
        action: block
        countries: [DE]
rules:
  - name: block-cn
    action: block
    countries: [CN]
"""


@pytest.mark.parametrize(("client", "user", "addr", "action", "rule"), [
    ("10.20.1.1", None, "1.0.0.1", "allow", "ci-allow-cn"),  # profile rules come before the policy's
    ("fd00:20::5", None, "1.0.0.1", "allow", "ci-allow-cn"),  # IPv6 client network
    ("10.21.0.1", None, "1.0.0.1", "block", "block-cn"),  # outside the source network
    (None, None, "1.0.0.1", "block", "block-cn"),  # no client address known
    ("10.20.1.1", None, "2.0.0.1", "allow", "default"),  # profile rules fall through to the policy's
    ("10.20.1.1", "alice", "2.0.0.1", "allow", "default"),  # first matching profile (ci) wins
    ("192.0.2.1", "alice", "2.0.0.1", "block", "alice-blocks-us"),  # user profile
    ("192.0.2.1", "alice", "1.0.0.1", "block", "block-cn"),  # ... the policy's rules still apply
    ("10.30.0.1", "bob", "3.0.0.1", "block", "bob-blocks-de"),  # sources AND users
    ("10.30.0.1", "carol", "3.0.0.1", "allow", "default"),  # right network, wrong user
    ("10.40.0.1", "bob", "3.0.0.1", "allow", "default"),  # right user, wrong network
    ("10.30.0.1", None, "3.0.0.1", "allow", "default"),  # no user
])
def test_client_profiles(gate, client, user, addr, action, rule) -> None:
    d = ask(gate(CLIENTS), addr, client_ip=ip(client) if client else None, user=user)
    assert (d.action, d.rule) == (action, rule)


# -- monitor -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "addr", "would_block", "rule"), [
    ("mode: monitor\ndefault: allow\n", "1.0.0.1", True, "block-cn"),  # a block becomes would_block
    ("mode: monitor\ndefault: allow\n", "2.0.0.1", False, "default"),  # an allow stays an allow
    ("mode: monitor\ndefault: block\n", "2.0.0.1", True, "default"),  # default block, monitored
    ("mode: monitor\ndefault: allow\ngeo: {unknown: block}\n", "6.0.0.1", True, "geo.unknown"),  # unknown, monitored
    ("mode: monitor\ndefault: allow\nspecial: block\n", "127.0.0.1", True, "special:loopback"),
])
def test_monitor_mode_never_blocks(gate, body, addr, would_block, rule) -> None:
    d = ask(gate(body + "rules:\n  - name: block-cn\n    action: block\n    countries: [CN]\n"), addr)
    assert (d.action, d.enforced, d.would_block, d.rule) == ("allow", False, would_block, rule)
    rec = decision_record(d)
    assert (rec["action"], rec["enforced"], rec["would_block"]) == ("allow", False, would_block)


MONITOR_RULE = """\
default: allow
addresses: {mode}
rules:
  - name: watch-cn
    action: monitor
    countries: [CN]
"""


@pytest.mark.parametrize(("mode", "addresses", "would_block", "address"), [
    ("all", ["1.0.0.1"], True, "1.0.0.1"),  # a monitor rule allows and flags
    ("all", ["2.0.0.1", "1.0.0.1"], True, "2.0.0.1"),  # all: any monitored address flags the decision
    ("any", ["1.0.0.1"], True, "1.0.0.1"),  # any: only a monitored address to use
    ("any", ["2.0.0.1", "1.0.0.1"], False, "2.0.0.1"),  # any: a clean address is preferred, no flag
    ("any", ["1.0.0.1", "2.0.0.1"], False, "2.0.0.1"),  # ... whatever the order
])
def test_monitor_rule_allows_and_records_would_block(gate, mode, addresses, would_block, address) -> None:
    d = ask(gate(MONITOR_RULE.format(mode=mode)), *addresses)
    assert (d.action, d.enforced, d.would_block, str(d.address)) == ("allow", True, would_block, address)
    if would_block:
        assert d.rule == "watch-cn"


# -- expiry ------------------------------------------------------------------------------------------

EXPIRING = """\
default: allow
rules:
  - name: temp-allow-cn
    action: allow
    countries: [CN]
    expires: 2026-06-30
  - name: block-cn
    action: block
    countries: [CN]
"""


@pytest.mark.parametrize(("now", "action", "rule", "warned"), [
    (datetime(2026, 6, 30, 23, 59, tzinfo=timezone.utc), "allow", "temp-allow-cn", False),  # live on its last day
    (datetime(2026, 7, 1, 0, 0, tzinfo=timezone.utc), "block", "block-cn", True),  # skipped the day after
])
def test_expired_rule_is_skipped_and_warned(gate, now, action, rule, warned) -> None:
    d = ask(gate(EXPIRING), "1.0.0.1", now=now)
    assert (d.action, d.rule) == (action, rule)
    warnings = decision_record(d)["warnings"]
    if warned:
        assert any("temp-allow-cn" in w and "expired" in w and "2026-06-30" in w for w in warnings)
    else:
        assert not any("temp-allow-cn" in w for w in warnings)


def test_without_a_given_time_the_clock_decides_the_day_and_the_record_time(gate, monkeypatch) -> None:
    # GateState.decide(now=None) reads time.time() and keeps the UTC day it is in; expiry must
    # still turn exactly at midnight UTC, and the decision's time must be the clock's
    import geogate.policy.state as state_module

    state = gate(EXPIRING)
    clock = [datetime(2026, 6, 30, 23, 59, 59, 999000, tzinfo=timezone.utc).timestamp()]
    monkeypatch.setattr(state_module.time, "time", lambda: clock[0])
    d = ask(state, "1.0.0.1", now=None)
    assert (d.rule, d.ts) == ("temp-allow-cn", datetime(2026, 6, 30, 23, 59, 59, 999000, tzinfo=timezone.utc))
    assert decision_record(d)["ts"] == "2026-06-30T23:59:59.999Z"
    clock[0] += 0.001  # midnight
    d = ask(state, "1.0.0.1", now=None)
    assert (d.rule, d.ts.date().isoformat()) == ("block-cn", "2026-07-01")
    clock[0] -= 86400  # a clock that steps back a day is followed too
    assert ask(state, "1.0.0.1", now=None).rule == "temp-allow-cn"


def test_expired_rule_that_does_not_match_is_not_warned(gate) -> None:
    d = ask(gate(EXPIRING), "2.0.0.1", now=datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert d.rule == "default" and not d.warnings


# -- geo settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "addr", "action", "field"), [
    ("[country]", "4.0.0.1", "allow", None),  # located GB
    ("[registered_country]", "4.0.0.1", "block", "registered_country"),  # registered US
    ("[country, registered_country]", "4.0.0.1", "block", "registered_country"),  # either
    ("[represented_country]", "8.0.0.1", "block", "represented_country"),  # PH base representing US
    ("[country]", "8.0.0.1", "allow", None),  # PH
    ("[registered_country]", "2.0.0.1", "block", "registered_country"),  # US both ways
])
def test_geo_fields(gate, fields, addr, action, field) -> None:
    state = gate(f"default: allow\ngeo: {{fields: {fields}, unknown: allow}}\n"
                 "rules:\n  - name: block-us\n    action: block\n    countries: [US]\n")
    d = ask(state, addr)
    assert d.action == action
    match = decision_record(d)["match"]
    assert (match["field"] if match else None) == field


@pytest.mark.parametrize(("unknown", "addr", "action", "anycast"), [
    ("allow", "6.0.0.1", "allow", True),  # anycast record without a country
    ("block", "6.0.0.1", "block", True),
    ("block", "6.1.0.1", "block", False),  # record with a continent only
    ("block", "9.9.9.9", "block", False),  # no record at all
    ("allow", "9.9.9.9", "allow", False),
])
def test_geo_unknown(gate, unknown, addr, action, anycast) -> None:
    d = ask(gate(f"default: allow\ngeo: {{unknown: {unknown}}}\n"), addr)
    assert (d.action, d.rule) == (action, "geo.unknown")
    assert decision_record(d)["addresses"][0]["anycast"] is anycast


def test_geo_unknown_is_judged_once_and_each_address_named(gate) -> None:
    """Addresses no database knows share one memoised judgement, which says geo.unknown decided;
    the reason is each address's own."""
    state = gate("default: allow\ngeo: {unknown: block}\n")
    first, second = ask(state, "9.9.9.9"), ask(state, "9.9.9.10")
    assert (first.rule, second.rule) == ("geo.unknown", "geo.unknown")
    assert "for 9.9.9.9;" in first.reason and "for 9.9.9.10;" in second.reason
    (judgement,) = state._verdicts.judgements.values()
    assert judgement.unknown and (judgement.action, judgement.rule) == ("block", "geo.unknown")
    known = gate("default: allow\n")
    ask(known, "2.0.0.1")
    (judgement,) = known._verdicts.judgements.values()
    assert not judgement.unknown and judgement.reason == "no rule matched; policy default is allow"


def test_a_decision_needs_its_time(gate) -> None:
    d = ask(gate("default: allow\n"), "2.0.0.1")
    with pytest.raises(TypeError, match="ts or wall"):
        Decision(d.request, d.outcome)
    assert Decision(d.request, d.outcome, NOW).wall == NOW.timestamp()


def test_geo_unknown_does_not_apply_when_a_country_is_known(gate) -> None:
    d = ask(gate("default: allow\ngeo: {unknown: block}\n"), "2.0.0.1")
    assert (d.action, d.rule) == ("allow", "default")


@pytest.mark.parametrize(("disagreement", "order", "addr", "action", "source"), [
    ("any", ("geo", "other"), "3.0.0.1", "block", "other"),  # one database saying RU is enough
    ("first", ("geo", "other"), "3.0.0.1", "allow", None),  # only the first (DE) counts
    ("first", ("other", "geo"), "3.0.0.1", "block", "other"),  # order decides which is first
    ("first", ("geo", "other"), "7.0.0.1", "block", "other"),  # first database WITH a country
    ("any", ("geo", "other"), "2.0.0.1", "allow", None),  # agreement: nothing to disagree on
])
def test_geo_disagreement(gate, disagreement, order, addr, action, source) -> None:
    state = gate(f"default: allow\ngeo: {{disagreement: {disagreement}}}\n"
                 "rules:\n  - name: block-ru\n    action: block\n    countries: [RU]\n", *order)
    d = ask(state, addr)
    assert d.action == action
    rec = decision_record(d)
    assert (rec["match"]["source"] if rec["match"] else None) == source


def test_every_database_opinion_is_recorded(gate) -> None:
    rec = decision_record(ask(gate("default: allow\n", "geo", "other"), "3.0.0.1"))
    assert rec["addresses"][0]["sources"] == {"geo": "DE", "other": "RU"}


# -- special-purpose ranges --------------------------------------------------------------------------

@pytest.mark.parametrize(("special", "addr", "action", "rule"), [
    ("allow", "127.0.0.1", "allow", "special:loopback"),
    ("allow", "10.0.0.1", "allow", "special:private"),
    ("allow", "::ffff:169.254.169.254", "allow", "special:link-local"),  # judged as the IPv4
    ("block", "127.0.0.1", "block", "special:loopback"),
    ("block", "::1", "block", "special:loopback"),
    ("block", "100.64.0.1", "block", "special:cgnat"),
    ("block", "fd00::1", "block", "special:ula"),
    ("block", "64:ff9b::a9fe:a9fe", "block", "special:link-local"),  # NAT64 to the metadata address
    ("block", "127.0.1.5", "block", "special:loopback"),  # block never looks records up...
    ("block", "10.1.2.3", "allow", "carve-out"),  # ...but a networks rule carves an exception
    ("block", "10.2.0.1", "block", "special:private"),  # outside the carve-out
    ("lookup", "127.0.1.5", "block", "block-fr"),  # lookup: the custom record (FR) decides
    ("lookup", "127.0.0.1", "block", "geo.unknown"),  # lookup without a record: unknown (block)
    ("lookup", "10.1.2.3", "allow", "carve-out"),  # rules apply as usual
])
def test_special(gate, special, addr, action, rule) -> None:
    state = gate(f"""\
        default: allow
        special: {special}
        rules:
          - name: carve-out
            action: allow
            networks: [10.1.0.0/16]
          - name: allow-de-countries
            action: allow
            countries: [DE]
          - name: block-fr
            action: block
            countries: [FR]
        """)
    d = ask(state, addr)
    assert (d.action, d.rule) == (action, rule)
    assert decision_record(d)["addresses"][0]["special"] is not None


def test_special_lookup_uses_the_custom_record(gate) -> None:
    state = gate("default: block\nspecial: lookup\ngeo: {unknown: allow}\n"
                 "rules:\n  - name: allow-fr\n    action: allow\n    countries: [FR]\n")
    d = ask(state, "127.0.1.5")
    assert (d.action, d.rule, d.country) == ("allow", "allow-fr", "FR")
    assert ask(state, "127.0.0.1").rule == "geo.unknown"


# -- several addresses -------------------------------------------------------------------------------

ADDR_POLICY = "default: allow\naddresses: {mode}\nrules:\n  - name: block-cn\n    action: block\n    countries: [CN]\n"


@pytest.mark.parametrize(("mode", "addresses", "action", "address", "rule"), [
    ("all", ["2.0.0.1", "1.0.0.1"], "block", "1.0.0.1", "block-cn"),  # one bad address blocks all
    ("all", ["2.0.0.1", "3.0.0.1"], "allow", "2.0.0.1", "default"),  # all good: dial the first
    ("all", ["1.0.0.1"], "block", "1.0.0.1", "block-cn"),
    ("any", ["1.0.0.1", "2.0.0.1"], "allow", "2.0.0.1", "default"),  # pinned to the allowed one
    ("any", ["3.0.0.1", "2.0.0.1"], "allow", "3.0.0.1", "default"),  # the first allowed
    ("any", ["1.0.0.1", "2400:cb00::1"], "block", "1.0.0.1", "block-cn"),  # none allowed
])
def test_addresses_all_vs_any(gate, mode, addresses, action, address, rule) -> None:
    d = ask(gate(ADDR_POLICY.format(mode=mode)), *addresses, host="multi.example.com")
    assert (d.action, str(d.address), d.rule) == (action, address, rule)
    assert len(d.verdicts) == len(addresses)
    rec = decision_record(d)
    assert rec["address"] == address and [a["ip"] for a in rec["addresses"]] == addresses
    if mode == "any" and action == "block":
        assert "none of the 2 addresses" in d.reason


# -- embedded IPv4 -----------------------------------------------------------------------------------

EMBEDDED_POLICY = "default: allow\nspecial: block\nrules:\n  - name: block-cn\n    action: block\n    countries: [CN]\n"


@pytest.mark.parametrize(("addr", "action", "rule", "country"), [
    ("::ffff:1.0.0.1", "block", "block-cn", "CN"),  # IPv4-mapped
    ("::1.0.0.1", "block", "block-cn", "CN"),  # IPv4-compatible
    ("::ffff:0:1.0.0.1", "block", "block-cn", "CN"),  # IPv4-translated
    ("64:ff9b::1.0.0.1", "block", "block-cn", "CN"),  # NAT64
    ("2002:100:1::1", "block", "block-cn", "CN"),  # 6to4
    ("2001:0:4136:e378:8000:63bf:feff:fffe", "block", "block-cn", "CN"),  # Teredo client 1.0.0.1
    ("::ffff:2.0.0.1", "allow", "default", "US"),  # control (the database has an own, aliased record too)
    ("::ffff:3.0.0.1", "allow", "default", "DE"),  # control: the mapped prefix is not "reserved"
    ("64:ff9b::200:1", "allow", "default", "US"),  # control, NAT64
    ("2002:200:2::1", "allow", "default", "US"),  # control, 6to4 without an own record
    ("2002:200:1::1", "block", "block-cn", "CN"),  # IPv4 says US, the 6to4 prefix's own record CN: stricter wins
    ("2002:100:2::1", "block", "block-cn", "CN"),  # IPv4 says CN, own record US: stricter wins
    ("::ffff:127.0.0.1", "block", "special:loopback", None),  # special range of the IPv4
    ("2002:7f00:1::", "block", "special:loopback", None),
])
def test_embedded_ipv4_is_judged_as_the_ipv4(gate, addr, action, rule, country) -> None:
    d = ask(gate(EMBEDDED_POLICY), addr)
    assert (d.action, d.rule, d.country) == (action, rule, country)
    rec = decision_record(d)["addresses"][0]
    assert rec["ip"] == str(ip(addr)) and rec["embedded_ipv4"] is not None


def test_maxmind_alias_of_mapped_addresses_is_not_special(gate) -> None:
    """MaxMind's databases alias ::ffff:0:0/96 onto the IPv4 tree, so the IPv6 form has its own
    record; under `special: block` it must still be judged as the public IPv4 it carries."""
    state = gate("default: allow\nspecial: block\n", paths=[MAXMIND_DATA / "GeoIP2-Country-Test.mmdb"])
    for addr in ("::ffff:81.2.69.142", "::81.2.69.142", "2002:5102:458e::1"):
        d = ask(state, addr)
        assert (d.action, d.rule, d.country) == ("allow", "default", "GB"), addr


# -- failures ----------------------------------------------------------------------------------------

def test_lookup_error_blocks(gate, monkeypatch: pytest.MonkeyPatch) -> None:
    state = gate("default: allow\nspecial: allow\ngeo: {unknown: allow}\n", "geo", "flat")
    flat = state.databases.databases[1]

    class BrokenAt:
        """The reader, corrupt at the data of one address (whichever of its lookups is used)."""

        def __init__(self, reader):
            self.reader = reader

        def _check(self, addr):
            if addr == ip("1.0.0.1"):
                raise InvalidDatabaseError("The MaxMind DB file's data section contains bad data")

        def get(self, addr):
            self._check(addr)
            return self.reader.get(addr)

        def get_with_prefix_len(self, addr):
            self._check(addr)
            return self.reader.get_with_prefix_len(addr)

    monkeypatch.setattr(flat, "_reader", BrokenAt(flat._reader))
    d = ask(state, "1.0.0.1")
    assert (d.action, d.rule) == ("block", "error")
    assert "flat" in d.reason and "1.0.0.1" in d.reason
    assert decision_record(d)["addresses"][0]["error"]
    assert ask(state, "2.0.0.1").action == "allow"  # other addresses are unaffected
    d = ask(state, "::ffff:1.0.0.1")  # the embedded IPv4's lookup fails: also a block
    assert (d.action, d.rule) == ("block", "error")


@pytest.mark.parametrize(
    "order, address, network, records",
    [
        (("wide", "narrow"), "20.0.0.1", "20.0.0.0/16", (("wide", "US"), ("narrow", "CA"))),
        (("narrow", "wide"), "20.0.0.1", "20.0.0.0/24", (("narrow", "CA"), ("wide", "US"))),
        (("wide", "narrow"), "21.0.0.1", "21.0.0.0/24", (("narrow", "MX"),)),  # the first has no record
        (("wide", "narrow"), "22.0.0.1", None, ()),
    ],
)
def test_facts_give_every_record_and_the_network_of_the_first(tmp_path, order, address, network, records) -> None:
    """Each database answers for the address; the network reported is that of the first record,
    in database order, whatever the later databases' networks are."""
    from geogate.core.databases import DatabaseSet

    paths = {"wide": write_flat(tmp_path / "wide.mmdb", {"20.0.0.0/16": "US"}),
             "narrow": write_flat(tmp_path / "narrow.mmdb", {"20.0.0.0/24": "CA", "21.0.0.0/24": "MX"})}
    databases = DatabaseSet.open([paths[n] for n in order])
    try:
        facts = FactsSource(databases).facts(classify(ip(address))).own
        assert facts.network == network
        assert tuple((r.source, r.country) for r in facts.records) == records
        assert facts.error is None
    finally:
        databases.close()


def test_lookup_error_via_facts_source(dbs) -> None:
    """decide() itself, fed by a FactsSource whose database raises on lookup."""
    from geogate.core.databases import DatabaseSet
    from geogate.policy.loader import load_policy_text

    policy = load_policy_text("version: 1\nname: t\ndefault: allow\nmode: monitor\n", "inline.yaml")
    databases = DatabaseSet.open([dbs["geo"]])
    try:
        db = databases.databases[0]
        db.find = lambda addr: (_ for _ in ()).throw(InvalidDatabaseError("corrupt"))  # type: ignore[method-assign]
        source = FactsSource(databases)
        facts = [source.facts(classify(ip("2.0.0.1")))]
        d = decide(policy, Request(host="2.0.0.1", port=443), facts, source.infos, now=NOW)
        assert (d.action, d.enforced, d.would_block, d.rule) == ("allow", False, True, "error")  # monitor: flagged
    finally:
        databases.close()


@pytest.mark.parametrize(("error", "reason"), [
    ("nx.example: no such host (NXDOMAIN)", "nx.example: no such host (NXDOMAIN)"),
    (None, "has no address"),
])
def test_no_addresses_blocks_with_resolve_error(gate, error, reason) -> None:
    d = ask(gate("default: allow\n"), host="nx.example", resolve_error=error)
    assert (d.action, d.rule, d.address, d.verdicts) == ("block", "resolve-error", None, ())
    assert reason in d.reason
    rec = decision_record(d)
    assert rec["address"] is None and rec["addresses"] == [] and rec["would_block"] is True


# -- transparent mode: the host name is only a claim ------------------------------------------------

HOST_CLAIM = """\
default: allow
rules:
  - name: trusted-api
    action: allow
    hosts: [api.example.com]
  - name: block-cn
    action: block
    countries: [CN]
"""


@pytest.mark.parametrize(("claim", "resolves_to", "action", "rule", "mismatch"), [
    (True, ["1.0.0.9"], "block", "block-cn", True),  # the name resolves elsewhere: rule ignored
    (True, None, "block", "block-cn", True),  # the name could not be resolved: unverified
    (True, ["1.0.0.1", "2.0.0.1"], "allow", "trusted-api", False),  # resolves to the dialled address
    (False, None, "allow", "trusted-api", False),  # explicit proxy: the name is what is dialled
])
def test_host_claim_must_resolve_to_the_dialled_address(gate, claim, resolves_to, action, rule, mismatch) -> None:
    addresses = frozenset(ip(a) for a in resolves_to) if resolves_to is not None else None
    d = ask(gate(HOST_CLAIM), "1.0.0.1", host="api.example.com", host_is_claim=claim, host_addresses=addresses)
    assert (d.action, d.rule, d.host_mismatch) == (action, rule, mismatch)
    assert decision_record(d)["host_mismatch"] is mismatch


# -- the decision record (docs/decision-record.md) and what a blocked client sees -----------------

RECORD_TYPES = {
    "ts": str, "event": str, "flow_id": (str, type(None)), "client": (str, type(None)),
    "user": (str, type(None)), "mode": str, "host": (str, type(None)), "port": (int, type(None)),
    "sni": (str, type(None)), "action": str, "enforced": bool, "would_block": bool, "rule": str,
    "reason": str, "citation": (str, type(None)), "address": (str, type(None)), "host_mismatch": bool,
    "addresses": list, "policy": dict, "databases": list,
}
RECORD_ADDRESS_TYPES = {
    "ip": str, "embedded_ipv4": (str, type(None)), "special": (str, type(None)),
    "country": (str, type(None)), "registered_country": (str, type(None)),
    "represented_country": (str, type(None)), "continent": (str, type(None)),
    "subdivisions": list, "asn": (int, type(None)), "sources": dict,
}


def test_decision_record_has_every_spec_field(gate, dbs) -> None:
    state = gate("default: allow\nrules:\n  - name: doj\n    action: block\n"
                 "    countries: ['@us-doj-countries-of-concern']\n    citation: 28 CFR 202.601\n", "geo", "asn")
    req = Request(host="example.cn", port=443, client_ip=ip("127.0.0.1"), user="ci", flow_id="f-1",
                  client="127.0.0.1:54321", mode="regular", sni="example.cn")
    d = state.decide(req, [ip("1.0.0.1")], now=NOW)
    rec = decision_record(d)
    for key, types in RECORD_TYPES.items():
        assert key in rec, key
        assert isinstance(rec[key], types), (key, rec[key])
    assert rec["ts"] == "2026-06-01T12:00:00.000Z"
    assert datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")) == NOW
    assert (rec["event"], rec["flow_id"], rec["client"], rec["user"], rec["mode"]) == (
        "decision", "f-1", "127.0.0.1:54321", "ci", "regular")
    assert (rec["host"], rec["port"], rec["sni"]) == ("example.cn", 443, "example.cn")
    assert (rec["action"], rec["enforced"], rec["would_block"], rec["rule"]) == ("block", True, True, "doj")
    assert (rec["citation"], rec["address"], rec["host_mismatch"]) == ("28 CFR 202.601", "1.0.0.1", False)
    (a,) = rec["addresses"]
    for key, types in RECORD_ADDRESS_TYPES.items():
        assert key in a, key
        assert isinstance(a[key], types), (key, a[key])
    assert (a["ip"], a["embedded_ipv4"], a["special"], a["country"], a["registered_country"]) == (
        "1.0.0.1", None, None, "CN", "CN")
    assert (a["represented_country"], a["continent"], a["subdivisions"], a["asn"]) == (None, "AS", [], None)
    assert a["sources"] == {"geo": "CN"}  # the ASN database gives no countries
    policy_path = Path(rec["policy"]["path"])
    assert rec["policy"] == {"name": "t", "path": str(policy_path),
                             "sha256": hashlib.sha256(policy_path.read_bytes()).hexdigest()}
    assert [db["name"] for db in rec["databases"]] == ["geo", "asn"]
    for db, path in zip(rec["databases"], (dbs["geo"], dbs["asn"]), strict=True):
        assert set(db) >= {"name", "type", "build_epoch", "sha256"}
        assert isinstance(db["build_epoch"], int) and db["build_epoch"] > 0
        assert db["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["databases"][1]["type"] == "GeoLite2-ASN"
    line = to_json_line(rec)
    assert "\n" not in line and json.loads(line) == json.loads(json.dumps(rec))


def test_record_of_an_embedded_address_with_subdivisions_and_asn(gate) -> None:
    rec = decision_record(ask(gate("default: allow\n", "geo", "asn"), "::ffff:2.0.0.1"))
    a = rec["addresses"][0]
    assert (a["ip"], a["embedded_ipv4"], a["country"], a["asn"]) == ("::ffff:200:1", "2.0.0.1", "US", 15169)
    rec = decision_record(ask(gate("default: allow\n", "geo"), "5.0.0.1"))
    assert rec["addresses"][0]["subdivisions"] == ["UA-43"]


def test_proxy_status_and_block_body(gate) -> None:
    state = gate("default: allow\nrules:\n  - name: doj\n    action: block\n"
                 "    countries: ['@us-doj-countries-of-concern']\n    reason: Country of concern\n"
                 "    citation: 28 CFR 202.601\n")
    d = ask(state, "1.0.0.1", host="example.cn", port=443)
    assert proxy_status(d) == 'geogate; error=destination_ip_prohibited; details="country=CN; rule=doj"'
    body = block_body(d)
    for part in ("example.cn:443", "1.0.0.1", "CN", "doj", "Country of concern", "28 CFR 202.601"):
        assert part in body, part
    d = ask(state, host="nx.example", resolve_error="no such host")
    assert proxy_status(d) == 'geogate; error=destination_ip_prohibited; details="country=unknown; rule=resolve-error"'
    assert "no such host" in block_body(d)


# -- the verdict memo changes nothing -----------------------------------------------------------------

MEMO_POLICY = """\
default: allow
special: {special}
geo: {{fields: [country, registered_country], unknown: block}}
clients:
  - name: ci
    sources: [10.20.0.0/16]
    rules:
      - {{name: ci-no-registry, action: block, hosts: [pypi.org]}}
  - name: support
    users: [support]
    rules:
      - {{name: support-eu-only, action: block, continents: [AS, NA]}}
rules:
  {carve}
  - {{name: mirror, action: allow, hosts: ["*.example.com"], ports: [443]}}
  - {{name: old, action: block, countries: [AU], expires: 2026-06-15}}
  - {{name: doj, action: block, countries: ["@us-doj-countries-of-concern"]}}
  - {{name: watch, action: monitor, asns: [15169]}}
  - {{name: regions, action: block, subdivisions: [UA-43]}}
"""
CARVE = "- {name: carve, action: allow, networks: [127.0.0.0/8, 3.0.0.0/24]}"  # makes every rule set address-dependent

MEMO_ADDRESSES = ["1.0.0.1", "2.0.0.1", "3.0.0.1", "4.0.0.1", "5.0.0.1", "5.0.1.1", "6.0.0.1", "6.1.0.1", "8.0.0.1",
                  "11.0.0.1", "12.0.0.1", "13.0.0.1", "14.0.0.1", "127.0.0.1", "127.0.1.5", "10.1.2.3", "9.9.9.9",
                  "::ffff:1.0.0.1", "::ffff:2.0.0.1", "2002:200:1::1", "2002:100:2::1", "64:ff9b::300:1", "2400:cb00::1",
                  "2001:4860::1", "fe80::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("carve", [CARVE, ""], ids=["networks-rule", "no-networks-rule"])
@pytest.mark.parametrize("special", ["allow", "block", "lookup"])
def test_memoised_verdicts_render_the_same_records(gate, special, carve) -> None:
    """GateState remembers what the rules said per set of records (decide.VerdictMemo); the plain
    decide() does not. Every record must come out the same, for rules that depend on the address
    (networks, claimed hosts), the host, the port, the client, the date, and for special ranges and
    embedded IPv4."""
    state = gate(MEMO_POLICY.format(special=special, carve=carve), "geo", "flat", "asn")
    source = FactsSource(state.databases)
    requests = [
        dict(host="www.example.com", port=443), dict(host="www.example.com", port=80), dict(host="pypi.org", port=443),
        dict(host="pypi.org", port=443, client_ip=ip("10.20.0.9")), dict(host="a.example", port=443, user="support"),
        dict(host="www.example.com", port=443, host_is_claim=True, host_addresses=frozenset({ip("1.0.0.1")})),
        dict(host="www.example.com", port=443, host_is_claim=True, host_addresses=frozenset()),
    ]
    checked = set()
    for now in (NOW, datetime(2026, 7, 1, tzinfo=timezone.utc)):  # before and after `old` expires
        for fields in requests:
            for group in [[a] for a in MEMO_ADDRESSES] + [MEMO_ADDRESSES[i:i + 3] for i in range(0, 24, 3)]:
                req = Request(**fields)
                addresses = [ip(a) for a in group]
                for _ in range(2):  # the second time from the memo (and the outcome cache)
                    got = decision_record(state.decide(req, addresses, now=now))
                    want = decision_record(decide(state.policy, req, [source.facts(classify(a)) for a in addresses],
                                                  source.infos, now=now))
                    assert got == want, (fields, group, now)
                checked.add(got["rule"])
    assert checked >= {"mirror", "old", "doj", "watch", "regions", "default", "geo.unknown", "ci-no-registry",
                       "support-eu-only"} | ({"carve"} if carve else set())
    assert bool(state._verdicts.judgements) == (not carve)  # the memo was used exactly where it may be


def test_memo_is_not_used_where_the_rules_depend_on_the_address() -> None:
    from geogate.core.decide import VerdictMemo
    from geogate.policy.loader import load_policy_text

    def memo_key(body: str, **req):
        policy = load_policy_text("version: 1\nname: t\ndefault: allow\n" + body, "inline.yaml")
        return VerdictMemo(policy).rules_for(Request(**req), NOW.date())[1]

    countries = "rules:\n  - {name: r, action: block, countries: [CN]}\n"
    hosts = "rules:\n  - {name: r, action: block, hosts: [a.example]}\n"
    ports = "rules:\n  - {name: r, action: block, ports: [443]}\n"
    assert memo_key(countries, host="a.example", port=443) == (None, None, None, NOW.date())  # host, port irrelevant
    assert memo_key(hosts, host="a.example", port=443) == (None, "a.example", None, NOW.date())
    assert memo_key(ports, host="a.example", port=443) == (None, None, 443, NOW.date())
    assert memo_key("rules:\n  - {name: r, action: allow, networks: [10.0.0.0/8]}\n", host="a.example", port=443) is None
    assert memo_key(hosts, host="a.example", port=443, host_is_claim=True) is None  # verified against the address
