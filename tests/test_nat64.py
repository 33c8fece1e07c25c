"""NAT64 prefixes: the well-known /96, the RFC 8215 local-use /48 and operators' own prefixes.

The layouts are checked against RFC 6052 section 2.4's own table. Table-driven in the style of
Smokescreen's classifyAddr tests: every row is (input, declared prefixes, expected...). An address
in 64:ff9b:1::/48 that no declared prefix covers is never guessed at: the engine blocks it.
"""

from __future__ import annotations

import ipaddress
import sys
import textwrap
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest

from geogate.cli import main as cli
from geogate.core.addresses import NO_NAT64
from geogate.core.addresses import Nat64Prefixes
from geogate.core.addresses import classify
from geogate.core.addresses import embedded_ipv4
from geogate.core.addresses import nat64_decode
from geogate.core.decide import Request
from geogate.core.record import decision_record
from geogate.policy.loader import PolicyError
from geogate.policy.loader import load_policy_text
from geogate.policy.state import GateState
from geogate.proxy.reload import LiveState
from geogate.proxy.reload import Source

sys.path.insert(0, str(Path(__file__).parent))
from mmdbs import maxmind_record  # noqa: E402
from mmdbs import write_maxmind  # noqa: E402

ip = ipaddress.ip_address
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
KP_LOCAL_48 = "64:ff9b:1:af2d:b0:100::"  # 175.45.176.1 (KP) in the /48 layout of 64:ff9b:1::/48


def prefixes(*nets: str) -> Nat64Prefixes:
    return Nat64Prefixes(tuple(ipaddress.IPv6Network(n) for n in nets))


# RFC 6052 section 2.4: 192.0.2.33 embedded under each prefix length.
RFC6052_TABLE = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
]


@pytest.mark.parametrize(("prefix", "address"), RFC6052_TABLE, ids=[p for p, _a in RFC6052_TABLE])
def test_rfc6052_section_2_4_table(prefix: str, address: str) -> None:
    length = int(prefix.split("/")[1])
    assert str(ipaddress.IPv4Address(nat64_decode(int(ip(address)), length))) == "192.0.2.33"
    addr = classify(ip(address), prefixes(prefix))
    assert (str(addr.embedded_ipv4), addr.embedding, addr.nat64_prefix) == ("192.0.2.33", "nat64", prefix)
    assert addr.special == "documentation"  # 192.0.2.0/24: the embedded IPv4's range decides
    assert embedded_ipv4(ip(address), prefixes(prefix)) == (ip("192.0.2.33"), "nat64")


@pytest.mark.parametrize("length", [32, 40, 48, 56, 64, 96])
def test_every_layout_decodes_every_bit(length: int) -> None:
    """Each IPv4 bit lands where RFC 6052 puts it (bits 64-71 skipped), whatever the suffix holds."""
    net = ipaddress.IPv6Network(("64:ff9b:1::" if length >= 48 else "2001:db8::", length), strict=False)
    for v4 in (0x00000001, 0x80000000, 0xAF2DB001, 0xFFFFFFFF, 0x12345678):
        if length == 96:
            value = int(net.network_address) | v4
        else:
            before = 64 - length  # IPv4 bits in bits length..63
            after = 32 - before  # the rest, from bit 72 on
            suffix = (1 << (56 - after)) - 1  # the bits after the IPv4, all ones: ignored
            value = int(net.network_address) | (v4 >> after) << 64 | (v4 & ((1 << after) - 1)) << (56 - after) | suffix
        addr = classify(ipaddress.IPv6Address(value), prefixes(str(net)))
        assert addr.embedded_ipv4 == ipaddress.IPv4Address(v4), (length, hex(v4))


