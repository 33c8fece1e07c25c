"""geogate.core.databases against MaxMind's own test databases and their source JSON (the truth table).

Every network of GeoIP2-Country-Test.json is looked up (first address of the network) and each
field geogate reads is compared with the JSON. The JSON writes IPv4 networks as `::a.b.c.d/N`
(the IPv4 subtree of an IPv6 database); they are looked up as the IPv4 address a.b.c.d/(N-96).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geogate.core.databases import Database
from geogate.core.databases import DatabaseError
from geogate.core.databases import DatabaseSet
from geogate.core.errors import GeogateError
from geogate.core.geo import network_text

sys.path.insert(0, str(Path(__file__).parent))
from mmdbs import MAXMIND_DATA  # noqa: E402
from mmdbs import maxmind_record  # noqa: E402
from mmdbs import write_flat  # noqa: E402
from mmdbs import write_maxmind  # noqa: E402

ip = ipaddress.ip_address
COUNTRY_DB = MAXMIND_DATA / "GeoIP2-Country-Test.mmdb"
CITY_DB = MAXMIND_DATA / "GeoIP2-City-Test.mmdb"
ASN_DB = MAXMIND_DATA / "GeoLite2-ASN-Test.mmdb"
_V4_IN_V6 = ipaddress.ip_network("::/96")


def lookup_network(key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network a JSON key stands for; `::a.b.c.d/N` is the IPv4 network a.b.c.d/(N-96)."""
    net = ipaddress.ip_network(key, strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address in _V4_IN_V6:
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}", strict=False)
    return net


def truth_table(name: str) -> list[tuple[str, dict[str, Any]]]:
    rows = json.loads((MAXMIND_DATA / f"{name}.json").read_text())
    return [(network, record) for row in rows for network, record in row.items()]


def iso(record: dict[str, Any], key: str, code: str = "iso_code") -> str | None:
    return (record.get(key) or {}).get(code)


COUNTRY_ROWS = truth_table("GeoIP2-Country-Test")


@pytest.fixture(scope="module")
def country_db() -> Database:
    db = Database(COUNTRY_DB)
    yield db
    db.close()


def test_country_truth_table_covers_the_interesting_cases() -> None:
    """The table below is not vacuous: it holds every kind of row the brief names."""
    v4 = [k for k, _ in COUNTRY_ROWS if lookup_network(k).version == 4]
    v6 = [k for k, _ in COUNTRY_ROWS if lookup_network(k).version == 6]
    assert len(COUNTRY_ROWS) == len(v4) + len(v6) > 300 and v4 and v6
    assert any(iso(r, "country") and iso(r, "registered_country") not in (None, iso(r, "country")) for _, r in COUNTRY_ROWS)
    assert any(iso(r, "represented_country") for _, r in COUNTRY_ROWS)
    assert any((r.get("traits") or {}).get("is_anycast") and not iso(r, "country") for _, r in COUNTRY_ROWS)
    assert any(not iso(r, "country") and iso(r, "continent", "code") for _, r in COUNTRY_ROWS)  # continent only


@pytest.mark.parametrize(("network", "truth"), COUNTRY_ROWS, ids=[k for k, _ in COUNTRY_ROWS])
def test_country_truth_table(country_db: Database, network: str, truth: dict[str, Any]) -> None:
    net = lookup_network(network)
    rec, prefix_len = country_db.find(net.network_address)
    assert rec is not None, f"{net.network_address} ({network}) has no record"
    assert rec.source == "GeoIP2-Country-Test"
    assert rec.country == iso(truth, "country")
    assert rec.registered_country == iso(truth, "registered_country")
    assert rec.represented_country == iso(truth, "represented_country")
    assert rec.represented_type == (truth.get("represented_country") or {}).get("type")
    assert rec.continent == iso(truth, "continent", "code")
    assert rec.anycast is bool((truth.get("traits") or {}).get("is_anycast"))
    assert network_text(net.network_address, prefix_len) == str(net)
    assert rec.subdivisions == () and rec.asn is None  # a Country database has neither
    if net.version == 4:
        # the same node is reachable as ::a.b.c.d (the IPv4 subtree of an IPv6 database)
        compat = ipaddress.IPv6Address(int(net.network_address))
        again = country_db.lookup(compat)
        assert again is not None and again.country == rec.country


