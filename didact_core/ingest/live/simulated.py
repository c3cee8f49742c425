"""The simulated cluster, live: its counters at the current wall-clock time.

It reuses :class:`~didact_core.ingest.simulator.SimulatedCluster`'s deterministic day
generation (so the live counters are exactly the ones a nightly run saves for that day),
cached per node and day in windows of about an hour.  At UTC midnight a simulated node
starts a new day with a new uptime, which preprocessing counts as a counter reset: one
unusable interval per node and day.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.live.base import NODE_VALUES, LiveFeed, cpu_frame, node_frame
from didact_core.ingest.simulator import FAULTS, NODE_MEMORY_GB, NODE_SIGNATURES, SimulatedCluster
from didact_core.schema import CPU_MODES, NODE_COUNTERS


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
            None if node_values is None else node_frame(ts, np.arange(N), self._names, node_values)
        )
        return cpu_frame(
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


__all__ = ["SimulatedLiveFeed"]
