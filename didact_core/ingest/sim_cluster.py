"""Cluster-level truth of the simulated cluster: multi-node jobs, stragglers and incidents.

A day's cluster-level events are drawn once, by :func:`plan_day`, from their own generator
seeded by ``(seed, day, CLUSTER_TAG)``, apart from the nodes' generators ``(seed, day,
node)``; each node then applies its share of the plan to its own arrays (with a generator of
its own, ``(seed, day, node, CLUSTER_TAG)``).  So the same ``(seed, day)`` gives the same data
whatever the block size, and with the rates at zero — or on a cluster of one rack — every
node's data are exactly what the simulator made before this module existed.

What is simulated (rates: :class:`ClusterRates`, settings ``DIDACT_SIM_*``):

* **multi-node jobs** (``mpi_2`` on 2 nodes, ``mpi_16`` on ``min(16, nodes)``), placed on free
  nodes with shared timing and a shared CPU-mode split; ``multinode_share`` of the node time.
  They replace the node's own job in their window, in the job labels too.
* **stragglers**: in a job of 3 nodes or more, with probability ``straggler_rate``, one node
  runs slower than its peers from some point to the job's end: less user and system time,
  more iowait and idle, its disk busier, less network traffic.
* **incidents** (per day rates; the incidents of a day do not overlap).  Each has a severity
  drawn from a range that reaches faint ones, and each node it touches an intensity (its
  severity × 0.4–1): the share of its CPUs' busy time (user, nice, system; a little of the idle
  time for some kinds) that moves to the kind's modes (:data:`INCIDENT_TAKE`,
  :data:`INCIDENT_SIGNATURES`) — so a busy node shows it, an idle one hardly, and a faint
  incident leaves every node inside its normal range:
  ``fs_stall`` — busy time turns into iowait on 20–60 % of the nodes of every rack (severity
  0.1–0.6, a linear onset over ~15 % of the window), 3–20 minutes, disk and network traffic
  drop; ``rack_network`` — 50–100 % of the nodes of one rack: busy time turns into softirq and
  idle, network traffic drops, 5–30 min (severity 0.15–0.7); ``rack_power`` — 50–100 % of one
  rack's nodes: busy time falls idle and the power drops by up to :data:`POWER_DROP` × the
  intensity, 5–30 min (severity 0.15–0.7); ``sched_storm`` — 50–90 % of the nodes of every rack
  at once: a burst of system time (from busy and some idle time), context switches and page
  faults, 2–6 min (severity 0.1–0.6).  Labelled behavioural faults still override all this
  in their own windows.

The truth frames (:meth:`ClusterPlan.frames`; times are UTC timestamps, ``end`` exclusive):

* ``cluster_incidents``: ``incident_id, kind, start, end, racks, nodes, n_nodes, severity`` —
  one row per incident, ``racks``/``nodes`` sorted lists of names;
* ``incident_nodes``: ``incident_id, kind, node, rack, start, end, intensity`` — one row per
  (incident, node); intensity 0..1 is the share of the node's busy CPU time the incident takes;
* ``job_members``: ``job_id, flavour, node, rack, rank, n_nodes, start, end`` — one row per
  (multi-node job, node); all members share ``start``/``end``;
* ``stragglers``: ``job_id, flavour, node, rack, start, end, severity`` — the straggling window
  (inside the job's), severity 0..1 the share of user/system time it lost;
* ``topology``: ``node, rack``.

In a simulator block's ``RawBlock.meta`` (only when it draws events: rates given, two racks or
more; frames may still be empty on a quiet day): ``cluster_incidents`` is
the whole day's (the same frame in every block); the other four hold the block's nodes' rows,
so concatenating the blocks gives the day's.  ``SimulatedCluster.cluster_truth(day)`` gives the
whole day's frames without generating any counters.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from didact_core.errors import DidactError
from didact_core.ingest.base import day_bounds
from didact_core.ingest.sim_signatures import IDLE_SIGNATURE, NODE_MEMORY_GB, NODE_SIGNATURES, SIGNATURES, sig
from didact_core.schema import CPU_MODES, NODE_COUNTERS

__all__ = ["CLUSTER_TAG", "INCIDENT_KINDS", "INCIDENT_SIGNATURES", "INCIDENT_TAKE", "MIN_RACKS", "TRUTH_COLUMNS",
           "ClusterPlan", "ClusterRates", "plan_day", "splice"]  # fmt: skip

#: the cluster generator's stream ("clus"), apart from the nodes' ([seed, day, node])
CLUSTER_TAG = 0x636C7573
#: cluster-level events need this many racks (a one-rack cluster's data stay as they were)
MIN_RACKS = 2
#: multi-node flavours and their node count (capped at the cluster's size)
MULTINODE = {"mpi_2": 2, "mpi_16": 16}
#: a job needs this many nodes to have a straggler (with two, which one is "unlike its peers"?)
MIN_STRAGGLER_JOB = 3
INCIDENT_KINDS = ("fs_stall", "rack_network", "rack_power", "sched_storm")
#: where the CPU time an incident takes goes (over CPU_MODES, sums to 1)
INCIDENT_SIGNATURES = {
    "fs_stall": sig(iowait=0.9, system=0.1),
    "rack_network": sig(idle=0.55, softirq=0.35, system=0.10),
    "rack_power": sig(idle=1.0),  # jobs stall: busy CPUs fall idle
    "sched_storm": sig(irq=0.07, softirq=0.08, system=0.85),
}


def _take(**share: float) -> np.ndarray:
    v = np.zeros(len(CPU_MODES))
    for mode, x in share.items():
        v[CPU_MODES.index(mode)] = x
    return v


#: the share of each CPU mode's time an incident takes at full intensity (its mix weight): busy
#: time mostly; a stalled filesystem or network barely touches an idle CPU
INCIDENT_TAKE = {
    "fs_stall": _take(user=1.0, nice=1.0, system=1.0, irq=0.5, softirq=0.5, idle=0.05),
    "rack_network": _take(user=1.0, nice=1.0, system=1.0, idle=0.03),
    "rack_power": _take(user=1.0, nice=1.0, system=1.0, irq=0.5, softirq=0.5),
    "sched_storm": _take(user=0.6, nice=0.6, idle=0.25, iowait=0.25),
}
_N = {c: i for i, c in enumerate(NODE_COUNTERS)}


def _factors(**f: float) -> np.ndarray:
    v = np.ones(len(NODE_COUNTERS))
    for c, x in f.items():
        v[_N[c]] = x
    return v


#: node-level rate factors of each incident kind at full intensity (NODE_COUNTERS order)
INCIDENT_NODE_FACTORS = {
    "fs_stall": _factors(ctxt=0.5, disk_read_bytes=0.3, disk_written_bytes=0.3, net_rx_bytes=0.1, net_tx_bytes=0.1),
    "rack_network": _factors(intr=3.0, net_rx_bytes=0.05, net_tx_bytes=0.05),
    "rack_power": _factors(ctxt=0.6, intr=0.6, pgfault=0.6, net_rx_bytes=0.6, net_tx_bytes=0.6),
    "sched_storm": _factors(ctxt=6.0, intr=2.0, pgfault=5.0),
}
#: share of a node's power a rack power event removes at full intensity
POWER_DROP = 0.35
#: (minutes low, high) of each incident kind, and of its onset ramp as a share of the window
_LENGTH_MIN = {"fs_stall": (3, 20), "rack_network": (5, 30), "rack_power": (5, 30), "sched_storm": (2, 6)}
_RAMP = {"fs_stall": 0.15, "rack_network": 0.0, "rack_power": 0.0, "sched_storm": 0.0}
#: (low, high) of each kind's severity, and of the share of a rack's nodes it touches (every rack
#: for fs stalls and scheduler storms, one rack for rack events)
_SEVERITY = {"fs_stall": (0.1, 0.6), "rack_network": (0.15, 0.7), "rack_power": (0.15, 0.7), "sched_storm": (0.1, 0.6)}
_SHARE = {"fs_stall": (0.2, 0.6), "rack_network": (0.5, 1.0), "rack_power": (0.5, 1.0), "sched_storm": (0.5, 0.9)}
#: a node's intensity is the incident's severity times a draw in this range
_NODE_SPREAD = (0.4, 1.0)

TRUTH_COLUMNS = {
    "cluster_incidents": ("incident_id", "kind", "start", "end", "racks", "nodes", "n_nodes", "severity"),
    "incident_nodes": ("incident_id", "kind", "node", "rack", "start", "end", "intensity"),
    "job_members": ("job_id", "flavour", "node", "rack", "rank", "n_nodes", "start", "end"),
    "stragglers": ("job_id", "flavour", "node", "rack", "start", "end", "severity"),
    "topology": ("node", "rack"),
}


@dataclass(frozen=True)
class ClusterRates:
    """How often cluster-level events happen (all zero: none)."""

    #: share of the node time spent in multi-node jobs
    multinode_share: float = 0.25
    fs_stalls_per_day: float = 2.0
    rack_events_per_day: float = 2.0
    sched_storms_per_day: float = 1.0
    #: share of multi-node jobs (3+ nodes) with one straggler
    straggler_rate: float = 0.2

    @classmethod
    def none(cls) -> ClusterRates:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_settings(cls, settings) -> ClusterRates:
        return cls(settings.sim_multinode_share, settings.sim_fs_stalls_per_day, settings.sim_rack_events_per_day,
                   settings.sim_sched_storms_per_day, settings.sim_straggler_rate)  # fmt: skip

    @property
    def any(self) -> bool:
        return any(v > 0 for v in vars(self).values())

    def check(self) -> None:
        for name, v in vars(self).items():
            top = 0.95 if name == "multinode_share" else 1.0 if name == "straggler_rate" else math.inf
            if not (math.isfinite(v) and 0 <= v <= top):
                bound = f"between 0 and {top}" if top < math.inf else "a finite number, 0 or more"
                raise DidactError(f"simulated cluster {name}={v}", f"must be {bound}",
                                  f"set DIDACT_SIM_{name.upper()} to {bound}")  # fmt: skip


@dataclass(frozen=True)
class MultiJob:
    job_id: str
    flavour: str
    start: int  # step
    end: int
    nodes: tuple[int, ...]  # node indices in rank order
    signature: tuple  # the run's CPU-mode split, shared by its nodes
    straggler: int = -1  # node index, -1 = none
    straggle_start: int = 0
    severity: float = 0.0


@dataclass(frozen=True)
class Incident:
    incident_id: str
    kind: str
    start: int
    end: int
    nodes: tuple[int, ...]
    intensity: tuple[float, ...]  # per node of ``nodes``
    severity: float


@dataclass
class ClusterPlan:
    """One day's cluster-level events (see the module docstring); ``active`` False: none."""

    day: dt.date
    seed: int
    names: list[str]
    racks: list[str]
    interval_s: float
    jobs: list[MultiJob] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    active: bool = False

    def __post_init__(self):
        self._jobs_of: dict[int, list[MultiJob]] = {}
        self._incidents_of: dict[int, list[tuple[Incident, float]]] = {}
        for j in self.jobs:
            for i in j.nodes:
                self._jobs_of.setdefault(i, []).append(j)
        for inc in self.incidents:
            for i, a in zip(inc.nodes, inc.intensity):
                self._incidents_of.setdefault(i, []).append((inc, a))

    def touches(self, i: int) -> bool:
        return i in self._jobs_of or i in self._incidents_of

    # -- applying a node's share -------------------------------------------------------------
    def apply_node(self, i: int, jobs: list, mean: np.ndarray, rates: np.ndarray, mem: np.ndarray) -> list:
        """Node ``i``'s multi-node jobs, straggling and incidents, in place on its mean CPU split
        (mode, cpu, step), node-level rates (step, counter) and memory; returns its job list
        with the multi-node jobs spliced in (the labels)."""
        rng = np.random.default_rng([self.seed, self.day.toordinal(), i, CLUSTER_TAG])
        C = mean.shape[1]
        mine = self._jobs_of.get(i, [])
        for j in mine:
            f = SIGNATURES[j.flavour]
            busy = np.sort(rng.choice(C, size=C if f.threads < 0 else min(f.threads, C), replace=False))
            k = np.exp(0.15 * rng.standard_normal(len(NODE_COUNTERS)))
            m = float(np.exp(0.1 * rng.standard_normal()))
            s, e = j.start, j.end
            mean[:, :, s:e] = IDLE_SIGNATURE.astype(np.float32)[:, None, None]
            mean[:, busy, s:e] = np.asarray(j.signature, dtype=np.float32)[:, None, None]
            rates[s:e] = NODE_SIGNATURES[j.flavour] * k
            mem[s:e] = NODE_MEMORY_GB[j.flavour] * m
            if j.straggler == i:
                a = j.straggle_start
                mean[:, busy, a:e] = straggler_signature(j.signature, j.severity).astype(np.float32)[:, None, None]
                rates[a:e] *= _factors(ctxt=1 - 0.5 * j.severity, net_rx_bytes=1 - 0.6 * j.severity,
                                       net_tx_bytes=1 - 0.6 * j.severity)  # fmt: skip
                rates[a:e, _N["disk_io_time"]] += 0.9 * j.severity  # its failing disk (clipped at 1 later)
        for inc, a in self._incidents_of.get(i, []):
            s, e = inc.start, inc.end
            w = _ramp(inc.kind, e - s, a)
            taken = mean[:, :, s:e] * (INCIDENT_TAKE[inc.kind][:, None, None] * w[None, None, :]).astype(np.float32)
            mean[:, :, s:e] -= taken
            mean[:, :, s:e] += INCIDENT_SIGNATURES[inc.kind].astype(np.float32)[:, None, None] * taken.sum(axis=0)
            rates[s:e] *= 1 + w[:, None] * (INCIDENT_NODE_FACTORS[inc.kind] - 1)
        return splice(jobs, [(j.start, j.end, j.flavour) for j in mine])

    def apply_power(self, i: int, watts: np.ndarray) -> None:
        """Rack power events on node ``i``: its watts drop, in place."""
        for inc, a in self._incidents_of.get(i, []):
            if inc.kind == "rack_power":
                watts[inc.start : inc.end] *= 1 - POWER_DROP * _ramp(inc.kind, inc.end - inc.start, a)

    # -- truth ---------------------------------------------------------------------------------
    def frames(self, nodes: list[str] | None = None) -> dict[str, pd.DataFrame]:
        """The truth frames (module docstring); with ``nodes``, the per-node frames hold only
        those nodes' rows (``cluster_incidents`` is always the whole day's)."""
        pos = {n: k for k, n in enumerate(self.names)}
        keep = set(pos.values()) if nodes is None else {pos[str(n)] for n in nodes}
        ts0 = day_bounds(self.day)[0].value // 1_000_000
        step = int(round(self.interval_s * 1000))
        at = lambda s: ts0 + s * step  # noqa: E731
        name, rack = self.names, self.racks
        inc_rows, inc_nodes, members, stragglers = [], [], [], []
        for inc in self.incidents:
            inc_rows.append((inc.incident_id, inc.kind, at(inc.start), at(inc.end),
                             sorted({rack[i] for i in inc.nodes}), sorted(name[i] for i in inc.nodes),
                             len(inc.nodes), inc.severity))  # fmt: skip
            inc_nodes += [(inc.incident_id, inc.kind, name[i], rack[i], at(inc.start), at(inc.end), a)
                          for i, a in zip(inc.nodes, inc.intensity) if i in keep]  # fmt: skip
        for j in self.jobs:
            members += [(j.job_id, j.flavour, name[i], rack[i], r, len(j.nodes), at(j.start), at(j.end))
                        for r, i in enumerate(j.nodes) if i in keep]  # fmt: skip
            if j.straggler >= 0 and j.straggler in keep:
                i = j.straggler
                stragglers.append((j.job_id, j.flavour, name[i], rack[i], at(j.straggle_start), at(j.end), j.severity))
        topo = [(name[i], rack[i]) for i in sorted(keep)]
        rows = {"cluster_incidents": inc_rows, "incident_nodes": inc_nodes, "job_members": members,
                "stragglers": stragglers, "topology": topo}  # fmt: skip
        return {k: _frame(v, TRUTH_COLUMNS[k]) for k, v in rows.items()}


