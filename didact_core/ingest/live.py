"""Live feeds: the latest CPU counters of every node, one scrape at a time.

Serving (:mod:`didact_core.serve.service`) polls a :class:`LiveFeed` every interval and turns
two consecutive polls into AI-ready features with the same :func:`preprocess` as
training.  One interface::

    feed.poll()           -> raw CPU frame (schema.RAW_CPU_COLUMNS): the latest counters of
                             every (node, cpu), one row each, ``ts`` = when they were scraped
    feed.poll(node_metrics=True)
                          -> the same, and the feed also reads the node-level metrics of
                             the same scrapes (only asked for when the model uses them)
    feed.node_metrics()   -> those node-level metrics (schema.RAW_NODE_COLUMNS: one row per
                             node, ``ts`` = the node's scrape time, equal to its CPU rows'),
                             or None (not asked for at the last poll, or the feed has none)
    feed.power()          -> watts per node (pd.Series indexed by node) of the last poll, or None
    feed.close()

Node-level metrics are cumulative counters (``schema.NODE_COUNTERS``: context switches,
interrupts, disk busy seconds and bytes, page faults, network bytes; summed over
devices, virtual network devices excluded) and gauges (``schema.NODE_GAUGES``: memory
in use, load1), exactly the raw ``node_metrics`` rows a nightly run saves; serving pairs
consecutive polls of them as it does the CPU counters.

Three feeds:

* :class:`SimulatedLiveFeed` (the default) — the simulated cluster's counters at the
  current wall-clock time.  It reuses :class:`~didact_core.ingest.simulator.SimulatedCluster`'s
  deterministic day generation (so the live counters are exactly the ones a nightly run
  saves for that day), cached per node and day in windows of about an hour.  ``speed``
  runs simulated time faster than the wall clock (demos, tests); ``faults`` injects a
  behavioural fault on a node from the moment it is set (an OOD source for demos/tests).
  At UTC midnight a simulated node starts a new day with a new uptime, which
  preprocessing counts as a counter reset: one unusable interval per node and day.
* :class:`PrometheusLiveFeed` — instant queries of ``node_cpu_seconds_total`` (value and
  ``timestamp()``) on the configured Prometheus, through
  :class:`~didact_core.ingest.prometheus.source.PrometheusSource`'s HTTP client (auth, TLS,
  retries); the node is the ``DIDACT_PROMETHEUS_NODE_LABEL`` label.  Node-level
  metrics: two more instant queries of node exporter's metrics in
  :data:`~didact_core.ingest.prometheus.source.NODE_METRICS` (the names the nightly ingest
  reads, summed over devices the same way, virtual network devices excluded).
* :class:`LocalHostFeed` — this machine's ``/proc/stat`` as one node (real counters,
  USER_HZ ticks → seconds, the same numbers node exporter reports); node-level metrics
  from ``/proc/stat`` (ctxt, intr), ``/proc/vmstat`` (pgfault), ``/proc/diskstats``
  (whole disks as node exporter counts them), ``/proc/net/dev`` (non-virtual devices),
  ``/proc/meminfo`` and ``/proc/loadavg``.

A feed whose source is down raises :class:`SourceUnavailableError` naming it.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.schema import CPU_MODES, NODE_COUNTERS, NODE_GAUGES

log = logging.getLogger(__name__)

FEEDS = ("simulator", "prometheus", "localhost")


#: the node-level values of a raw node_metrics row, in column order (counters, then gauges)
NODE_VALUES: tuple[str, ...] = NODE_COUNTERS + NODE_GAUGES


class LiveFeed(abc.ABC):
    """Where serving gets the present counters of every node."""

    name: str = "feed"
    #: the feed's scrape interval in seconds when it knows it (the simulator), else None
    scrape_interval_s: float | None = None
    _last_node_metrics: pd.DataFrame | None = None

    @abc.abstractmethod
    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        """The latest counters of every (node, cpu): one row each (schema.RAW_CPU_COLUMNS).

        With ``node_metrics`` the feed also reads the node-level metrics of the same
        scrapes, for :meth:`node_metrics`; without, it reads nothing more (the fast path)."""

    def node_metrics(self) -> pd.DataFrame | None:
        """The node-level metrics read by the last ``poll(node_metrics=True)``: one row per
        node (schema.RAW_NODE_COLUMNS), ``ts`` = its scrape time; None when the last poll
        did not ask for them or the feed has none."""
        return self._last_node_metrics

    def power(self) -> pd.Series | None:
        """Watts per node at the last :meth:`poll` (index: node), or None if the feed has none."""
        return None

    def close(self) -> None:
        """Release connections (nothing by default)."""

    def describe(self) -> dict:
        return {"feed": self.name}


def _frame(
    ts_ms: np.ndarray, node_codes: np.ndarray, node_names, cpu: np.ndarray, values: np.ndarray
) -> pd.DataFrame:
    """A raw CPU frame from arrays; ``values`` is (rows, len(CPU_MODES)) float64."""
    return pd.DataFrame(
        {
            "ts": pd.Series(np.asarray(ts_ms, dtype=np.int64).view("M8[ms]")).dt.tz_localize("UTC"),
            "node": pd.Categorical.from_codes(np.asarray(node_codes, dtype=np.int32), list(node_names)),
            "cpu": np.asarray(cpu, dtype=np.int16),
            **{m: values[:, j] for j, m in enumerate(CPU_MODES)},
        }
    )


def _node_frame(ts_ms: np.ndarray, node_codes: np.ndarray, node_names, values: np.ndarray) -> pd.DataFrame:
    """A raw node_metrics frame from arrays; ``values`` is (nodes, len(NODE_VALUES)) float64."""
    return pd.DataFrame(
        {
            "ts": pd.Series(np.asarray(ts_ms, dtype=np.int64).view("M8[ms]")).dt.tz_localize("UTC"),
            "node": pd.Categorical.from_codes(np.asarray(node_codes, dtype=np.int32), list(node_names)),
            **{c: np.asarray(values[:, j], dtype=np.float64) for j, c in enumerate(NODE_VALUES)},
        }
    )


# -- simulated -------------------------------------------------------------------------------------


class SimulatedLiveFeed(LiveFeed):
    """The simulated cluster, live: its counters at the current (wall-clock) time.

    ``speed`` > 1 runs simulated time faster (``speed=60``: a simulated minute per
    second), starting at ``start`` (epoch seconds; default: now).  ``faults`` maps node
    names to a fault kind of :data:`didact_core.ingest.simulator.FAULTS` (or a ``{mode:
    fraction}`` dict); from the first poll on, that node's CPUs spend their time as the
    fault does (see :meth:`set_fault`).  ``window_s`` is how much simulated time is
    cached per node (the whole day is generated once per window, then sliced).

    Node-level metrics are the simulator's own (``RawBlock.node_metrics`` of the day, the
    row of the scrape the CPU counters come from); a node with an injected fault kind of
    :data:`~didact_core.ingest.simulator.FAULTS` accrues them at that fault's node-level rates
    (``NODE_SIGNATURES``) from the injection on, memory and load following it too; a
    ``{mode: fraction}`` fault leaves them as the simulator has them.
    """

    name = "simulator"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        cluster=None,
        speed: float = 1.0,
        start: float | None = None,
        clock: Callable[[], float] = time.time,
        faults: Mapping[str, str | Mapping[str, float]] | None = None,
        window_s: float = 3600.0,
    ):
        from didact_core.ingest.simulator import SimulatedCluster

        if cluster is None:
            cluster = SimulatedCluster.from_settings(settings or Settings.from_env())
        if not speed > 0:
            raise DidactError(
                f"simulated feed speed={speed}", "must be a positive factor", "use 1 for real time"
            )
        self.cluster = cluster
        self.scrape_interval_s = float(cluster.interval_s)
        self.speed = float(speed)
        self._clock = clock
        self._wall0 = clock()
        self._sim0 = self._wall0 if start is None else float(start)
        self._step_ms = round(cluster.interval_s * 1000)
        self._window = max(2, math.ceil(window_s / cluster.interval_s))
        self._names = cluster.nodes()
        self._cache: dict[int, tuple] = {}  # node index -> (day, window, arrays)
        self._ahead: dict[int, tuple] = {}  # the same for the next window, generated ahead of time
        self._faults: dict[str, np.ndarray] = {}
        #: node -> the fault kind's name (None for a {mode: fraction} signature)
        self._fault_kinds: dict[str, str | None] = {}
        #: node -> (start ts, counters at the start, last counters, last ts) of an injected fault
        self._fault_state: dict[str, tuple] = {}
        #: node -> (last node-level values, last ts) of an injected fault kind
        self._node_fault_state: dict[str, tuple] = {}
        self._last_power: pd.Series | None = None
        for node, kind in (faults or {}).items():
            self.set_fault(node, kind)

    def describe(self) -> dict:
        return {
            "feed": self.name,
            "nodes": self.cluster.nodes_count,
            "cpus": self.cluster.cpus,
            "interval_s": self.cluster.interval_s,
            "seed": self.cluster.seed,
            "speed": self.speed,
            "faults": sorted(self._faults),
        }

    def now(self) -> float:
        """Simulated time now (epoch seconds)."""
        return self._sim0 + (self._clock() - self._wall0) * self.speed

    def set_fault(self, node: str, kind: str | Mapping[str, float] | None) -> None:
        """Inject (or with ``None`` clear) a behavioural fault on ``node`` from now on."""
        from didact_core.ingest.simulator import FAULTS

        if node not in self._names:
            raise DidactError(
                f"node {node!r}",
                "is not a node of the simulated cluster",
                f"use one of {self._names[0]} … {self._names[-1]}",
            )
        self._node_fault_state.pop(node, None)
        if kind is None:
            self._faults.pop(node, None)
            self._fault_kinds.pop(node, None)
            self._fault_state.pop(node, None)
            return
        if isinstance(kind, str):
            if kind not in FAULTS:
                raise DidactError(
                    f"fault {kind!r}", "is not a simulated fault", f"use one of {sorted(FAULTS)}"
                )
            sig = np.asarray(FAULTS[kind], dtype=np.float64)
        else:
            unknown = [m for m in kind if m not in CPU_MODES]
            if unknown or not sum(kind.values()) > 0:
                raise DidactError(
                    f"fault signature {dict(kind)}",
                    "needs CPU modes with positive fractions",
                    f"modes: {', '.join(CPU_MODES)}",
                )
            sig = np.array([float(kind.get(m, 0.0)) for m in CPU_MODES])
            sig = sig / sig.sum()
        self._faults[node] = sig
        self._fault_kinds[node] = kind if isinstance(kind, str) else None
        self._fault_state.pop(node, None)

    def _day_window(self, i: int, day: dt.date, w: int) -> dict:
        hit = self._cache.get(i)
        if hit is not None and hit[0] == day and hit[1] == w:
            return hit[2]
        ahead = self._ahead.pop(i, None)
        if ahead is not None and ahead[0] == day and ahead[1] == w:
            self._cache[i] = ahead
            return ahead[2]
        arrays = self._generate(i, day, w)
        self._cache[i] = (day, w, arrays)
        return arrays

    def _next_window(self, day: dt.date, w: int) -> tuple[dt.date, int]:
        if (w + 1) * self._window < self.cluster.steps_per_day:
            return day, w + 1
        return day + dt.timedelta(days=1), 0

    def _prefetch(self, day: dt.date, w: int, step: int) -> None:
        """In the second half of a window, generate the next window of a few nodes per poll,
        so that a 1,000-node cluster does not stall one poll per window regenerating all."""
        if step % self._window < self._window // 2:
            return
        nxt = self._next_window(day, w)
        budget = max(1, math.ceil(self.cluster.nodes_count / 16))
        for i in range(self.cluster.nodes_count):
            have = self._ahead.get(i)
            if have is None or have[:2] != nxt:
                self._ahead[i] = (*nxt, self._generate(i, *nxt))
                budget -= 1
                if budget == 0:
                    return

    def _generate(self, i: int, day: dt.date, w: int) -> dict:
        """Node ``i``'s scrapes in window ``w`` of ``day`` (plus the one before), from the simulator."""
        C, M = self.cluster.cpus, len(CPU_MODES)
        d = self.cluster._node(day, i)
        A = len(d["ts"]) // C
        ts = d["ts"][:A]  # the same arrival timestamps for every CPU of the node
        reach = np.maximum.accumulate(ts)  # "arrived by": out-of-order rows count from the later one
        day0 = int(pd.Timestamp(day, tz="UTC").value // 1_000_000)
        lo_ms, hi_ms = day0 + w * self._window * self._step_ms, day0 + (w + 1) * self._window * self._step_ms
        lo = max(0, int(np.searchsorted(reach, lo_ms, side="right")) - 1)
        hi = int(np.searchsorted(reach, hi_ms, side="left"))
        values = d["values"].reshape(M, C, A)[:, :, lo:hi]
        s0 = w * self._window
        # the node-level row of each CPU row's scrape (one per scrape that arrived, same ts)
        nm = d["node_metrics"]
        at = np.minimum(np.searchsorted(nm["ts"], ts[lo:hi]), max(0, len(nm["ts"]) - 1))
        node_values = np.column_stack([nm["values"][at], nm["mem"][at], nm["load1"][at]]).astype(np.float64)
        node_values[nm["ts"][at] != ts[lo:hi]] = np.nan  # (never: every arrived scrape has its row)
        arrays = {
            "ts": ts[lo:hi].copy(),
            "reach": reach[lo:hi].copy(),
            "values": np.ascontiguousarray(values.transpose(2, 1, 0)),  # (rows, cpu, mode)
            "node": node_values,  # (rows, NODE_VALUES)
            "watts": np.asarray(d["watts"][s0 : s0 + self._window], dtype=np.float64).copy(),
            "s0": s0,
        }
        return arrays

    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        t_ms = int(self.now() * 1000)
        day = dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC).date()
        day0 = int(pd.Timestamp(day, tz="UTC").value // 1_000_000)
        step = (t_ms - day0) // self._step_ms
        w = int(step // self._window)
        N, C, M = self.cluster.nodes_count, self.cluster.cpus, len(CPU_MODES)
        ts = np.empty(N, dtype=np.int64)
        values = np.empty((N, C, M), dtype=np.float64)
        watts = np.full(N, np.nan)
        node_values = np.empty((N, len(NODE_VALUES)), dtype=np.float64) if node_metrics else None
        for i in range(N):
            a = self._day_window(i, day, w)
            if len(a["ts"]) == 0:
                raise DidactError(
                    f"simulated node {self._names[i]} on {day}",
                    "has no scrape in the window",
                    "report this: every simulated window holds scrapes",
                )
            j = max(0, int(np.searchsorted(a["reach"], t_ms, side="right")) - 1)
            ts[i] = a["ts"][j]
            values[i] = a["values"][j]
            if node_values is not None:
                node_values[i] = a["node"][j]
            k = int(step) - a["s0"]
            if 0 <= k < len(a["watts"]):
                watts[i] = a["watts"][k]
        self._prefetch(day, w, int(step))
        for node, sig in self._faults.items():
            i = self._names.index(node)
            values[i], watts[i] = self._apply_fault(node, i, sig, int(ts[i]), values[i])
            if node_values is not None:
                node_values[i] = self._apply_node_fault(node, i, sig, int(ts[i]), node_values[i])
        self._last_power = pd.Series(watts, index=pd.Index(self._names, name="node"), name="watts")
        self._last_node_metrics = (
            None if node_values is None else _node_frame(ts, np.arange(N), self._names, node_values)
        )
        return _frame(
            np.repeat(ts, C),
            np.repeat(np.arange(N), C),
            self._names,
            np.tile(np.arange(C), N),
            values.reshape(N * C, M),
        )

    def _apply_fault(self, node: str, i: int, sig: np.ndarray, ts: int, base: np.ndarray):
        """Counters of a faulted node: from the injection on, its seconds accrue by ``sig``."""
        state = self._fault_state.get(node)
        if state is None or ts < state[0]:
            state = (ts, base.copy(), base.copy(), ts)  # start ts, start counters, last counters, last ts
            self._fault_state[node] = state
        t_start, c_start, last, last_ts = state
        if ts != last_ts:
            elapsed = (ts - last_ts) / 1000.0
            noise = np.exp(
                self.cluster.noise
                * np.random.default_rng([self.cluster.seed, ts, i]).standard_normal(sig.shape)
            )
            step = sig * noise
            last = last + elapsed * step / step.sum()
            self._fault_state[node] = (t_start, c_start, last, ts)
        util = 1.0 - float(sig[CPU_MODES.index("idle")] + sig[CPU_MODES.index("iowait")])
        return last, float(self.cluster.power_model(i).watts(np.asarray(util)))

    def _apply_node_fault(self, node: str, i: int, sig: np.ndarray, ts: int, base: np.ndarray) -> np.ndarray:
        """Node-level values of a node with an injected fault kind: its counters accrue at
        the kind's rates (the simulator's noise), memory and load as the kind has them."""
        from didact_core.ingest.simulator import NODE_MEMORY_GB, NODE_SIGNATURES

        kind = self._fault_kinds.get(node)
        if kind is None or kind not in NODE_SIGNATURES:
            return base
        n = len(NODE_COUNTERS)
        state = self._node_fault_state.get(node)
        if state is None or ts < state[1]:
            state = (base[:n].copy(), ts)
        last, last_ts = state
        if ts != last_ts:
            rng = np.random.default_rng([self.cluster.seed, ts, i, 1])
            rates = NODE_SIGNATURES[kind] * np.exp(0.2 * rng.standard_normal(n) - 0.02)
            rates[NODE_COUNTERS.index("disk_io_time")] = min(rates[NODE_COUNTERS.index("disk_io_time")], 1.0)
            last = last + (ts - last_ts) / 1000.0 * rates
        self._node_fault_state[node] = (last, ts)
        out = base.copy()
        out[:n] = last
        out[NODE_VALUES.index("mem_used_bytes")] = NODE_MEMORY_GB[kind] * 1e9
        out[NODE_VALUES.index("load1")] = self.cluster.cpus * (1.0 - float(sig[CPU_MODES.index("idle")]))
        return out

    def power(self) -> pd.Series | None:
        return self._last_power


# -- Prometheus ------------------------------------------------------------------------------------

_PORT_RE = re.compile(r"^(.*?)(?::\d+)?$")


class PrometheusLiveFeed(LiveFeed):
    """``node_cpu_seconds_total`` now, from Prometheus (two instant queries: values and
    their scrape timestamps).  ``source`` is a configured
    :class:`~didact_core.ingest.prometheus.source.PrometheusSource` (its URL, auth, TLS and
    retries); by default one from the environment and ``settings`` with one retry and a
    10 s timeout, so a dead server costs an interval, not minutes."""

    name = "prometheus"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        source=None,
        job: str | None = None,
        metric: str = "node_cpu_seconds_total",
    ):
        from didact_core.ingest.prometheus.source import PrometheusSource

        settings = settings or Settings.from_env()
        self.source = source or PrometheusSource.from_env(
            settings=settings, retries=1, timeout_s=10.0, connect_timeout_s=3.0, backoff_s=0.2
        )
        self.node_label = self.source.node_label
        self.job = job if job is not None else self.source.job
        self.metric = metric

    def describe(self) -> dict:
        return {"feed": self.name, **self.source.describe()}

    def close(self) -> None:
        self.source.close()

    def _selector(self) -> str:
        return f'{self.metric}{{job="{self.job}"}}' if self.job else self.metric

    def _node(self, raw: str) -> str:
        return _PORT_RE.match(raw).group(1) if getattr(self.source, "strip_port", True) else raw

    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        self._last_node_metrics = None
        sel = self._selector()
        at = f"{time.time():.3f}"
        values = self.source.query_json("/api/v1/query", {"query": sel, "time": at}) or {}
        stamps = self.source.query_json("/api/v1/query", {"query": f"timestamp({sel})", "time": at}) or {}
        what = f"Prometheus {self.source.describe().get('url')} query {sel}"
        if values.get("resultType") != "vector" or not values.get("result"):
            raise SourceUnavailableError(
                what,
                "returned no series (nothing scraped in the last 5 minutes?)",
                "check that node exporters are scraped and DIDACT_PROMETHEUS_JOB / _NODE_LABEL are right",
            )
        ts_of = {}
        for s in stamps.get("result", []):
            m = s["metric"]
            ts_of[(m.get(self.node_label), m.get("cpu"), m.get("mode"))] = float(s["value"][1])
        rows: dict[tuple[str, int], dict] = {}
        skipped = 0
        for s in values["result"]:
            m = s["metric"]
            raw_node, cpu, mode = m.get(self.node_label), m.get("cpu"), m.get("mode")
            if raw_node is None or cpu is None or mode not in CPU_MODES:
                skipped += 1
                continue
            digits = re.sub(r"\D", "", cpu)
            if not digits:
                skipped += 1
                continue
            t = ts_of.get((raw_node, cpu, mode), float(s["value"][0]))
            r = rows.setdefault((self._node(raw_node), int(digits)), {"ts": t})
            r["ts"] = max(r["ts"], t)
            r[mode] = float(s["value"][1])
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
        return _frame(
            ts_ms, np.array([code[k[0]] for k in keys]), nodes, np.array([k[1] for k in keys]), vals
        )

    def _poll_node_metrics(self, at: str) -> pd.DataFrame | None:
        """Node exporter's node-level metrics at ``at``: one row per node (its latest scrape),
        the columns the nightly ingest makes of them
        (:meth:`~didact_core.ingest.prometheus.source.PrometheusSource.node_metrics_frame`: summed
        over devices, virtual network devices excluded, memory used = total − available)."""
        from didact_core.ingest.prometheus.source import _VIRTUAL_NET, NODE_METRICS

        job = f'job="{self.job}"' if self.job else ""
        sel = f'{{__name__=~"{"|".join(NODE_METRICS)}"{"," + job if job else ""}}}'
        values = self.source.query_json("/api/v1/query", {"query": sel, "time": at}) or {}
        # timestamp() gives the scrape time only of a plain selector, and drops the metric
        # name: one timestamp() per metric, named by a label of its own, in one query
        stamped = " or ".join(
            f'label_replace(timestamp({name}{{{job}}}), "didact_metric", "{name}", "", "")'
            for name in NODE_METRICS
        )
        stamps = self.source.query_json("/api/v1/query", {"query": stamped, "time": at}) or {}
        ts_of = {}
        for s in stamps.get("result", []):
            m = dict(s["metric"])
            name = m.pop("didact_metric", None)
            ts_of[(name, tuple(sorted(m.items())))] = float(s["value"][1])
        node_col, ts_col, col_col, v_col = [], [], [], []
        for s in values.get("result", []):
            m = dict(s["metric"])
            name = m.pop("__name__", None)
            column = NODE_METRICS.get(name)
            raw_node = m.get(self.node_label)
            if column is None or raw_node is None:
                continue
            if name.startswith("node_network_") and _VIRTUAL_NET.match(m.get("device", "")):
                continue
            t = ts_of.get((name, tuple(sorted(m.items()))), float(s["value"][0]))
            node_col.append(self._node(raw_node))
            ts_col.append(round(t * 1000))
            col_col.append(column)
            v_col.append(float(s["value"][1]))
        if not node_col:
            return None
        long = pd.DataFrame({"node": node_col, "ts": ts_col, "col": col_col, "v": v_col})
        wide = long.pivot_table(index=["node", "ts"], columns="col", values="v", aggfunc="sum")
        if "mem_total" in wide and "mem_available" in wide:
            wide["mem_used_bytes"] = wide["mem_total"] - wide["mem_available"]
        wide = wide.reindex(columns=list(NODE_VALUES)).dropna(how="all").reset_index()
        wide = wide.sort_values(["node", "ts"], kind="stable").drop_duplicates("node", keep="last")
        if wide.empty:
            return None
        nodes = sorted(wide["node"].unique())
        codes = pd.Categorical(wide["node"], categories=nodes).codes
        return _node_frame(
            wide["ts"].to_numpy(np.int64), codes, nodes, wide[list(NODE_VALUES)].to_numpy(np.float64)
        )


# -- this host -------------------------------------------------------------------------------------

#: /proc/stat's per-CPU columns, in order (Linux ≥ 2.6.33); guest time is inside user/nice
_PROC_STAT_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: block devices node exporter's diskstats collector leaves out by default (partitions,
#: ram, loop and floppy devices): what remains are the whole disks the ingest sums
_DISK_EXCLUDE = re.compile(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
#: /proc/diskstats sectors are 512 bytes whatever the device's sector size
_SECTOR_BYTES = 512


class LocalHostFeed(LiveFeed):
    """This machine as one node: ``/proc/stat``'s per-CPU ticks / USER_HZ = CPU seconds.

    ``power_reader`` (a :class:`~didact_core.power.base.SamplingPowerReader`, e.g. RAPL)
    adds the node's watts when given.  Node-level metrics (``poll(node_metrics=True)``)
    come from ``proc`` (default ``/proc``) as node exporter computes them: ``stat``
    (ctxt, intr), ``vmstat`` (pgfault), ``diskstats`` (io time ms → s, sectors × 512 →
    bytes; whole disks), ``net/dev`` (bytes, virtual devices excluded), ``meminfo``
    (MemTotal − MemAvailable) and ``loadavg``; a file that cannot be read leaves its
    columns NaN (those samples are then counted as missing node metrics).
    """

    name = "localhost"

    def __init__(
        self,
        node: str | None = None,
        proc_stat: str | os.PathLike = "/proc/stat",
        clock: Callable[[], float] = time.time,
        power_reader=None,
        proc: str | os.PathLike = "/proc",
    ):
        self.node = node or socket.gethostname()
        self.path = Path(proc_stat)
        self.proc = Path(proc)
        self._clock = clock
        self.user_hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self.power_reader = power_reader
        self._last_power: pd.Series | None = None
        self._warned: set[str] = set()

    def describe(self) -> dict:
        return {"feed": self.name, "node": self.node, "path": str(self.path), "user_hz": self.user_hz}

    def _read(self, name: str) -> str | None:
        path = self.proc / name
        try:
            return path.read_text()
        except OSError as e:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s cannot be read (%s): its node-level metrics are NaN", path, e.strerror or e)
            return None

    def read_node_metrics(self, stat_text: str) -> np.ndarray:
        """This node's :data:`NODE_VALUES` now (NaN where a file or line is missing)."""
        v = dict.fromkeys(NODE_VALUES, np.nan)
        for line in stat_text.splitlines():
            key, _, rest = line.partition(" ")
            if key in ("ctxt", "intr") and rest.split():
                v[key] = float(rest.split()[0])  # intr: the total, then per-IRQ counts
        text = self._read("vmstat")
        if text is not None:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "pgfault":
                    v["pgfault"] = float(parts[1])
        text = self._read("diskstats")
        if text is not None:
            io = rd = wr = 0.0
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 14 or _DISK_EXCLUDE.match(parts[2]):
                    continue
                rd += float(parts[5]) * _SECTOR_BYTES
                wr += float(parts[9]) * _SECTOR_BYTES
                io += float(parts[12]) / 1000.0
            v["disk_io_time"], v["disk_read_bytes"], v["disk_written_bytes"] = io, rd, wr
        text = self._read("net/dev")
        if text is not None:
            from didact_core.ingest.prometheus.source import _VIRTUAL_NET

            rx = tx = 0.0
            for line in text.splitlines()[2:]:
                dev, sep, rest = line.partition(":")
                fields = rest.split()
                if not sep or len(fields) < 9 or _VIRTUAL_NET.match(dev.strip()):
                    continue
                rx += float(fields[0])
                tx += float(fields[8])
            v["net_rx_bytes"], v["net_tx_bytes"] = rx, tx
        text = self._read("meminfo")
        if text is not None:
            mem = {}
            for line in text.splitlines():
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable") and rest.split():
                    mem[key] = float(rest.split()[0]) * 1024.0  # kB
            if len(mem) == 2:
                v["mem_used_bytes"] = mem["MemTotal"] - mem["MemAvailable"]
        text = self._read("loadavg")
        if text is not None and text.split():
            v["load1"] = float(text.split()[0])
        return np.array([v[c] for c in NODE_VALUES], dtype=np.float64)

    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        self._last_node_metrics = None
        try:
            text = self.path.read_text()
        except OSError as e:
            raise SourceUnavailableError(
                f"{self.path}",
                f"cannot be read ({e.strerror or e})",
                "run on Linux with /proc mounted, or use another feed",
            ) from None
        now_ms = int(self._clock() * 1000)
        cpus, vals = [], []
        for line in text.splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            try:
                cpu = int(parts[0][3:])
                ticks = [float(x) for x in parts[1 : 1 + len(_PROC_STAT_MODES)]]
            except ValueError:
                continue
            ticks += [0.0] * (len(_PROC_STAT_MODES) - len(ticks))  # very old kernels lack steal
            by_mode = dict(zip(_PROC_STAT_MODES, ticks))
            cpus.append(cpu)
            vals.append([by_mode[m] / self.user_hz for m in CPU_MODES])
        if not cpus:
            raise SourceUnavailableError(
                f"{self.path}",
                "has no per-CPU lines (cpu0, cpu1, …)",
                "point LocalHostFeed at a Linux /proc/stat",
            )
        if self.power_reader is not None:
            try:
                w = float(self.power_reader.sample())
            except SourceUnavailableError as e:
                log.warning("power of %s unavailable: %s", self.node, e)
                w = float("nan")
            self._last_power = pd.Series([w], index=pd.Index([self.node], name="node"), name="watts")
        if node_metrics:
            nv = self.read_node_metrics(text)
            self._last_node_metrics = _node_frame(np.array([now_ms]), np.zeros(1), [self.node], nv[None, :])
        n = len(cpus)
        return _frame(np.full(n, now_ms), np.zeros(n), [self.node], np.array(cpus), np.array(vals))

    def power(self) -> pd.Series | None:
        return self._last_power


def make_feed(kind: str | None, settings: Settings, **kwargs) -> LiveFeed:
    """The feed named ``kind`` (``None``: ``prometheus`` if the settings' source is, else the simulator)."""
    kind = kind or ("prometheus" if settings.source == "prometheus" else "simulator")
    if kind == "simulator":
        return SimulatedLiveFeed(settings, **kwargs)
    if kind == "prometheus":
        return PrometheusLiveFeed(settings, **kwargs)
    if kind == "localhost":
        return LocalHostFeed(**kwargs)
    raise DidactError(f"live feed {kind!r}", "is not a known feed", f"use one of {', '.join(FEEDS)}")


__all__ = [
    "FEEDS",
    "NODE_VALUES",
    "LiveFeed",
    "LocalHostFeed",
    "PrometheusLiveFeed",
    "SimulatedLiveFeed",
    "make_feed",
]
