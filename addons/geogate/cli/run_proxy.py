"""`geogate run`: check the configuration, say what will run, then run mitmdump with the addon.

Every start-up input is checked here first: the policy and databases are loaded, the decision log
is opened, the mode, port and geogate option values are parsed. A mistake ends in one plain line
before any port is opened. mitmdump loads the script concurrently with opening its listeners, so
an error the addon finds only there would come after the port was bound. mitmdump then loads the
policy and databases again itself (and keeps watching them).

mitmdump runs in this process, so that what it says at start-up reads as geogate's: the lines the
addon would repeat are said once, "listening on" only once the ports are bound (mitmproxy's
`running` event comes after its servers are up, or the process ends on the bind error), and the
advice mitmproxy gives on a port in use names geogate's flags, not mitmdump's.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from geogate.addon import PATH as ADDON
from geogate.cli.worker_count import parse_workers
from geogate.core.errors import GeogateError
from geogate.policy.state import GateState
from geogate.proxy.decision_log import DecisionLog
from geogate.proxy.messages import UPSTREAM_REFUSAL
from geogate.proxy.reload import describe


def _mode_specs(args: argparse.Namespace, extra: list[str]) -> list[str]:
    specs = [args.mode]
    for i, a in enumerate(extra):
        if a in ("--mode", "-m") and i + 1 < len(extra):
            specs.append(extra[i + 1])
        elif a.startswith("--mode="):
            specs.append(a.split("=", 1)[1])
    return specs


def host_port(host: str, port: int) -> str:
    """`host:port` as people (and URLs) write it: an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}


def listen_lines(mode: str, host: str, port: int) -> str:
    """The start-up line that says where the proxy listens and, in regular mode, the proxy URL
    to give clients: a usable URL (a wildcard address becomes loopback, IPv6 in brackets)."""
    where = "all addresses, port %d" % port if host in ("", "*") else host_port(host, port)
    if mode != "regular":
        return f"geogate: listening on {where} ({mode} mode)"
    url = f"http://{host_port(_WILDCARDS.get(host, host), port)}"
    return f"geogate: listening on {where} (regular mode); use HTTP_PROXY={url} HTTPS_PROXY={url}"


def _set_values(extra: list[str], name: str) -> list[str]:
    """The values `--set name=VALUE` gives in the mitmdump arguments (repeatable)."""
    values = []
    for i, a in enumerate(extra):
        setting = extra[i + 1] if a == "--set" and i + 1 < len(extra) else a[6:] if a.startswith("--set=") else ""
        if setting.startswith(name + "="):
            values.append(setting.split("=", 1)[1])
    return values


def preflight(args: argparse.Namespace, extra: list[str]) -> None:
    """Check the inputs mitmdump would check only after opening its port. Raises GeogateError."""
    from mitmproxy import exceptions
    from mitmproxy.proxy import mode_specs

    from geogate.proxy.addon import _parse_timeout

    for spec in _mode_specs(args, extra):
        try:
            mode_specs.ProxyMode.parse(spec)
        except ValueError as e:
            raise GeogateError(f"--mode {spec}: {e}") from None
    if not 0 <= args.listen_port <= 65535:
        raise GeogateError(f"--listen-port {args.listen_port}: not a port number (0 to 65535)")
    for value in _set_values(extra, "geogate_resolve_timeout"):
        try:
            _parse_timeout(value)
        except exceptions.OptionsError as e:
            raise GeogateError(str(e)) from None
    for path in ([args.log] if args.log else []) + _set_values(extra, "geogate_log"):
        if path:
            # opened for appending as the proxy will (creating it if need be), then closed
            DecisionLog(os.path.abspath(os.path.expanduser(path))).close()


_PORT_HINT = re.compile(r"Try specifying a different port by using `--mode (?P<spec>[^`]+)@(?P<port>\d+)`\.")
_FAILED_ON = re.compile(r"failed to listen on (?P<host>\S+):(?P<port>\d+) with")


def translate_hint(message: str, mode: str) -> str:
    """mitmproxy's message on a port in use, with its advice in `geogate run`'s flags: the mode
    given with --mode takes --listen-port; a mode passed through after `--` keeps mitmdump's
    syntax, after `--`. An IPv6 listen address gets its brackets."""
    def hint(m: re.Match[str]) -> str:
        flag = f"--listen-port {m['port']}" if m["spec"] == mode else f"-- --mode {m['spec']}@{m['port']}"
        return f"Try another port: `geogate run ... {flag}`."

    def where(m: re.Match[str]) -> str:
        return f"failed to listen on {host_port(m['host'], int(m['port']))} with"

    return _FAILED_ON.sub(where, _PORT_HINT.sub(hint, message))


