"""Property-based tests of the policy loader (addons/geogate/policy/loader.py).

Whatever a policy file holds, loading it either builds a Policy or raises PolicyError (a
GeogateError, shown without a traceback) whose every issue names file:line:col.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import yaml
from hypothesis import example
from hypothesis import given
from hypothesis import strategies as st

from geogate.core.errors import GeogateError
from geogate.core.rules import Policy
from geogate.policy.loader import CLIENT_KEYS
from geogate.policy.loader import GEO_KEYS
from geogate.policy.loader import RULE_KEYS
from geogate.policy.loader import TOP_KEYS
from geogate.policy.loader import PolicyError
from geogate.policy.loader import load_policy
from geogate.policy.loader import load_policy_text

PATH = "fuzz.yaml"
TODAY = date(2026, 12, 3)
LOCATION = re.compile(r"^fuzz\.yaml:[1-9][0-9]*:[1-9][0-9]*: (error|warning): ", re.M)

KEYS = st.sampled_from(sorted(set(TOP_KEYS + GEO_KEYS + RULE_KEYS + CLIENT_KEYS)))
# Values the language gives meaning to, near misses, and text that trips naive converters.
MEANINGFUL = st.sampled_from((
    "1", "allow", "block", "monitor", "enforce", "lookup", "all", "any", "first", "country",
    "registered_country", "DE", "UK", "NO", "eu", "@eu", "@nope", "@", "EU", "AS15169", "15169",
    "AS", "0", "443", "8000-8999", "9-1", "65536", "²", "1²", "AS²", "٣", "1-²", "1" * 5000,
    "10.0.0.0/8", "10.0.0.1/8", "::/0", "fe80::1%eth0/64", "example.com", "*.example.com", "*.",
    "*", "a*b", "0x-1", "[::1]", "1.2.3.4", "UA-43", "RU-CR", "US-CA", "XX-99", "@ukraine-occupied",
    "2027-03-31", "2020-01-01", "2027-13-45", "EU", "AF", "Europe", "", " ", "~", "null",
))
SCALARS = st.one_of(
    MEANINGFUL,
    st.text(max_size=20),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.dates(),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=25,
)


@st.composite
def policy_like(draw) -> dict:
    """A tree shaped like a policy: the required keys mostly right, everything else random."""
    doc: dict = {}
    if draw(st.booleans()):
        doc["version"] = draw(st.one_of(st.just(1), SCALARS))
    if draw(st.booleans()):
        doc["name"] = draw(st.one_of(st.just("p"), SCALARS))
    if draw(st.booleans()):
        doc["default"] = draw(st.one_of(st.sampled_from(("allow", "block")), SCALARS))
    rule = st.dictionaries(st.sampled_from(RULE_KEYS), st.one_of(SCALARS, st.lists(SCALARS, max_size=3), TREES), max_size=6)
    if draw(st.booleans()):
        doc["rules"] = draw(st.one_of(st.lists(rule, max_size=4), TREES))
    if draw(st.booleans()):
        doc["groups"] = draw(st.one_of(
            st.dictionaries(st.one_of(st.sampled_from(("eu", "mine", "loop", "Bad Name")), SCALARS),
                            st.one_of(st.lists(st.one_of(MEANINGFUL, st.just("@loop"), st.just("@mine")), max_size=4), TREES),
                            max_size=3),
            TREES,
        ))
    if draw(st.booleans()):
        doc["geo"] = draw(st.one_of(st.dictionaries(st.sampled_from(GEO_KEYS), st.one_of(SCALARS, TREES), max_size=3), TREES))
    if draw(st.booleans()):
        client = st.dictionaries(
            st.sampled_from(CLIENT_KEYS),
            st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(rule, max_size=2)),
            max_size=4,
        )
        doc["clients"] = draw(st.one_of(st.lists(client, max_size=3), TREES))
    for key in draw(st.lists(st.one_of(KEYS, st.text(max_size=6)), max_size=3)):
        doc[key] = draw(TREES)
    return doc


def _dump(tree, flow: bool) -> str:
    return yaml.safe_dump(tree, default_flow_style=flow, allow_unicode=True, sort_keys=False)


def _check(text: str) -> Policy | None:
    """Load `text`: a Policy, or a PolicyError whose every line says file:line:col."""
    try:
        return load_policy_text(text, PATH, today=TODAY)
    except PolicyError as e:
        assert e.issues, "a PolicyError lists at least one issue"
        lines = str(e).splitlines()
        assert lines and all(LOCATION.match(line) for line in lines), str(e)
        # PyYAML counts \r, NEL, LS and PS as line breaks too (YAML 1.1)
        n_lines = sum(text.count(c) for c in "\n\r\x85\u2028\u2029") + 1
        for issue in e.issues:
            assert issue.position.path == PATH
            # a mark can sit just past the last line (the end of the stream)
            assert 1 <= issue.position.line <= n_lines + 1, issue
            assert issue.position.column >= 1
        return None


@given(policy_like(), st.booleans())
@example({"version": 1, "name": "p", "default": "allow", "rules": [{"name": "r", "action": "allow", "ports": "²"}]}, False)
@example({"version": 1, "name": "p", "default": "allow", "rules": [{"name": "r", "action": "allow", "asns": "AS²"}]}, False)
@example({"version": 1, "name": "p", "default": "allow", "rules": [{"name": "r", "action": "allow", "ports": "1" * 5000}]}, False)
def test_policy_shaped_trees_load_or_fail_with_positions(tree, flow: bool) -> None:
    _check(_dump(tree, flow))


@given(TREES)
def test_random_trees_load_or_fail_with_positions(tree) -> None:
    _check(_dump(tree, False))


YAML_BITS = st.sampled_from((
    "version: 1\n", "name: p\n", "default: allow\n", "rules:\n", "- name: r\n", "  action: block\n",
    "  countries: [DE, @eu]\n", "  hosts: *.x\n", "&a ", "*a", "!!binary ", "!!python/object:os.system ",
    "? ", ": ", "- ", "[", "]", "{", "}", ",", "'", '"', "|", ">", "#", "%YAML 1.1\n", "---\n", "...\n",
    "\t", "  ", "\n", "\ufeff", "\x00", "\x85", "\u2028", "é", "²",
))


@given(st.one_of(st.text(max_size=200), st.lists(YAML_BITS, max_size=40).map("".join)))
@example("[" * 5000)  # deep nesting: PyYAML's composer recurses once per level
@example("{a: " * 3000)
@example("- " * 3000)
@example("0:\n0\x85\x85")  # NEL is a YAML line break: line 4 of a text with one "\n"
def test_raw_text_loads_or_fails_with_positions(text: str) -> None:
    _check(text)


@given(st.binary(max_size=300))
@example(b"\xff\xfe")
@example(b"\xef\xbb\xbfversion: 1\n")
def test_policy_file_bytes_never_escape_as_another_exception(tmp_path_factory, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("policy")) / "p.yaml"
    path.write_bytes(data)
    try:
        load_policy(path, today=TODAY)
    except GeogateError as e:
        assert str(e).startswith(str(path)), str(e)
