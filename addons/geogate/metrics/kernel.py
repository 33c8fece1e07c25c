"""The gateway's kernel side as samples, read from the running gateway at each scrape.

The gateway hands over one function that returns its counters (gateway/daemon.py,
Gateway.metrics_counters); nothing here knows the gateway's classes.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from geogate.metrics.families import DECISION_LABELS
from geogate.metrics.families import decision_labels

COUNTERS = {
    "receipts_written": ("geogate_gateway_receipts_written", "Kernel refusals written as decision records"),
    "receipts_suppressed": ("geogate_gateway_receipts_suppressed",
                            "Kernel refusals only counted (repeats within the window, or over the rate)"),
    "restores": ("geogate_gateway_restores", "Times the table or the routing latch was found gone and put back"),
}


class KernelCollector(Collector):
    """`read()` -> {"receipts_written": n, "receipts_suppressed": n, "restores": n,
    "flows": {(action, rule, country): n}, "kernel_flows": {action: n}}; missing keys are left out."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        counters = self.read()
        for key, (name, text) in COUNTERS.items():
            if key in counters:
                family = CounterMetricFamily(name, text)
                family.add_metric([], float(counters[key]))
                yield family
        flows = counters.get("flows")
        if flows is not None:
            family = CounterMetricFamily("geogate_gateway_flows", "Flows the kernel's sets judged, by their verdict",
                                         labels=list(DECISION_LABELS))
            summed: dict[tuple[str, str, str, str], float] = {}
            for (action, rule, country), n in flows.items():
                labels = decision_labels(action, rule, country, "kernel")
                summed[labels] = summed.get(labels, 0.0) + float(n)
            for labels, n in summed.items():
                family.add_metric(list(labels), n)
            yield family
        totals = counters.get("kernel_flows")
        if totals is not None:
            family = CounterMetricFamily("geogate_gateway_kernel_flows",
                                         "New flows the kernel's own counters saw (every one, attributed or not)",
                                         labels=["action"])
            for action, n in totals.items():
                family.add_metric([decision_labels(action, None, None, "kernel")[0]], float(n))
            yield family