# (address, declared prefixes, embedded IPv4, embedding, special, nat64_prefix)
NAT64_VECTORS = [
    # the well-known prefix: always decoded, /96, declared or not
    ("64:ff9b::175.45.176.1", (), "175.45.176.1", "nat64", None, "64:ff9b::/96"),
    ("64:ff9b::a9fe:a9fe", (), "169.254.169.254", "nat64", "link-local", "64:ff9b::/96"),
    ("64:ff9b::175.45.176.1", ("64:ff9b:1::/48",), "175.45.176.1", "nat64", None, "64:ff9b::/96"),
    # local-use, undeclared: never guessed (it used to be read as the low 32 bits: 0.0.0.0 here)
    (KP_LOCAL_48, (), None, None, "nat64-local-undeclared", "64:ff9b:1::/48"),
    ("64:ff9b:1::a9fe:a9fe", (), None, None, "nat64-local-undeclared", "64:ff9b:1::/48"),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", (), None, None, "nat64-local-undeclared", "64:ff9b:1::/48"),
    # local-use, declared /48
    (KP_LOCAL_48, ("64:ff9b:1::/48",), "175.45.176.1", "nat64", None, "64:ff9b:1::/48"),
    ("64:ff9b:1:a9fe:a9:fe00::", ("64:ff9b:1::/48",), "169.254.169.254", "nat64", "link-local", "64:ff9b:1::/48"),
    # local-use, a /96 declared inside it: the rest of the /48 stays undeclared
    ("64:ff9b:1::a9fe:a9fe", ("64:ff9b:1::/96",), "169.254.169.254", "nat64", "link-local", "64:ff9b:1::/96"),
    ("64:ff9b:1:0:1::a9fe:a9fe", ("64:ff9b:1::/96",), None, None, "nat64-local-undeclared", "64:ff9b:1::/48"),
    (KP_LOCAL_48, ("64:ff9b:1::/96",), None, None, "nat64-local-undeclared", "64:ff9b:1::/48"),
    # local-use, /56 and /64 declared
    ("64:ff9b:1:af:2d:b001::", ("64:ff9b:1::/56",), "175.45.176.1", "nat64", None, "64:ff9b:1::/56"),
    ("64:ff9b:1:0:af:2db0:100:0", ("64:ff9b:1::/64",), "175.45.176.1", "nat64", None, "64:ff9b:1::/64"),
    # an operator's own prefix outside 64:ff9b:1::/48 (its special range no longer decides)
    ("2001:db8:1af:2db0:1::", ("2001:db8:100::/40",), "175.45.176.1", "nat64", None, "2001:db8:100::/40"),
    ("2001:db8:200::1", ("2001:db8:100::/40",), None, None, "documentation", None),  # outside it: as before
    ("2001:db8:1af:2db0:1::", (), None, None, "documentation", None),  # not declared: as before
    # the u-octet (bits 64-71) must be zero: otherwise nothing is decoded and the address blocks
    ("64:ff9b:1:af2d:ffb0:100::", ("64:ff9b:1::/48",), None, None, "nat64-nonzero-u-octet", "64:ff9b:1::/48"),
    ("64:ff9b:1:0:1af:2db0:100:0", ("64:ff9b:1::/64",), None, None, "nat64-nonzero-u-octet", "64:ff9b:1::/64"),
    ("2001:db8:c000:221:100::", ("2001:db8::/32",), None, None, "nat64-nonzero-u-octet", "2001:db8::/32"),
    # a /96's u-octet is part of the prefix (the loader refuses one that is not zero): not checked again
    ("2001:db8:122:344::192.0.2.33", ("2001:db8:122:344::/96",), "192.0.2.33", "nat64", "documentation", "2001:db8:122:344::/96"),
    # other forms are untouched by declarations
    ("::ffff:127.0.0.1", ("64:ff9b:1::/48",), "127.0.0.1", "ipv4-mapped", "loopback", None),
    ("2002:7f00:1::", ("64:ff9b:1::/48",), "127.0.0.1", "6to4", "loopback", None),
    ("2606:4700::1111", ("64:ff9b:1::/48", "2001:db8:100::/40"), None, None, None, None),
]


@pytest.mark.parametrize(("text", "declared", "v4", "form", "special", "prefix"), NAT64_VECTORS,
                         ids=[f"{r[0]}-{'+'.join(r[1]) or 'none'}" for r in NAT64_VECTORS])
def test_nat64_vectors(text, declared, v4, form, special, prefix) -> None:
    addr = classify(ip(text), prefixes(*declared))
    got = (str(addr.embedded_ipv4) if addr.embedded_ipv4 else None, addr.embedding, addr.special, addr.nat64_prefix)
    assert got == (v4, form, special, prefix)


def test_declarations_do_not_change_other_addresses() -> None:
    import random

    rng = random.Random(6052)
    declared = prefixes("64:ff9b:1::/48", "2001:db8:100::/40", "2a00:1450::/32")
    sample = [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(3000)]
    sample += [ipaddress.IPv6Address(0x2001 << 112 | rng.getrandbits(112)) for _ in range(3000)]
    sample += [ipaddress.IPv6Address(0x2A00 << 112 | rng.getrandbits(112)) for _ in range(3000)]
    nets = declared.networks
    for a in sample:
        if not any(a in n for n in nets) and a not in ipaddress.IPv6Network("64:ff9b:1::/48"):
            assert classify(a, declared) == classify(a, NO_NAT64) == classify(a)