def straggler_signature(signature, severity: float) -> np.ndarray:
    """A straggling node's CPU split: ``severity`` of its user and system time lost, 60 % of
    it to iowait and 40 % to idle."""
    v = np.asarray(signature, dtype=np.float64).copy()
    lost = severity * (v[CPU_MODES.index("user")] + v[CPU_MODES.index("system")])
    v[CPU_MODES.index("user")] *= 1 - severity
    v[CPU_MODES.index("system")] *= 1 - severity
    v[CPU_MODES.index("iowait")] += 0.6 * lost
    v[CPU_MODES.index("idle")] += 0.4 * lost
    return v / v.sum()


def splice(jobs: list, over: list) -> list:
    """``(start, end, flavour)`` jobs with the windows of ``over`` cut out and ``over`` put in."""
    out = []
    for s, e, f in jobs:
        pieces = [(s, e)]
        for a, b, _ in over:
            pieces = [(x, y) for p, q in pieces for x, y in ((p, min(q, a)), (max(p, b), q)) if y > x]
        out += [(x, y, f) for x, y in pieces]
    return sorted(out + [tuple(o) for o in over])


def _ramp(kind: str, length: int, intensity: float) -> np.ndarray:
    """Mix weight per step of an incident's window: a linear onset, then ``intensity``."""
    ramp = max(1, int(round(_RAMP[kind] * length)))
    return intensity * np.minimum(1.0, np.arange(1, length + 1) / ramp)


