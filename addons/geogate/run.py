"""`geogate run`: check the configuration, say what will run, then become mitmdump with the addon.

The policy and databases are loaded here first, so a mistake ends in a plain message before any
port is opened; mitmdump then loads them again itself (and keeps watching them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .errors import GeogateError
from .reload import describe
from .state import GateState

ADDON = Path(__file__).resolve().parents[1] / "geogate_addon.py"


def _mode_specs(args: argparse.Namespace, extra: list[str]) -> list[str]:
    specs = [args.mode]
    for i, a in enumerate(extra):
        if a in ("--mode", "-m") and i + 1 < len(extra):
            specs.append(extra[i + 1])
        elif a.startswith("--mode="):
            specs.append(a.split("=", 1)[1])
    return specs


def _set_values(extra: list[str], name: str) -> list[str]:
    """The values `--set name=VALUE` gives in the mitmdump arguments (repeatable)."""
    values = []
    for i, a in enumerate(extra):
        setting = extra[i + 1] if a == "--set" and i + 1 < len(extra) else a[6:] if a.startswith("--set=") else ""
        if setting.startswith(name + "="):
            values.append(setting.split("=", 1)[1])
    return values


def _mitmdump() -> str | None:
    beside = Path(sys.executable).with_name("mitmdump")
    return str(beside) if beside.exists() else shutil.which("mitmdump")


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


def run(args: argparse.Namespace) -> int:
    extra = list(args.mitmdump_args or ())
    if extra and extra[0] == "--":
        extra = extra[1:]
    if any(spec.split(":", 1)[0].split("@", 1)[0] == "upstream" for spec in _mode_specs(args, extra)):
        print("geogate: upstream mode is refused: the upstream proxy resolves and dials, so geogate would never "
              "see the real destination; use regular, socks5, transparent or another mode", file=sys.stderr)
        return 2
    if not ADDON.exists():
        raise GeogateError(f"the mitmproxy entry point {ADDON} is missing; run geogate from a checkout "
                           "(pip install -e .) or use `mitmdump -s addons/geogate_addon.py`")
    state = GateState.load(args.policy, args.db)
    from .dns_mode import refusal_before_start

    if refusal := refusal_before_start(state, _mode_specs(args, extra), _set_values(extra, "dns_name_servers")):
        print(refusal, file=sys.stderr)
        return 2
    for line in describe(state):
        print(f"geogate: {line}")
    for w in state.warnings:
        print(f"geogate: {w}")
    where = f"{args.listen_host}:{args.listen_port}"
    if args.mode == "regular":
        print(f"geogate: listening on {where} (regular mode); use HTTP_PROXY=http://{where} HTTPS_PROXY=http://{where}")
    else:
        print(f"geogate: listening on {where} ({args.mode} mode)")
    print("geogate: TLS is intercepted: clients must trust the mitmproxy CA" if args.intercept
          else "geogate: TLS passes through untouched (no CA needed on clients)")
    print(f"geogate: decision log {os.path.abspath(args.log)}" if args.log
          else "geogate: decisions go to the event log only (add --log FILE for JSON lines)")
    sys.stdout.flush()

    argv = mitmdump_argv(args, state, extra)
    exe = _mitmdump()
    if exe is not None:
        os.execv(exe, [exe, *argv])  # the proxy gets this process: signals and exit code are its own
    from mitmproxy.tools.main import mitmdump

    mitmdump(argv)
    return 0
