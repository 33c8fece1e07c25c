"""What the gateway asks of the host: nft transactions, the policy-routing latch, forwarding.

The latch: LAN traffic is forwarded only when it carries the mark that geogate's table sets
(ruleset.py). Two routing rules per family, untouched by `nft flush ruleset`:

    pref P      iif LAN fwmark M/M goto P+2     marked: routed as usual
    pref P+1    iif LAN lookup T                unmarked: table T, `unreachable default`
    pref P+2    nop

Local delivery (the gateway's own addresses, the redirect to the proxy) is decided by the local
table at preference 0, before any of these.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

from geogate.core.errors import GeogateError
from geogate.gateway.ruleset import FAMILY
from geogate.gateway.ruleset import TABLE
from geogate.gateway.ruleset import GatewayConfig

FORWARDING = {4: Path("/proc/sys/net/ipv4/ip_forward"), 6: Path("/proc/sys/net/ipv6/conf/all/forwarding")}
SEND_REDIRECTS = Path("/proc/sys/net/ipv4/conf/all/send_redirects")


class GatewayError(GeogateError):
    """The host refused a change; the message says which and why."""


def nft_path() -> str | None:
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if Path(p).exists()), None)


def ip_path() -> str | None:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if Path(p).exists()), None)


def _run(argv: list[str], text_in: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=text_in, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GatewayError(f"{argv[0]} failed: {e}") from None


def nft(text: str) -> None:
    """Run one nft transaction (all or nothing)."""
    r = _run([nft_path() or "nft", "-f", "-"], text)
    if r.returncode != 0:
        first = next((line for line in r.stderr.splitlines() if "Error" in line), r.stderr.strip()[:300])
        raise GatewayError(f"nft refused the ruleset: {first}")


def table_handle() -> int | None:
    """The handle of table inet geogate, None when it is not there (cheap: no set elements)."""
    r = _run([nft_path() or "nft", "-j", "list", "tables"], timeout=10)
    if r.returncode != 0:
        return None
    m = re.search(r'"family":\s*"inet",\s*"name":\s*"' + TABLE + r'",\s*"handle":\s*(\d+)', r.stdout)
    return int(m.group(1)) if m else None


def table_comment() -> str | None:
    """The comment of the prerouting chain: `geogate policy=<sha256> name=<name>`."""
    r = _run([nft_path() or "nft", "list", "chain", FAMILY, TABLE, "prerouting"], timeout=10)
    if r.returncode != 0:
        return None
    m = re.search(r'comment "([^"]*)"', r.stdout)
    return m.group(1) if m else None


def delete_table() -> None:
    _run([nft_path() or "nft", "delete", "table", FAMILY, TABLE], timeout=30)


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


# -- the latch ---------------------------------------------------------------------------------

def _ip(*args: str) -> subprocess.CompletedProcess:
    return _run([ip_path() or "ip", *args], timeout=10)


def latch_rules(config: GatewayConfig) -> list[list[str]]:
    """The `ip rule add` argument lists, per family and LAN interface."""
    p, m = config.rule_pref, f"{config.mark:#x}/{config.mark:#x}"
    out = []
    for fam in ("-4", "-6"):
        for lan in config.lan:
            out.append([fam, "rule", "add", "iif", lan, "fwmark", m, "goto", str(p + 2), "pref", str(p)])
            out.append([fam, "rule", "add", "iif", lan, "lookup", str(config.route_table), "pref", str(p + 1)])
        out.append([fam, "rule", "add", "nop", "pref", str(p + 2)])
    return out


def install_latch(config: GatewayConfig) -> None:
    remove_latch(config)
    for fam in ("-4", "-6"):
        r = _ip(fam, "route", "replace", "unreachable", "default", "table", str(config.route_table))
        if r.returncode != 0:
            raise GatewayError(f"ip {fam} route replace unreachable default table {config.route_table}: {r.stderr.strip()}")
    for args in latch_rules(config):
        r = _ip(*args)
        if r.returncode != 0:
            raise GatewayError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def remove_latch(config: GatewayConfig) -> None:
    for fam in ("-4", "-6"):
        for pref in range(config.rule_pref, config.rule_pref + 3):
            for _ in range(64):  # one rule per LAN interface at each preference
                if _ip(fam, "rule", "del", "pref", str(pref)).returncode != 0:
                    break
        _ip(fam, "route", "flush", "table", str(config.route_table))


def latch_present(config: GatewayConfig) -> bool:
    for fam in ("-4", "-6"):
        rules = _ip(fam, "rule", "list").stdout
        for lan in config.lan:
            if not re.search(rf"^{config.rule_pref + 1}:.*iif {re.escape(lan)}\b.*lookup {config.route_table}", rules, re.M):
                return False
        routes = _ip(fam, "route", "show", "table", str(config.route_table)).stdout
        if "unreachable default" not in routes:
            return False
    return True


# -- forwarding --------------------------------------------------------------------------------

def forwarding() -> dict[str, bool]:
    out = {}
    for version, path in FORWARDING.items():
        try:
            out[f"ipv{version}"] = path.read_text().strip() == "1"
        except OSError:
            out[f"ipv{version}"] = False
    return out


def set_forwarding(on: bool) -> None:
    value = "1" if on else "0"
    try:
        if on:
            SEND_REDIRECTS.write_text("0")  # the gateway must stay on the path
        for path in FORWARDING.values():
            path.write_text(value)
    except OSError as e:
        raise GatewayError(f"cannot turn forwarding {'on' if on else 'off'}: {e.strerror or e}") from None