#: the number columns' dtypes (an empty frame has them too, so that blocks concatenate cleanly)
_DTYPES = {"rank": "int64", "n_nodes": "int64", "severity": "float64", "intensity": "float64"}


def _frame(rows: list, columns: tuple) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(columns))
    df = df.astype({c: t for c, t in _DTYPES.items() if c in df})
    for col in ("start", "end"):
        if col in df:
            ms = df[col].to_numpy(dtype=np.int64)
            df[col] = pd.Series(ms.view("M8[ms]")).dt.tz_localize("UTC")
    return df


# -- drawing a day's plan --------------------------------------------------------------------------


def plan_day(seed: int, day: dt.date, names: list[str], racks: list[str], interval_s: float,
             rates: ClusterRates) -> ClusterPlan:  # fmt: skip
    """The day's cluster-level events for nodes ``names`` in ``racks`` (one per node)."""
    plan = ClusterPlan(day, seed, list(names), list(racks), interval_s)
    if not rates.any or len(set(racks)) < MIN_RACKS:
        return plan
    rng = np.random.default_rng([seed, day.toordinal(), CLUSTER_TAG])
    T = int(round(86400 / interval_s))
    jobs = _draw_jobs(rng, day, len(names), T, interval_s, rates)
    incidents = _draw_incidents(rng, day, racks, T, interval_s, rates)
    return ClusterPlan(day, seed, list(names), list(racks), interval_s, jobs, incidents, active=True)


