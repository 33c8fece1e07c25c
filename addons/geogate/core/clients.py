"""Who asked and how, as mitmproxy tells it: the client's address as records spell it, the user
of proxy authentication, and the proxy modes in which the operating system chose the destination.
The live proxy and the audit of saved flows read the same facts, so they are spelled here once.
"""

from __future__ import annotations

# Modes in which the destination was intercepted by the operating system: the address is the
# fact, and a name (SNI, Host header) is only a claim about it. In every other mode the client
# names its destination.
INTERCEPTED_MODES = frozenset({"transparent", "wireguard", "local", "tun", "osproxy"})


def client_text(peername: object) -> str | None:
    """`ip:port` (IPv6 in brackets) of a client's address (mitmproxy's peername), as the decision
    record shows it."""
    if not peername:
        return None
    host, port = peername[0], peername[1]  # type: ignore[index]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def user_of(proxyauth: object) -> str | None:
    """The user name from mitmproxy's proxyauth record, a (user, password) pair."""
    if isinstance(proxyauth, (tuple, list)) and proxyauth and isinstance(proxyauth[0], str):
        return proxyauth[0] or None
    return None