# (address, country, registered, represented, represented type, continent, anycast): the rows
# the README calls out, spelled out so a wrong truth-table reader cannot hide them
NAMED_ROWS = [
    ("175.16.199.5", "CN", "CN", None, None, "AS", False),  # the CLI examples' CN address
    ("81.2.69.142", "GB", "US", None, None, "EU", False),  # located GB, registered US
    ("2.125.160.216", "GB", "FR", None, None, "EU", False),  # located GB, registered FR
    ("89.160.20.112", "SE", "DE", None, None, "EU", False),  # located SE, registered DE
    ("202.196.224.1", "PH", "PH", "US", "military", "AS", False),  # represents US (military base)
    ("214.1.1.1", None, None, None, None, None, True),  # anycast, no country at all
    ("2001:218::1", "JP", "JP", None, None, "AS", False),  # IPv6
]


@pytest.mark.parametrize(("addr", "country", "registered", "represented", "rtype", "continent", "anycast"), NAMED_ROWS)
def test_country_named_rows(country_db: Database, addr: str, country, registered, represented, rtype, continent, anycast) -> None:
    rec = country_db.lookup(ip(addr))
    assert rec is not None
    assert (rec.country, rec.registered_country, rec.represented_country, rec.represented_type, rec.continent, rec.anycast) == (
        country, registered, represented, rtype, continent, anycast)


@pytest.mark.parametrize("addr", ["8.8.8.8", "10.0.0.1", "127.0.0.1", "2606:4700::1111"])
def test_no_record_is_none(country_db: Database, addr: str) -> None:
    assert country_db.lookup(ip(addr)) is None


def test_city_subdivisions_are_full_iso_3166_2_codes() -> None:
    db = Database(CITY_DB)
    try:
        assert (db.schema, db.kind, db.info.has_subdivisions) == ("maxmind", "city", True)
        assert (db.info.schema, db.info.kind) == ("maxmind", "city")  # what the properties read
        mismatches, checked = [], 0
        for network, truth in truth_table("GeoIP2-City-Test"):
            rec = db.lookup(lookup_network(network).network_address)
            country = iso(truth, "country")
            expected = tuple(
                f"{country}-{s['iso_code']}" for s in truth.get("subdivisions") or () if country and s.get("iso_code")
            )
            got = rec.subdivisions if rec else None
            checked += bool(expected)
            if rec is None or got != expected or rec.country != country:
                mismatches.append((network, got, expected))
        assert not mismatches
        assert checked >= 10  # rows with subdivisions exist (16 in this file)
        assert db.lookup(ip("2.125.160.216")).subdivisions == ("GB-ENG", "GB-WBK")  # largest first
        assert db.lookup(ip("81.2.69.142")).subdivisions == ("GB-ENG",)
    finally:
        db.close()


def test_asn_database_truth_table() -> None:
    db = Database(ASN_DB)
    try:
        assert (db.schema, db.kind, db.info.has_asn, db.info.has_country) == ("maxmind", "asn", True, False)
        mismatches = []
        rows = truth_table("GeoLite2-ASN-Test")
        for network, truth in rows:
            rec = db.lookup(lookup_network(network).network_address)
            got = (rec.asn, rec.as_org, rec.country) if rec else None
            expected = (truth.get("autonomous_system_number"), truth.get("autonomous_system_organization"), None)
            if got != expected:
                mismatches.append((network, got, expected))
        assert not mismatches
        assert len(rows) > 500
        rec = db.lookup(ip("1.0.0.1"))
        assert (rec.asn, rec.as_org) == (15169, "Google Inc.")
    finally:
        db.close()


# (file, schema, kind) — detected from the records, whatever the file is called
DETECTED = [
    ("GeoIP2-Country-Test.mmdb", "maxmind", "country"),
    ("GeoLite2-Country-Test.mmdb", "maxmind", "country"),
    ("GeoIP2-City-Test.mmdb", "maxmind", "city"),
    ("GeoLite2-City-Test.mmdb", "maxmind", "city"),
    ("GeoLite2-ASN-Test.mmdb", "maxmind", "asn"),
    ("GeoIP2-Anonymous-IP-Test.mmdb", "maxmind", "anonymous-ip"),
]


