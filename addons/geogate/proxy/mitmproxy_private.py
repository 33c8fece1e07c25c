"""mitmproxy's private APIs geogate relies on, each read in one place.

mitmproxy makes no promise about these; tests/test_private_apis.py checks each against the
installed mitmproxy and names the one that changed. Where one is missing, the function here
returns None and its caller falls back to mitmproxy's public behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy.connection import Client


def layer_chooser() -> Callable[[Any, bytes, bytes], Any] | None:
    """mitmproxy's own choice of the next layer: `NextLayer._next_layer(context, data_client,
    data_server)` of its `nextlayer` addon (ignore_hosts, proxy modes, protocol detection), or
    None without that addon. It raises NeedsMoreData when it must see more bytes."""
    addon = ctx.master.addons.get("nextlayer") if ctx.master else None
    return getattr(addon, "_next_layer", None)


def client_writer(client: Client) -> Any | None:
    """The stream mitmproxy writes to `client` with: `Proxyserver.connections[client.id]` (the
    connection handler, keyed by client id) `.transports[client].writer`; None if there is none."""
    proxyserver = ctx.master.addons.get("proxyserver") if ctx.master else None
    handler = getattr(proxyserver, "connections", {}).get(client.id)
    io = getattr(handler, "transports", {}).get(client)
    return getattr(io, "writer", None)


class _ReusePortAsyncio:
    """The `asyncio` module as mode_servers sees it, but every TCP server it starts sets
    SO_REUSEPORT: N processes then listen on one address and the kernel spreads the connections
    (each keeps the client's address, unlike a balancer in front)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def start_server(self, *args: Any, **kwargs: Any) -> Any:
        return await self._real.start_server(*args, reuse_port=True, **kwargs)


def share_listening_ports() -> Callable[[], None] | None:
    """From now on, the TCP listeners mitmproxy opens in this process set SO_REUSEPORT.

    mitmproxy binds them in `AsyncioServerInstance.listen` with `asyncio.start_server(handler,
    host, port)`, read through the module global `asyncio` of mitmproxy.proxy.mode_servers; that
    global is swapped for one that adds `reuse_port=True`. Returns the undo, or None when
    mode_servers does not bind so any more (the caller must then not share a port)."""
    import asyncio

    from mitmproxy.proxy import mode_servers

    listen = getattr(getattr(mode_servers, "AsyncioServerInstance", None), "listen", None)
    real = getattr(mode_servers, "asyncio", None)
    if listen is None or real is not asyncio or "start_server" not in listen.__code__.co_names:
        return None
    mode_servers.asyncio = _ReusePortAsyncio(real)  # type: ignore[assignment]

    def undo() -> None:
        mode_servers.asyncio = real

    return undo
