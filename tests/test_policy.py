"""The policy loader and the built-in groups.

Errors must name file:line:column and say what to write instead; a policy with any error is never
returned; warnings are kept on the Policy and do not stop loading.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pycountry
import pytest

from geogate.core.errors import GeogateError
from geogate.policy.groups import builtin_groups
from geogate.policy.loader import PolicyError
from geogate.policy.loader import load_policy
from geogate.policy.loader import load_policy_text

PROJECT = Path(__file__).resolve().parents[1]
TODAY = date(2026, 6, 1)
HEAD = "version: 1\nname: t\ndefault: allow\n"


def load(text: str, path: str = "p.yaml", today: date = TODAY):
    return load_policy_text(text, path, today=today)


def errors_of(text: str, path: str = "p.yaml") -> list:
    """The error issues of an invalid policy (and proof that no Policy came back)."""
    with pytest.raises(PolicyError) as err:
        load(text, path)
    issues = [i for i in err.value.issues if i.severity == "error"]
    assert issues, "a PolicyError must carry at least one error"
    for i in issues:
        assert str(i).startswith(f"{path}:{i.position.line}:{i.position.column}: error: ")
    return issues


def where(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in `text`."""
    idx = -1
    for _ in range(nth):
        idx = text.index(needle, idx + 1)
    line = text.count("\n", 0, idx) + 1
    column = idx - (text.rfind("\n", 0, idx) + 1) + 1
    return line, column


# -- every key of the policy language--------------------------------------------------------------

FULL = """\
version: 1
name: full-policy-1
description: Every key of the policy language
mode: monitor
default: block
geo:
  fields: [country, registered_country, represented_country]
  unknown: allow
  disagreement: first
special: lookup
addresses: any
groups:
  five-eyes: [US, GB, CA, AU, NZ]
  nordics: [NO, SE, DK, FI, IS]
rules:
  - name: internal-mirror
    action: allow
    hosts: ["*.mirror.example.com", "Bücher.example.", "API.Example.com"]
    reason: Vendored mirror, hosted in DE
    expires: 2027-03-31
  - name: doj
    action: block
    countries: ["@us-doj-countries-of-concern", TW]
    citation: 28 CFR 202.601
  - name: occupied-regions
    action: block
    subdivisions: [UA-43, UA-40, "@ofac-comprehensive"]
  - name: mis-geolocated-range
    action: allow
    networks: [203.0.113.0/24, "2001:db8::/32", 198.51.100.7]
  - name: by-continent
    action: monitor
    continents: [AF, eu]
  - name: by-asn
    action: block
    asns: [AS4134, 4837, as9808]
  - name: web-only
    action: allow
    ports: [80, 443, 8000-8999]
    countries: ["@five-eyes"]
clients:
  - name: ci-runners
    sources: [10.20.0.0/16, "fd00::/8"]
    users: [ci]
    rules:
      - name: ci-nordics
        action: allow
        countries: ["@nordics"]
  - name: admins
    users: [alice, bob]
  - name: lab
    sources: [192.168.1.0/24]
    rules: []
"""


