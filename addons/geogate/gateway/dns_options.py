"""`geogate gateway run --dns`: the options checked, the name servers chosen (pure: no I/O here).

LAN DNS (UDP and TCP port 53, to any address) is redirected to mitmproxy's DNS mode in the
gateway's proxy child, which answers A/AAAA questions by asking the upstream name servers
(`dns_name_servers`) and forwards other questions to the first of them. geogate judges those name
servers (a blocked one is never asked) and every answer address (`geogate_dns_blocked_answers`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from geogate.core.addresses import parse_ip
from geogate.core.errors import GeogateError

BLOCKED_ANSWERS = ("remove", "refuse")  # what `--dns-blocked` takes; the DNS mode also knows "keep"
DEFAULT_PORT = 8053
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"


@dataclass(frozen=True)
class DnsOptions:
    port: int
    name_servers: tuple[str, ...]
    blocked_answers: str
    source: str  # where the name servers came from: "--dns-server" or a resolv.conf path

    def mitmdump_args(self) -> list[str]:
        """The proxy child's arguments beyond its first mode (the name servers, exactly)."""
        out = ["--set", f"geogate_dns_blocked_answers={self.blocked_answers}"]
        for ns in self.name_servers:
            out += ["--set", f"dns_name_servers={ns}"]
        return out

    def state(self) -> dict:
        return {"port": self.port, "name_servers": list(self.name_servers), "source": self.source,
                "blocked_answers": self.blocked_answers}

    def local_name_servers(self) -> list[str]:
        """Name servers on the gateway itself (a caching stub such as systemd-resolved's 127.0.0.53):
        geogate judges the stub, not the servers the stub asks."""
        return [ns for ns in self.name_servers if (ip := parse_ip(ns)) is not None and ip.is_loopback]


def resolv_conf_name_servers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order (a zone index `%eth0` dropped)."""
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            out.append(words[1].split("%", 1)[0])
    return list(dict.fromkeys(out))


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise GeogateError(f"--dns-port {text!r}: not a port number (1 to 65535)")
    return int(text)


def _server(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise GeogateError(f"--dns-server {text!r}: not an IP address (write it as 192.0.2.53 or 2001:db8::53; "
                           "the name server is asked on port 53)") from None


def dns_options(*, enabled: bool, port: str | None, servers: list[str] | None, blocked: str | None,
                tcp_ports: tuple[int, ...], proxy_port: int, resolv_conf: tuple[str, str | None]) -> DnsOptions | None:
    """The checked `--dns*` options, None without --dns. `resolv_conf` is (path, its text or None
    when it could not be read). Raises GeogateError with the one line to say."""
    if not enabled:
        given = [flag for flag, value in (("--dns-port", port), ("--dns-server", servers), ("--dns-blocked", blocked))
                 if value]
        if given:
            raise GeogateError(f"{given[0]} needs --dns (LAN DNS is judged by the kernel without it)")
        return None
    number = _port(port) if port is not None else DEFAULT_PORT
    if number == proxy_port:
        raise GeogateError(f"--dns-port {number}: the transparent proxy listens there (--proxy-port); pick another")
    if 53 in tcp_ports:
        raise GeogateError("--tcp-ports holds 53, which --dns answers: leave 53 out of --tcp-ports")
    if blocked is not None and blocked not in BLOCKED_ANSWERS:
        raise GeogateError(f"--dns-blocked {blocked!r}: write remove (take blocked addresses out of the answer) "
                           "or refuse (answer REFUSED when any address is blocked)")
    if servers:
        names = tuple(dict.fromkeys(_server(s) for s in servers))
        source = "--dns-server"
    else:
        path, text = resolv_conf
        if text is None:
            raise GeogateError(f"--dns: cannot read {path} for the name servers to ask; give --dns-server ADDR")
        found = resolv_conf_name_servers(text)
        bad = [ns for ns in found if parse_ip(ns) is None]
        if bad:
            raise GeogateError(f"--dns: {path}: nameserver {bad[0]!r} is not an IP address; give --dns-server ADDR")
        if not found:
            raise GeogateError(f"--dns: {path} names no name server; give --dns-server ADDR")
        names, source = tuple(found), path
    return DnsOptions(port=number, name_servers=names, blocked_answers=blocked or "remove", source=source)
