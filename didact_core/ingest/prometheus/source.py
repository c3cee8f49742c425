"""Read one UTC day of node exporter metrics from a Prometheus server.

:class:`PrometheusSource` turns ``node_cpu_seconds_total{<node label>, cpu, mode}`` into
the wide raw CPU frame of :mod:`didact_core.schema` (one row per ts, node, cpu; one
column per mode), rows ordered by (node, cpu, ts), node power metrics into
``RawBlock.power`` and node-level metrics into ``RawBlock.node_metrics``.  It reads the
**raw samples** (every scrape, its own timestamp), not a step-aligned resampling, so what
comes back is exactly what Prometheus stored.

Which API: ``api="remote_read"`` (default, via ``"auto"``) asks ``POST /api/v1/read`` for
``STREAMED_XOR_CHUNKS``: Prometheus sends its stored Gorilla/XOR chunks undecoded and
they are decoded here with numpy (:mod:`~didact_core.ingest.prometheus.xorchunks`);
servers without streaming answer snappy ``SAMPLES``.  Measured on a 2-core box
(``bench/README_prometheus.md``): chunks cost Prometheus ~15× less CPU than SAMPLES and
~2× less data, and the day arrives several times faster than through the JSON API.
``api="query"``: ``POST /api/v1/query`` with range-vector selectors, for anything that
speaks the Prometheus HTTP API (Thanos, VictoriaMetrics, ...).  The HTTP side (auth, TLS,
retries, the fallback from remote read to the query API) is
:class:`~didact_core.ingest.prometheus.client.PrometheusClient`.

Chunking: a day is fetched in requests of at most ``max_samples_per_query`` samples
and ``max_points_per_series`` (11,000, Prometheus' points-per-series limit) points per
series, split first by time window, then by node subsets, ``concurrency`` requests in
flight; the next block of nodes is prefetched while the caller works on the current one.

Nodes: the node of a series is the value of ``node_label`` (default ``instance``); with
``strip_port`` (default) a trailing ``:port`` is removed, so ``host:9100`` → ``host``.
The nodes *expected* on a day are the configured ``nodes`` list if given, otherwise
every node that has CPU series on the previous day or on the day itself (the series
API, no samples are decoded).  Expected nodes with no samples in the day are listed in
the first block's ``missing_nodes`` (no exception); a day with no samples at all raises
:class:`SourceUnavailableError`.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.ingest.base import RawBlock, TelemetrySource, day_bounds
from didact_core.ingest.node_exporter import CPU_METRIC, node_name
from didact_core.ingest.prometheus.client import PrometheusClient, client_kwargs
from didact_core.ingest.prometheus.cpu import cpu_frame
from didact_core.ingest.prometheus.node_metrics import NODE_METRICS_RE, node_metrics_frame
from didact_core.ingest.prometheus.power import power_frame, power_matchers, read_power
from didact_core.ingest.prometheus.wire import Series, regex_union, selector
from didact_core.schema import CPU_MODES


log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class PrometheusSource(TelemetrySource):
    """Node exporter CPU counters (and power, node-level metrics) of one UTC day from Prometheus.

    Parameters (all keyword after ``url``):

    - ``node_label``: label that names the node (``instance``); ``strip_port``: drop ``:port``.
    - ``nodes``: the expected node list (else: nodes seen the day before or on the day).
    - ``job``: restrict to series with this ``job`` label.
    - ``max_samples_per_query``, ``max_points_per_series``: chunking.
    - ``power``: also read power metrics; ``rapl_max_energy_j``: RAPL wrap range if known;
      ``hwmon_chips``: regex restricting the hwmon chips summed.
    - ``node_metrics``: also read node exporter's node-level metrics.
    - ``client``: a :class:`PrometheusClient` to share; else one is made from ``url`` and
      the HTTP arguments (``api``, auth, TLS, timeouts, retries, ``concurrency``,
      ``compression``, ``remote_read_chunks``, ``session``: see that class).
    """

    name = "prometheus"

    def __init__(
        self,
        url: str = "http://127.0.0.1:9090",
        node_label: str = "instance",
        *,
        nodes: Sequence[str] | None = None,
        strip_port: bool = True,
        job: str | None = None,
        max_samples_per_query: int = 1_000_000,
        max_points_per_series: int = 11_000,
        power: bool = True,
        node_metrics: bool = True,
        rapl_max_energy_j: float | None = None,
        hwmon_chips: str | None = None,
        client: PrometheusClient | None = None,
        **http,
    ):
        if max_samples_per_query < 1 or max_points_per_series < 1:
            raise DidactError(
                f"Prometheus source max_samples_per_query={max_samples_per_query}, "
                f"max_points_per_series={max_points_per_series}",
                "must be ≥ 1",
                "fix DIDACT_PROMETHEUS_MAX_SAMPLES_PER_QUERY",
            )
        if client is not None and http:
            raise DidactError(
                f"PrometheusSource(client=…, {', '.join(sorted(http))}=…)",
                "gives HTTP settings besides a client",
                "configure the PrometheusClient instead",
            )
        self.client = client or PrometheusClient(url, **http)
        self.node_label = node_label
        self.expected_nodes = sorted(set(nodes)) if nodes else None
        self.strip_port = strip_port
        self.job = job
        self.max_samples_per_query = max_samples_per_query
        self.max_points_per_series = max_points_per_series
        self.power = power
        self.node_metrics = node_metrics
        self.rapl_max_energy_j = rapl_max_energy_j
        self.hwmon_chips = re.compile(hwmon_chips) if hwmon_chips else None

    # -- construction from the settings ------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> PrometheusSource:
        """The source of ``settings``' ``prometheus_*`` fields; ``overrides`` (constructor
        arguments) that are not None win; with a ``client`` its HTTP settings stand."""
        kw = {} if overrides.get("client") is not None else client_kwargs(settings)
        kw["node_label"] = settings.prometheus_node_label
        nodes = settings.prometheus_nodes
        if nodes:
            kw["nodes"] = list(nodes)
        kw["job"] = settings.prometheus_job or None
        kw["strip_port"] = settings.prometheus_strip_port
        max_samples = settings.prometheus_max_samples_per_query
        if max_samples is not None:
            kw["max_samples_per_query"] = max_samples
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, settings: Settings | None = None, **overrides
    ) -> PrometheusSource:
        """:meth:`from_settings` of ``settings``, else of the ``DIDACT_*`` variables of
        ``environ`` (default: the process environment) as :class:`Settings` reads them."""
        return cls.from_settings(
            settings if settings is not None else Settings.from_env(environ), **overrides
        )

    # -- the client's settings, as attributes ----------------------------------------------
    url = property(lambda self: self.client.url)
    api = property(lambda self: self.client.api)
    session = property(lambda self: self.client.session)
    stats = property(lambda self: self.client.stats)
    timeout = property(lambda self: self.client.timeout)
    retries = property(lambda self: self.client.retries)
    concurrency = property(lambda self: self.client.concurrency)
    compression = property(lambda self: self.client.compression)

    def describe(self) -> dict:
        http = self.client.describe()
        return {
            "source": self.name,
            "url": http["url"],
            "node_label": self.node_label,
            "api": http["api"],
            "auth": http["auth"],
            "job": self.job,
            "expected_nodes": len(self.expected_nodes or []),
        }

    def close(self) -> None:
        self.client.close()

    def query_json(self, path: str, params: dict, result_type: str | None = None):
        """See :meth:`PrometheusClient.query_json`."""
        return self.client.query_json(path, params, result_type)

    def fetch(self, matchers: Sequence[tuple[str, str, str]], start_ms: int, end_ms: int) -> list[Series]:
        """Raw samples of all series matching ``matchers`` with start_ms ≤ ts ≤ end_ms."""
        return self.client.fetch(matchers, start_ms, end_ms)

    # -- the day's inventory -------------------------------------------------------------
    def _base_matchers(self) -> list[tuple[str, str, str]]:
        return [("job", "=", self.job)] if self.job else []

    def _node_of(self, raw: str) -> str:
        return node_name(raw, self.strip_port)

    def _series_nodes(self, start_ms: int, end_ms: int) -> dict[str, dict[str, set]]:
        """{node: {"raw": {label values}, "cpus": {cpu labels}}} of idle-mode CPU series in range."""
        sel = selector(CPU_METRIC, [*self._base_matchers(), ("mode", "=", "idle")])
        nodes: dict[str, dict[str, set]] = {}
        unlabeled = 0
        for labels in self.client.series(sel, start_ms, end_ms):
            raw = labels.get(self.node_label)
            if raw is None:
                unlabeled += 1
                continue
            ent = nodes.setdefault(self._node_of(raw), {"raw": set(), "cpus": set()})
            ent["raw"].add(raw)
            ent["cpus"].add(labels.get("cpu", ""))
        if unlabeled:
            log.warning(
                "%d %s series have no '%s' label and are ignored", unlabeled, CPU_METRIC, self.node_label
            )
        for node, ent in nodes.items():
            if len(ent["raw"]) > 1:
                raise DidactError(
                    f"Prometheus node label '{self.node_label}'",
                    f"values {sorted(ent['raw'])} all map to node {node!r}",
                    "set DIDACT_PROMETHEUS_STRIP_PORT=0 or use a label that is unique per node",
                )
        return nodes

    def _points_per_series(self, start_ms: int, end_ms: int) -> int:
        """Most samples any node's cpu-0 idle series holds in the range (sizes the chunks)."""
        sel = selector(CPU_METRIC, [*self._base_matchers(), ("mode", "=", "idle"), ("cpu", "=", "0")])
        query = f"max(count_over_time({sel}[{end_ms - start_ms + 1}ms]))"
        res = self.client.instant(query, end_ms / 1000)
        if not res:
            return max(1, (end_ms - start_ms) // 1000)  # unknown: assume 1 s scrapes
        try:
            return max(1, int(float(res[0]["value"][1])))
        except (TypeError, ValueError):
            raise SourceUnavailableError(
                self.client.what("/api/v1/query") + f" query {query}",
                f"answer has the wrong shape: the count is {res[0]['value'][1]!r}, not a number",
                "check DIDACT_PROMETHEUS_URL points at Prometheus itself",
            ) from None

    def nodes(self, day: dt.date) -> list[str]:
        """Expected nodes: the configured list, else nodes with CPU series on day-1 or day."""
        if self.expected_nodes is not None:
            return list(self.expected_nodes)
        start, _ = day_bounds(day)
        s = int(start.value // 1_000_000)
        return sorted(self._series_nodes(s - DAY_MS, s + DAY_MS - 1))

    # -- blocks ------------------------------------------------------------------------
    def _plan(self, raw_values: list[str], cpus_per_node: int, points: int, start_ms: int, end_ms: int):
        """Requests (raw node values, window start, window end) covering the block."""
        windows = max(1, -(-points // self.max_points_per_series))
        series_per_node = max(1, cpus_per_node) * len(CPU_MODES)
        while series_per_node * -(-points // windows) > self.max_samples_per_query and windows < points:
            windows *= 2
        per_window = -(-points // windows)
        nodes_per_req = max(1, self.max_samples_per_query // (series_per_node * per_window))
        span = end_ms - start_ms + 1
        edges = [start_ms + (span * i) // windows for i in range(windows + 1)]
        plan = []
        for i in range(0, len(raw_values), nodes_per_req):
            group = raw_values[i : i + nodes_per_req]
            for w in range(windows):
                plan.append((group, edges[w], edges[w + 1] - 1))
        return plan

    def _submit_block(
        self, pool: cf.Executor, node_infos: list[tuple[str, dict]], points: int, start_ms: int, end_ms: int
    ) -> dict:
        raw_values = sorted(r for _, ent in node_infos for r in ent["raw"])
        cpus = max((len(ent["cpus"]) for _, ent in node_infos), default=1)
        plan = self._plan(raw_values, cpus, points, start_ms, end_ms)
        base = self._base_matchers()
        futures = []
        for group, w0, w1 in plan:
            m = [("__name__", "=", CPU_METRIC), *base, (self.node_label, "=~", regex_union(group))]
            futures.append(pool.submit(self.fetch, m, w0, w1))
        power_future = None
        if self.power:
            pm = power_matchers(self.node_label, raw_values, self.job)
            # RAPL watts need the sample before the day: start one scrape-ish earlier
            power_future = pool.submit(self.fetch, pm, start_ms - 60_000, end_ms)
        node_future = None
        if self.node_metrics:
            nm = [
                ("__name__", "=~", NODE_METRICS_RE),
                *base,
                (self.node_label, "=~", regex_union(raw_values)),
            ]
            node_future = pool.submit(self.fetch, nm, start_ms, end_ms)
        return {
            "nodes": [n for n, _ in node_infos],
            "futures": futures,
            "power": power_future,
            "node_metrics": node_future,
            "requests": len(plan) + (1 if power_future else 0) + (1 if node_future else 0),
            "t0": time.perf_counter(),
        }

    def _collect_block(self, job: dict, start_ms: int, end_ms: int, missing: list[str]) -> RawBlock:
        series: list[Series] = []
        for f in job["futures"]:
            series.extend(f.result())
        cpu, info = cpu_frame(series, self.node_label, self._node_of)
        meta = {
            "api": self.client.resolved_api,
            "requests": job["requests"],
            "samples": info["samples"],
            "series": info["series"],
            **{k: v for k, v in info.items() if k not in ("samples", "series")},
        }
        power = None
        if job["power"] is not None:
            power, pinfo = self.power_frame(job["power"].result(), start_ms, end_ms)
            meta.update(pinfo)
        node_metrics = None
        if job.get("node_metrics") is not None:
            node_metrics = self.node_metrics_frame(job["node_metrics"].result())
            meta["node_metric_rows"] = 0 if node_metrics is None else len(node_metrics)
        present = set(cpu["node"].unique()) if len(cpu) else set()
        empty = sorted(set(job["nodes"]) - present)
        meta["seconds"] = round(time.perf_counter() - job["t0"], 3)
        return RawBlock(
            cpu=cpu,
            power=power,
            node_metrics=node_metrics,
            missing_nodes=sorted(set(missing) | set(empty)),
            meta=meta,
        )

    def node_metrics_frame(self, series: list[Series]) -> pd.DataFrame | None:
        """Node exporter's node-level series → raw node_metrics rows (see
        :func:`~didact_core.ingest.prometheus.node_metrics.node_metrics_frame`)."""
        return node_metrics_frame(series, self.node_label, self._node_of)

    def power_frame(
        self, series: list[Series], start_ms: int, end_ms: int
    ) -> tuple[pd.DataFrame | None, dict]:
        """Power series → ``RAW_POWER_COLUMNS`` rows in [start, end] (see
        :func:`~didact_core.ingest.prometheus.power.power_frame`)."""
        return power_frame(
            series,
            start_ms,
            end_ms,
            node_label=self.node_label,
            node_of=self._node_of,
            rapl_max_energy_j=self.rapl_max_energy_j,
            hwmon_chips=self.hwmon_chips,
        )

    def read_power(
        self, start: pd.Timestamp, end: pd.Timestamp, nodes: Sequence[str] | None = None
    ) -> pd.DataFrame | None:
        """Power rows for [start, end) of ``nodes`` (raw label values, default all)."""
        return read_power(
            self.client,
            start,
            end,
            nodes,
            node_label=self.node_label,
            strip_port=self.strip_port,
            job=self.job,
            rapl_max_energy_j=self.rapl_max_energy_j,
            hwmon_chips=self.hwmon_chips,
        )

    def _inventory(self, day: dt.date, start_ms: int, end_ms: int) -> tuple[dict, list[str], list[str]]:
        """(the day's nodes with CPU series, the expected nodes, the expected ones absent)."""
        today = self._series_nodes(start_ms, end_ms)
        if self.expected_nodes is not None:
            expected = list(self.expected_nodes)
            unexpected = sorted(set(today) - set(expected))
            if unexpected:
                log.info(
                    "%d nodes report but are not in the expected list (kept): %s",
                    len(unexpected),
                    unexpected[:10],
                )
        else:
            expected = sorted(set(today) | set(self._series_nodes(start_ms - DAY_MS, start_ms - 1)))
        if not today:
            start, end = day_bounds(day)
            raise SourceUnavailableError(
                f"{self.client.what()} day {day.isoformat()}",
                f"no {CPU_METRIC} series with a '{self.node_label}' label between {start.isoformat()} and "
                f"{end.isoformat()}" + (f" for job {self.job!r}" if self.job else ""),
                "check the day is within Prometheus' retention, the node exporters were scraped, and "
                "DIDACT_PROMETHEUS_NODE_LABEL / DIDACT_PROMETHEUS_JOB",
            )
        return today, expected, sorted(set(expected) - set(today))

    def iter_blocks(self, day: dt.date, nodes_per_block: int = 64) -> Iterator[RawBlock]:
        """Yield the day in blocks of ``nodes_per_block`` nodes (the next one is prefetched).

        Missing expected nodes are listed in the first block's ``missing_nodes``.
        """
        start, _ = day_bounds(day)
        start_ms = int(start.value // 1_000_000)
        end_ms = start_ms + DAY_MS - 1
        today, expected, missing = self._inventory(day, start_ms, end_ms)
        present = sorted(today)
        points = self._points_per_series(start_ms, end_ms)
        groups = [present[i : i + nodes_per_block] for i in range(0, len(present), max(1, nodes_per_block))]
        total_samples = 0
        with cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="didact-prom") as pool:

            def submit(group):
                return self._submit_block(pool, [(n, today[n]) for n in group], points, start_ms, end_ms)

            jobs = [submit(groups[0])]
            try:
                for i in range(len(groups)):
                    if i + 1 < len(groups):
                        jobs.append(submit(groups[i + 1]))
                    block = self._collect_block(jobs[i], start_ms, end_ms, missing if i == 0 else [])
                    jobs[i] = None
                    total_samples += block.meta["samples"]
                    if i == 0:
                        block.meta["expected_nodes"] = len(expected)
                    yield block
            finally:
                for job in jobs:
                    if job:
                        for f in job["futures"]:
                            f.cancel()
        if total_samples == 0:
            raise SourceUnavailableError(
                f"{self.client.what()} day {day.isoformat()}",
                f"{CPU_METRIC} series exist but hold no samples in the day",
                "check the day is within Prometheus' retention and the scrapes succeeded",
            )

    def read_day(self, day: dt.date, nodes_per_block: int = 64) -> RawBlock:
        """The whole day as one block (fine for small clusters and tests)."""
        blocks = list(self.iter_blocks(day, nodes_per_block))
        cpu = pd.concat([b.cpu for b in blocks], ignore_index=True)
        powers = [b.power for b in blocks if b.power is not None]
        power = pd.concat(powers, ignore_index=True) if powers else None
        nms = [b.node_metrics for b in blocks if b.node_metrics is not None]
        node_metrics = pd.concat(nms, ignore_index=True) if nms else None
        meta = {
            "blocks": len(blocks),
            "samples": sum(b.meta["samples"] for b in blocks),
            "requests": sum(b.meta["requests"] for b in blocks),
        }
        return RawBlock(
            cpu=cpu, power=power, node_metrics=node_metrics, missing_nodes=blocks[0].missing_nodes, meta=meta
        )


__all__ = ["PrometheusSource"]