def test_every_spec_key_parses() -> None:
    p = load(FULL)
    assert p.name == "full-policy-1" and p.description == "Every key of the policy language"
    assert (p.mode, p.default, p.special, p.addresses) == ("monitor", "block", "lookup", "any")
    assert p.fields == ("country", "registered_country", "represented_country")
    assert (p.unknown, p.disagreement) == ("allow", "first")
    assert p.groups["five-eyes"] == frozenset({"US", "GB", "CA", "AU", "NZ"})
    assert p.groups["nordics"] == frozenset({"NO", "SE", "DK", "FI", "IS"})
    rules = {r.name: r for r in p.rules}
    assert list(rules) == ["internal-mirror", "doj", "occupied-regions", "mis-geolocated-range",
                           "by-continent", "by-asn", "web-only"]
    mirror = rules["internal-mirror"]
    assert mirror.action == "allow" and mirror.reason == "Vendored mirror, hosted in DE"
    assert mirror.expires == date(2027, 3, 31)
    hosts = mirror.hosts
    assert hosts[0].matches("a.mirror.example.com") and hosts[0].matches("x.y.mirror.example.com")
    assert not hosts[0].matches("mirror.example.com")  # "*." means a subdomain
    assert hosts[1].matches("xn--bcher-kva.example")  # IDNA encoded, trailing dot removed
    assert hosts[2].matches("api.example.com") and not hosts[2].matches("x.api.example.com")
    doj = rules["doj"]
    assert doj.countries == builtin_groups()["us-doj-countries-of-concern"].countries | {"TW"}
    assert doj.citation == "28 CFR 202.601"
    assert doj.origin["CN"] == "us-doj-countries-of-concern" and doj.origin["TW"] == "listed"
    assert p.group_citations["us-doj-countries-of-concern"] == builtin_groups()["us-doj-countries-of-concern"].citation
    assert rules["occupied-regions"].subdivisions == {"UA-43", "UA-40", "UA-14", "UA-09"}
    assert rules["mis-geolocated-range"].networks == (
        ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("198.51.100.7/32"))
    assert rules["by-continent"].continents == {"AF", "EU"} and rules["by-continent"].action == "monitor"
    assert rules["by-asn"].asns == {4134, 4837, 9808}
    assert rules["web-only"].ports == ((80, 80), (443, 443), (8000, 8999))
    assert rules["web-only"].countries == {"US", "GB", "CA", "AU", "NZ"}
    ci, admins, lab = p.clients
    assert (ci.name, ci.users) == ("ci-runners", frozenset({"ci"}))
    assert ci.sources == (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert [r.name for r in ci.rules] == ["ci-nordics"]
    assert (admins.sources, admins.users, admins.rules) == (None, frozenset({"alice", "bob"}), ())
    assert (lab.users, lab.rules) == (None, ())
    assert [r.name for r in p.all_rules()] == ["ci-nordics"] + list(rules)


def test_defaults_of_optional_keys() -> None:
    p = load(HEAD + "rules:\n  - name: r\n    action: block\n    countries: [CN]\n")
    assert (p.mode, p.fields, p.unknown, p.disagreement, p.addresses) == ("enforce", ("country",), "block", "any", "all")
    assert p.clients == () and p.warnings == ()


def test_policy_ref_hashes_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "p.yaml"
    data = ("\ufeff" + HEAD).encode()  # with a UTF-8 BOM, which is accepted
    path.write_bytes(data)
    p = load_policy(path)
    assert (p.ref.name, p.ref.path, p.ref.sha256) == ("t", str(path), hashlib.sha256(data).hexdigest())


# -- the YAML "Norway problem" and other YAML typing --------------------------------------------

@pytest.mark.parametrize("spelling", ["[NO]", "[no]", '["NO"]', "[No]", "NO", "[NO, SE]"])
def test_norway_stays_norway(spelling: str) -> None:
    p = load(HEAD + f"rules:\n  - name: r\n    action: block\n    countries: {spelling}\n")
    assert "NO" in p.rules[0].countries
    assert "FALSE" not in p.rules[0].countries


def test_norway_in_a_group_and_yes_on_as_names() -> None:
    p = load(HEAD + "groups:\n  nordic: [NO, SE]\nrules:\n  - name: on\n    action: block\n    countries: ['@nordic']\n")
    assert p.groups["nordic"] == frozenset({"NO", "SE"})
    assert p.rules[0].name == "on"  # not True


# -- errors, with their positions ----------------------------------------------------------------

def test_uk_is_an_error_at_its_exact_line_and_column() -> None:
    text = HEAD + "rules:\n  - name: r1\n    action: block\n    countries: [CN, UK]\n"
    (issue,) = errors_of(text)
    assert (issue.position.path, issue.position.line, issue.position.column) == ("p.yaml", 7, 21)
    assert "`UK`" in issue.message and "did you mean GB?" in issue.message
    assert str(issue).startswith("p.yaml:7:21: error: countries: `UK`")


# (policy text, the text the error must point at, occurrence, words the message must contain)
ERRORS = [
    # country codes
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [EL]\n", "EL", 1, ["`EL`", "did you mean GR"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [uk]\n", "uk", 1, ["did you mean GB"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [GBR]\n", "GBR", 1, ["did you mean GB"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [Germany]\n", "Germany", 1, ["did you mean DE"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [EU]\n", "EU]", 1, ['"@eu"']),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [QQ]\n", "QQ", 1, ["ISO 3166-1", "such as DE"]),
    (HEAD + "groups:\n  g: [DE, UK]\n", "UK", 1, ["groups.g", "did you mean GB"]),
    # unknown keys: the closest valid key is suggested
    (HEAD + "rules:\n  - name: r\n    action: block\n    cuontries: [DE]\n",
     "cuontries", 1, ["unknown key `cuontries`", "did you mean `countries`?"]),
    (HEAD + "rulez: []\n", "rulez", 1, ["unknown key `rulez`", "did you mean `rules`?"]),
    (HEAD + "geo:\n  feilds: [country]\n", "feilds", 1, ["did you mean `fields`?"]),
    (HEAD + "clients:\n  - name: c\n    source: [10.0.0.0/8]\n", "source", 1, ["did you mean `sources`?"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    host: [a.example]\n", "host:", 1, ["did you mean `hosts`?"]),
    # choices
    (HEAD + "rules:\n  - name: r\n    action: blok\n    countries: [DE]\n",
     "blok", 1, ["`blok` is not one of allow, block, monitor", "did you mean `block`?"]),
    (HEAD + "rules:\n  - name: r\n    action: deny\n    countries: [DE]\n",
     "deny", 1, ["`deny` is not one of allow, block, monitor"]),
    (HEAD.replace("default: allow", "default: alow"), "alow", 1, ["did you mean `allow`?"]),
    (HEAD + "mode: enforcing\n", "enforcing", 1, ["did you mean `enforce`?"]),
    (HEAD + "special: deny\n", "deny", 1, ["allow, block, lookup"]),
    (HEAD + "addresses: every\n", "every", 1, ["all, any"]),
    (HEAD + "geo:\n  fields: [country_code]\n", "country_code", 1, ["did you mean `country`?"]),
    (HEAD + "geo:\n  unknown: ignore\n", "ignore", 1, ["allow, block"]),
    (HEAD + "geo:\n  disagreement: majority\n", "majority", 1, ["any, first"]),
    # names
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [CN]\n  - name: r\n    action: allow\n    countries: [DE]\n",
     "r\n", 2, ["rule name `r` is used twice"]),
    (HEAD.replace("name: t", "name: My Policy"), "My Policy", 1, ["`My Policy`", "my-policy"]),
    (HEAD + "clients:\n  - name: c\n    users: [u]\n  - name: c\n    users: [v]\n", "c\n", 2, ["`c` is defined twice"]),
    # networks
    (HEAD + "rules:\n  - name: r\n    action: allow\n    networks: [10.0.0.1/8]\n",
     "10.0.0.1/8", 1, ["host bits", "did you mean 10.0.0.0/8?"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    networks: ['2001:db8::1/32']\n",
     "'2001:db8::1/32", 1, ["did you mean 2001:db8::/32?"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    networks: [10.0.0.0/33]\n",
     "10.0.0.0/33", 1, ["not an address or CIDR network"]),
    (HEAD + "clients:\n  - name: c\n    sources: [10.20.0.1/16]\n", "10.20.0.1/16", 1, ["did you mean 10.20.0.0/16?"]),
    # ports
    (HEAD + "rules:\n  - name: r\n    action: allow\n    ports: [0]\n", "0]", 1, ["`0` is not a port or range", "8000-8999"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    ports: [70000]\n", "70000", 1, ["`70000` is not a port"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    ports: [80-79]\n", "80-79", 1, ["`80-79`"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    ports: [https]\n", "https", 1, ["`https`"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    ports: [65536]\n", "65536", 1, ["`65536`"]),
    # dates
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: [a.example]\n    expires: 2027-13-01\n",
     "2027-13-01", 1, ["not a date", "YYYY-MM-DD"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: [a.example]\n    expires: 31/03/2027\n",
     "31/03/2027", 1, ["not a date"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: [a.example]\n    expires: 2027-02-30\n",
     "2027-02-30", 1, ["not a date"]),
    # groups
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: ['@us-doj-countries-of-concen']\n", "'@us-doj", 1,
     ["unknown group `@us-doj-countries-of-concen`", "did you mean `@us-doj-countries-of-concern`?"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: ['@ue']\n",
     "'@ue", 1, ["unknown group `@ue`", "did you mean `@eu`?"]),
    (HEAD + "groups:\n  a: ['@b', DE]\n  b: ['@a']\nrules:\n  - name: r\n    action: block\n    countries: ['@a']\n",
     "'@a", 1, ["includes itself", "a -> b -> a"]),
    (HEAD + "groups:\n  selfish: ['@selfish']\n", "'@selfish", 1, ["includes itself"]),
    (HEAD + "groups:\n  Bad_Name: [DE]\n", "Bad_Name", 1, ["lower-case"]),
    # subdivisions
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: [RU-CR]\n",
     "RU-CR", 1, ["UA-43", "UA-40", "not an ISO 3166-2 code"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: [RU-SEV]\n", "RU-SEV", 1, ["UA-40"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: [CN-HK]\n", "CN-HK", 1, ["HK", "countries"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: [GB]\n", "GB", 1, ["is a country", "countries:"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: [UA-99]\n", "UA-99", 1, ["not an ISO 3166-2 code"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    subdivisions: ['@eu']\n",
     "'@eu", 1, ["not a built-in group with regions", "@ofac-comprehensive"]),
    # other values
    (HEAD + "rules:\n  - name: r\n    action: block\n    continents: [Europe]\n", "Europe", 1, ["did you mean EU?"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    continents: [XX]\n", "XX", 1, ["AF, AN, AS, EU, NA, OC, SA"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    asns: [ASX]\n", "ASX", 1, ["not an AS number", "AS15169"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    asns: [0]\n", "0]", 1, ["not an AS number"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: ['*.*.example.com']\n", "'*.*", 1, ["leading `*.`"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: [1.2.3.4]\n", "1.2.3.4", 1, ["under `networks:`"]),
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: ['0x7f.1']\n",
     "'0x7f.1", 1, ["under `networks:`"]),  # a lax IPv4 literal
    (HEAD + "rules:\n  - name: r\n    action: allow\n    hosts: ['exa mple.com']\n", "'exa mple", 1, ["not a valid host name"]),
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: []\n", "[]", 1, ["the list is empty"]),
    # structure
    (HEAD.replace("default: allow\n", ""), "version", 1, ["missing `default`", "default: allow"]),
    (HEAD.replace("version: 1\n", ""), "name", 1, ["missing `version`", "version: 1"]),
    (HEAD.replace("version: 1", "version: 2"), "2", 1, ["only `version: 1`"]),
    (HEAD + "rules:\n  - action: block\n    countries: [CN]\n", "action", 1, ["rule has no `name`"]),
    (HEAD + "rules:\n  - name: r\n    countries: [CN]\n", "name: r", 1, ["rule `r` has no `action`"]),
    (HEAD + "rules:\n  name: r\n", "name: r", 1, ["must be a list of rules"]),
    (HEAD + "clients:\n  - name: c\n    rules: []\n", "name: c", 1, ["needs `sources:`", "or `users:`"]),
    ("- version: 1\n", "- version", 1, ["must be a mapping"]),
]


@pytest.mark.parametrize(("text", "needle", "nth", "words"), ERRORS, ids=[f"{i}-{r[1].strip()}" for i, r in enumerate(ERRORS)])
def test_errors_name_position_and_fix(text: str, needle: str, nth: int, words: list[str]) -> None:
    issues = errors_of(text)
    line, column = where(text, needle, nth)
    at = [i for i in issues if (i.position.line, i.position.column) == (line, column)]
    assert at, f"no error at {line}:{column}; got {[str(i) for i in issues]}"
    for word in words:
        assert any(word in i.message for i in at), f"{word!r} not in {[i.message for i in at]}"


def test_all_errors_are_reported_at_once_in_file_order() -> None:
    text = HEAD + "rules:\n  - name: r\n    action: blok\n    countries: [EL, UK]\n    ports: [0]\n"
    issues = errors_of(text)
    assert [(i.position.line, i.position.column) for i in issues] == [(6, 13), (7, 17), (7, 21), (8, 13)]
    with pytest.raises(PolicyError) as err:
        load(text)
    assert str(err.value).count("\n") == 3  # one line per error
    assert "Traceback" not in str(err.value)


def test_xk_and_lower_case_codes_are_accepted() -> None:
    p = load(HEAD + "rules:\n  - name: r\n    action: block\n    countries: [XK, de, ' fr ']\n")
    assert p.rules[0].countries == frozenset({"XK", "DE", "FR"})


# (file content, words of the message) for files that are not a policy at all
EMPTY_OR_BROKEN = [
    ("", "empty"),
    ("\n\n", "empty"),
    ("# only a comment\n", "empty"),
]


@pytest.mark.parametrize(("text", "words"), EMPTY_OR_BROKEN)
def test_empty_files(text: str, words: str) -> None:
    (issue,) = errors_of(text)
    assert words in issue.message and "version: 1" in issue.message
    assert (issue.position.line, issue.position.column) == (1, 1)


# (text, line, column) of YAML syntax errors
SYNTAX = [
    (HEAD + "rules:\n  - name: r\n    action: block\n    countries: [DE\n", 8, 1),  # unclosed flow list: found at EOF
    (HEAD + "\tmode: enforce\n", 4, 1),  # tab indentation
    (HEAD + "rules:\n  - name: r\n   action: block\n", 6, 4),  # bad indentation inside a list item
    (HEAD + "description: 'unterminated\n", 5, 1),  # unclosed quote, reported at EOF
]


def test_document_marker_only_is_refused() -> None:
    issues = errors_of("---\n")  # a document with nothing in it
    assert any("must be a mapping" in i.message for i in issues)


@pytest.mark.parametrize(("text", "line", "column"), SYNTAX)
def test_yaml_syntax_errors_have_a_position(text: str, line: int, column: int) -> None:
    (issue,) = errors_of(text)
    assert issue.message.startswith("YAML syntax error")
    assert (issue.position.line, issue.position.column) == (line, column)


def test_duplicate_top_level_key() -> None:
    text = HEAD + "mode: enforce\nmode: monitor\n"
    issues = errors_of(text)
    assert any("`mode` is given twice" in i.message and (i.position.line, i.position.column) == (5, 1) for i in issues)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + "description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    (issue,) = err.value.issues
    assert issue.position.path == str(path)
    assert "not UTF-8" in issue.message


def test_missing_policy_file_is_a_plain_error(tmp_path: Path) -> None:
    with pytest.raises(GeogateError) as err:
        load_policy(tmp_path / "nope.yaml")
    assert "does not exist" in str(err.value) and "nope.yaml" in str(err.value)


# -- warnings do not stop loading ----------------------------------------------------------------

def test_warnings_are_kept_and_loading_succeeds() -> None:
    text = (HEAD + "groups:\n  eu: [DE]\n"
            "rules:\n"
            "  - name: old\n    action: block\n    countries: [CN]\n    expires: 2020-01-01\n"
            "  - name: catch-all\n    action: monitor\n"
            "  - name: eu-only\n    action: block\n    countries: ['@eu']\n")
    p = load(text)
    assert [r.name for r in p.rules] == ["old", "catch-all", "eu-only"]
    assert len(p.warnings) == 3
    shadow, expired, no_key = p.warnings
    assert shadow.startswith("p.yaml:5:3: warning:") and "hides the built-in group" in shadow
    assert expired.startswith("p.yaml:%d:%d: warning:" % where(text, "2020-01-01")) and "expired on 2020-01-01" in expired
    assert no_key.startswith("p.yaml:%d:%d: warning:" % where(text, "name: catch-all")) and "no match key" in no_key
    assert p.rules[2].countries == frozenset({"DE"})  # the policy's own group wins over the built-in


def test_future_expiry_is_not_a_warning() -> None:
    text = HEAD + "rules:\n  - name: r\n    action: block\n    countries: [CN]\n    expires: 2026-06-01\n"
    assert load(text, today=date(2026, 6, 1)).warnings == ()  # still live on its last day
    assert len(load(text, today=date(2026, 6, 2)).warnings) == 1


def test_warnings_never_hide_errors() -> None:
    text = HEAD + "rules:\n  - name: r\n    action: monitor\n  - name: s\n    action: block\n    countries: [UK]\n"
    with pytest.raises(PolicyError) as err:
        load(text)
    severities = sorted(i.severity for i in err.value.issues)
    assert severities == ["error", "warning"]
    assert "UK" in str(err.value) and "no match key" not in str(err.value)  # the message lists errors


# -- the shipped policies ------------------------------------------------------------------------

def _cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["GEOGATE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "geogate-cache")
    for k in ("GEOGATE_POLICY", "GEOGATE_GEOIP_DIR"):
        env.pop(k, None)
    return env


def test_shipped_policies_check_clean(tmp_path_factory: pytest.TempPathFactory) -> None:
    files = sorted(str(p.relative_to(PROJECT)) for p in (PROJECT / "policies").glob("*.yaml"))
    files += sorted(str(p.relative_to(PROJECT)) for p in (PROJECT / "policies" / "examples").glob("*.yaml"))
    assert "policies/default.yaml" in files and len(files) >= 5
    proc = subprocess.run([sys.executable, "-m", "geogate.cli", "check", *files], cwd=PROJECT,
                          env=_cli_env(tmp_path_factory), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for f in files:
        assert f"{f}: ok" in proc.stdout
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["default", "us-doj-countries-of-concern", "ofac-comprehensive", "eu-gdpr-adequacy", "observe"])
def test_shipped_policy_loads(name: str) -> None:
    p = load_policy(PROJECT / "policies" / f"{name}.yaml")
    assert p.name == name
    assert p.rules


# -- built-in groups -----------------------------------------------------------------------------

ISO_COUNTRIES = {c.alpha_2 for c in pycountry.countries} | {"XK"}
GROUPS = builtin_groups()


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_builtin_group_is_sourced_and_valid(name: str) -> None:
    g = GROUPS[name]
    assert g.name == name and g.title
    assert g.citation.strip()
    assert g.source_url.startswith("https://")
    assert isinstance(g.as_of, date) and date(2020, 1, 1) <= g.as_of <= date.today()
    assert g.countries or g.regions
    assert g.countries <= ISO_COUNTRIES, sorted(g.countries - ISO_COUNTRIES)
    assert not {"UK", "EL", "EU"} & g.countries
    for region in g.regions:
        assert pycountry.subdivisions.get(code=region) is not None, region
    for code in g.conditional:
        assert code in ISO_COUNTRIES and code not in g.countries  # conditional means "not a member"


def test_required_groups_exist() -> None:
    assert {"eu", "eea", "eu-adequacy", "us-doj-countries-of-concern", "us-padfa-foreign-adversaries",
            "ofac-comprehensive"} <= set(GROUPS)


def test_group_facts() -> None:
    assert GROUPS["us-doj-countries-of-concern"].countries == {"CN", "HK", "MO", "CU", "IR", "KP", "RU", "VE"}
    assert GROUPS["us-padfa-foreign-adversaries"].countries == {"CN", "KP", "RU", "IR"}
    eu = GROUPS["eu"].countries
    assert len(eu) == 27 and "GB" not in eu and "GR" in eu
    assert GROUPS["eea"].countries >= eu | {"IS", "LI", "NO"}
    assert "CH" not in GROUPS["eea"].countries  # Switzerland is EFTA but not EEA
    ofac = GROUPS["ofac-comprehensive"]
    assert ofac.countries == {"CU", "IR", "KP"}
    assert ofac.regions == {"UA-43", "UA-40", "UA-14", "UA-09"}
    assert "SY" not in ofac.countries
    assert "US" not in GROUPS["eu-adequacy"].countries and "US" in GROUPS["eu-adequacy"].conditional
    assert "GB" in GROUPS["eu-adequacy"].countries


def test_groups_are_usable_in_policies() -> None:
    for name, g in GROUPS.items():
        if not g.countries:
            continue
        p = load(HEAD + f"rules:\n  - name: r\n    action: block\n    countries: ['@{name}']\n")
        assert p.rules[0].countries == g.countries
        assert p.group_citations[name] == g.citation


# -- the policy's words are enum members that are their text ----------------------------------------

def test_settings_and_actions_are_enum_members_spelled_as_written() -> None:
    from geogate.core.rules import Action
    from geogate.core.rules import Addresses
    from geogate.core.rules import Disagreement
    from geogate.core.rules import Mode
    from geogate.core.rules import Special

    p = load(HEAD.replace("default: allow", "default: BLOCK") + "mode: Monitor\nspecial: LookUp\naddresses: ANY\n"
             "geo: {fields: [Country], unknown: Allow, disagreement: FIRST}\n"
             "rules:\n  - {name: r, action: Monitor, countries: [CN]}\n")
    assert p.default is Action.BLOCK and p.mode is Mode.MONITOR and p.special is Special.LOOKUP
    assert p.addresses is Addresses.ANY and p.unknown is Action.ALLOW and p.disagreement is Disagreement.FIRST
    assert p.rules[0].action is Action.MONITOR and f"{p.rules[0].action}" == "monitor"
    # geo.fields stay exact str: the engine reads them with getattr
    assert p.fields == ("country",) and type(p.fields[0]) is str
    # and a setting not given is the same member as one written out
    assert load(HEAD).mode is Mode.ENFORCE and load(HEAD).special is Special.BLOCK
