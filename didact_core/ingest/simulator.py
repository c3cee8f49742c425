"""The simulated cluster: didact's embedded default telemetry source.

A scheduler places job flavours of the reference testbed on nodes, one job per node at
a time, with realistic durations.  Each flavour has a CPU-mode signature (which CPU
threads it keeps busy and how their time splits between idle, iowait, system, user,
...); every scrape interval draws noise around it.  The output is cumulative counters
exactly like node exporter's ``node_cpu_seconds_total{cpu,mode}``, plus per-node power
(idle baseline + load-dependent part), the true job label per node-time, and two kinds
of injected faults:

* **data faults** that preprocessing must handle and count — node reboots (counter
  reset), missed scrapes, duplicated scrapes, out-of-order scrapes, NaN counters and
  clock skew.  Their truth is in ``RawBlock.meta["data_faults"]``.
* **behavioural faults** (CPU hog, IO stall, steal storm, softirq storm), labelled in
  ``RawBlock.faults``: the anomalies a detector should flag.

Cluster-level truth (``cluster``: :class:`~didact_core.ingest.sim_cluster.ClusterRates`, off
unless given; :meth:`SimulatedCluster.from_settings` gives the ``DIDACT_SIM_*`` rates): nodes
sit in racks (``topology``, default ``nodes_per_rack`` a rack), multi-node jobs span several
nodes with shared timing, some have a straggler, and filesystem stalls, rack events and
scheduler storms hit many nodes at once — on clusters of two racks or more.  Schemas and
truth frames: :mod:`didact_core.ingest.sim_cluster`; :meth:`SimulatedCluster.cluster_truth`.

Same ``(seed, day)`` → identical data, whatever the block size: each node draws from
its own generator seeded by ``(seed, day, node)``, the cluster-level events from one
seeded by ``(seed, day, "cluster")``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from didact_core.errors import DidactError
from didact_core.schema import CPU_MODES, NODE_COUNTERS
from didact_core.ingest.base import RawBlock, TelemetrySource, day_bounds
from didact_core.ingest.sim_cluster import ClusterPlan, ClusterRates, plan_day
from didact_core.ingest.sim_signatures import (  # noqa: F401 (re-exported: the simulator's face)
    FAULTS,
    IDLE_SIGNATURE,
    NODE_MEMORY_GB,
    NODE_SIGNATURES,
    SIGNATURES,
    FlavourSignature,
)
from didact_core.ingest.topology import Topology, load_topology

log = logging.getLogger(__name__)

_M = {m: i for i, m in enumerate(CPU_MODES)}


@dataclass(frozen=True)
class DataFaultRates:
    """Rates of data faults, per node-scrape (reboots: per node-day)."""

    reboot_per_node_day: float = 0.05
    missed_scrape: float = 5e-4
    duplicate: float = 2e-4
    out_of_order: float = 2e-4
    nan: float = 1e-4
    clock_skew: float = 1e-4

    @classmethod
    def none(cls) -> "DataFaultRates":
        return cls(0, 0, 0, 0, 0, 0)


#: The order data-fault kinds claim positions in a node's day.
_DATA_FAULT_KINDS = ("reboot", "missed", "duplicate", "out_of_order", "nan", "clock_skew")
#: steps between two fault slots (an event touches its step -1 .. +2)
_SLOT = 6
#: fraction of an interval a clock-skewed scrape's timestamp is shifted by
SKEW_SHIFT = 0.4


@dataclass
class NodePower:
    idle_watts: float
    dynamic_watts: float
    noise_watts: float = 2.0

    def watts(self, utilisation: np.ndarray) -> np.ndarray:
        """Expected watts at the given utilisation (0..1), without noise."""
        return self.idle_watts + self.dynamic_watts * utilisation


@dataclass
class SimulatedCluster(TelemetrySource):
    """A deterministic simulated cluster (see module docstring)."""

    nodes_count: int = 16
    cpus: int = 8
    interval_s: float = 15.0
    seed: int = 0
    #: labelled behavioural faults per node-hour
    fault_rate: float = 0.05
    data_faults: DataFaultRates = field(default_factory=DataFaultRates)
    #: relative noise (log-normal sigma) of a CPU's mode split per interval
    noise: float = 0.25
    flavours: tuple = tuple(SIGNATURES)
    name: str = "simulator"
    #: cluster-level events (none unless given) and the racks: ``topology``, or
    #: ``nodes_per_rack`` nodes a rack (rack-00, rack-01, ...)
    cluster: ClusterRates = field(default_factory=ClusterRates.none)
    nodes_per_rack: int = 8
    topology: Topology | None = None
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.nodes_count < 1 or self.cpus < 1:
            raise DidactError(
                f"simulated cluster nodes={self.nodes_count} cpus={self.cpus}",
                "needs at least one node and one CPU thread",
            )
        if not (0 < self.interval_s <= 3600) or (86400 / self.interval_s) % 1:
            raise DidactError(
                f"scrape interval {self.interval_s} s",
                "must divide a day into whole scrapes and be at most an hour",
                "use e.g. 1, 5, 15, 30 or 60 seconds",
            )
        unknown = [f for f in self.flavours if f not in SIGNATURES]
        if unknown:
            raise DidactError(
                f"flavours {unknown}", "are not known job flavours", f"pick from {sorted(SIGNATURES)}"
            )
        if self.fault_rate < 0:
            raise DidactError(f"fault_rate={self.fault_rate}", "must not be negative")
        self.cluster.check()
        if self.topology is None:
            self.topology = Topology.per_rack(self.nodes(), self.nodes_per_rack, source="simulator")
        else:
            self.topology.require_only(self.nodes())
            self.topology = self.topology.place(self.nodes(), what="the simulated cluster")

    @classmethod
    def from_settings(cls, settings) -> "SimulatedCluster":
        return cls(
            nodes_count=settings.nodes,
            cpus=settings.cpus,
            interval_s=settings.interval_s,
            seed=settings.seed,
            fault_rate=settings.fault_rate,
            cluster=ClusterRates.from_settings(settings),
            nodes_per_rack=settings.sim_nodes_per_rack,
            topology=load_topology(settings.topology, [cls.node_name(i) for i in range(settings.nodes)],
                                   settings.sim_nodes_per_rack, exact=True),  # fmt: skip
        )

    # -- TelemetrySource ---------------------------------------------------------
    def nodes(self, day: dt.date | None = None) -> list[str]:
        return [self.node_name(i) for i in range(self.nodes_count)]

    @staticmethod
    def node_name(i: int) -> str:
        return f"node{i:04d}"

    @property
    def steps_per_day(self) -> int:
        return int(round(86400 / self.interval_s))

    def describe(self) -> dict:
        return {
            "source": self.name,
            "nodes": self.nodes_count,
            "cpus": self.cpus,
            "interval_s": self.interval_s,
            "seed": self.seed,
            "fault_rate": self.fault_rate,
            "data_fault_rates": asdict(self.data_faults),
            # only when on, so that the data version of a cluster without them stays as it was
            **({"cluster_rates": asdict(self.cluster), "racks": len(self.topology.racks),
                "topology": self.topology.source, "topology_digest": self.topology.digest()}
               if self.cluster.any else {}),  # fmt: skip
        }

    def cluster_plan(self, day: dt.date) -> ClusterPlan:
        """The day's cluster-level events (drawn once per day; a few days kept)."""
        if day not in self._plans:
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            names = self.nodes()
            racks = [self.topology.rack_of[n] for n in names]
            self._plans[day] = plan_day(self.seed, day, names, racks, self.interval_s, self.cluster)
        return self._plans[day]

    def cluster_truth(self, day: dt.date) -> dict[str, pd.DataFrame]:
        """The whole day's cluster-level truth frames (:mod:`~didact_core.ingest.sim_cluster`),
        without generating any counters."""
        return self.cluster_plan(day).frames()

    def power_model(self, node_index: int) -> NodePower:
        """The node's true power model (idle baseline + dynamic part × utilisation)."""
        rng = np.random.default_rng([self.seed, 7, node_index])
        return NodePower(idle_watts=float(rng.uniform(90, 140)), dynamic_watts=float(rng.uniform(150, 300)))

    def iter_blocks(self, day: dt.date, nodes_per_block: int = 64) -> Iterator[RawBlock]:
        for idx in self.plan_blocks(day, nodes_per_block):
            yield self._block(day, idx)

    def plan_blocks(self, day: dt.date, nodes_per_block: int = 64) -> list[range]:
        if nodes_per_block < 1:
            raise DidactError(f"nodes_per_block={nodes_per_block}", "must be at least 1")
        return [
            range(first, min(first + nodes_per_block, self.nodes_count))
            for first in range(0, self.nodes_count, nodes_per_block)
        ]

    def fetch_block(self, day: dt.date, plan_item: range) -> RawBlock:
        return self._block(day, plan_item)

    def fetch_day(self, day: dt.date) -> RawBlock:
        """The whole day as one block (small clusters, tests)."""
        return self._block(day, range(self.nodes_count))

    # -- generation --------------------------------------------------------------
    def _block(self, day: dt.date, node_indices) -> RawBlock:
        parts = [self._node(day, i) for i in node_indices]
        names = [p["node"] for p in parts]
        rows = np.array([len(p["ts"]) for p in parts])
        ts = np.concatenate([p["ts"] for p in parts])
        cpu = pd.DataFrame(
            {
                "ts": _utc(ts),
                "node": pd.Categorical.from_codes(np.repeat(np.arange(len(parts), dtype=np.int32), rows), names),
                "cpu": np.concatenate([p["cpu"] for p in parts]),
                **{m: np.concatenate([p["values"][j] for p in parts]) for j, m in enumerate(CPU_MODES)},
            }
        )
        power_ts = np.concatenate([p["power_ts"] for p in parts])
        power = pd.DataFrame(
            {
                "ts": _utc(power_ts),
                "node": pd.Categorical.from_codes(
                    np.repeat(np.arange(len(parts), dtype=np.int32), [len(p["power_ts"]) for p in parts]), names
                ),
                "source": "simulator",
                "watts": np.concatenate([p["watts"] for p in parts]),
            }
        )
        nm_rows = [len(p["node_metrics"]["ts"]) for p in parts]
        node_metrics = pd.DataFrame(
            {
                "ts": _utc(np.concatenate([p["node_metrics"]["ts"] for p in parts])),
                "node": pd.Categorical.from_codes(np.repeat(np.arange(len(parts), dtype=np.int32), nm_rows), names),
                **{c: np.concatenate([p["node_metrics"]["values"][:, j] for p in parts])
                   for j, c in enumerate(NODE_COUNTERS)},
                "mem_used_bytes": np.concatenate([p["node_metrics"]["mem"] for p in parts]),
                "load1": np.concatenate([p["node_metrics"]["load1"] for p in parts]),
            }
        )  # fmt: skip
        totals = {k: sum(p["data_faults"][k] for p in parts) for k in _DATA_FAULT_KINDS}
        plan = self.cluster_plan(day)
        truth = plan.frames(names) if plan.active else {}
        return RawBlock(
            cpu=cpu,
            power=power,
            labels=_intervals([r for p in parts for r in p["labels"]], "label"),
            faults=_intervals([r for p in parts for r in p["faults"]], "fault"),
            node_metrics=node_metrics,
            meta={"data_faults": totals, "nodes": len(parts), **truth},
        )

    def _schedule(self, rng: np.random.Generator, T: int) -> list[tuple[int, int, str]]:
        """Back-to-back jobs covering the day: (start_step, end_step, flavour)."""
        names = list(self.flavours)
        weights = np.array([SIGNATURES[n].weight for n in names])
        weights = weights / weights.sum()
        jobs, t = [], 0
        while t < T:
            f = SIGNATURES[names[rng.choice(len(names), p=weights)]]
            minutes = f.median_minutes * float(np.exp(f.sigma * rng.standard_normal()))
            steps = max(2, int(round(minutes * 60 / self.interval_s)))
            jobs.append((t, min(T, t + steps), f.name))
            t += steps
        return jobs

    def _node(self, day: dt.date, i: int) -> dict:
        """One node's day as arrays; counters laid out (mode, cpu, step).  The draws from
        the node's generator happen in a fixed order (the steps below), so a day's data
        are the same whatever else changes."""
        T, C, M = self.steps_per_day, self.cpus, len(CPU_MODES)
        name = self.node_name(i)
        rng = np.random.default_rng([self.seed, day.toordinal(), i])
        step_ms = int(round(self.interval_s * 1000))
        ts0 = day_bounds(day)[0].value // 1_000_000  # ms since epoch

        jobs = self._schedule(rng, T)
        mean = self._job_means(rng, jobs, T)
        rates, mem = _job_node_rates(rng, jobs, T)
        plan = self.cluster_plan(day)
        if plan.touches(i):  # multi-node jobs, stragglers, incidents (labelled faults override them)
            jobs = plan.apply_node(i, jobs, mean, rates, mem)
        faults = [(name, ts0 + s * step_ms, ts0 + e * step_ms, kind)
                  for s, e, kind in self._behavioural_faults(rng, T, mean, rates)]  # fmt: skip
        frac = self._noisy_fractions(rng, mean)

        # node counters: noisy rates × interval, accumulated from an uptime offset; gauges
        rates *= np.exp(0.2 * rng.standard_normal(rates.shape) - 0.02)
        io = NODE_COUNTERS.index("disk_io_time")
        rates[:, io] = np.clip(rates[:, io], 0.0, 1.0)  # a disk is busy at most 100 % of the time
        node_counters = np.cumsum(rates * self.interval_s, axis=0) + rng.uniform(1e6, 1e9, len(NODE_COUNTERS))
        busy = (1.0 - frac[_M["idle"]]).sum(axis=0, dtype=np.float64)  # runnable + blocked on IO
        load1 = _ema(busy, 1.0 - np.exp(-self.interval_s / 60.0))
        mem_bytes = mem * 1e9 * (1 + 0.01 * rng.standard_normal(T))

        # power from true utilisation (busy = neither idle nor waiting on IO)
        util = 1.0 - (frac[_M["idle"]] + frac[_M["iowait"]]).mean(axis=0, dtype=np.float64)
        pm = self.power_model(i)
        watts = pm.watts(util) + pm.noise_watts * rng.standard_normal(T)
        plan.apply_power(i, watts)

        # cumulative counters: seconds per interval (scrape-timing jitter), uptime offset
        jitter = 1 + 0.005 * rng.standard_normal((1, C, T))
        counters = frac.astype(np.float64)
        counters *= self.interval_s * jitter
        np.cumsum(counters, axis=2, out=counters)
        counters += (rng.uniform(1, 60) * 86400 * IDLE_SIGNATURE)[:, None, None]
        ts = ts0 + np.arange(T, dtype=np.int64) * step_ms

        at, counts = self._data_fault_steps(rng, T)
        keep, arrival = self._apply_data_faults(rng, at, ts, counters, node_counters, rates, step_ms)
        A = len(arrival)
        values = counters[:, :, arrival].reshape(M, C * A)
        # node-level rows: one per scrape that arrived (duplicates and reordering are the CPU rows' business)
        nm_steps = np.flatnonzero(keep)
        node_metrics = {"ts": ts[nm_steps], "values": node_counters[nm_steps], "mem": mem_bytes[nm_steps],
                        "load1": load1[nm_steps]}  # fmt: skip
        return {
            "node": name,
            "node_metrics": node_metrics,
            "ts": np.tile(ts[arrival], C),
            "cpu": np.repeat(np.arange(C, dtype=np.int16), A),
            "values": values,
            "power_ts": ts0 + np.arange(T, dtype=np.int64) * step_ms,
            "watts": watts,
            "labels": [(name, ts0 + s * step_ms, ts0 + e * step_ms, f) for s, e, f in jobs],
            "faults": faults,
            "data_faults": counts,
        }

    def _job_means(self, rng: np.random.Generator, jobs: list, T: int) -> np.ndarray:
        """Mean signature per (mode, cpu, step): the job's on its busy threads, idle elsewhere."""
        C, M = self.cpus, len(CPU_MODES)
        mean = np.empty((M, C, T), dtype=np.float32)
        mean[:] = IDLE_SIGNATURE.astype(np.float32)[:, None, None]
        for start, end, flav in jobs:
            f = SIGNATURES[flav]
            n = C if f.threads < 0 else min(f.threads, C)
            if n == 0:
                continue
            busy = np.sort(rng.choice(C, size=n, replace=False))
            sig = np.asarray(f.signature) * np.exp(0.1 * rng.standard_normal(M))  # this run's variant
            mean[:, busy, start:end] = (sig / sig.sum()).astype(np.float32)[:, None, None]
        return mean

    def _behavioural_faults(self, rng: np.random.Generator, T: int, mean: np.ndarray, rates: np.ndarray) -> list:
        """Labelled behavioural faults override the job on every thread (and its node-level
        rates), in place; returns their (start step, end step, kind)."""
        out = []
        kinds = list(FAULTS)
        for _ in range(rng.poisson(self.fault_rate * 24)):
            kind = kinds[rng.integers(len(kinds))]
            length = max(2, int(rng.uniform(5, 30) * 60 / self.interval_s))
            start = int(rng.integers(0, max(1, T - length)))
            mean[:, :, start : start + length] = FAULTS[kind].astype(np.float32)[:, None, None]
            rates[start : start + length] = NODE_SIGNATURES[kind]
            out.append((start, start + length, kind))
        return out

    def _noisy_fractions(self, rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
        """Per-interval noise around the mean, renormalised over modes (``mean`` is reused)."""
        noise = rng.standard_normal(mean.shape, dtype=np.float32)
        noise *= np.float32(self.noise)
        noise -= np.float32(self.noise**2 / 2)
        np.exp(noise, out=noise)
        frac = mean
        frac *= noise
        del noise
        frac /= frac.sum(axis=0, keepdims=True)
        return frac

    def _data_fault_steps(self, rng: np.random.Generator, T: int) -> tuple[dict[str, list[int]], dict[str, int]]:
        """Steps of each data-fault kind, at distinct slots away from the day's edges."""
        r = self.data_faults
        want = {
            "reboot": rng.poisson(r.reboot_per_node_day),
            "missed": rng.poisson(r.missed_scrape * T),
            "duplicate": rng.poisson(r.duplicate * T),
            "out_of_order": rng.poisson(r.out_of_order * T),
            "nan": rng.poisson(r.nan * T),
            "clock_skew": rng.poisson(r.clock_skew * T),
        }
        n_slots = (T - 8) // _SLOT
        slots = iter(4 + 2 + _SLOT * s for s in rng.permutation(n_slots))
        counts = {k: 0 for k in _DATA_FAULT_KINDS}
        at: dict[str, list[int]] = {}
        for kind in _DATA_FAULT_KINDS:
            n = min(want[kind], n_slots - sum(counts.values()))
            at[kind] = sorted(next(slots) for _ in range(n))
            counts[kind] = n
        return at, counts

    def _apply_data_faults(self, rng, at, ts, counters, node_counters, rates, step_ms) -> tuple[np.ndarray, np.ndarray]:
        """Apply the data faults in place; returns (steps that arrived, CPU rows' step
        order: ``order`` with its swaps, a duplicate right after itself, missed ones out)."""
        T = len(ts)
        M, C = counters.shape[:2]
        keep = np.ones(T, dtype=bool)
        order = np.arange(T)
        repeats = np.ones(T, dtype=np.int64)
        for p in at["reboot"]:  # ascending: counters restart from zero, step p holds its own seconds
            counters[:, :, p:] -= counters[:, :, p - 1 : p]
            node_counters[p:] -= node_counters[p - 1]
        keep[at["missed"]] = False
        repeats[at["duplicate"]] += 1
        for p in at["out_of_order"]:
            order[p], order[p + 1] = order[p + 1], order[p]
        for p in at["nan"]:
            counters[rng.integers(M), rng.integers(C), p] = np.nan
        ts[at["clock_skew"]] += int(SKEW_SHIFT * step_ms)
        # a skewed scrape's node-level counters are read at its (late) timestamp: without
        # this the next interval held a whole interval's disk busy time in 0.6 of one, a
        # busy rate up to 1.67 s/s that no disk can have (the CPU rows keep the skew as a
        # data fault preprocessing counts; slots are spaced, so p + 1 is an ordinary step)
        for p in at["clock_skew"]:
            node_counters[p] += SKEW_SHIFT * self.interval_s * rates[p + 1]
        arrival = np.repeat(order, repeats[order])
        return keep, arrival[keep[arrival]]


def _job_node_rates(rng: np.random.Generator, jobs: list, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Node-level rates and memory in use (GB) per step: each job's signature, varied per run."""
    rates = np.empty((T, len(NODE_COUNTERS)), dtype=np.float64)
    mem = np.empty(T, dtype=np.float64)
    for start, end, flav in jobs:
        k = np.exp(0.15 * rng.standard_normal(len(NODE_COUNTERS)))
        rates[start:end] = NODE_SIGNATURES[flav] * k
        mem[start:end] = NODE_MEMORY_GB[flav] * float(np.exp(0.1 * rng.standard_normal()))
    return rates, mem


def _ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average (the kernel's load average is one), started at x[0]."""
    from scipy.signal import lfilter  # lazy: scipy.signal takes ~0.5 s to import; only generation needs it

    y, _ = lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1.0 - alpha) * x[0]])
    return y