# -- the engine ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nat64-dbs")
    return write_maxmind(d / "geo.mmdb", {
        "175.45.176.0/22": maxmind_record("KP", continent="AS"),
        "8.8.8.0/24": maxmind_record("US", continent="NA"),
    })


POLICY = """\
version: 1
name: nat64-test
default: allow
special: {special}
{nat64}
rules:
  - name: ofac
    action: block
    countries: ["@ofac-comprehensive"]
  - name: carve
    action: allow
    networks: [64:ff9b:1::/48, 2001:db8::/32]
"""


def state(tmp_path: Path, db: Path, *, special: str = "allow", nat64: str = "", extra: str = "") -> GateState:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(special=special, nat64=nat64) + extra)
    return GateState.load(path, [db])


def ask(s: GateState, address: str):
    return s.decide(Request(host=str(ip(address)), port=443), [ip(address)], now=NOW)


@pytest.mark.parametrize("special", ["allow", "block", "lookup"])
def test_undeclared_local_use_blocks_whatever_the_policy_says(tmp_path, geo_db, special) -> None:
    """Before: allowed as special:unspecified (the low 32 bits are 0.0.0.0). A `networks` rule
    for the /48 that allows it does not help either: where it leads is unknown."""
    d = ask(state(tmp_path, geo_db, special=special), KP_LOCAL_48)
    assert (d.action, d.rule) == ("block", "special:nat64-local-undeclared")
    assert "`nat64: [64:ff9b:1::/48]`" in d.reason
    rec = decision_record(d)["addresses"][0]
    assert (rec["embedded_ipv4"], rec["embedding"], rec["special"]) == (None, None, "nat64-local-undeclared")


def test_undeclared_local_use_in_monitor_mode_would_block(tmp_path, geo_db) -> None:
    d = ask(state(tmp_path, geo_db, extra="mode: monitor\n"), KP_LOCAL_48)
    assert (d.action, d.would_block, d.rule) == ("allow", True, "special:nat64-local-undeclared")


@pytest.mark.parametrize(("nat64", "address", "action", "rule", "country"), [
    ("nat64: [64:ff9b:1::/48]", KP_LOCAL_48, "block", "ofac", "KP"),
    ("nat64: [64:ff9b:1::/48]", "64:ff9b:1:808:8:800::", "allow", "carve", "US"),  # 8.8.8.8; `networks` sees the IPv6 too
    ("nat64: [64:ff9b:1::/56]", "64:ff9b:1:af:2d:b001::", "block", "ofac", "KP"),
    ("nat64: [2001:db8:100::/40]", "2001:db8:1af:2db0:1::", "block", "ofac", "KP"),
    ("nat64: [2001:db8:100::/40]", "2001:db8:200::1", "allow", "carve", None),  # not in it: a documentation address
    ("", "64:ff9b::175.45.176.1", "block", "ofac", "KP"),  # well-known prefix: nothing to declare
    ("nat64: [64:ff9b:1::/48]", "64:ff9b:1:af2d:ffb0:100::", "block", "special:nat64-nonzero-u-octet", None),
])
def test_declared_prefix_is_judged_as_the_ipv4(tmp_path, geo_db, nat64, address, action, rule, country) -> None:
    d = ask(state(tmp_path, geo_db, nat64=nat64), address)
    assert (d.action, d.rule, d.country) == (action, rule, country)
    if rule == "special:nat64-nonzero-u-octet":
        assert "u-octet" in d.reason and "64:ff9b:1::/48" in d.reason


def test_policy_sha256_and_reload_carry_the_declarations(tmp_path, geo_db) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(special="allow", nat64=""))
    live = LiveState(Source(str(path), (str(geo_db),)), interval=0.01, settle=0)
    before = live.state
    assert ask(before, KP_LOCAL_48).rule == "special:nat64-local-undeclared"
    path.write_text(POLICY.format(special="allow", nat64="nat64: [64:ff9b:1::/48]"))
    assert any(live.poll() for _ in range(3))  # closed after writing: applied (settle time 0)
    after = live.state
    assert after.policy.ref.sha256 != before.policy.ref.sha256
    assert after.policy.nat64 == prefixes("64:ff9b:1::/48")
    assert (ask(after, KP_LOCAL_48).action, ask(after, KP_LOCAL_48).rule) == ("block", "ofac")


