"""`geogate gateway run|down|status|check`: the LAN gateway (see geogate.gateway).

Everything `run` needs is checked before anything on the host changes: a mistake ends in one
line and exit 2, with forwarding and the rules as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from geogate.cli.worker_count import parse_workers
from geogate.core.errors import GeogateError
from geogate.core.processes import process_alive

NOT_RUNNING = 3  # `status`: something is missing (as systemctl status says of a stopped unit)


def add_parser(sub) -> None:
    gw = sub.add_parser("gateway", help="LAN gateway: every forwarded packet judged (kernel sets + transparent proxy)")
    gsub = gw.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND", required=True)

    r = gsub.add_parser("run", help="install the rules, turn forwarding on, run the proxy, keep it all in step")
    r.add_argument("--lan", action="append", required=True, metavar="IFACE", help="interface the clients use (repeatable)")
    r.add_argument("--policy", help="policy file (default: GEOGATE_POLICY, else the packaged default.yaml)")
    r.add_argument("--db", action="append", help="MMDB database (repeatable; default: the bundled ones)")
    r.add_argument("--log", metavar="FILE", help="JSON-lines decision log (the proxy's and the kernel's records)")
    r.add_argument("--tcp-ports", default="80,443", metavar="PORTS",
                   help="TCP ports sent to the transparent proxy, comma separated "
                        "(default 80,443; '' = none: the kernel judges all)")
    r.add_argument("--proxy-port", type=int, default=8080, help="port of the transparent proxy (default 8080)")
    r.add_argument("--dns", action="store_true",
                   help="answer LAN DNS (UDP/TCP 53, to any address) in the proxy: upstream name servers judged, "
                        "answer addresses the policy blocks removed (default: the kernel judges DNS like any flow)")
    r.add_argument("--dns-server", action="append", metavar="ADDR",
                   help="upstream name server for --dns (repeatable; default: the nameserver lines of /etc/resolv.conf)")
    r.add_argument("--dns-blocked", metavar="remove|refuse",
                   help="--dns: an answer holding an address the policy blocks: remove those records (default) "
                        "or answer REFUSED")
    r.add_argument("--dns-port", metavar="PORT", help="local port of the DNS mode for --dns (default 8053)")
    r.add_argument("--metrics", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics (the kernel side and the proxy's decisions) at http://HOST:PORT/metrics "
                        "(PORT alone: loopback)")
    r.add_argument("--workers", default="1", metavar="N",
                   help="transparent proxy processes sharing --proxy-port (default 1; auto: one per core)")
    r.add_argument("--log-allowed", action="store_true",
                   help="also a decision record for each new flow the kernel allows (limited like the refusals)")
    r.add_argument("--judge-host", action="store_true",
                   help="judge the gateway's own outgoing traffic too (the proxy's upstream connections excepted)")
    r.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="-- then extra mitmdump arguments")
    r.set_defaults(func=cmd_run)

    d = gsub.add_parser("down", help="stop the gateway, turn forwarding off, remove the rules")
    d.set_defaults(func=cmd_down)

    s = gsub.add_parser("status", help="rules, latch, forwarding, and the policy the kernel and the proxy use")
    s.add_argument("--json", action="store_true", help="one JSON object instead of text")
    s.set_defaults(func=cmd_status)

    c = gsub.add_parser("check", help="which rules the kernel enforces and which only the proxy can")
    c.add_argument("--policy", help="policy file to check (default: GEOGATE_POLICY, else the packaged default.yaml)")
    c.add_argument("--db", action="append", help="MMDB database (repeatable; default: the bundled ones)")
    c.add_argument("--quick", action="store_true", help="do not build the sets (no element counts, no Teredo verdict)")
    c.set_defaults(func=cmd_check)


def _refuse(message: str) -> int:
    print(f"geogate: {message}", file=sys.stderr)
    return 2


def _ports(text: str) -> tuple[int, ...]:
    out = []
    for part in text.replace(",", " ").split():
        if not (part.isascii() and part.isdigit() and 0 < int(part) < 65536):
            raise GeogateError(f"--tcp-ports {text!r}: {part!r} is not a port number (1 to 65535)")
        out.append(int(part))
    return tuple(dict.fromkeys(out))


def _load(policy, dbs):
    from geogate.policy.loader import PolicyError
    from geogate.policy.state import GateState

    try:
        return GateState.load(policy, dbs)
    except PolicyError as e:
        errors = [i for i in e.issues if i.severity == "error"]
        more = f" (and {len(errors) - 1} more; `geogate check` lists them)" if len(errors) > 1 else ""
        raise GeogateError(f"{errors[0] if errors else e}{more}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from geogate.gateway import kernel
    from geogate.gateway.daemon import Gateway
    from geogate.gateway.daemon import Options
    from geogate.gateway.dns_options import dns_options
    from geogate.gateway.receipts import JsonLines
    from geogate.gateway.ruleset import GatewayConfig

    if kernel.nft_path() is None:
        return _refuse("nft is not installed (Debian/Ubuntu: apt-get install nftables)")
    if args.log_allowed and not args.log:
        return _refuse("--log-allowed writes decision records: give --log FILE too")
    if kernel.ip_path() is None:
        return _refuse("ip is not installed (Debian/Ubuntu: apt-get install iproute2)")
    for lan in args.lan:
        if not lan or not kernel.interface_exists(lan):
            return _refuse(f"--lan {lan}: no such network interface")
    tcp_ports = _ports(args.tcp_ports)
    metrics = _metrics_address(args)
    workers = parse_workers(args.workers)
    if not 0 < args.proxy_port < 65536:
        return _refuse(f"--proxy-port {args.proxy_port}: not a port number (1 to 65535)")
    dns = dns_options(enabled=args.dns, port=args.dns_port, servers=args.dns_server, blocked=args.dns_blocked,
                      tcp_ports=tcp_ports, proxy_port=args.proxy_port, resolv_conf=_resolv_conf())
    if dns is not None and workers > 1:
        # workers share a TCP port with SO_REUSEPORT; mitmproxy's DNS mode listens through its own
        # UDP stack, which cannot share one, so N workers would each need their own DNS port
        return _refuse(f"--dns with --workers {workers}: the DNS mode runs in one proxy process; "
                       "use --workers 1 with --dns")
    if os.geteuid() != 0:
        return _refuse("geogate gateway run changes nftables, routing rules and forwarding: run it as root")
    state = _load(args.policy, args.db)
    if args.log:
        try:
            JsonLines(os.path.abspath(args.log)).close()
        except OSError as e:
            return _refuse(f"--log {args.log}: {e.strerror or e}")
    if dns is not None:
        from geogate.proxy.dns_mode import refusal_before_start

        if refusal := refusal_before_start(state, ["dns"], list(dns.name_servers)):
            print(refusal.replace("(set dns_name_servers)", "(give --dns-server ADDR)"), file=sys.stderr)
            return 2
    proxy = None
    if tcp_ports or dns:
        proxy = _proxy_command(args, state, tcp_ports, dns, workers)
    config = GatewayConfig(lan=tuple(args.lan), proxy_port=args.proxy_port, tcp_ports=tcp_ports,
                           dns_port=dns.port if dns else None, judge_host=args.judge_host)
    options = Options(policy=args.policy, dbs=list(args.db or ()),
                      log=os.path.abspath(args.log) if args.log else None, proxy_argv=proxy,
                      dns=dns.state() if dns else None, metrics=metrics, log_allowed=args.log_allowed)
    gateway = Gateway(config, options, state)
    for ns in dns.local_name_servers() if dns else ():
        gateway.say(f"WARNING: DNS name server {ns} is on this host: geogate judges it, not the servers it asks "
                    "(give --dns-server with the upstream addresses)")
    gateway.start()
    return gateway.run_forever()


def _metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """--metrics; the proxy's own endpoint asked for after `--` beside it is refused: the
    gateway's endpoint already serves the proxy's numbers. Raises GeogateError."""
    from geogate.cli.run_proxy import _set_values
    from geogate.metrics.address import parse_address

    metrics = parse_address(args.metrics) if args.metrics else None
    if metrics is not None and _set_values(list(args.mitmdump_args or ()), "geogate_metrics"):
        raise GeogateError("--metrics with -- --set geogate_metrics: the gateway's endpoint serves the proxy's "
                           "decisions too; leave out --set geogate_metrics")
    return metrics


def _resolv_conf() -> tuple[str, str | None]:
    """The host's resolv.conf (GEOGATE_RESOLV_CONF moves it, as for the proxy) and its text."""
    from geogate.gateway.dns_options import DEFAULT_RESOLV_CONF

    path = os.environ.get("GEOGATE_RESOLV_CONF") or DEFAULT_RESOLV_CONF
    try:
        return path, Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return path, None


