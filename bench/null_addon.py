"""mitmproxy addon for the benchmarks: does nothing, in the shape of geogate.

    mitmdump -s bench/null_addon.py ...

It defines exactly the mitmproxy hooks that geogate's addon class defines (async where geogate's
are async), each returning at once, on the script module itself as geogate's script does.
Comparing it with bare mitmdump measures what *any* addon with that hook set costs in mitmproxy's
dispatch (AddonManager.trigger_event, safecall, the awaits), i.e. the part of geogate's overhead
that its own code cannot remove.
"""

from __future__ import annotations

import inspect

try:
    from geogate.proxy.addon import GeoGate as _Shape
    from geogate.proxy.addon import hook_names
except Exception:  # geogate not importable: the hooks the addon is documented to use
    _Shape = None

_ASYNC_DEFAULT = {"http_connect", "requestheaders", "responseheaders", "server_connect", "tls_clienthello"}
_SYNC_DEFAULT = {"error", "client_disconnected", "request"}


def _hooks() -> dict[str, bool]:
    if _Shape is None:
        return {**{h: True for h in _ASYNC_DEFAULT}, **{h: False for h in _SYNC_DEFAULT}}
    lifecycle = {"load", "configure", "running", "done"}
    out = {}
    for name in hook_names(_Shape):
        if name not in lifecycle:
            fn = getattr(_Shape, name)
            out[name] = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__wrapped__", None))
    return out


async def _anoop(self, *args):
    return None


def _noop(self, *args):
    return None


_HOOKS = _hooks()
NullAddon = type("NullAddon", (), {name: (_anoop if is_async else _noop) for name, is_async in _HOOKS.items()})

# Served from this module's namespace, as addons/geogate_addon.py serves geogate's hooks.
_null = NullAddon()
name = "null"
for _hook in _HOOKS:
    globals()[_hook] = getattr(_null, _hook)