def _draw_jobs(rng, day: dt.date, N: int, T: int, interval_s: float, rates: ClusterRates) -> list[MultiJob]:
    """Multi-node jobs on free nodes until ``multinode_share`` of the node time is used."""
    target = rates.multinode_share * N * T
    g = max(1, int(round(60 / interval_s)))  # occupancy on a minute grid: small for 1-s scrapes too
    occupied = np.zeros((N, -(-T // g)), dtype=bool)
    jobs: list[MultiJob] = []
    used, tries = 0, 0
    flavours = list(MULTINODE)
    while used < target and tries < 200 + 4 * target / T:
        tries += 1
        flav = flavours[rng.integers(len(flavours))]
        size = min(MULTINODE[flav], N)
        f = SIGNATURES[flav]
        steps = min(T, max(2, int(round(f.median_minutes * float(np.exp(f.sigma * rng.standard_normal())) * 60
                                        / interval_s))))  # fmt: skip
        start = int(rng.integers(0, T - steps + 1))
        cells = slice(start // g, -(-(start + steps) // g))
        free = np.flatnonzero(~occupied[:, cells].any(axis=1))
        if len(free) < size:
            continue
        nodes = tuple(int(n) for n in rng.choice(free, size=size, replace=False))
        variant = np.asarray(f.signature) * np.exp(0.1 * rng.standard_normal(len(CPU_MODES)))
        # drawn for every job, so that the straggler rate changes which jobs straggle, not the rest
        u, who = rng.random(), int(rng.integers(size))
        late, sev = rng.uniform(0.0, 0.5), float(rng.uniform(0.35, 0.7))
        straggler, s0 = -1, 0
        if size >= MIN_STRAGGLER_JOB and u < rates.straggler_rate:
            straggler, s0 = nodes[who], start + int(late * steps)
        else:
            sev = 0.0
        occupied[list(nodes), cells] = True
        jobs.append(MultiJob(f"sim-{day:%Y%m%d}-{len(jobs):04d}", flav, start, start + steps, nodes,
                             tuple(variant / variant.sum()), straggler, s0, sev))  # fmt: skip
        used += steps * size
    return jobs


def _spread(rng, by_rack: dict[str, list[int]], low: float, high: float) -> list[int]:
    """A share (drawn in [low, high]) of the nodes of every rack, at least one per rack."""
    share = float(rng.uniform(low, high))
    out = []
    for members in by_rack.values():
        k = min(len(members), max(1, int(round(share * len(members)))))
        out += [int(n) for n in rng.choice(members, size=k, replace=False)]
    return sorted(out)


def _draw_incidents(rng, day: dt.date, racks: list[str], T: int, interval_s: float,
                    rates: ClusterRates) -> list[Incident]:  # fmt: skip
    """The day's incidents at distinct times (a gap of a few minutes between two)."""
    by_rack: dict[str, list[int]] = {}
    for i, r in enumerate(racks):
        by_rack.setdefault(r, []).append(i)
    rack_list = sorted(by_rack)
    kinds = (["fs_stall"] * int(rng.poisson(rates.fs_stalls_per_day))
             + ["rack"] * int(rng.poisson(rates.rack_events_per_day))
             + ["sched_storm"] * int(rng.poisson(rates.sched_storms_per_day)))  # fmt: skip
    busy = np.zeros(T, dtype=bool)
    gap = max(1, int(round(300 / interval_s)))
    drawn = []
    for kind in kinds:
        if kind == "rack":
            kind = "rack_network" if rng.random() < 0.5 else "rack_power"
        low, high = _LENGTH_MIN[kind]
        length = min(T // 4, max(2, int(round(rng.uniform(low, high) * 60 / interval_s))))
        severity = float(rng.uniform(*_SEVERITY[kind]))
        if kind.startswith("rack"):
            rack = rack_list[int(rng.integers(len(rack_list)))]
            nodes = _spread(rng, {rack: by_rack[rack]}, *_SHARE[kind])
        else:
            nodes = _spread(rng, by_rack, *_SHARE[kind])
        intensity = tuple(float(x) for x in severity * rng.uniform(*_NODE_SPREAD, size=len(nodes)))
        for _ in range(30):
            start = int(rng.integers(0, T - length))
            if not busy[max(0, start - gap) : start + length + gap].any():
                busy[start : start + length] = True
                drawn.append((start, start + length, kind, tuple(nodes), intensity, severity))
                break
    drawn.sort()
    return [Incident(f"inc-{day:%Y%m%d}-{k:03d}", kind, s, e, nodes, a, sev)
            for k, (s, e, kind, nodes, a, sev) in enumerate(drawn)]  # fmt: skip
