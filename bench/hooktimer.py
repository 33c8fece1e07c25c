"""mitmproxy addon for the benchmarks: time geogate's own hooks inside a running mitmdump.

    mitmdump -s addons/geogate_addon.py -s bench/hooktimer.py ...
    kill -USR1 <pid>   # writes $GEOGATE_HOOKTIMER_OUT (JSON: per hook calls, total ns)

At `running`, every mitmproxy hook method of the loaded geogate addon instance is replaced by a
wrapper that adds up the time spent *executing* it: for an async hook, each step of the coroutine
is timed separately (time.thread_time_ns around every send/throw), so time the event loop spends
elsewhere while the hook awaits is not counted. What is not counted: mitmproxy's own dispatch of
the hook (AddonManager, safecall, the task it runs in). Only for bench/hotspots.py; it is never
loaded by `make bench`, whose figures are end-to-end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import types

from mitmproxy import ctx
from mitmproxy import hooks

_now = time.thread_time_ns  # CPU time of this thread: preemption by other processes is not counted


class HookTimer:
    def __init__(self) -> None:
        self.stats: dict[str, list[int]] = {}  # hook -> [calls, ns]
        self.target = None

    def running(self) -> None:
        addon = ctx.master.addons.get("geogate")
        if addon is None:
            for a in ctx.master.addons.chain:
                if type(a).__name__.lower() == "geogate":
                    addon = a
        if addon is None:
            print("hooktimer: no geogate addon loaded", flush=True)
            return
        self.target = addon
        for name in sorted(hooks.all_hooks):
            fn = getattr(addon, name, None)
            if callable(fn):
                setattr(addon, name, self._wrap(name, fn))
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump)
        except (NotImplementedError, RuntimeError):
            pass

    def _wrap(self, name: str, fn):
        stat = self.stats.setdefault(name, [0, 0])

        @types.coroutine
        def drive(coro):
            value, exc = None, None
            while True:
                t0 = _now()
                try:
                    y = coro.throw(exc) if exc is not None else coro.send(value)
                except StopIteration as e:
                    stat[1] += _now() - t0
                    return e.value
                except BaseException:
                    stat[1] += _now() - t0
                    raise
                stat[1] += _now() - t0
                try:
                    value, exc = (yield y), None
                except BaseException as e:  # thrown into us (cancellation): pass it on
                    value, exc = None, e

        def wrapper(*args, **kwargs):
            stat[0] += 1
            t0 = _now()
            res = fn(*args, **kwargs)
            stat[1] += _now() - t0
            if asyncio.iscoroutine(res):
                return drive(res)
            return res

        return wrapper

    def dump(self) -> None:
        path = os.environ.get("GEOGATE_HOOKTIMER_OUT")
        data = {k: {"calls": v[0], "ns": v[1]} for k, v in self.stats.items() if v[0]}
        if path:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)


addons = [HookTimer()]
