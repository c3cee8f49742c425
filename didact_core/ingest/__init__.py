"""Ingest: where raw node metrics come from (the stage above the ground floor).

- ``base``: the :class:`TelemetrySource` interface and :class:`RawBlock` (a day, in node blocks);
- ``simulator``: the embedded simulated cluster (the default source);
- ``prometheus``: :class:`~didact_core.ingest.prometheus.PrometheusSource` and its HTTP client;
- ``openmetrics``: raw blocks written as OpenMetrics text (to backfill a Prometheus);
- ``node_exporter``: node exporter's metric names, node naming, node-level metric mapping;
- ``counters``: cumulative counters → rates (energy → watts);
- ``live``: the live feeds of ``didact serve`` (simulator, Prometheus, this host).

Ingest imports only the ground floor (config, errors, schema); never data, learn, serve or power.
"""

from didact_core.ingest.base import RawBlock, TelemetrySource, day_bounds

__all__ = ["RawBlock", "TelemetrySource", "day_bounds"]