@pytest.mark.parametrize(("name", "schema", "kind"), DETECTED)
def test_schema_of_maxmind_test_databases(name: str, schema: str, kind: str) -> None:
    db = Database(MAXMIND_DATA / name)
    try:
        assert (db.schema, db.kind) == (schema, kind)
        meta = maxminddb.open_database(str(MAXMIND_DATA / name)).metadata()
        assert db.info.type == meta.database_type
        assert db.info.build_epoch == meta.build_epoch
        assert db.info.sha256 == hashlib.sha256((MAXMIND_DATA / name).read_bytes()).hexdigest()
        assert db.name == name.removesuffix(".mmdb")
    finally:
        db.close()


def test_flat_schema_written_by_the_tests(tmp_path: Path) -> None:
    path = write_flat(tmp_path / "flat.mmdb", {"1.2.3.0/24": "CN", "2001:db8:1::/48": "de", "5.6.7.0/24": "China"},
                      **{"1.2.3.0/24": {"asn": "AS4134", "as_name": "ChinaNet"}})
    db = Database(path)
    try:
        assert (db.schema, db.kind) == ("flat", "country")
        assert db.info.has_country and db.info.has_asn and not db.info.has_subdivisions
        rec, prefix_len = db.find(ip("1.2.3.4"))
        assert (rec.country, rec.asn, rec.as_org, rec.registered_country) == ("CN", 4134, "ChinaNet", None)
        assert rec.continent == "AS"  # flat records carry no continent: derived from the country
        assert network_text(ip("1.2.3.4"), prefix_len) == "1.2.3.0/24"
        assert db.lookup(ip("2001:db8:1::5")).country == "DE"  # lower case upper-cased
        assert db.lookup(ip("5.6.7.8")).country is None  # a name is not a code
        assert db.lookup(ip("9.9.9.9")) is None
    finally:
        db.close()


def test_maxmind_schema_written_by_the_tests(tmp_path: Path) -> None:
    path = write_maxmind(tmp_path / "mm.mmdb", {
        "5.6.7.0/24": maxmind_record("UA", continent="EU", subdivisions=("43",)),
        "8.9.0.0/16": maxmind_record("PH", represented="US", continent="AS"),
        "9.9.9.0/24": maxmind_record(None, anycast=True),
    })
    db = Database(path)
    try:
        assert (db.schema, db.kind) == ("maxmind", "city")
        assert db.lookup(ip("5.6.7.8")).subdivisions == ("UA-43",)
        rec = db.lookup(ip("8.9.1.1"))
        assert (rec.country, rec.represented_country, rec.represented_type) == ("PH", "US", "military")
        rec = db.lookup(ip("9.9.9.9"))
        assert (rec.country, rec.anycast) == (None, True)
    finally:
        db.close()


@pytest.mark.parametrize("disguise", ["GeoIP2-City.mmdb", "GeoLite2-ASN.mmdb", "GeoIP2-Country-Test.mmdb"])
def test_flat_detection_ignores_the_file_name(tmp_path: Path, disguise: str) -> None:
    flat = write_flat(tmp_path / "orig.mmdb", {"1.2.3.0/24": "CN"})
    copy = tmp_path / disguise
    shutil.copy(flat, copy)
    db = Database(copy)
    try:
        assert (db.schema, db.kind) == ("flat", "country")
        assert db.lookup(ip("1.2.3.4")).country == "CN"
    finally:
        db.close()


def test_maxmind_detection_ignores_file_name(tmp_path: Path) -> None:
    copy = tmp_path / "geo-whois-asn-country.mmdb"
    shutil.copy(CITY_DB, copy)
    db = Database(copy)
    try:
        assert (db.schema, db.kind) == ("maxmind", "city")
    finally:
        db.close()


def test_detection_ignores_the_type_string(tmp_path: Path) -> None:
    """A flat layout whose metadata claims GeoIP2-City is still flat, and vice versa."""
    flat = write_maxmind(tmp_path / "a.mmdb", {"1.2.3.0/24": {"country_code": "RU"}}, database_type="GeoIP2-City")
    mm = write_maxmind(tmp_path / "b.mmdb", {"1.2.3.0/24": maxmind_record("RU")}, database_type="geo-whois-asn-country")
    a, b = Database(flat), Database(mm)
    try:
        assert (a.schema, a.info.type) == ("flat", "GeoIP2-City")
        assert (b.schema, b.kind) == ("maxmind", "country")
        assert a.lookup(ip("1.2.3.4")).country == b.lookup(ip("1.2.3.4")).country == "RU"
    finally:
        a.close()
        b.close()


