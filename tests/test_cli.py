"""The `geogate` command line, run as a user runs it (a subprocess, cwd the project root), and the
resolver `explain` uses for host names.

Every run gets a private cache directory for the bundled databases, so the tests neither depend on
nor touch ~/.cache/geogate.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import maxminddb
import pytest

from geogate.core.resolve import LOOPBACK
from geogate.core.resolve import ResolveError
from geogate.core.resolve import Resolver
from geogate.policy.groups import builtin_groups
from geogate.policy.loader import load_policy

PROJECT = Path(__file__).resolve().parents[1]
TEST_DB = "tests/data/maxmind/GeoIP2-Country-Test.mmdb"
DOJ_POLICY = "policies/us-doj-countries-of-concern.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "geogate"


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["GEOGATE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "geogate-cache")
    for key in ("GEOGATE_POLICY", "GEOGATE_GEOIP_DIR"):
        env.pop(key, None)
    return env


def _run(env: dict[str, str], args: tuple[str, ...], script: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "geogate.cli"]
    return subprocess.run([*cmd, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)


def run_all(env: dict[str, str], commands: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands concurrently (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda args: _run(env, args), commands))


@pytest.fixture
def geogate(cli_env: dict[str, str]):
    def run(*args: str, script: bool = False) -> subprocess.CompletedProcess[str]:
        return _run(cli_env, args, script)

    return run


def one_json_line(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def doj_citation() -> str:
    (rule,) = [r for r in load_policy(PROJECT / DOJ_POLICY).rules if r.name == "doj"]
    assert rule.citation and "202.601" in rule.citation
    return rule.citation


# -- explain: the must-work examples --------------------------------------------------------

# (target, the address dialled, the IPv4 it carries)
CN_TARGETS = [
    ("175.16.199.5", "175.16.199.5", None),  # plain IPv4 (GeoIP2-Country-Test: CN)
    ("::ffff:175.16.199.5", "::ffff:af10:c705", "175.16.199.5"),  # IPv4-mapped
    ("64:ff9b::af10:c705", "64:ff9b::af10:c705", "175.16.199.5"),  # NAT64
    ("2002:af10:c705::", "2002:af10:c705::", "175.16.199.5"),  # 6to4
]


@pytest.fixture(scope="module")
def cn_runs(cli_env: dict[str, str]) -> dict[tuple[str, bool], subprocess.CompletedProcess[str]]:
    keys = [(t, js) for t, _, _ in CN_TARGETS for js in (False, True)]
    commands = [("explain", t, "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY, *(["--json"] if js else []))
                for t, js in keys]
    return dict(zip(keys, run_all(cli_env, commands), strict=True))


@pytest.mark.parametrize(("target", "dialled", "carried"), CN_TARGETS, ids=[t for t, _, _ in CN_TARGETS])
def test_explain_blocks_cn_json(cn_runs, target: str, dialled: str, carried: str | None) -> None:
    proc = cn_runs[(target, True)]
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    rec = one_json_line(proc.stdout)
    assert (rec["action"], rec["enforced"], rec["would_block"], rec["rule"]) == ("block", True, True, "doj")
    assert rec["citation"] == doj_citation()
    assert rec["address"] == dialled
    (a,) = rec["addresses"]
    assert (a["ip"], a["embedded_ipv4"], a["country"]) == (dialled, carried, "CN")
    assert a["sources"] == {"GeoIP2-Country-Test": "CN"}
    assert rec["policy"]["name"] == "us-doj-countries-of-concern"
    assert rec["policy"]["sha256"] == hashlib.sha256((PROJECT / DOJ_POLICY).read_bytes()).hexdigest()
    assert [d["name"] for d in rec["databases"]] == ["GeoIP2-Country-Test"]


@pytest.mark.parametrize(("target", "dialled", "carried"), CN_TARGETS, ids=[t for t, _, _ in CN_TARGETS])
def test_explain_blocks_cn_text(cn_runs, target: str, dialled: str, carried: str | None) -> None:
    proc = cn_runs[(target, False)]
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    out = proc.stdout
    assert "BLOCK" in out and "ALLOW" not in out
    assert "doj" in out and "CN" in out
    assert doj_citation() in out
    assert dialled in out
    if carried:
        assert carried in out


def test_explain_host_port_target(geogate) -> None:
    proc = geogate("explain", "[::ffff:175.16.199.5]:8443", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY, "--json")
    assert proc.returncode == 0, proc.stderr
    rec = one_json_line(proc.stdout)
    assert (rec["port"], rec["action"], rec["addresses"][0]["embedded_ipv4"]) == (8443, "block", "175.16.199.5")


@pytest.mark.parametrize(("target", "host", "port"), [
    ("http://foo.example/bar", "foo.example", 80),
    ("https://foo.example/bar?q=1#x", "foo.example", 443),
    ("HTTPS://foo.example:8443", "foo.example", 8443),
    ("ws://user:secret@1.2.3.4/chat", "1.2.3.4", 80),
    ("wss://[2001:db8::1]/", "2001:db8::1", 443),
    ("http://[2001:db8::1]:8080/x", "2001:db8::1", 8080),
    ("foo.example:8080", "foo.example", 8080),
    ("foo.example", "foo.example", None),
    ("2001:db8::1", "2001:db8::1", None),
])
def test_explain_takes_host_and_port_from_a_url(target: str, host: str, port: int | None) -> None:
    from geogate.cli.main import explain_target

    assert explain_target(target) == (host, port)


def test_explain_url_target(geogate) -> None:
    proc = geogate("explain", "https://[::ffff:175.16.199.5]/path", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY,
                   "--json")
    assert proc.returncode == 0, proc.stderr
    rec = one_json_line(proc.stdout)
    assert (rec["port"], rec["action"], rec["addresses"][0]["embedded_ipv4"]) == (443, "block", "175.16.199.5")


@pytest.mark.parametrize(("fields", "action", "field"), [
    ("[registered_country]", "block", "registered_country"),  # 81.2.69.142 is registered in US
    ("[country]", "allow", None),  # ... but located in GB
])
def test_explain_geo_fields(geogate, tmp_path: Path, fields: str, action: str, field: str | None) -> None:
    policy = tmp_path / "fields.yaml"
    policy.write_text(f"version: 1\nname: fields\ndefault: allow\ngeo: {{fields: {fields}}}\n"
                      "rules:\n  - name: no-us\n    action: block\n    countries: [US]\n")
    proc = geogate("explain", "81.2.69.142", "--no-resolve", "--db", TEST_DB, "--policy", str(policy), "--json")
    assert proc.returncode == 0, proc.stderr
    rec = one_json_line(proc.stdout)
    assert rec["action"] == action
    assert rec["rule"] == ("no-us" if action == "block" else "default")
    a = rec["addresses"][0]
    assert (a["country"], a["registered_country"]) == ("GB", "US")
    if field:
        assert rec["match"]["field"] == field


def test_explain_uses_the_bundled_databases_without_db(geogate) -> None:
    proc = geogate("explain", "8.8.8.8", "--no-resolve", "--json")
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    rec = one_json_line(proc.stdout)
    assert [d["name"] for d in rec["databases"]] == ["dbip-country", "geo-whois-asn-country"]
    for d in rec["databases"]:
        assert len(d["sha256"]) == 64 and d["build_epoch"] > 0
    assert rec["addresses"][0]["country"] == "US"
    assert rec["policy"]["name"] == "default"  # the packaged default policy
    assert rec["action"] == "allow"


def test_console_script_is_installed_and_works(geogate) -> None:
    assert CONSOLE_SCRIPT.exists(), CONSOLE_SCRIPT
    proc = geogate("explain", "175.16.199.5", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY, "--json", script=True)
    assert proc.returncode == 0, proc.stderr
    assert one_json_line(proc.stdout)["rule"] == "doj"


# -- check ----------------------------------------------------------------------------------------------

def test_check_uk_policy(geogate, tmp_path: Path) -> None:
    policy = tmp_path / "uk.yaml"
    policy.write_text("version: 1\nname: uk\ndefault: allow\nrules:\n"
                      "  - name: r1\n    action: block\n    countries: [CN, UK]\n")
    proc = geogate("check", str(policy), "--db", TEST_DB)
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{policy}:7:21: error:" in proc.stderr
    assert "UK" in proc.stderr and "did you mean GB" in proc.stderr
    assert proc.stdout == ""


def test_check_reports_each_file(geogate, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nname: good\ndefault: allow\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\ndefault: alow\n")
    proc = geogate("check", str(good), str(bad), "--db", TEST_DB)
    assert proc.returncode == 1
    assert f"{good}: ok" in proc.stdout
    assert f"{bad}:3:10: error:" in proc.stderr and "did you mean `allow`" in proc.stderr
    proc = geogate("check", str(good), "--db", TEST_DB)
    assert proc.returncode == 0 and f"{good}: ok" in proc.stdout


# -- user mistakes: exit 2 (1 for check), one plain line, never a traceback ----------------------------

def _bad_db(tmp_path: Path, kind: str) -> str:  # noqa: D103
    data = (PROJECT / TEST_DB).read_bytes()
    path = tmp_path / f"{kind}.mmdb"
    if kind == "corrupt":
        path.write_bytes(data[:100] + b"\xff" * 1900 + data[2000:])
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif kind == "directory":
        path.mkdir()
    return str(path)


# (arguments with {db} and {policy} placeholders, expected exit code, words in the one stderr line)
MISTAKES = [
    (["explain", "1.2.3.4", "--no-resolve", "--db", TEST_DB, "--policy", "{tmp}/missing.yaml"], 2, "does not exist"),
    (["explain", "1.2.3.4", "--no-resolve", "--db", "{tmp}/missing.mmdb", "--policy", DOJ_POLICY], 2, "does not exist"),
    (["explain", "1.2.3.4", "--no-resolve", "--db", "{corrupt}", "--policy", DOJ_POLICY], 2, "corrupt"),
    (["explain", "1.2.3.4", "--no-resolve", "--db", "{truncated}", "--policy", DOJ_POLICY], 2, "truncated or corrupt"),
    (["explain", "1.2.3.4", "--no-resolve", "--db", "{directory}", "--policy", DOJ_POLICY], 2, "directory"),
    (["explain", "1.2.3.4", "--no-resolve", "--db", TEST_DB, "--policy", "{tmp}"], 2, "policy file"),
    (["explain", "foo:99999", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "port must be a number"),
    (["explain", "foo:²", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "port must be a number"),
    (["explain", "[::1", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "missing ']'"),
    (["explain", "ftp://1.2.3.4/", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "http://, https://, ws://, wss://"),
    (["explain", "http://1.2.3.4:0/", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2,
     "'http://1.2.3.4:0/': port must be a number"),
    (["explain", "http://::1/", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "goes in brackets"),
    (["explain", "", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "empty host name"),
    (["explain", "example.com", "--no-resolve", "--db", TEST_DB, "--policy", DOJ_POLICY], 2, "--no-resolve"),
    (["check", "{tmp}/missing.yaml", "--db", TEST_DB], 1, "does not exist"),
    (["check", DOJ_POLICY, "--db", "{tmp}/missing.mmdb"], 2, "does not exist"),
    (["groups", "no-such-group"], 2, "no built-in group"),
    (["db", "info", "--db", "{tmp}/missing.mmdb"], 2, "does not exist"),
]


@pytest.fixture(scope="module")
def mistake_runs(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("mistakes")
    subst = {"tmp": str(tmp), **{k: _bad_db(tmp, k) for k in ("corrupt", "truncated", "directory")}}
    return run_all(cli_env, [tuple(a.format(**subst) for a in args) for args, _, _ in MISTAKES])


@pytest.mark.parametrize("index", range(len(MISTAKES)), ids=[" ".join(a[:2]) + f"-{w}" for a, _, w in MISTAKES])
def test_user_mistakes_end_in_one_plain_line(mistake_runs, index: int) -> None:
    _args, code, words = MISTAKES[index]
    proc = mistake_runs[index]
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    no_traceback(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("geogate: ") and words in lines[0]
    assert proc.stdout == ""


def test_invalid_policy_in_explain_names_the_line(geogate, tmp_path: Path) -> None:
    policy = tmp_path / "uk.yaml"
    policy.write_text("version: 1\nname: uk\ndefault: allow\nrules:\n  - name: r\n    action: block\n    countries: [UK]\n")
    proc = geogate("explain", "1.2.3.4", "--no-resolve", "--db", TEST_DB, "--policy", str(policy))
    assert proc.returncode == 2
    no_traceback(proc)
    assert f"{policy}:7:17" in proc.stderr and "GB" in proc.stderr


def test_usage_errors_have_no_traceback(cli_env) -> None:
    commands = [("explain",), ("frobnicate",), ("explain", "1.2.3.4", "--bogus"), ()]
    for args, proc in zip(commands, run_all(cli_env, commands), strict=True):
        assert proc.returncode == 2, args
        no_traceback(proc)
        assert "usage:" in proc.stderr


# -- groups and db info ---------------------------------------------------------------------------------

def test_groups_lists_every_group(geogate) -> None:
    proc = geogate("groups")
    assert proc.returncode == 0, proc.stderr
    groups = builtin_groups()
    for name, g in groups.items():
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.split()[0] == f"@{name}"]
        assert str(g.as_of) in line
        listed = set(line.replace(";", " ").split())
        for code in g.countries | g.regions:
            assert code in listed, (name, code)


def test_groups_shows_one_group(geogate) -> None:
    proc = geogate("groups", "us-doj-countries-of-concern")
    assert proc.returncode == 0, proc.stderr
    g = builtin_groups()["us-doj-countries-of-concern"]
    assert " ".join(sorted(g.countries)) in proc.stdout
    assert sorted(g.countries) == ["CN", "CU", "HK", "IR", "KP", "MO", "RU", "VE"]
    assert g.citation in proc.stdout and g.source_url in proc.stdout and str(g.as_of) in proc.stdout
    proc = geogate("groups", "@ofac-comprehensive", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["countries"], data["regions"]) == (["CU", "IR", "KP"], ["UA-09", "UA-14", "UA-40", "UA-43"])
    assert data["citation"] == builtin_groups()["ofac-comprehensive"].citation


def test_groups_json_without_a_name_lists_every_group(geogate) -> None:
    proc = geogate("groups", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    groups = builtin_groups()
    assert [g["name"] for g in data] == sorted(groups)
    one = json.loads(geogate("groups", "ofac-comprehensive", "--json").stdout)
    assert [g for g in data if g["name"] == "ofac-comprehensive"] == [one]


def _subcommands(parser) -> dict[str, object]:
    import argparse

    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subcommands(sub).items()})
    return out


def test_every_option_of_every_subcommand_says_what_it_is_for() -> None:
    import argparse

    from geogate.cli.main import build_parser

    subs = _subcommands(build_parser())
    assert {"check", "explain", "audit", "run", "db info", "db update", "groups", "addon-path"} <= set(subs)
    missing = [f"geogate {name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in subs.items() for a in sub._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []


def test_db_info_json(geogate) -> None:
    proc = geogate("db", "info", "--db", TEST_DB, "--json")
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    (entry,) = json.loads(proc.stdout)
    with maxminddb.open_database(str(PROJECT / TEST_DB)) as reader:
        meta = reader.metadata()
    assert entry["type"] == meta.database_type == "GeoIP2-Country"
    assert entry["build_epoch"] == meta.build_epoch
    assert entry["sha256"] == hashlib.sha256((PROJECT / TEST_DB).read_bytes()).hexdigest()
    assert (entry["schema"], entry["kind"], entry["ip_version"]) == ("maxmind", "country", 6)
    assert entry["networks"] == 345  # the number of networks in GeoIP2-Country-Test.json


# -- the resolver `explain` uses for host names ---------------------------------------------------------

HOSTS = """\
# test hosts file
127.0.0.1   localhost
203.0.113.7 svc.test Alias.Test.
2001:db8::7 svc.test
198.51.100.1 other.test   # trailing comment
203.0.113.9 evil.localhost
not-an-ip   broken.test
"""


@pytest.fixture
def resolver_files(tmp_path: Path) -> tuple[Path, Path]:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")  # nothing answers there
    return hosts, resolv


def _resolver(files: tuple[Path, Path], timeout: float = 0.5, **kw) -> Resolver:
    hosts, resolv = files
    return Resolver(timeout, hosts_path=str(hosts), resolv_conf=str(resolv), **kw)


# (name, addresses, source)
RESOLVE_ROWS = [
    ("svc.test", ("203.0.113.7", "2001:db8::7"), "hosts"),  # A and AAAA lines merged, in file order
    ("alias.test", ("203.0.113.7",), "hosts"),  # alias, case and trailing dot normalised
    ("other.test", ("198.51.100.1",), "hosts"),  # trailing comment ignored
    ("localhost", ("127.0.0.1", "::1"), "localhost"),  # RFC 6761, never the hosts file or DNS
    ("foo.localhost", ("127.0.0.1", "::1"), "localhost"),  # every name below localhost
    ("evil.localhost", ("127.0.0.1", "::1"), "localhost"),  # a hosts entry cannot move it elsewhere
    ("203.0.113.50", ("203.0.113.50",), "literal"),  # IPv4 literal
    ("2001:db8::1", ("2001:db8::1",), "literal"),  # IPv6 literal
]


@pytest.mark.parametrize(("name", "addresses", "source"), RESOLVE_ROWS, ids=[r[0] for r in RESOLVE_ROWS])
def test_resolver_local_sources(resolver_files, name: str, addresses: tuple[str, ...], source: str) -> None:
    r = asyncio.run(_resolver(resolver_files).resolve(name))
    assert r.addresses == tuple(ipaddress.ip_address(a) for a in addresses)
    assert r.source == source


def test_loopback_constant() -> None:
    assert LOOPBACK == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def test_resolver_dns_failure_is_a_resolve_error_and_is_cached_briefly(resolver_files) -> None:
    async def scenario() -> None:
        r = _resolver(resolver_files, timeout=0.3, negative_ttl=5.0)
        start = time.monotonic()
        with pytest.raises(ResolveError) as first:
            await r.resolve("nothing.invalid")
        took = time.monotonic() - start
        assert took < 0.3 + 0.6, took  # bounded by the timeout
        assert "nothing.invalid" in str(first.value)
        start = time.monotonic()
        with pytest.raises(ResolveError) as second:
            await r.resolve("nothing.invalid")
        assert time.monotonic() - start < 0.1  # answered from the negative cache
        assert str(second.value) == str(first.value)
        with pytest.raises(ResolveError):  # "broken.test" has no valid hosts line: DNS is asked
            await r.resolve("broken.test")

    asyncio.run(scenario())


def test_resolver_negative_cache_expires(resolver_files) -> None:
    async def scenario() -> None:
        r = _resolver(resolver_files, timeout=0.2, negative_ttl=0.2)
        with pytest.raises(ResolveError):
            await r.resolve("gone.invalid")
        expiry = r._cache["gone.invalid"][0]
        await asyncio.sleep(0.25)
        with pytest.raises(ResolveError):
            await r.resolve("gone.invalid")
        assert r._cache["gone.invalid"][0] > expiry  # a fresh negative answer, not the old one

    asyncio.run(scenario())


def test_resolver_without_resolv_conf(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    r = Resolver(0.5, hosts_path=str(hosts), resolv_conf=str(tmp_path / "missing-resolv.conf"))
    with pytest.raises(ResolveError) as err:
        asyncio.run(r.resolve("example.test"))
    assert str(err.value)  # a message that can be shown


def test_resolver_rereads_a_changed_hosts_file(resolver_files) -> None:
    hosts, _ = resolver_files

    async def scenario() -> None:
        r = _resolver(resolver_files)
        assert (await r.resolve("svc.test")).addresses[0] == ipaddress.ip_address("203.0.113.7")
        hosts.write_text("192.0.2.99 svc.test\n")
        assert (await r.resolve("svc.test")).addresses[0] == ipaddress.ip_address("203.0.113.7")  # checked <= 1/s
        r._hosts_checked -= 2.0  # pretend the second has passed
        assert (await r.resolve("svc.test")).addresses == (ipaddress.ip_address("192.0.2.99"),)

    asyncio.run(scenario())