class _Translate(logging.Filter):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        translated = translate_hint(message, self.mode)
        if translated != message:
            record.msg, record.args = translated, None
        return True


class _SaidOnce(logging.Filter):
    """Drops each start-up line the addon logs that this process already printed (once each)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.pending = list(lines)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.pending:
            self.pending.remove(message)
            return False
        return True


class _Announce:
    """A mitmproxy addon: its `running` hook comes after the proxy servers are bound."""

    def __init__(self, on_running: Callable[[], None]) -> None:
        self.on_running = on_running

    def running(self) -> None:
        self.on_running()


def _printer(lines: list[str]) -> Callable[[], None]:
    return lambda: print("\n".join(lines), flush=True)


def _run_mitmdump(argv: list[str], said: list[str], on_running: Callable[[], None], mode: str) -> None:
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.dump import DumpMaster
    from mitmproxy.tools.main import run as run_master

    class Master(DumpMaster):
        def __init__(self, options, **kwargs) -> None:
            super().__init__(options, **kwargs)
            self.addons.add(_Announce(on_running))

    def extra(args: argparse.Namespace) -> dict[str, str]:  # what mitmdump itself does with a filter
        if args.filter_args:
            v = " ".join(args.filter_args)
            return dict(save_stream_filter=v, readfile_filter=v, dumper_filter=v)
        return {}

    logging.getLogger("geogate").addFilter(_SaidOnce(said))
    logging.getLogger("mitmproxy.addons.proxyserver").addFilter(_Translate(mode))
    run_master(Master, cmdline.mitmdump, argv, extra)


def mitmdump_argv(args: argparse.Namespace, state: GateState, extra: list[str]) -> list[str]:
    argv = ["-s", str(ADDON), "--mode", args.mode,
            "--listen-host", args.listen_host, "--listen-port", str(args.listen_port),
            "--set", f"geogate_policy={state.policy.ref.path}"]
    for db in args.db or ():
        argv += ["--set", f"geogate_db={os.path.abspath(db)}"]
    if args.log:
        argv += ["--set", f"geogate_log={os.path.abspath(args.log)}"]
    if args.intercept:
        argv += ["--set", "geogate_intercept=true"]
    return argv + extra


def _mitmdump() -> str | None:
    beside = Path(sys.executable).with_name("mitmdump")
    return str(beside) if beside.exists() else shutil.which("mitmdump")


def mitmdump_command(args: argparse.Namespace, state: GateState, extra: list[str]) -> list[str]:
    """The whole command that runs the proxy as a child process: mitmdump and its arguments."""
    argv = mitmdump_argv(args, state, extra)
    exe = _mitmdump()
    if exe is not None:
        return [exe, *argv]
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())", *argv]


def run(args: argparse.Namespace) -> int:
    workers = parse_workers(getattr(args, "workers", "1"))
    extra = list(args.mitmdump_args or ())
    if extra and extra[0] == "--":
        extra = extra[1:]
    if any(spec.split(":", 1)[0].split("@", 1)[0] == "upstream" for spec in _mode_specs(args, extra)):
        print(UPSTREAM_REFUSAL, file=sys.stderr)
        return 2
    # the paths the addon is given, so that it describes what it loads in the same words
    state = GateState.load(args.policy, [os.path.abspath(db) for db in args.db] if args.db else None)
    preflight(args, extra)
    if workers > 1:
        from geogate.cli.workers import check_shareable

        args.listen_port = check_shareable(_mode_specs(args, extra), args.listen_host, args.listen_port)
    from geogate.proxy.dns_mode import refusal_before_start

    if refusal := refusal_before_start(state, _mode_specs(args, extra), _set_values(extra, "dns_name_servers")):
        print(refusal, file=sys.stderr)
        return 2
    said = [f"geogate: {line}" for line in describe(state)] + [f"geogate: {w}" for w in state.warnings]
    print("\n".join(said), flush=True)
    announce = [
        listen_lines(args.mode, args.listen_host, args.listen_port),
        "geogate: TLS is intercepted: clients must trust the mitmproxy CA" if args.intercept
        else "geogate: TLS passes through untouched (no CA needed on clients)",
        f"geogate: decision log {os.path.abspath(args.log)}" if args.log
        else "geogate: decisions go to the event log only (add --log FILE for JSON lines)",
    ]
    argv = mitmdump_argv(args, state, extra)
    del state  # the addon loads its own, and keeps it current
    if workers > 1:
        from geogate.cli.workers import Supervisor

        return Supervisor(workers, argv, said, announce, args.mode).run()
    _run_mitmdump(argv, said, _printer(announce), args.mode)  # a failed start ends in SystemExit(1), mitmdump's exit
    return 0