def test_ipv4_only_database_answers_none_for_ipv6(tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="v4-only")
    writer.insert_network(IPSet(["1.2.3.0/24"]), {"country_code": "CN"})
    path = tmp_path / "v4.mmdb"
    writer.to_db_file(str(path))
    db = Database(path)
    try:
        assert db.info.ip_version == 4
        assert db.lookup(ip("1.2.3.4")).country == "CN"
        assert db.lookup(ip("2001:db8::1")) is None
    finally:
        db.close()


def test_unknown_layout_is_refused(tmp_path: Path) -> None:
    path = write_maxmind(tmp_path / "odd.mmdb", {"1.2.3.0/24": {"colour": "blue"}})
    with pytest.raises(DatabaseError) as err:
        Database(path)
    assert str(path) in str(err.value) and "colour" in str(err.value)


# -- refusal of unusable files ------------------------------------------------------------------

def _bad_file(tmp_path: Path, kind: str) -> Path:
    good = COUNTRY_DB.read_bytes()
    path = tmp_path / f"{kind}.mmdb"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 4])  # the metadata at the end is gone
    elif kind == "no-metadata-tail":
        path.write_bytes(good[:-200])
    elif kind == "text":
        path.write_text("this is not a database\n")
    elif kind == "corrupt-tree":
        data = bytearray(good)
        data[100:2000] = b"\xff" * 1900  # search tree overwritten, metadata intact
        path.write_bytes(bytes(data))
    elif kind == "gzip":
        path.write_bytes(b"\x1f\x8b\x08\x00" + good[:500])  # a compressed download saved as .mmdb
    return path


# (kind of bad file, words the message must contain)
BAD_FILES = [
    ("missing", "does not exist"),
    ("directory", "directory"),
    ("empty", "empty"),
    ("truncated", "truncated or corrupt"),
    ("no-metadata-tail", "truncated or corrupt"),
    ("text", "not a MaxMind DB"),
    ("corrupt-tree", "corrupt"),
    ("gzip", "not a MaxMind DB"),
]


@pytest.mark.parametrize(("kind", "words"), BAD_FILES, ids=[k for k, _ in BAD_FILES])
def test_unusable_database_is_refused_with_one_line(tmp_path: Path, kind: str, words: str) -> None:
    path = _bad_file(tmp_path, kind)
    with pytest.raises(DatabaseError) as err:
        Database(path)
    message = str(err.value)
    assert isinstance(err.value, GeogateError)  # the CLI prints these without a traceback
    assert str(path) in message  # names the file
    assert words in message
    assert "\n" not in message
    assert "Traceback" not in message and 'File "' not in message
    assert err.value.__cause__ is None  # raised `from None`: no chained library traceback


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_database_set_refuses_and_names_the_bad_file(tmp_path: Path, kind: str) -> None:
    bad = _bad_file(tmp_path, kind)
    with pytest.raises(DatabaseError) as err:
        DatabaseSet.open([COUNTRY_DB, bad])
    assert str(bad) in str(err.value) and str(COUNTRY_DB) not in str(err.value)


def test_database_set_needs_a_database() -> None:
    with pytest.raises(DatabaseError):
        DatabaseSet.open([])


def test_database_set_names_and_capabilities(tmp_path: Path) -> None:
    other = tmp_path / "x" / "GeoIP2-Country-Test.mmdb"
    other.parent.mkdir()
    shutil.copy(COUNTRY_DB, other)
    dbs = DatabaseSet.open([COUNTRY_DB, other, ASN_DB])
    try:
        assert [d.name for d in dbs.databases] == ["GeoIP2-Country-Test", "GeoIP2-Country-Test#2", "GeoLite2-ASN-Test"]
        assert dbs.has_country and dbs.has_asn and not dbs.has_subdivisions
    finally:
        dbs.close()


# -- snapshot semantics -------------------------------------------------------------------------