def _proxy_command(args: argparse.Namespace, state, tcp_ports: tuple[int, ...], dns, workers: int = 1) -> list[str]:
    """mitmdump in transparent mode for the TCP ports and, with --dns, in DNS mode too (one process)."""
    from geogate.cli.run_proxy import mitmdump_command
    from geogate.cli.run_proxy import preflight
    from geogate.cli.workers import check_shareable

    extra = list(args.mitmdump_args or ())
    if extra and extra[0] == "--":
        extra = extra[1:]
    mode, port = ("transparent", args.proxy_port) if tcp_ports else ("dns", dns.port)
    if dns is not None:
        extra = [*(["--mode", f"dns@{dns.port}"] if tcp_ports else []), *dns.mitmdump_args(), *extra]
    # connection_strategy=lazy: the TLS server name and the Host header are known when the
    # upstream connection is decided, so `hosts` rules apply on the proxied ports
    if not any("connection_strategy" in a for a in extra):
        extra = ["--set", "connection_strategy=lazy", *extra]
    proxy_args = argparse.Namespace(mode=mode, listen_host="", listen_port=port, db=args.db,
                                    log=args.log, intercept=False, policy=args.policy)
    preflight(proxy_args, extra)
    if workers == 1:
        return mitmdump_command(proxy_args, state, extra)
    # N workers: the proxy child is `geogate run --workers N`, whose supervisor keeps the workers
    # on the one port (SO_REUSEPORT: the kernel spreads the redirected connections, and one that
    # dies leaves its share to the others); the gateway keeps that supervisor running
    check_shareable(["transparent"], "", args.proxy_port)
    command = [sys.executable, "-m", "geogate.cli", "run", "--workers", str(workers), "--mode", "transparent",
               "--listen-host", "", "--listen-port", str(args.proxy_port), "--policy", state.policy.ref.path]
    command += [a for db in args.db or () for a in ("--db", os.path.abspath(db))]
    if args.log:
        command += ["--log", os.path.abspath(args.log)]
    return command + ["--", *extra]


