"""Node power that node exporter already exports, read back from Prometheus.

``rapl``: Σ d/dt of ``node_rapl_{package,dram}_joules_total``; ``hwmon``: Σ of
``node_hwmon_power_*watt`` sensors; ``didact_power_watts{source}`` as written by
:mod:`didact_core.ingest.openmetrics`.  The conversions live in
:meth:`didact_core.ingest.prometheus.source.PrometheusSource.power_frame`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd

from didact_core.errors import SourceUnavailableError
from didact_core.power.base import PowerReader, empty_power


class PrometheusPowerReader(PowerReader):
    """Power rows from a Prometheus server (``source`` shares its HTTP settings)."""

    source = "prometheus"

    def __init__(self, source=None, nodes: Sequence[str] | None = None, **source_kwargs):
        from didact_core.ingest.prometheus.source import PrometheusSource  # late: sources.prometheus imports power.base

        self.prom = source if source is not None else PrometheusSource(**source_kwargs)
        self.nodes = list(nodes) if nodes else None

    @classmethod
    def from_env(
        cls, environ=None, settings=None, nodes: Sequence[str] | None = None
    ) -> PrometheusPowerReader:
        from didact_core.ingest.prometheus.source import PrometheusSource

        return cls(PrometheusSource.from_env(environ, settings), nodes=nodes)

    def available(self) -> tuple[bool, str]:
        from didact_core.ingest.prometheus.source import DIDACT_POWER_METRIC, HWMON_METRIC_RE, RAPL_METRIC_RE

        sel = f'{{__name__=~"{RAPL_METRIC_RE}|{HWMON_METRIC_RE}|{DIDACT_POWER_METRIC}"}}'
        try:
            now = time.time()  # the last day only: an unbounded series query scans all blocks
            data = self.prom.query_json(
                "/api/v1/series", {"match[]": sel, "start": f"{now - 86400:.3f}", "end": f"{now:.3f}"}
            )
        except SourceUnavailableError as e:
            return False, str(e)
        names: dict[str, set] = {}
        for labels in data or []:
            names.setdefault(labels.get("__name__", "?"), set()).add(labels.get(self.prom.node_label))
        if not names:
            return False, (
                f"Prometheus {self.prom.describe()['url']} has no node_rapl_*_joules_total, "
                "node_hwmon_power_*watt or didact_power_watts series (enable node exporter's "
                "rapl/hwmon collectors; RAPL needs root on Linux ≥ 5.10)"
            )
        desc = ", ".join(f"{n} ({len(v)} nodes)" for n, v in sorted(names.items()))
        return True, desc

    def read(self, start, end) -> pd.DataFrame:
        df = self.prom.read_power(pd.Timestamp(start), pd.Timestamp(end), self.nodes)
        return df if df is not None else empty_power()