def test_database_rewritten_in_place_keeps_answering_from_the_loaded_snapshot(tmp_path: Path) -> None:
    path = write_flat(tmp_path / "live.mmdb", {"1.2.3.0/24": "CN", "5.6.7.0/24": "DE"})
    before = path.read_bytes()
    db = Database(path)
    try:
        replacement = write_flat(tmp_path / "new.mmdb", {"1.2.3.0/24": "US", "9.9.9.0/24": "FR"}).read_bytes()
        with open(path, "r+b") as f:  # same inode, overwritten and resized: no atomic rename
            f.write(replacement)
            f.truncate()
        assert path.read_bytes() == replacement
        assert db.lookup(ip("1.2.3.4")).country == "CN"
        assert db.lookup(ip("5.6.7.8")).country == "DE"
        assert db.lookup(ip("9.9.9.9")) is None
        assert db.info.sha256 == hashlib.sha256(before).hexdigest()  # the hash of the bytes in use
        path.write_bytes(b"garbage")  # even garbage in place does not disturb it
        assert db.lookup(ip("1.2.3.4")).country == "CN"
        path.unlink()  # nor does deleting it
        assert db.lookup(ip("5.6.7.8")).country == "DE"
    finally:
        db.close()
    reopened = Database(write_flat(tmp_path / "live.mmdb", {"1.2.3.0/24": "US"}))
    try:
        assert reopened.lookup(ip("1.2.3.4")).country == "US"  # a new load sees the new file
    finally:
        reopened.close()



# -- the raw-record reader against the geoip2 models it replaced -----------------------------------

def _geoip2_fields(db: Database, addr, rec: dict, prefix_len: int) -> dict[str, Any]:
    """What databases.py read through geoip2's models before it read the raw records itself."""
    import geoip2.models

    from geogate.core.databases import _code as code

    out = dict(source=db.name, country=None, registered_country=None, represented_country=None, represented_type=None,
               continent=None, subdivisions=(), asn=None, as_org=None, anycast=False)
    if db.kind == "asn":
        model = geoip2.models.ASN(addr, prefix_len=prefix_len, **rec)
        out.update(asn=model.autonomous_system_number, as_org=model.autonomous_system_organization)
    elif db.kind != "anonymous-ip":
        model = geoip2.models.City(["en"], ip_address=addr, prefix_len=prefix_len, **rec)
        country = code(model.country.iso_code)
        out.update(
            country=country,
            registered_country=code(model.registered_country.iso_code),
            represented_country=code(model.represented_country.iso_code),
            represented_type=model.represented_country.type,
            continent=code(model.continent.code),
            subdivisions=tuple(f"{country}-{s.iso_code.upper()}" for s in model.subdivisions if country and s.iso_code),
            anycast=bool(model.traits.is_anycast),
        )
    out["network"] = str(ipaddress.ip_network((addr, prefix_len), strict=False))
    return out


def _fields(rec, addr, prefix_len: int) -> dict[str, Any]:
    names = ("source", "country", "registered_country", "represented_country", "represented_type", "continent",
             "subdivisions", "asn", "as_org", "anycast")
    return {n: getattr(rec, n) for n in names} | {"network": network_text(addr, prefix_len)}


@pytest.mark.parametrize("name", sorted(p.name for p in MAXMIND_DATA.glob("*.mmdb")))
def test_reader_agrees_with_geoip2_models_on_every_network(name: str) -> None:
    """Every network of every MaxMind test database, at both ends: the same fields as geoip2's
    models give, and the same network."""
    db = Database(MAXMIND_DATA / name)
    raw = maxminddb.open_database(str(MAXMIND_DATA / name))
    try:
        checked, mismatches = 0, []
        for net, _record in raw:
            for addr in (net.network_address, net.broadcast_address):
                rec, prefix_len = raw.get_with_prefix_len(addr)
                got, found = db.find(addr)
                assert found == prefix_len
                want = _geoip2_fields(db, addr, rec, prefix_len)
                if _fields(got, addr, found) != want:
                    mismatches.append((str(addr), _fields(got, addr, found), want))
                checked += 1
        assert not mismatches, mismatches[:3]
        assert checked > 20
    finally:
        raw.close()
        db.close()