def _read_state() -> dict | None:
    from geogate.gateway.daemon import state_file_path

    try:
        return json.loads(state_file_path().read_text())
    except (OSError, ValueError):
        return None


def _saved_config(saved: dict):
    """The running gateway's config from its state file; the defaults for what it does not hold."""
    from geogate.gateway.ruleset import GatewayConfig

    cfg = saved.get("config") or {}
    numbers = {k: cfg[k] for k in ("mark", "route_table", "rule_pref", "log_group") if isinstance(cfg.get(k), int)}
    return GatewayConfig(lan=tuple(saved.get("lan") or ()), **numbers)


def cmd_down(args: argparse.Namespace) -> int:
    from geogate.gateway import kernel
    from geogate.gateway.daemon import down
    from geogate.gateway.daemon import state_file_path

    if kernel.nft_path() is None:
        return _refuse("nft is not installed (Debian/Ubuntu: apt-get install nftables)")
    saved = _read_state() or {}
    pid = saved.get("pid")
    if isinstance(pid, int) and process_alive(pid) and pid != os.getpid():
        os.kill(pid, signal.SIGTERM)  # else its watchdog would put the rules back
        deadline = time.monotonic() + 15
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            return _refuse(f"the gateway (pid {pid}) did not stop; nothing was removed")
    down(_saved_config(saved))
    try:
        state_file_path().unlink()
    except OSError:
        pass
    print("geogate: gateway down: forwarding off, table inet geogate and the routing latch removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from geogate.gateway import kernel
    from geogate.gateway.ruleset import HOLDING

    saved = _read_state() or {}
    config = _saved_config(saved)
    table = kernel.nft_path() is not None and kernel.table_handle() is not None
    comment = kernel.table_comment() if table else None
    kernel_sha = None
    holding = False
    if comment:
        kernel_sha = next((w.split("=", 1)[1] for w in comment.split() if w.startswith("policy=")), None)
        holding = HOLDING in comment.split()
    running = process_alive(saved.get("pid"))
    proxy = saved.get("proxy") or {}
    latch = bool(config.lan) and kernel.latch_present(config)
    status = {
        "gateway": {"running": running, "pid": saved.get("pid") if running else None, "lan": list(config.lan)},
        "table": table,
        "latch": latch,
        "forwarding": kernel.forwarding(),
        "kernel": {"policy_sha256": kernel_sha, "elements": (saved.get("kernel") or {}).get("elements"),
                   "holding": holding},
        "proxy": {"policy_sha256": proxy.get("policy_sha256") if running else None,
                  "running": running and process_alive(proxy.get("pid"))},
        "restores": saved.get("restores", 0),
        "last_restore": saved.get("last_restore"),
        "receipts": saved.get("receipts"),
        "dns": _dns_status(saved, running),
        "flows": saved.get("flows") if running else None,
    }
    ok = running and table and latch and (not proxy.get("pid") or status["proxy"]["running"])
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        fwd = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in status["forwarding"].items())
        print(f"gateway:    {'running (pid %s) on %s' % (saved.get('pid'), ', '.join(config.lan)) if running else 'not running'}")
        print(f"table:      {'inet geogate present' if table else 'absent'}")
        print(f"latch:      {'in place' if latch else 'absent'}")
        print(f"forwarding: {fwd}")
        print(f"kernel:     policy sha256 {kernel_sha or '-'}"
              + (" (holding: the sets are being put back; new flows are refused)" if holding else ""))
        print(f"proxy:      policy sha256 {status['proxy']['policy_sha256'] or '-'}")
        print(f"dns:        {_dns_text(status['dns'])}")
        if kernel_sha and status["proxy"]["policy_sha256"] and kernel_sha != status["proxy"]["policy_sha256"]:
            print("WARNING: the kernel and the proxy use different policies (a reload in progress?)")
        _print_flows(status["flows"])
    return 0 if ok else NOT_RUNNING


