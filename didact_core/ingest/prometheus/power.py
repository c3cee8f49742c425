"""Node power that node exporter (or didact) exports, read back from Prometheus.

Per node and scrape: ``rapl`` = Σ d(joules)/dt of the ``node_rapl_{package,dram}_joules_total``
counters (a negative step is a wrap or reset and gives no watts for that interval, unless
``rapl_max_energy_j`` gives the wrap range); ``hwmon`` = Σ over hwmon power sensors of
``node_hwmon_power_*watt`` (one element per sensor: average, else input, else plain);
``didact_power_watts{source}`` (what :mod:`didact_core.ingest.openmetrics` writes) keeps
its ``source`` label.  Rows are :data:`~didact_core.schema.RAW_POWER_COLUMNS`.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from didact_core.ingest.counters import counter_to_watts
from didact_core.ingest.node_exporter import (
    DIDACT_POWER_METRIC,
    HWMON_METRIC_RE,
    RAPL_DOMAINS,
    RAPL_METRIC_RE,
    node_name,
)
from didact_core.ingest.prometheus.client import PrometheusClient
from didact_core.ingest.prometheus.wire import Series, regex_union, selector
from didact_core.schema import RAW_POWER_COLUMNS, TS_DTYPE

#: the ``__name__`` regex that selects every power metric
POWER_METRICS_RE = f"{RAPL_METRIC_RE}|{HWMON_METRIC_RE}|{DIDACT_POWER_METRIC}"
#: hwmon sensors' preference: an average, else the input, else the plain gauge
_HWMON_RANK = {"node_hwmon_power_average_watt": 0, "node_hwmon_power_input_watt": 1}


def power_matchers(node_label: str, raw_nodes: Sequence[str] | None = None, job: str | None = None) -> list:
    """Matchers of the power series of ``raw_nodes`` (label values; None: every node)."""
    return [
        ("__name__", "=~", POWER_METRICS_RE),
        *([("job", "=", job)] if job else []),
        (node_label, "=~", regex_union(list(raw_nodes)) if raw_nodes else ".+"),
    ]


class _Rows:
    """Power rows collected as arrays, one part per (node, source)."""

    def __init__(self):
        self.ts, self.node, self.source, self.watts = [], [], [], []

    def add(self, ts: np.ndarray, node: str, source, watts: np.ndarray) -> None:
        self.ts.append(np.asarray(ts, dtype=np.int64))
        self.node.append(np.full(len(ts), node, dtype=object))
        self.source.append(np.full(len(ts), source, dtype=object))
        self.watts.append(np.asarray(watts, dtype=np.float64))

    def frame(self) -> pd.DataFrame | None:
        if not self.ts or not sum(len(t) for t in self.ts):
            return None
        df = pd.DataFrame(
            {
                "ts": pd.Series(np.concatenate(self.ts).astype("datetime64[ms]"))
                .dt.tz_localize("UTC")
                .astype(TS_DTYPE),
                "node": pd.Series(np.concatenate(self.node), dtype="string"),
                "source": pd.Series(np.concatenate(self.source), dtype="string"),
                "watts": np.concatenate(self.watts),
            },
            columns=list(RAW_POWER_COLUMNS),
        )
        return df.sort_values(["node", "source", "ts"], kind="stable", ignore_index=True)


def _in_range(total: pd.Series, start_ms: int, end_ms: int) -> pd.Series:
    return total[(total.index >= start_ms) & (total.index <= end_ms)]


def _add_rapl(rows: _Rows, rapl: dict, start_ms: int, end_ms: int, max_j, info: dict) -> None:
    """Σ over a node's RAPL domains of each counter's watts (only scrapes all domains have)."""
    for node, parts in rapl.items():
        frames = []
        for k, s in enumerate(parts):
            w, wraps, resets = counter_to_watts(s.ts, s.values, max_j)
            info["rapl_wraps"] += wraps
            info["rapl_resets"] += resets
            frames.append(pd.Series(w, index=s.ts[1:], name=k))
        wide = pd.concat(frames, axis=1)  # NaN where a domain lacks that scrape
        total = _in_range(wide.sum(axis=1, min_count=len(frames)).dropna(), start_ms, end_ms)
        rows.add(total.index.to_numpy(np.int64), node, "rapl", total.to_numpy(np.float64))


def _add_hwmon(rows: _Rows, hwmon: dict, start_ms: int, end_ms: int) -> None:
    """Σ over a node's hwmon sensors (only scrapes all sensors have)."""
    for node, sensors in hwmon.items():
        frames = [pd.Series(s.values, index=s.ts, name=i) for i, (_, s) in enumerate(sensors.values())]
        total = pd.concat(frames, axis=1).sum(axis=1, min_count=len(frames)).dropna()
        total = _in_range(total, start_ms, end_ms)
        rows.add(total.index.to_numpy(np.int64), node, "hwmon", total.to_numpy(np.float64))


