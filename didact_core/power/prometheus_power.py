"""Node power that node exporter already exports, read back from Prometheus.

``rapl``: Σ d/dt of ``node_rapl_{package,dram}_joules_total``; ``hwmon``: Σ of
``node_hwmon_power_*watt`` sensors; ``didact_power_watts{source}`` as written by
:mod:`didact_core.ingest.openmetrics`.  The conversions live in
:mod:`didact_core.ingest.prometheus.power`; the HTTP side is the shared
:class:`~didact_core.ingest.prometheus.client.PrometheusClient`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import SourceUnavailableError
from didact_core.ingest.prometheus import PrometheusClient, PrometheusSource, power_series, read_power
from didact_core.power.base import PowerReader, empty_power

#: the node-naming and conversion arguments of a reader (the rest configure its client)
_NAMING = ("node_label", "strip_port", "job", "rapl_max_energy_j", "hwmon_chips")


class PrometheusPowerReader(PowerReader):
    """Power rows from a Prometheus server.

    ``source``: a :class:`PrometheusClient`, or a
    :class:`~didact_core.ingest.prometheus.source.PrometheusSource` whose client and node
    naming to share; else a client is made from ``kwargs`` (``url``, auth, timeouts, …),
    which may also give ``node_label``, ``strip_port``, ``job``, ``rapl_max_energy_j``
    and ``hwmon_chips``."""

    source = "prometheus"

    def __init__(self, source=None, nodes: Sequence[str] | None = None, **kwargs):
        naming = dict(
            node_label="instance", strip_port=True, job=None, rapl_max_energy_j=None, hwmon_chips=None
        )
        if isinstance(source, PrometheusSource):
            naming.update({k: getattr(source, k) for k in _NAMING})
            source = source.client
        naming.update({k: kwargs.pop(k) for k in _NAMING if k in kwargs})
        self.client = source if source is not None else PrometheusClient(**kwargs)
        self.naming = naming
        self.nodes = list(nodes) if nodes else None

    @classmethod
    def from_env(
        cls, environ=None, settings: Settings | None = None, nodes: Sequence[str] | None = None
    ) -> PrometheusPowerReader:
        """The reader of ``settings``' Prometheus (default: the settings of ``environ``)."""
        settings = settings if settings is not None else Settings.from_env(environ)
        return cls(
            PrometheusClient.from_settings(settings),
            nodes=nodes,
            node_label=settings.prometheus_node_label,
            strip_port=settings.prometheus_strip_port,
            job=settings.prometheus_job or None,
        )

    def available(self) -> tuple[bool, str]:
        try:
            names = power_series(self.client, self.naming["node_label"])
        except SourceUnavailableError as e:
            return False, str(e)
        if not names:
            return False, (
                f"{self.client.what()} has no node_rapl_*_joules_total, "
                "node_hwmon_power_*watt or didact_power_watts series (enable node exporter's "
                "rapl/hwmon collectors; RAPL needs root on Linux ≥ 5.10)"
            )
        desc = ", ".join(f"{n} ({len(v)} nodes)" for n, v in sorted(names.items()))
        return True, desc

    def read(self, start, end) -> pd.DataFrame:
        df = read_power(self.client, pd.Timestamp(start), pd.Timestamp(end), self.nodes, **self.naming)
        return df if df is not None else empty_power()