def _dns_status(saved: dict, running: bool) -> dict:
    dns = saved.get("dns") if running else None
    if not isinstance(dns, dict):
        return {"on": False}
    return {"on": True, **{k: dns.get(k) for k in ("port", "name_servers", "source", "blocked_answers")}}


def _dns_text(dns: dict) -> str:
    if not dns.get("on"):
        return "judged by the kernel like any flow, by the resolver's address (no --dns)"
    return (f"answered by the proxy's DNS mode on :{dns.get('port')} (UDP and TCP 53 redirected), name servers "
            f"{', '.join(dns.get('name_servers') or ()) or '-'}, blocked answer addresses: {dns.get('blocked_answers')}")


def _check_dns(state) -> None:
    """What happens to LAN DNS: said for the running gateway, its name servers judged by this policy."""
    saved = _read_state() or {}
    dns = _dns_status(saved, process_alive(saved.get("pid")))
    print(f"dns: {_dns_text(dns)}")
    if dns["on"]:
        from geogate.proxy.dns_mode import NameServerJudgement  # mitmproxy's import: only when needed

        judged = NameServerJudgement(state, list(dns.get("name_servers") or ()), "dns")
        for _level, line in judged.lines():
            print(f"dns: {line.removeprefix('geogate: ')}")
        if not judged.allowed:
            print(f"dns: with this policy {judged.refusal()}: every LAN DNS question would be refused")


def _print_flows(flows: dict | None) -> None:
    if not flows:
        return
    for action in ("allowed", "blocked"):
        parts = [f"{rule} {cc} {n}" for rule, by_cc in sorted(flows.get(action, {}).items())
                 for cc, n in sorted(by_cc.items())]
        total = (flows.get("kernel") or {}).get(action)
        print(f"flows {action}: {', '.join(parts) or 'none'}" + (f" (kernel counted {total})" if total is not None else ""))
    if flows.get("lagging"):
        print(f"WARNING: not every kernel flow reached the gateway to be attributed (unattributed: "
              f"{flows.get('unattributed')}, NFLOG overruns {flows.get('nflog_overruns', 0)}); the kernel totals are exact")


def cmd_check(args: argparse.Namespace) -> int:
    from geogate.gateway import sets

    state = _load(args.policy, args.db)
    policy = state.policy
    profiles, profile_notes = sets.kernel_profiles(policy)
    print(f"policy {policy.ref.name} ({policy.ref.path}, sha256 {policy.ref.sha256[:12]})")
    kernel_rules: list[str] = []
    port_rules: list[str] = []
    for rule in policy.all_rules():
        if rule.hosts is not None:
            continue
        (port_rules if rule.ports is not None else kernel_rules).append(rule.name)
    print(f"kernel, every protocol: {', '.join(kernel_rules) or '(no rules; default ' + policy.default + ')'}")
    if port_rules:
        print(f"kernel, by destination port (TCP/UDP/SCTP/DCCP): {', '.join(port_rules)}")
    named = [p.name for p in profiles if p.name is not None]  # all but the default (clients in no profile)
    if named:
        print(f"kernel, client profiles by source address: {', '.join(named)}")
    for note in profile_notes + sets.unenforceable(policy):
        print(f"note: {note}")
    _check_dns(state)
    if policy.nat64:
        print(f"kernel: NAT64 prefixes followed into IPv4: 64:ff9b::/96, {', '.join(map(str, policy.nat64.networks))}")
    if args.quick:
        print("note: Teredo (2001::/32) and the IPv4-mapped forms are blocked whole unless the policy allows every "
              "address in them (build the sets, without --quick, to see which)")
        return 0
    ks = sets.build(state)
    for note in ks.notes:
        if note.startswith(("Teredo", "IPv4-")):
            print(f"note: {note}")
    counts = ks.element_counts()
    print(f"sets: {counts['ipv4']} IPv4 and {counts['ipv6']} IPv6 blocked intervals ({ks.decisions} decisions, "
          f"{ks.seconds:.1f} s)")
    return 0
