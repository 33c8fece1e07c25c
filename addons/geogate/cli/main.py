"""The `geogate` command: check, explain, audit, run, db, groups.

User mistakes end in one or two plain lines and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any

from geogate import __version__
from geogate.core.addresses import AddressError
from geogate.core.addresses import canonical_host
from geogate.core.addresses import parse_ip
from geogate.core.addresses import split_host_port
from geogate.core.decide import Decision
from geogate.core.decide import Request
from geogate.core.decide import Verdict
from geogate.core.decide import parse_client
from geogate.core.errors import GeogateError
from geogate.core.record import decision_record
from geogate.core.record import to_json_line
from geogate.core.resolve_defaults import DEFAULT_TIMEOUT
from geogate.policy.loader import PolicyError
from geogate.policy.loader import load_policy

STALE_DB_DAYS = 45


def _err(msg: str) -> None:
    print(f"geogate: {msg}", file=sys.stderr)


def _today() -> date:
    return date.today()


def _now() -> float:
    return time.time()


def _stale_groups(names: set[str]) -> list[str]:
    """A note for each built-in group among `names` last checked against its source more than
    STALE_AFTER_DAYS before today."""
    from geogate.policy.groups import STALE_AFTER_DAYS
    from geogate.policy.groups import builtin_groups

    today = _today()
    out = []
    for name in sorted(names):
        g = builtin_groups().get(name)
        if g and g.age_days(today) > STALE_AFTER_DAYS:
            out.append(f"note: built-in group @{name} was last checked against its source on {g.as_of}, "
                       f"{g.age_days(today)} days ago: compare it with the source `geogate groups {name}` names; "
                       "a newer geogate may have re-checked it, or list the codes in the policy yourself")
    return out


# -- check ---------------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from geogate.core.databases import DatabaseSet
    from geogate.policy.state import database_paths
    from geogate.policy.state import database_warnings

    failed = 0
    cited: set[str] = set()  # built-in groups the policies use: each is noted once, after them all
    databases = DatabaseSet.open(database_paths(args.db))  # the defaults when no --db
    from geogate.policy.state import default_policy_path

    for path in args.policy or [str(default_policy_path())]:
        try:
            policy = load_policy(path)
        except PolicyError as e:
            failed += 1
            for issue in e.issues:
                print(issue, file=sys.stderr)
            n = sum(1 for i in e.issues if i.severity == "error")
            print(f"{path}: invalid ({n} error{'s' if n != 1 else ''})", file=sys.stderr)
            continue
        except GeogateError as e:
            failed += 1
            _err(str(e))
            continue
        for w in policy.warnings:
            print(w, file=sys.stderr)
        cited |= set(policy.group_citations)
        for w in database_warnings(policy, databases):
            print(w, file=sys.stderr)
        rules = len(policy.all_rules())
        nat64 = f", nat64 {' '.join(map(str, policy.nat64.networks))}" if policy.nat64 else ""
        print(f"{path}: ok (policy {policy.name}, {rules} rule{'s' if rules != 1 else ''}, "
              f"mode {policy.mode}, default {policy.default}{nat64})")
    for note in _stale_groups(cited):
        _err(note)
    return 1 if failed else 0


# -- explain -------------------------------------------------------------------------------------

def _explain_text(d: Decision, resolution: str) -> str:
    rec = decision_record(d)
    host = f"[{rec['host']}]" if ":" in (rec["host"] or "") and rec["port"] else rec["host"]
    target = f"{host}" + (f":{rec['port']}" if rec["port"] else "")
    lines = [f"target     {target}  ({resolution})"]
    for a, v in zip(rec["addresses"], d.outcome.verdicts, strict=True):
        lines += _address_lines(a, v)
    lines += _decision_lines(rec)
    lines += _provenance_lines(rec)
    return "\n".join(lines)


def _address_lines(a: dict[str, Any], v: Verdict) -> list[str]:
    """One address of the record: what it is, what the databases say, what was decided for it."""
    via = f" via {v.facts.address.nat64_prefix}" if a["embedded_ipv4"] and v.facts.address.nat64_prefix else ""
    ip = a["ip"] + (f" (carries {a['embedded_ipv4']}, {a['embedding']}{via})" if a["embedded_ipv4"] else "")
    lines = [f"address    {ip}: {_geo_text(a)}  -> {a['action']} by {a['rule']}"]
    if a["sources"]:
        lines.append("           databases say: " + ", ".join(f"{db}={country or '-'}" for db, country in a["sources"].items()))
    return lines


def _geo_text(a: dict[str, Any]) -> str:
    if a["error"]:
        return f"lookup error: {a['error']}"
    if a["special"]:
        return f"special-purpose range: {a['special']}" + (f"; country {a['country']}" if a["country"] else "")
    parts = [f"country {a['country'] or 'unknown'}"]
    if a["registered_country"] and a["registered_country"] != a["country"]:
        parts.append(f"registered in {a['registered_country']}")
    if a["represented_country"]:
        parts.append(f"represents {a['represented_country']}")
    if a["continent"]:
        parts.append(f"continent {a['continent']}")
    if a["subdivisions"]:
        parts.append("subdivisions " + ",".join(a["subdivisions"]))
    if a["asn"]:
        parts.append(f"AS{a['asn']}" + (f" {a['as_org']}" if a["as_org"] else ""))
    if a["anycast"]:
        parts.append("anycast")
    return ", ".join(parts)


def _decision_lines(rec: dict[str, Any]) -> list[str]:
    """The decision, the rule, why, and the address dialled or refused."""
    verdict = rec["action"].upper()
    if not rec["enforced"]:
        verdict += f" (monitor mode; enforce would {'block' if rec['would_block'] else 'allow'})"
    elif rec["would_block"] and rec["action"] == "allow":
        verdict += " (would_block: a monitor rule matched)"
    lines = [f"decision   {verdict}", f"rule       {rec['rule']}"]
    if rec["match"]:
        m = rec["match"]
        src = f" in {m['field']} from {m['source']}" if m["source"] else ""
        grp = f" (group @{m['group']})" if m["group"] else ""
        lines.append(f"matched    {m['key']} {m['value']}{src}{grp}")
    lines.append(f"reason     {rec['reason']}")
    if rec["citation"]:
        lines.append(f"citation   {rec['citation']}")
    if rec["address"]:
        label = "dial" if rec["action"] == "allow" else "refused"
        lines.append(f"{label:<11}{rec['address']}")
    if rec["host_mismatch"]:
        lines.append("mismatch   the host name does not resolve to the address being dialled")
    return lines


def _provenance_lines(rec: dict[str, Any]) -> list[str]:
    """What decided: the policy and each database, by hash; then the warnings."""
    from geogate.core.geo import build_text

    p = rec["policy"]
    lines = [f"policy     {p['name']}  {p['path']}  sha256:{p['sha256'][:16]}"]
    for db in rec["databases"]:
        built = build_text(db["build_epoch"])  # metadata is untrusted: UINT64_MAX is no date
        lines.append(f"database   {db['name']}  {db['type']}  built {built}  sha256:{db['sha256'][:16]}")
    lines += [f"warning    {w}" for w in rec["warnings"]]
    return lines


_URL_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def explain_target(target: str) -> tuple[str, int | None]:
    """The host and port `explain` decides: from `host`, `host:port`, `[v6]:port`, or a URL of a
    scheme the proxy carries (http, https, ws, wss; the port defaults by scheme). Raises AddressError."""
    scheme, sep, rest = target.strip().partition("://")
    if not sep:
        return split_host_port(target)
    default = _URL_PORTS.get(scheme.lower())
    if default is None:
        raise AddressError(f"{target!r}: a URL must start with one of {', '.join(f'{s}://' for s in _URL_PORTS)}")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]  # no user:password@
    if authority.count(":") > 1 and not authority.startswith("["):
        raise AddressError(f"{target!r}: an IPv6 address in a URL goes in brackets, e.g. http://[2001:db8::1]:8080/")
    try:
        return split_host_port(authority, default)
    except AddressError as e:  # name the URL as given, not the part of it
        raise AddressError(str(e).replace(repr(authority), repr(target.strip()), 1)) from None


def cmd_explain(args: argparse.Namespace) -> int:
    from geogate.core.resolve import ResolveError
    from geogate.core.resolve import resolve_sync
    from geogate.policy.state import GateState
    from geogate.policy.state import database_warnings

    try:
        host, port = explain_target(args.target)
        host = canonical_host(host)
    except AddressError as e:
        _err(str(e))
        return 2
    state = GateState.load(args.policy, args.db)
    for w in state.policy.warnings:
        print(w, file=sys.stderr)
    literal = parse_ip(host)
    resolve_error = None
    if literal is not None:
        addresses, resolution = [literal], "IP literal, nothing to resolve"
    elif args.no_resolve:
        _err(f"{host} is a host name and --no-resolve was given; pass an IP address, or drop --no-resolve")
        return 2
    else:
        try:
            r = resolve_sync(host, timeout=args.timeout)
            addresses = list(r.addresses)
            resolution = f"resolved via {r.source}: {', '.join(map(str, addresses))}"
        except ResolveError as e:
            addresses, resolution, resolve_error = [], f"not resolved: {e}", str(e)
    client = parse_client(args.client)
    if args.client and client is None:
        _err(f"--client {args.client!r} is not an IP address")
        return 2
    req = Request(host=host, port=port, client_ip=client, user=args.user, client=args.client, mode="explain")
    decision = state.decide(req, addresses, resolve_error=resolve_error)
    # what the databases cannot answer, only where it could change this decision
    countries = {c for a in decision_record(decision)["addresses"] for c in (a["country"], a["registered_country"]) if c}
    for w in database_warnings(state.policy, state.databases, countries):
        print(w, file=sys.stderr)
    if args.json:
        print(to_json_line(decision_record(decision)))
    else:
        print(_explain_text(decision, resolution))
    return 0


# -- groups --------------------------------------------------------------------------------------

def cmd_groups(args: argparse.Namespace) -> int:
    from geogate.policy.groups import STALE_AFTER_DAYS
    from geogate.policy.groups import builtin_groups

    groups = builtin_groups()
    today = date.today()
    if args.json and not args.name:
        print(json.dumps([_group_json(groups[name]) for name in sorted(groups)], indent=2))
        return 0
    if args.name:
        g = groups.get(args.name.removeprefix("@"))
        if g is None:
            _err(f"no built-in group `{args.name}`; known: {', '.join(sorted(groups))}")
            return 2
        if args.json:
            print(json.dumps(_group_json(g), indent=2))
            return 0
        print(f"@{g.name}: {g.title}")
        print(f"  countries  {' '.join(sorted(g.countries)) or '-'}")
        if g.regions:
            print(f"  regions    {' '.join(sorted(g.regions))}")
        for code, why in sorted(g.conditional.items()):
            print(f"  not included, conditional: {code}: {why}")
        print(f"  citation   {g.citation}")
        print(f"  source     {g.source_url}")
        stale = " (older than 6 months: re-check the source)" if g.age_days(today) > STALE_AFTER_DAYS else ""
        print(f"  as of      {g.as_of}{stale}")
        if g.notes:
            print(f"  notes      {g.notes}")
        return 0
    width = max(len(n) for n in groups) + 1
    for name in sorted(groups):
        g = groups[name]
        members = " ".join(sorted(g.countries))
        if g.regions:
            members += ("; " if members else "") + "regions " + " ".join(sorted(g.regions))
        print(f"@{name:<{width}} as of {g.as_of}  {members}")
    return 0


def _group_json(g) -> dict[str, Any]:
    return {"name": g.name, "title": g.title, "citation": g.citation, "source_url": g.source_url,
            "as_of": str(g.as_of), "countries": sorted(g.countries), "regions": sorted(g.regions),
            "conditional": g.conditional, "notes": g.notes}


# -- db ------------------------------------------------------------------------------------------

def _network_count(db, cache: Path) -> int:
    """Networks in `db`; walking a large file takes seconds, so counts are kept by sha256."""
    path = cache / "network-counts.json"
    try:
        counts = json.loads(path.read_text())
    except (OSError, ValueError):
        counts = {}
    if db.info.sha256 not in counts:
        print(f"counting the networks of {db.name} (once; takes a few seconds)", file=sys.stderr)
        counts[db.info.sha256] = db.count_networks()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(counts))
        except OSError:
            pass
    return int(counts[db.info.sha256])


def _print_db_info(out: list[dict[str, Any]]) -> None:
    from geogate.core.geo import build_text

    for e in out:
        print(e["name"])
        print(f"  file         {e['path']}")
        print(f"  type         {e['type']} ({e['kind']} database, {e['schema']} schema, IPv{e['ip_version']})")
        if e["age_days"] is not None:
            print(f"  built        {e['built']} ({e['age_days']} day{'s' if e['age_days'] != 1 else ''} ago)")
        else:
            print(f"  built        {build_text(e['build_epoch'])}")
        print(f"  networks     {e['networks']:,} ({e['node_count']:,} tree nodes)")
        print(f"  sha256       {e['sha256']}")
        for key in ("source", "license", "attribution"):
            if e.get(key):
                print(f"  {key:<12} {e[key]}")
        if e["stale"] and e.get("newest_published"):
            n = e["newest_published"]
            print(f"  WARNING      older than {STALE_DB_DAYS} days, and the newest published build (checked "
                  f"{n['checked']}) is this one, built {n['built']}: `geogate db update` has nothing newer. "
                  f"Fresher data: MaxMind GeoLite2 with geoipupdate, then --db PATH (docs/databases.md)")
        elif e["stale"]:
            print(f"  WARNING      older than {STALE_DB_DAYS} days: run `geogate db update` or refresh this file")
        for problem in e.get("problems", ()):
            print(f"  WARNING      {problem}")


def cmd_db_info(args: argparse.Namespace) -> int:
    from geogate.core import bundled
    from geogate.core.databases import Database
    from geogate.core.geo import build_date
    from geogate.core.geo import build_text
    from geogate.core.geo import clean_text
    from geogate.policy.state import database_paths

    paths = database_paths(args.db)
    provenance = {p["sha256"]: p for p in bundled.provenance()}
    checks = bundled.last_checks()
    now = _now()
    out: list[dict[str, Any]] = []
    today = datetime.fromtimestamp(now, timezone.utc).date()
    for path in paths:
        db = Database(path)
        i = db.info
        built = build_date(i.build_epoch)  # None: not a usable time (0, UINT64_MAX, ...)
        age = int((now - i.build_epoch) // 86400) if built is not None else None
        problems = []
        if built is None:
            problems.append(f"the build time is {build_text(i.build_epoch)}: its age cannot be told")
        elif built > today:
            problems.append(f"the build time {built} is in the future: its age cannot be told")
            age = None
        entry: dict[str, Any] = {
            "name": i.name, "path": clean_text(i.path, 4096), "type": i.type, "schema": i.schema, "kind": i.kind,
            "build_epoch": i.build_epoch,
            "built": str(built) if built is not None else None,
            "age_days": age, "stale": age is not None and age > STALE_DB_DAYS, "ip_version": i.ip_version,
            "node_count": i.node_count, "networks": _network_count(db, bundled.cache_dir()),
            "sha256": i.sha256, "description": i.description or None,
        }
        if problems:
            entry["problems"] = problems
        p = provenance.get(i.sha256)  # identified by content, wherever the file lives
        check = checks.get(p["name"]) if p else None
        if check and isinstance(check.get("build_epoch"), int) and check["build_epoch"] <= i.build_epoch:
            entry["newest_published"] = {"checked": build_text(check.get("checked")), "built": build_text(i.build_epoch)}
        if p:
            entry.update({"source": clean_text(f"npm {p.get('npm_package')}@{p.get('version')}"),
                          "license": clean_text(p.get("license")) if p.get("license") else None,
                          "attribution": clean_text(" ".join(filter(None, (p.get("attribution"), p.get("attribution_url")))))})
        out.append(entry)
        db.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_db_info(out)
    if any(e["stale"] for e in out):
        newest = all(e.get("newest_published") for e in out if e["stale"])
        print(f"geogate: warning: a database is older than {STALE_DB_DAYS} days"
              + (", and no newer build of it is published" if newest else ""), file=sys.stderr)
    if any(e.get("problems") for e in out):
        print("geogate: warning: a database's build time is not usable; check where the file came from", file=sys.stderr)
    return 0


def cmd_db_update(args: argparse.Namespace) -> int:
    from geogate.core import bundled

    results = bundled.update(log=lambda m: print(m, file=sys.stderr))
    for r in results:
        state = "updated" if r.get("changed") else "already current"
        print(f"{r['name']}: {state} ({r.get('old_version')} -> {r.get('new_version')})")
    return 0


# -- run / audit ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from geogate.cli.run_proxy import run

    return run(args)


def cmd_addon_path(args: argparse.Namespace) -> int:
    from geogate.addon import PATH

    print(PATH)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from geogate.cli.audit import audit

    return audit(args)


# -- parser --------------------------------------------------------------------------------------

_POLICY_HELP = "policy file (default: GEOGATE_POLICY, else the packaged default.yaml)"
_DB_HELP = "MMDB database (repeatable; default: the bundled ones)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geogate", description="Destination-country rules for outbound connections.")
    p.add_argument("--version", action="version", version=f"geogate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("check", help="validate policy files")
    c.add_argument("policy", nargs="*", metavar="POLICY",
                   help="policy files (default: GEOGATE_POLICY, else the packaged default.yaml)")
    c.add_argument("--db", action="append", help="check against these databases (repeatable; default: the bundled ones)")
    c.set_defaults(func=cmd_check)

    e = sub.add_parser("explain", help="decide one destination and show why")
    e.add_argument("target", metavar="TARGET",
                   help="IP literal, host name, host:port, or an http, https, ws or wss URL")
    e.add_argument("--policy", help=_POLICY_HELP)
    e.add_argument("--db", action="append", help=_DB_HELP)
    e.add_argument("--client", help="client address, for client profiles")
    e.add_argument("--user", help="proxy-auth user name, for client profiles")
    e.add_argument("--no-resolve", action="store_true", help="never look names up")
    e.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"DNS timeout in seconds (default {DEFAULT_TIMEOUT:g})")
    e.add_argument("--json", action="store_true", help="print the decision record (one JSON line)")
    e.set_defaults(func=cmd_explain)

    a = sub.add_parser("audit", help="evaluate recorded traffic (mitmproxy flows, HAR) offline")
    a.add_argument("files", nargs="+", metavar="FILE", help="mitmproxy flow files or HAR files")
    a.add_argument("--policy", help=_POLICY_HELP)
    a.add_argument("--db", action="append", help=_DB_HELP)
    a.add_argument("--format", choices=("text", "json", "csv", "html"), default="text",
                   help="report format (default: text)")
    a.add_argument("-o", "--output", metavar="OUT", help="write the report to OUT (default: standard output)")
    a.add_argument("--resolve", action="store_true", help="look names up when a flow has no recorded address")
    a.add_argument("--fail-on-block", action="store_true", help="exit 1 when any flow would be blocked")
    a.add_argument("--against", metavar="POLICY2", help="report only what changes under POLICY2")
    a.set_defaults(func=cmd_audit)

    r = sub.add_parser("run", help="start the proxy (mitmdump with the geogate addon)")
    r.add_argument("--policy", help=_POLICY_HELP + "; reloaded when it changes")
    r.add_argument("--db", action="append", help=_DB_HELP + "; reloaded when they change")
    r.add_argument("--mode", default="regular", help="any mitmproxy mode (default: regular)")
    r.add_argument("--listen-host", default="127.0.0.1",
                   help='address to listen on (default: 127.0.0.1; "" for every address)')
    r.add_argument("--listen-port", type=int, default=8080, help="port to listen on (default: 8080)")
    r.add_argument("--log", metavar="FILE", help="JSON-lines decision log")
    r.add_argument("--intercept", action="store_true", help="intercept TLS (needs the mitmproxy CA on clients)")
    r.add_argument("--workers", default="1", metavar="N",
                   help="proxy processes sharing the listening address (default 1; auto: one per core)")
    r.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="-- then extra mitmdump arguments")
    r.set_defaults(func=cmd_run)

    ap = sub.add_parser("addon-path", help="print the mitmproxy script: mitmdump -s \"$(geogate addon-path)\"")
    ap.set_defaults(func=cmd_addon_path)
    d = sub.add_parser("db", help="GeoIP databases")
    dsub = d.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    di = dsub.add_parser("info", help="build date, age, type, size, licence")
    di.add_argument("--db", action="append", help=_DB_HELP)
    di.add_argument("--json", action="store_true", help="print JSON")
    di.set_defaults(func=cmd_db_info)
    du = dsub.add_parser("update", help="refresh the bundled default databases")
    du.set_defaults(func=cmd_db_update)

    from geogate.cli.gateway import add_parser as add_gateway_parser

    add_gateway_parser(sub)

    g = sub.add_parser("groups", help="built-in country groups")
    g.add_argument("name", nargs="?", metavar="NAME", help="one group, with its source (default: list them all)")
    g.add_argument("--json", action="store_true", help="print JSON (a list of every group when no NAME)")
    g.set_defaults(func=cmd_groups)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GeogateError as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

