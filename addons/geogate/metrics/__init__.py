"""Prometheus metrics shared by the proxy and the gateway (`--metrics HOST:PORT`).

`families` defines the metrics and counts decision records; `address` reads `--metrics`;
`serve` serves `/metrics` (one process, or the sum over workers in prometheus_client's multiprocess
mode); `kernel` turns the gateway's counters into samples at scrape time. This layer imports
only core: both shells use it and neither may import the other. Importing it starts nothing; the shells
import it (and prometheus_client) only when metrics are asked for.
"""
