"""`--metrics PORT|HOST:PORT`: the address, read and checked without loading prometheus_client."""

from __future__ import annotations

import ipaddress
import socket

from geogate.core.errors import GeogateError

LOOPBACK = "127.0.0.1"
EXAMPLE = "e.g. 9464 or 127.0.0.1:9464"


def parse_address(text: str, what: str = "--metrics") -> tuple[str, int] | None:
    """`PORT` (loopback), `HOST:PORT` or `[IPv6]:PORT`; empty is None (off). Raises GeogateError."""
    text = str(text).strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep:
        host, port_text = LOOPBACK, text
    elif bracketed:
        host = host[1:-1]
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise GeogateError(f"{what} {text}: not PORT or HOST:PORT with a port from 1 to 65535 ({EXAMPLE})")
    if (not host or (bracketed and not _is_ip(host)) or (":" in host and not bracketed)
            or any(c.isspace() or c in "[]/" for c in host)):
        raise GeogateError(f"{what} {text}: `{host}` is not a host name or address ({EXAMPLE})")
    return host, int(port_text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_bindable(address: tuple[str, int], what: str = "--metrics") -> None:
    """Raise GeogateError now if the endpoint could not listen there (a port in use, an address
    not on this host), before a proxy opens its own port."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server will
            s.bind(infos[0][4])
    except OSError as e:
        raise GeogateError(f"{what} {host}:{port}: cannot listen: {e.strerror or e}") from None