def test_a_state_built_from_shared_facts_classifies_with_its_own_policy(tmp_path, geo_db) -> None:
    """GateState binds the policy's prefixes to its facts source: facts cached under one policy
    are not reused under another (as the audit's --against builds two states)."""
    plain = state(tmp_path, geo_db)
    assert ask(plain, KP_LOCAL_48).rule == "special:nat64-local-undeclared"
    declared_policy = load_policy_text(POLICY.format(special="allow", nat64="nat64: [64:ff9b:1::/48]"), "p.yaml")
    other = GateState(declared_policy, plain.databases, plain.facts)
    assert ask(other, KP_LOCAL_48).rule == "ofac"
    assert ask(plain, KP_LOCAL_48).rule == "special:nat64-local-undeclared"


# -- the policy file -----------------------------------------------------------------------------

# (nat64 value, column, message fragment)
LOADER_ERRORS = [
    ("[64:ff9b:1::/44]", 9, "/44 is not an RFC 6052 prefix length; write the length your NAT64 uses, "
                            "one of /32, /40, /48, /56, /64, /96; did you mean 64:ff9b:1::/48?"),
    ('["64:ff9b:1::"]', 9, "`64:ff9b:1::` has no prefix length"),
    ("[10.0.0.0/8]", 9, "is an IPv4 network; NAT64 prefixes are IPv6"),
    ("[64:ff9b:1::1/48]", 9, "has host bits set; did you mean 64:ff9b:1::/48?"),
    ("[2001:db8:122:344:ff00::/96]", 9, "bits 64-71 of a NAT64 prefix must be zero (RFC 6052 section 2.2); "
                                        "did you mean 2001:db8:122:344::/96?"),
    ("[2002:a00::/32]", 9, "overlaps 2002::/16 (6to4)"),
    ("[64:ff9b::/32]", 9, "overlaps 64:ff9b::/96 (nat64 (well-known prefix))"),
    ("[64:ff9b:1::/48, 64:ff9b:1::/96]", 25, "overlaps 64:ff9b:1::/48 (line 4)"),
    ("[not-a-prefix]", 9, "`not-a-prefix` is not an IPv6 prefix"),
    ("[]", 8, "the list is empty"),
]


@pytest.mark.parametrize(("value", "column", "message"), LOADER_ERRORS, ids=[r[0] for r in LOADER_ERRORS])
def test_loader_errors(value: str, column: int, message: str) -> None:
    text = f"version: 1\nname: t\ndefault: allow\nnat64: {value}\n"
    with pytest.raises(PolicyError) as e:
        load_policy_text(text, "p.yaml")
    errors = [i for i in e.value.issues if i.severity == "error"]
    assert len(errors) == 1, errors
    assert str(errors[0]).startswith(f"p.yaml:4:{column}: error: nat64: ")
    assert message in str(errors[0])


def test_loader_accepts_every_rfc6052_length_and_warns_on_the_well_known_prefix() -> None:
    text = textwrap.dedent("""\
        version: 1
        name: t
        default: allow
        nat64:
          - 64:ff9b:1::/48
          - 2001:db8::/32
          - 2001:db9:100::/40
          - 2001:dba:122:300::/56
          - 2001:dbb:122:344::/64
          - 2001:dbc:122:344::/96
          - 64:ff9b::/96
        """)
    policy = load_policy_text(text, "p.yaml")
    assert [n.prefixlen for n in policy.nat64.networks] == [48, 32, 40, 56, 64, 96]
    assert any("well-known prefix, always decoded" in w for w in policy.warnings)


# -- the command line (in process: the same engine) -----------------------------------------------

def test_explain_default_policy_blocks_undeclared_local_use(capsys) -> None:
    """The reported case: allowed as special:unspecified under policies/default.yaml before."""
    assert cli.main(["explain", f"[{KP_LOCAL_48}]", "--no-resolve", "--json"]) == 0
    import json
    rec = json.loads(capsys.readouterr().out)
    assert (rec["action"], rec["rule"]) == ("block", "special:nat64-local-undeclared")


def test_explain_and_check_show_the_declared_prefix(tmp_path, geo_db, capsys) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(special="allow", nat64="nat64: [64:ff9b:1::/48, 2001:db8:100::/40]"))
    assert cli.main(["explain", f"[{KP_LOCAL_48}]", "--no-resolve", "--policy", str(path), "--db", str(geo_db)]) == 0
    out = capsys.readouterr().out
    assert "(carries 175.45.176.1, nat64 via 64:ff9b:1::/48)" in out and "BLOCK" in out
    assert cli.main(["check", str(path), "--db", str(geo_db)]) == 0
    assert "nat64 64:ff9b:1::/48 2001:db8:100::/40" in capsys.readouterr().out