# net -> (country, continent, asn, as_org) as read from the awkward values below
FLAT_EXPECTED = {
    "1.0.0.0/24": ("CN", "AS", 4134, "ChinaNet"),
    "1.0.1.0/24": ("CN", "AS", 4134, None),  # lower-case code and "as" prefix; a number is no name
    "1.0.2.0/24": ("DE", "EU", 64500, None),  # padded code; the database's own continent
    "1.0.3.0/24": (None, None, None, None),  # a country name is not a code; empty ASN
    "1.0.4.0/24": (None, None, None, None),  # empty country; "ASX" is no number
    "1.0.5.0/24": ("DE", "EU", 64500, "Example"),
    "1.0.6.0/24": ("XK", "EU", None, None),
    "1.0.7.0/24": ("US", "NA", None, None),
    "1.0.8.0/24": ("US", "NA", None, None),
}


def test_flat_reader_reads_awkward_values(tmp_path: Path) -> None:
    """The flat schema over awkward values, continents derived where the database has none."""
    extras = {
        "1.0.0.0/24": {"asn": "AS4134", "as_name": "ChinaNet"},
        "1.0.1.0/24": {"asn": "as4134", "as_name": 7},
        "1.0.2.0/24": {"asn": 64500, "continent_code": "eu"},
        "1.0.3.0/24": {"asn": "", "continent_code": "Europe"},
        "1.0.4.0/24": {"asn": "ASX"},
        "1.0.5.0/24": {"asn": "AS64500", "as_name": "Example", "as_domain": "example.com", "country": "Germany"},
        "1.0.6.0/24": {"tags": ["unhashable", "list"]},  # a value that cannot be a dictionary key
    }
    countries = {"1.0.0.0/24": "CN", "1.0.1.0/24": "cn", "1.0.2.0/24": " de ", "1.0.3.0/24": "China",
                 "1.0.4.0/24": "", "1.0.5.0/24": "DE", "1.0.6.0/24": "XK", "1.0.7.0/24": "US", "1.0.8.0/24": "US"}
    db = Database(write_flat(tmp_path / "flat.mmdb", countries, **extras))
    try:
        for net in countries:
            addr = ipaddress.ip_network(net).network_address
            record, prefix_len = db._reader.get_with_prefix_len(addr)
            got, found = db.find(addr)
            country, continent, asn, as_org = FLAT_EXPECTED[net]
            want = dict(source=db.name, country=country, registered_country=None, represented_country=None,
                        represented_type=None, continent=continent, subdivisions=(), asn=asn, as_org=as_org,
                        anycast=False, network=net)
            assert (found, _fields(got, addr, found)) == (prefix_len, want), net
        # one shared record per content: 1.0.7.0 and 1.0.8.0 say the same
        assert db.lookup(ip("1.0.7.1")) is db.lookup(ip("1.0.8.1")) is db.lookup(ip("1.0.7.200"))
        assert db.lookup(ip("1.0.7.1")) is not db.lookup(ip("1.0.5.1"))
    finally:
        db.close()


def test_records_are_shared_per_database() -> None:
    a, b = Database(CITY_DB), Database(CITY_DB, name="other")
    try:
        # two addresses of one network, and two networks with the same record content
        assert a.lookup(ip("81.2.69.142")) is a.lookup(ip("81.2.69.143"))
        assert a.lookup(ip("81.2.69.142")) is not b.lookup(ip("81.2.69.142"))  # the source differs
        assert b.lookup(ip("81.2.69.142")).source == "other"
    finally:
        a.close()
        b.close()


def test_malformed_maxmind_record_is_a_lookup_error(tmp_path: Path) -> None:
    """A map that is not a map: geoip2 raised TypeError here; now it is a ValueError, which
    FactsSource reports as a failed lookup (so the decision fails closed)."""
    from geogate.core.lookup import FactsSource

    path = write_maxmind(tmp_path / "odd.mmdb", {
        "1.2.3.0/24": {"country": "RU", "continent": {"code": "EU"}},
        "5.6.7.0/24": {"country": {"iso_code": "UA"}, "subdivisions": [{"iso_code": 43}]},
        "8.8.8.0/24": maxmind_record("US", continent="NA"),
    })
    dbs = DatabaseSet.open([path])
    try:
        db = dbs.databases[0]
        for addr in ("1.2.3.4", "5.6.7.8"):
            with pytest.raises(ValueError):
                db.find(ip(addr))
        assert db.lookup(ip("8.8.8.8")).country == "US"
        facts = FactsSource(dbs)._lookup_ip(ip("1.2.3.4"))
        assert facts.error and "odd" in facts.error and facts.records == ()
    finally:
        dbs.close()
