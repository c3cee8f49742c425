"""Reading node exporter metrics from a Prometheus server.

Layers, each on the ones before it:

- ``wire``: PromQL selectors, remote-read protobuf, the JSON query API's matrix
  (:class:`Series` = labels + int64 ms + float64 values); ``xorchunks``: Prometheus' XOR
  chunks decoded with numpy;
- ``client``: :class:`PrometheusClient`, the HTTP side (session, auth, TLS, timeouts,
  retries, stats, remote read with fallback to the query API, URL redaction);
- ``cpu`` / ``node_metrics`` / ``power``: series → raw frames (CPU counters, node-level
  metrics, power rows);
- ``source``: :class:`PrometheusSource`, the :class:`~didact_core.ingest.base.TelemetrySource`
  that reads a UTC day in node blocks.

Node exporter's metric names and node naming are :mod:`didact_core.ingest.node_exporter`.
"""

from didact_core.ingest.node_exporter import NODE_METRICS, node_name
from didact_core.ingest.prometheus.client import API_CHOICES, PrometheusClient, client_kwargs, redact
from didact_core.ingest.prometheus.cpu import cpu_frame
from didact_core.ingest.prometheus.node_metrics import NODE_METRICS_RE, node_metrics_frame
from didact_core.ingest.prometheus.power import POWER_METRICS_RE, power_frame, power_series, read_power
from didact_core.ingest.prometheus.source import PrometheusSource
from didact_core.ingest.prometheus.wire import STALE_NAN_BITS, Series, promql_str, regex_union, selector

__all__ = [
    "API_CHOICES",
    "NODE_METRICS",
    "NODE_METRICS_RE",
    "POWER_METRICS_RE",
    "STALE_NAN_BITS",
    "PrometheusClient",
    "PrometheusSource",
    "Series",
    "client_kwargs",
    "cpu_frame",
    "node_metrics_frame",
    "node_name",
    "power_frame",
    "power_series",
    "promql_str",
    "read_power",
    "redact",
    "regex_union",
    "selector",
]
