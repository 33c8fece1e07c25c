"""This proxy as one of `geogate run --workers N`: its index, named in each decision record."""

from __future__ import annotations

import os
from typing import Any

from geogate.proxy.decision_log import DecisionLog

WORKER_ENV = "GEOGATE_WORKER"  # "INDEX/COUNT", set by the supervisor for each worker it starts


def worker_index(environ: dict[str, str] | None = None) -> int | None:
    """This process's index (0..N-1) when it is one of N > 1 workers, else None."""
    text = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or int(count) < 2 or int(index) >= int(count):
        return None
    return int(index)


class WorkerLog(DecisionLog):
    """The decision log of worker `worker`: every record says which worker decided it."""

    def __init__(self, path: str, worker: int) -> None:
        self.worker = worker
        super().__init__(path)

    def write(self, record: dict[str, Any]) -> None:
        super().write({**record, "worker": self.worker})


def open_decision_log(path: str) -> DecisionLog:
    worker = worker_index()
    return DecisionLog(path) if worker is None else WorkerLog(path, worker)
