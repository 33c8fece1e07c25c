"""Plain regression tests for what the property-based tests (tests/test_fuzz_*.py) found.

Each case is one that once misbehaved; the docs/fuzzing.md findings list says when and how.
"""

from __future__ import annotations

import socket

import pytest

from geogate.core.addresses import AddressError
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip

# Lax IPv4 parts that int() accepts and glibc's inet_aton does not: each is not an address
# (a name for DNS), never an exception and never a different address than glibc would dial.
NOT_INET_ATON = [
    "0x-1",  # a sign: IPv4Address(-1) raised AddressValueError out of parse_ip
    "0x+1",
    "0x",  # no hex digit: was read as 0.0.0.0
    "0X",
    "0x.1",
    "0x1_0",  # '_' between digits: was 0.0.0.16
    "01_7",
    "0x 1",  # a space inside a part
    "١٢٣",  # Arabic-Indic digits: was 0.0.0.123
    "1.٢.3.4",
]


@pytest.mark.parametrize("text", NOT_INET_ATON)
def test_parse_ip_refuses_what_inet_aton_refuses(text: str) -> None:
    with pytest.raises(OSError):
        socket.inet_aton(text)
    assert parse_ip(text) is None


@pytest.mark.parametrize("text", ["0x-1", "0x1_0", "١٢٣"])
def test_canonical_host_of_a_non_literal_is_a_name_or_an_address_error(text: str) -> None:
    try:
        name = canonical_host(text)
    except AddressError:
        return
    assert parse_ip(name) is None  # never an IP literal that inet_aton would not dial


# Names that IDNA refuses but the lenient path (underscores in internal names) took whole.
BAD_LENIENT_NAMES = [
    "a_" * 150,  # 300 characters
    "a_b." + "c" * 64,  # a 64-character label
    "0" * 52 + "1" + "0" * 11,  # 64 digits: not an address, not a label either
    "a_b..c",  # an empty label
]


@pytest.mark.parametrize("host", BAD_LENIENT_NAMES)
def test_canonical_host_refuses_over_long_or_empty_labels(host: str) -> None:
    with pytest.raises(AddressError):
        canonical_host(host)


@pytest.mark.parametrize("target", ["a:" + "1" * 5000, "[::1]:" + "9" * 4301, "a:000000443"])
def test_split_host_port_refuses_long_ports_with_address_error(target: str) -> None:
    from geogate.core.addresses import split_host_port

    with pytest.raises(AddressError):  # int() raised a plain ValueError past 4300 digits
        split_host_port(target)


def test_canonical_host_still_takes_underscored_names() -> None:
    assert canonical_host("My_Host.corp.") == "my_host.corp"
    assert canonical_host("a" * 63 + "." + "b_" * 20) == "a" * 63 + "." + "b_" * 20


# -- policy loader ---------------------------------------------------------------------------------

_RULE = "version: 1\nname: p\ndefault: allow\nrules:\n  - name: r\n    action: block\n    {key}: {value}\n"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ports", "'²'"),  # str.isdigit() is true, int() raised ValueError out of the loader
        ("ports", "'1-²'"),
        ("ports", "'٣'"),  # Arabic-Indic three: was read as port 3
        ("ports", "1" * 5000),  # int() refuses over 4300 digits: ValueError out of the loader
        ("asns", "'AS²'"),
        ("asns", "'٣'"),
        ("asns", "AS" + "1" * 5000),
    ],
    ids=["superscript-port", "superscript-range", "arabic-port", "huge-port", "superscript-asn", "arabic-asn", "huge-asn"],
)
def test_non_ascii_or_huge_numbers_are_policy_errors(key: str, value: str) -> None:
    from geogate.policy.loader import PolicyError
    from geogate.policy.loader import load_policy_text

    with pytest.raises(PolicyError) as err:
        load_policy_text(_RULE.format(key=key, value=value), "p.yaml")
    assert str(err.value).startswith("p.yaml:7:")


def test_ascii_ports_and_asns_still_load() -> None:
    from geogate.policy.loader import load_policy_text

    policy = load_policy_text(_RULE.format(key="ports", value="'0443-08443'"), "p.yaml")
    assert policy.rules[0].ports == ((443, 8443),)
    policy = load_policy_text(_RULE.format(key="asns", value="[AS15169, 4294967295]"), "p.yaml")
    assert policy.rules[0].asns == {15169, 4294967295}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[" * 5000, "p.yaml:1:1:"),  # RecursionError out of PyYAML's composer
        ("{a: " * 3000, "p.yaml:1:1:"),
        ("- " * 3000, "p.yaml:1:1:"),
        ("version: 1\nname: a\x1f\n", "p.yaml:2:8:"),  # ReaderError: was 1:1 and two lines
    ],
    ids=["deep-flow-list", "deep-flow-map", "deep-block-list", "control-character"],
)
def test_yaml_the_parser_refuses_is_a_one_line_policy_error_with_its_position(text: str, where: str) -> None:
    from geogate.policy.loader import PolicyError
    from geogate.policy.loader import load_policy_text

    with pytest.raises(PolicyError) as err:
        load_policy_text(text, "p.yaml")
    assert str(err.value).startswith(where)
    assert "\n" not in str(err.value)


