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

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
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


URGENT_NICE = -10  # the restore's nft processes: the LAN waits for them, other work on the host can wait


def nft_parallel(texts: list[str] | tuple[str, ...]) -> None:
    """Several independent nft transactions at once, one process each: nft's parsing (most of
    the time of a large set) runs on every core; the kernel commits them one after the other.
    The processes run at URGENT_NICE (new flows from the LAN are refused until they are done).
    All are waited for; the first refusal is raised."""
    with ThreadPoolExecutor(max(1, len(texts))) as pool:
        failures = [e for e in pool.map(_nft_urgent, texts) if e is not None]
    if failures:
        raise failures[0]


def _nft_urgent(text: str) -> GatewayError | None:
    try:
        # a thread's own nice value (Linux: per thread), inherited by the nft it starts; this
        # pool's threads end with the call
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), URGENT_NICE)
    except OSError:
        pass  # without CAP_SYS_NICE: at the usual priority
    try:
        nft(text)
    except GatewayError as e:
        return e
    return None


def table_handle() -> int | None:
    """The handle of table inet geogate, None when it is not there.

    Asked over netlink: `nft list tables` fetches every set element first (about a second with
    the bundled databases' sets), and the watchdog asks several times a second.
    """
    try:
        tables = _netlink_tables(NFPROTO_INET)
    except OSError:
        r = _run([nft_path() or "nft", "-j", "list", "tables"], timeout=10)
        m = re.search(r'"family":\s*"inet",\s*"name":\s*"' + TABLE + r'",\s*"handle":\s*(\d+)', r.stdout)
        return int(m.group(1)) if r.returncode == 0 and m else None
    return tables.get(TABLE)


NFPROTO_INET = 1
_NFT_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE
_NFT_NEWTABLE = (10 << 8) | 0
_NLM_F_DUMP_REQUEST = 0x301
_NLMSG_DONE, _NLMSG_ERROR = 3, 2


def _attrs(data: bytes, at: int, end: int) -> dict[int, bytes]:
    """Netlink attributes between `at` and `end`, by type (nested and byte-order flags cleared)."""
    out = {}
    while at + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, at)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[at + 4: at + alen]
        at += (alen + 3) & ~3
    return out


def _netlink_dump(kind: int, family: int, reply: int, attrs: bytes = b"") -> list[dict[int, bytes]]:
    """The attributes of each `reply` message of an nf_tables dump request `kind`."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        body = struct.pack("=BBH", family, 0, 0) + attrs
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_DUMP_REQUEST, 1, 0) + body)
        out: list[dict[int, bytes]] = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, offset)
                if length < 16:
                    raise OSError("malformed netlink reply")
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                elif mtype == reply:
                    out.append(_attrs(data, offset + 20, offset + length))
                offset += (length + 3) & ~3


def _netlink_tables(family: int) -> dict[str, int]:
    """{name: handle} of the tables of one nftables family (NFT_MSG_GETTABLE dump)."""
    tables = {}
    for a in _netlink_dump(_NFT_GETTABLE, family, _NFT_NEWTABLE):
        if 1 in a and len(a.get(4, b"")) == 8:  # NFTA_TABLE_NAME, NFTA_TABLE_HANDLE
            tables[a[1].rstrip(b"\0").decode(errors="replace")] = struct.unpack(">Q", a[4])[0]
    return tables


_NFT_GETOBJ = (10 << 8) | 19
_NFT_NEWOBJ = (10 << 8) | 18


def counters() -> dict[str, int] | None:
    """Packets of each named counter of table inet geogate (NFT_MSG_GETOBJ dump: `nft list
    counters` would fetch every set element first); None when they cannot be read."""
    name = TABLE.encode() + b"\0"
    table_attr = struct.pack("=HH", 4 + len(name), 1) + name + b"\0" * (-len(name) % 4)
    type_attr = struct.pack("=HH", 8, 3) + struct.pack(">I", 1)  # NFTA_OBJ_TYPE: NFT_OBJECT_COUNTER
    try:
        objects = _netlink_dump(_NFT_GETOBJ, NFPROTO_INET, _NFT_NEWOBJ, table_attr + type_attr)
    except OSError:
        return None
    out = {}
    for a in objects:
        if a.get(1, b"").rstrip(b"\0") != TABLE.encode() or 2 not in a or 4 not in a:
            continue
        data = _attrs(a[4], 0, len(a[4]))
        if len(data.get(2, b"")) == 8:  # NFTA_COUNTER_PACKETS
            out[a[2].rstrip(b"\0").decode(errors="replace")] = struct.unpack(">Q", data[2])[0]
    return out


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