def power_frame(
    series: list[Series],
    start_ms: int,
    end_ms: int,
    *,
    node_label: str = "instance",
    node_of: Callable[[str], str] = node_name,
    rapl_max_energy_j: float | None = None,
    hwmon_chips: re.Pattern | str | None = None,
) -> tuple[pd.DataFrame | None, dict]:
    """Power series (RAPL counters, hwmon/didact gauges) → (``RAW_POWER_COLUMNS`` rows in
    [start, end] or None, facts for metadata).  ``hwmon_chips``: a regex the summed hwmon
    chips must match."""
    chips = re.compile(hwmon_chips) if isinstance(hwmon_chips, str) else hwmon_chips
    rows = _Rows()
    info = {"power_series": 0, "rapl_wraps": 0, "rapl_resets": 0}
    rapl: dict[str, list] = defaultdict(list)
    hwmon: dict[str, dict] = defaultdict(dict)
    for s in series:
        name = s.labels.get("__name__", "")
        raw = s.labels.get(node_label)
        if raw is None or not len(s.ts):
            continue
        node = node_of(raw)
        info["power_series"] += 1
        if name == DIDACT_POWER_METRIC:
            keep = (s.ts >= start_ms) & (s.ts <= end_ms)
            rows.add(s.ts[keep], node, s.labels.get("source", "prometheus"), s.values[keep])
        elif re.fullmatch(RAPL_METRIC_RE, name):
            domain = s.labels.get("rapl_zone") or name[len("node_rapl_") : -len("_joules_total")]
            if re.sub(r"[-_]?\d+$", "", domain) in RAPL_DOMAINS:
                rapl[node].append(s)
        elif re.fullmatch(HWMON_METRIC_RE, name):
            chip = s.labels.get("chip", "")
            if chips and not chips.search(chip):
                continue
            sensor = (chip, s.labels.get("sensor", ""))
            rank = _HWMON_RANK.get(name, 2)
            if sensor not in hwmon[node] or rank < hwmon[node][sensor][0]:
                hwmon[node][sensor] = (rank, s)
    _add_rapl(rows, rapl, start_ms, end_ms, rapl_max_energy_j, info)
    _add_hwmon(rows, hwmon, start_ms, end_ms)
    return rows.frame(), info


def read_power(
    client: PrometheusClient,
    start: pd.Timestamp,
    end: pd.Timestamp,
    nodes: Sequence[str] | None = None,
    *,
    node_label: str = "instance",
    strip_port: bool = True,
    job: str | None = None,
    rapl_max_energy_j: float | None = None,
    hwmon_chips: re.Pattern | str | None = None,
) -> pd.DataFrame | None:
    """Power rows for [start, end) of ``nodes`` (raw label values, default all)."""
    s = int(pd.Timestamp(start).value // 1_000_000)
    e = int(pd.Timestamp(end).value // 1_000_000) - 1
    # RAPL watts need the sample before the range: start one scrape-ish earlier
    series = client.fetch(power_matchers(node_label, nodes, job), s - 60_000, e)
    df, _ = power_frame(
        series,
        s,
        e,
        node_label=node_label,
        node_of=lambda raw: node_name(raw, strip_port),
        rapl_max_energy_j=rapl_max_energy_j,
        hwmon_chips=hwmon_chips,
    )
    return df


def power_series(client: PrometheusClient, node_label: str, job: str | None = None) -> dict[str, set]:
    """{power metric name: node label values} of the power series of the last day."""
    now_ms = int(time.time() * 1000)  # the last day only: an unbounded series query scans all blocks
    match = selector(None, [("__name__", "=~", POWER_METRICS_RE), *([("job", "=", job)] if job else [])])
    names: dict[str, set] = {}
    for labels in client.series(match, now_ms - 86_400_000, now_ms):
        names.setdefault(labels.get("__name__", "?"), set()).add(labels.get(node_label))
    return names


__all__ = ["POWER_METRICS_RE", "power_frame", "power_matchers", "power_series", "read_power"]
