"""What the `--metrics` endpoint serves at /metrics, and serving it.

The endpoint serves a registry of its own that holds one collector: the families of this
process (or, under PROMETHEUS_MULTIPROC_DIR, the sum over every worker's files), plus
`geogate_database_age_seconds`, derived at each scrape from the build timestamps so that the age
is never older than the scrape, and `geogate_database_stale`, derived the same way from the time
the policy's geo.max_age is passed (GateState.limit, set by each process at every reload): a
supervisor that holds no state serves it too, and it turns at the scrape after the moment, not
at the next reload.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from geogate.core.errors import GeogateError
from geogate.core.processes import process_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WithDatabaseAge(Collector):
    """The families of `source`, and the age of each database whose build time they hold."""

    def __init__(self, source: CollectorRegistry, kernel: Collector | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.kernel = kernel
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily("geogate_database_age_seconds", "Seconds since each database in use was built",
                                labels=["name"])
        stale = GaugeMetricFamily("geogate_database_stale",
                                  "1 while the databases in use are older than the policy's geo.max_age, "
                                  "by its geo.on_stale", labels=["on_stale"])
        now = self.clock()
        families: Iterable[Metric] = self.source.collect()
        for family in families:
            if family.name == "geogate_database_build_timestamp_seconds":
                for sample in family.samples:
                    age.add_metric([sample.labels["name"]], max(now - sample.value, 0.0))
            elif family.name == "geogate_database_stale_at_timestamp_seconds":
                for sample in family.samples:  # the moment core.freshness.Limit.stale turns true
                    stale.add_metric([sample.labels["on_stale"]], 1.0 if now >= sample.value else 0.0)
            yield family
        yield age
        if stale.samples:
            yield stale
        if self.kernel is not None:
            yield from self.kernel.collect()


def aggregate_registry(directory: str) -> CollectorRegistry:
    """The sum over every process writing to `directory` (prometheus_client multiprocess mode)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def endpoint_registry(source: CollectorRegistry, kernel: Collector | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(WithDatabaseAge(source, kernel))
    return registry


def serve(address: tuple[str, int], registry: CollectorRegistry) -> Any:
    """Serve `registry` at http://HOST:PORT/metrics from a daemon thread; the server (shutdown()
    stops it). Raises GeogateError when the port cannot be bound."""
    from prometheus_client import start_http_server

    host, port = address
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise GeogateError(f"--metrics {host}:{port}: cannot listen: {e.strerror or e}") from None
    return server


def multiprocess_directory() -> str | None:
    """The directory the workers write to, when the supervisor set one."""
    return os.environ.get(MULTIPROC_ENV) or None


class WorkerMetrics:
    """For a supervisor of worker processes: a fresh directory they write to (their environment
    gets MULTIPROC_ENV), and one endpoint serving the sum. close() stops serving and removes it."""

    def __init__(self, address: tuple[str, int]) -> None:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="geogate-metrics-")
        try:
            self.server = serve(address, endpoint_registry(aggregate_registry(self.directory)))
        except GeogateError:
            os.rmdir(self.directory)
            raise
        self.env = {MULTIPROC_ENV: self.directory}

    def worker_exited(self, pid: int) -> None:
        """Drop a dead worker's live gauges (open connections, what it had in force); its
        counters stay in the sum."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.directory)

    def close(self) -> None:
        import shutil

        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def sweep_dead(directory: str) -> None:
    """Drop the live gauges of every process that wrote to `directory` and is gone (a proxy child
    restarted, a worker its supervisor replaced), whoever started it."""
    from prometheus_client import multiprocess

    try:
        names = os.listdir(directory)
    except OSError:
        return
    for pid in {int(m[1]) for n in names if (m := _LIVE_FILE.fullmatch(n))}:
        if pid != os.getpid() and not process_alive(pid):
            multiprocess.mark_process_dead(pid, directory)


class _SweptAggregate(Collector):
    """The sum over the processes writing to `directory`, the dead ones' live gauges dropped first."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import multiprocess

        sweep_dead(self.directory)
        yield from multiprocess.MultiProcessCollector(None, path=self.directory).collect()


class SharedMetrics:
    """For a process that counts and starts children that count too (the gateway and its proxy,
    one mitmdump or a `geogate run --workers N` supervisor with its workers): a fresh directory
    that this process and every child write to (MULTIPROC_ENV in this process's environment, which
    the children inherit), and one endpoint serving their sum plus `extra` (the kernel counters).
    A child then serves nothing itself. close() stops serving and removes the directory."""

    def __init__(self, address: tuple[str, int], extra: Collector | None = None) -> None:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="geogate-metrics-")
        source = CollectorRegistry()
        source.register(_SweptAggregate(self.directory))
        try:
            self.server = serve(address, endpoint_registry(source, extra))
        except GeogateError:
            os.rmdir(self.directory)
            raise
        os.environ[MULTIPROC_ENV] = self.directory
        _count_to_files()

    def close(self) -> None:
        import shutil

        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _count_to_files() -> None:
    """Metrics made from now on write to MULTIPROC_ENV's directory. prometheus_client picks its
    value class once, when first imported; a process that loaded it before the variable was set
    (a test run, a library) picks again here."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()