def test_a_long_chain_of_groups_is_a_policy_error_not_a_recursion_error() -> None:
    from geogate.policy.loader import MAX_GROUP_DEPTH
    from geogate.policy.loader import PolicyError
    from geogate.policy.loader import load_policy_text

    n = 1000  # each level was three Python calls: RecursionError
    groups = "".join(f"  g{i}: ['@g{i + 1}']\n" for i in range(n)) + f"  g{n}: [DE]\n"
    with pytest.raises(PolicyError) as err:
        load_policy_text(f"version: 1\nname: a\ndefault: allow\ngroups:\n{groups}", "p.yaml")
    assert f"more than {MAX_GROUP_DEPTH} deep" in str(err.value)
    # a chain within the limit still expands
    groups = "".join(f"  g{i}: ['@g{i + 1}']\n" for i in range(MAX_GROUP_DEPTH - 1)) + f"  g{MAX_GROUP_DEPTH - 1}: [DE]\n"
    policy = load_policy_text(f"version: 1\nname: a\ndefault: allow\ngroups:\n{groups}", "p.yaml")
    assert policy.groups["g0"] == frozenset({"DE"})


@pytest.mark.parametrize("key", ["a\rb", "a\nfake.yaml:1:1: ok", "\u2028", "\x85"])
def test_every_policy_issue_is_one_line(key: str) -> None:
    import yaml

    from geogate.policy.loader import PolicyError
    from geogate.policy.loader import load_policy_text

    text = yaml.safe_dump({key: 1, "version": 1, "name": "p", "default": "allow"}, allow_unicode=True)
    with pytest.raises(PolicyError) as err:
        load_policy_text(text, "p.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == len([i for i in err.value.issues if i.severity == "error"])
    assert all(line.startswith("p.yaml:") for line in lines)


# -- audit readers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"999999999999:", b"99999999999:x", b"20000000:" + b"x" * 100])
def test_a_huge_length_prefix_is_a_record_error_not_a_memory_error(data: bytes) -> None:
    import io

    from geogate.audit.flowfile import RecordError
    from geogate.audit.flowfile import read_record

    with pytest.raises(RecordError, match="file ends inside a record"):
        read_record(io.BytesIO(data))  # read(10**12) allocated a terabyte first: MemoryError


@pytest.mark.parametrize("raw", [b"6:0:]0:~}", b"6:0:}0:~}"])
def test_a_tnetstring_dict_with_an_unhashable_key_is_a_record_error(raw: bytes) -> None:
    from geogate.audit.flowfile import RecordError
    from geogate.audit.flowfile import parse_record

    with pytest.raises(RecordError, match="TypeError"):  # out[key] = v raised TypeError: a traceback
        parse_record(raw)


def test_a_record_longer_than_one_read_is_read_whole() -> None:
    import io

    from geogate.audit import flowfile

    body = b"x" * (flowfile._CHUNK + 10)
    raw = str(len(body)).encode() + b":" + body + b","
    assert flowfile.read_record(io.BytesIO(raw)) == raw


@pytest.mark.parametrize("key", ["_fetchType", "_fromCache"])
@pytest.mark.parametrize("value", [["Network Load"], {"a": 1}, [[]]])
def test_a_har_cache_marker_that_is_not_text_is_not_a_type_error(key: str, value) -> None:
    from geogate.audit import extract

    entry = {"request": {"method": "GET", "url": "https://example.com/"}, "serverIPAddress": "192.0.2.10", key: value}
    flow = extract.from_har_entry(entry, "x.har", 0, "x.har")  # `in` a set of strings raised TypeError
    assert flow is not None


# -- databases -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        UnicodeDecodeError("utf-8", b"\xc4", 0, 1, "invalid continuation byte"),  # a damaged string
        SystemError("NULL string with positive size with NULL passed to PyUnicode_FromStringAndSize"),
        TypeError("unhashable type: 'dict'"),  # pure-Python reader: a map key that is a map
        RecursionError("maximum recursion depth exceeded"),  # a search tree that loops
    ],
    ids=["unicode", "system", "type", "recursion"],
)
def test_a_record_that_cannot_be_decoded_while_sampling_is_a_database_error(monkeypatch, error) -> None:
    from pathlib import Path

    from geogate.core import databases

    def broken(_reader, _path):
        raise error

    monkeypatch.setattr(databases, "_detect", broken)  # what maxminddb raised from inside _detect
    with pytest.raises(databases.DatabaseError, match="corrupt MaxMind DB file"):
        databases.Database(Path(__file__).parent / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb")


def test_metadata_that_cannot_be_decoded_is_a_database_error(tmp_path) -> None:
    from pathlib import Path

    from geogate.core import databases

    data = (Path(__file__).parent / "data" / "maxmind" / "GeoIP2-Country-Test.mmdb").read_bytes()
    marker = data.rindex(b"\xab\xcd\xefMaxMind.com") + 14
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(data[:marker] + b"\xff" * (len(data) - marker))  # metadata() raised out of Database()
    with pytest.raises(databases.DatabaseError):
        databases.Database(broken)
