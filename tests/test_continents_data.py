"""Checks for addons/geogate/data/continents.json (country -> continent code table)."""

import json
from pathlib import Path

import pycountry
import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE_PATH = ROOT / "addons" / "geogate" / "data" / "continents.json"
CONTINENT_CODES = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}

# Where the MaxMind test databases' JSON sources live: the repo copy first, then
# shared/ beside the checkout (as CI lays it out), then the workplace's shared/.
MAXMIND_DIR_CANDIDATES = [
    ROOT / "tests" / "data" / "maxmind",
    ROOT.parent / "shared" / "testdata" / "maxmind",
    Path("/work/shared/testdata/maxmind"),
]


@pytest.fixture(scope="module")
def table():
    with TABLE_PATH.open(encoding="utf-8") as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _maxmind_dir():
    for candidate in MAXMIND_DIR_CANDIDATES:
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


def _collect_pairs(node, source, pairs):
    """Gather (country.iso_code, continent.code) from every record.

    MaxMind's ``continent`` describes where the address is located, i.e. it
    belongs with ``country`` -- not with ``registered_country`` or
    ``represented_country``, which may lie on another continent.
    """
    if isinstance(node, dict):
        continent = node.get("continent")
        country = node.get("country")
        if (
            isinstance(continent, dict)
            and "code" in continent
            and isinstance(country, dict)
            and "iso_code" in country
        ):
            pairs.setdefault((country["iso_code"], continent["code"]), source)
        for value in node.values():
            _collect_pairs(value, source, pairs)
    elif isinstance(node, list):
        for value in node:
            _collect_pairs(value, source, pairs)


def test_source_note_present():
    with TABLE_PATH.open(encoding="utf-8") as f:
        data = json.load(f)
    assert "GeoNames" in data["_source"]


def test_every_pycountry_code_and_kosovo_present(table):
    expected = {c.alpha_2 for c in pycountry.countries} | {"XK"}
    missing = sorted(expected - set(table))
    assert not missing, f"codes missing from continents.json: {missing}"
    unknown = sorted(set(table) - expected)
    assert not unknown, f"codes in continents.json not in ISO 3166-1 (+XK): {unknown}"


def test_every_value_is_a_continent_code(table):
    bad = {k: v for k, v in table.items() if v not in CONTINENT_CODES}
    assert not bad, f"invalid continent codes: {bad}"


@pytest.mark.parametrize(
    "country, continent",
    [
        ("RU", "EU"),
        ("TR", "AS"),
        ("EG", "AF"),
        ("PA", "NA"),
        ("GU", "OC"),
        ("AQ", "AN"),
        ("CY", "EU"),
        ("XK", "EU"),
        ("BR", "SA"),
    ],
)
def test_known_assignments(table, country, continent):
    assert table[country] == continent


def test_agrees_with_maxmind_test_data(table):
    directory = _maxmind_dir()
    if directory is None:
        pytest.skip(
            "no MaxMind test JSON found in: "
            + ", ".join(str(p) for p in MAXMIND_DIR_CANDIDATES)
        )
    pairs = {}
    for path in sorted(directory.glob("*.json")):
        with path.open(encoding="utf-8") as f:
            _collect_pairs(json.load(f), path.name, pairs)
    assert pairs, f"no (country, continent) pairs found in {directory}"
    mismatches = {
        country: (continent, table.get(country), source)
        for (country, continent), source in sorted(pairs.items())
        if table.get(country) != continent
    }
    assert not mismatches, (
        "continents.json disagrees with MaxMind test data "
        "(country: (maxmind, table, file)): " + repr(mismatches)
    )