def _utc(ms: np.ndarray) -> pd.Series:
    """int64 epoch milliseconds → a UTC timestamp column."""
    return pd.Series(ms.view("M8[ms]")).dt.tz_localize("UTC")


def _intervals(rows: list, what: str) -> pd.DataFrame:
    """(node, start_ms, end_ms, name) rows → a labels/faults frame."""
    df = pd.DataFrame(rows, columns=["node", "start", "end", what])
    for col in ("start", "end"):
        df[col] = _utc(df[col].to_numpy(dtype=np.int64))
    return df


def expected_cleaning(data_faults: dict, cpus: int) -> dict:
    """What preprocessing should count for the simulator's injected data faults.

    One reboot resets every CPU's counters; missed, duplicated, out-of-order and skewed
    scrapes touch every CPU of the node; a NaN touches one (cpu, mode) cell, whose row
    is dropped, which leaves a gap.  A skewed timestamp distorts two intervals.
    """
    return {
        "counter_resets": data_faults.get("reboot", 0) * cpus,
        "gaps": data_faults.get("missed", 0) * cpus + data_faults.get("nan", 0),
        "duplicates": data_faults.get("duplicate", 0) * cpus,
        "out_of_order": data_faults.get("out_of_order", 0) * cpus,
        "nan_rows": data_faults.get("nan", 0),
        "clock_skew": data_faults.get("clock_skew", 0) * 2 * cpus,
    }


def cluster_truth(settings, day: dt.date, seed: int | None = None) -> dict[str, pd.DataFrame]:
    """The simulated cluster's whole-day cluster-level truth for ``settings`` (``seed`` instead
    of its seed), without generating any counters (:mod:`~didact_core.ingest.sim_cluster`)."""
    sim = SimulatedCluster.from_settings(settings if seed is None else settings.replace(seed=seed))
    return sim.cluster_truth(day)
