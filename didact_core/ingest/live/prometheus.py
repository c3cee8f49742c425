"""``node_cpu_seconds_total`` now, from Prometheus: instant queries of the values and of
their scrape timestamps (``timestamp()``), through the shared
:class:`~didact_core.ingest.prometheus.client.PrometheusClient` (auth, TLS, retries).

Node-level metrics: two more instant queries of node exporter's metrics in
:data:`~didact_core.ingest.node_exporter.NODE_METRICS` (the names the nightly ingest
reads, summed over devices the same way, virtual network devices excluded).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import SourceUnavailableError
from didact_core.ingest.live.base import NODE_VALUES, LiveFeed, cpu_frame, node_frame
from didact_core.ingest.node_exporter import NODE_METRICS, node_metric_column, node_name, pivot_node_metrics
from didact_core.ingest.prometheus import PrometheusClient, PrometheusSource
from didact_core.schema import CPU_MODES


def _sample(item: dict, what: str) -> tuple[float, float]:
    """(time, value) of an instant-vector sample ``{"metric", "value": [t, "v"]}``."""
    try:
        return float(item["value"][0]), float(item["value"][1])
    except (TypeError, ValueError):
        raise SourceUnavailableError(
            what,
            f"answer has the wrong shape: sample {item['value']!r} is not [time, number]",
            "check DIDACT_PROMETHEUS_URL points at Prometheus itself",
        ) from None


class PrometheusLiveFeed(LiveFeed):
    """``node_cpu_seconds_total`` now, from Prometheus (two instant queries: values and
    their scrape timestamps).  ``client``: a configured :class:`PrometheusClient`; by
    default one from ``settings`` with one retry and a 10 s timeout, so a dead server
    costs an interval, not minutes.  ``source``: a configured
    :class:`~didact_core.ingest.prometheus.source.PrometheusSource` to share the client,
    node label and job of.  Nodes are named by ``settings.prometheus_node_label``
    (port stripped unless ``prometheus_strip_port`` is off)."""

    name = "prometheus"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: PrometheusClient | None = None,
        source: PrometheusSource | None = None,
        job: str | None = None,
        metric: str = "node_cpu_seconds_total",
    ):
        settings = settings or Settings.from_env()
        if source is not None:
            client = client or source.client
            self.node_label, self.strip_port, default_job = source.node_label, source.strip_port, source.job
        else:
            self.node_label = settings.prometheus_node_label
            self.strip_port = settings.prometheus_strip_port
            default_job = settings.prometheus_job or None
        self.client = client or PrometheusClient.from_settings(
            settings, retries=1, timeout_s=10.0, connect_timeout_s=3.0, backoff_s=0.2
        )
        self.job = job if job is not None else default_job
        self.metric = metric

    @property
    def source(self) -> PrometheusSource:
        """A :class:`PrometheusSource` on this feed's client and node naming (to read a
        range as the nightly ingest reads it)."""
        return PrometheusSource(
            client=self.client, node_label=self.node_label, strip_port=self.strip_port, job=self.job
        )

    def describe(self) -> dict:
        return {"feed": self.name, **self.client.describe(), "node_label": self.node_label, "job": self.job}

    def close(self) -> None:
        self.client.close()

    def _selector(self) -> str:
        return f'{self.metric}{{job="{self.job}"}}' if self.job else self.metric

    def _node(self, raw: str) -> str:
        return node_name(raw, self.strip_port)

    def _latest_rows(self, values: list[dict], stamps: list[dict], what: str) -> tuple[dict, int]:
        """{(node, cpu): {"ts": scrape time s, mode: value}} and the series skipped."""
        ts_of = {}
        for s in stamps:
            m = s["metric"]
            ts_of[(m.get(self.node_label), m.get("cpu"), m.get("mode"))] = _sample(s, what)[1]
        rows: dict[tuple[str, int], dict] = {}
        skipped = 0
        for s in values:
            m = s["metric"]
            raw_node, cpu, mode = m.get(self.node_label), m.get("cpu"), m.get("mode")
            digits = re.sub(r"\D", "", cpu) if isinstance(cpu, str) else ""
            if raw_node is None or mode not in CPU_MODES or not digits:
                skipped += 1
                continue
            at, value = _sample(s, what)
            t = ts_of.get((raw_node, cpu, mode), at)
            r = rows.setdefault((self._node(raw_node), int(digits)), {"ts": t})
            r["ts"] = max(r["ts"], t)
            r[mode] = value
        return rows, skipped

    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        self._last_node_metrics = None
        sel = self._selector()
        at = time.time()
        values = self.client.instant(sel, at)
        stamps = self.client.instant(f"timestamp({sel})", at)
        what = f"{self.client.what()} query {sel}"
        if not values:
            raise SourceUnavailableError(
                what,
                "returned no series (nothing scraped in the last 5 minutes?)",
                "check that node exporters are scraped and DIDACT_PROMETHEUS_JOB / _NODE_LABEL are right",
            )
        rows, skipped = self._latest_rows(values, stamps, what)
        if not rows:
            raise SourceUnavailableError(
                what,
                f"has no series with the labels {self.node_label}, cpu and mode ({skipped} skipped)",
                "set DIDACT_PROMETHEUS_NODE_LABEL to the label that names the node",
            )
        keys = sorted(rows)
        nodes = sorted({k[0] for k in keys})
        code = {n: i for i, n in enumerate(nodes)}
        vals = np.array([[rows[k].get(mode, 0.0) for mode in CPU_MODES] for k in keys], dtype=np.float64)
        ts_ms = np.array([round(rows[k]["ts"] * 1000) for k in keys], dtype=np.int64)
        if node_metrics:
            self._last_node_metrics = self._poll_node_metrics(at)
        return cpu_frame(
            ts_ms, np.array([code[k[0]] for k in keys]), nodes, np.array([k[1] for k in keys]), vals
        )

    def _poll_node_metrics(self, at: float) -> pd.DataFrame | None:
        """Node exporter's node-level metrics at ``at``: one row per node (its latest scrape),
        the columns the nightly ingest makes of them
        (:func:`~didact_core.ingest.prometheus.node_metrics.node_metrics_frame`: summed
        over devices, virtual network devices excluded, memory used = total − available)."""
        job = f'job="{self.job}"' if self.job else ""
        sel = f'{{__name__=~"{"|".join(NODE_METRICS)}"{"," + job if job else ""}}}'
        what = f"{self.client.what()} query {sel}"
        values = self.client.instant(sel, at)
        # timestamp() gives the scrape time only of a plain selector, and drops the metric
        # name: one timestamp() per metric, named by a label of its own, in one query
        stamped = " or ".join(
            f'label_replace(timestamp({name}{{{job}}}), "didact_metric", "{name}", "", "")'
            for name in NODE_METRICS
        )
        ts_of = {}
        for s in self.client.instant(stamped, at):
            m = dict(s["metric"])
            name = m.pop("didact_metric", None)
            ts_of[(name, tuple(sorted(m.items())))] = _sample(s, what)[1]
        node_col, ts_col, col_col, v_col = [], [], [], []
        for s in values:
            m = dict(s["metric"])
            name = m.pop("__name__", None)
            column = node_metric_column(name or "", m)
            raw_node = m.get(self.node_label)
            if column is None or raw_node is None:
                continue
            t_at, value = _sample(s, what)
            node_col.append(self._node(raw_node))
            ts_col.append(round(ts_of.get((name, tuple(sorted(m.items()))), t_at) * 1000))
            col_col.append(column)
            v_col.append(value)
        if not node_col:
            return None
        long = pd.DataFrame({"node": node_col, "ts": ts_col, "col": col_col, "v": v_col})
        wide = pivot_node_metrics(long)
        wide = wide.sort_values(["node", "ts"], kind="stable").drop_duplicates("node", keep="last")
        if wide.empty:
            return None
        nodes = sorted(wide["node"].unique())
        codes = pd.Categorical(wide["node"], categories=nodes).codes
        return node_frame(
            wide["ts"].to_numpy(np.int64), codes, nodes, wide[list(NODE_VALUES)].to_numpy(np.float64)
        )


__all__ = ["PrometheusLiveFeed"]
