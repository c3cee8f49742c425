"""The per-node (and per-CPU) families of ``/metrics``: one collector, written by didact
rather than prometheus_client because at 1,000 nodes its per-sample formatting costs ~5×
more (``bench/README_scoring.md``)."""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pandas as pd

from didact_core.serve.scoring import IntervalScores

log = logging.getLogger(__name__)



class NodeCollector:
    """Per-node (and per-CPU) series from the latest scores; stale nodes drop out.

    State is kept by integer node id (``id * 65536 + cpu`` for CPUs), so an update of a
    1,000-node interval is a few vectorised operations, not a label lookup per series.
    """

    def __init__(self, cpu_label_cap: int, stale_after_s: float):
        self.cpu_label_cap = cpu_label_cap
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._names: list[str] = []  # node id -> name
        self._index = pd.Index([], dtype=object)
        self._nodes = pd.DataFrame()  # index node id; error_mean, error_max, latent_*, ood, updated
        self._cpus = pd.DataFrame()  # index id * 65536 + cpu; error, updated
        self._power = pd.Series(dtype=np.float64)
        self.cpu_series_capped = False
        #: bumped by every :meth:`update`, so a renderer can tell whether :meth:`text` changed
        self.version = 0

    def describe(self):
        return []

    def _ids(self, names) -> np.ndarray:
        names = pd.Index(names).astype(str)
        idx = self._index.get_indexer(names)
        if (idx < 0).any():
            self._names += list(pd.unique(names[idx < 0]))
            self._index = pd.Index(self._names, dtype=object)
            idx = self._index.get_indexer(names)
        return idx.astype(np.int64)

    @staticmethod
    def _merge(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
        if old.empty:
            return new
        keep = ~np.isin(old.index.to_numpy(), new.index.to_numpy())
        return pd.concat([old[keep], new]) if keep.any() else new

    def update(self, scores: IntervalScores | None, power: pd.Series | None, now: float) -> None:
        with self._lock:
            nodes, cpus = self._nodes, self._cpus
            if scores is not None and len(scores.nodes):
                new = scores.nodes.drop(columns=["worst", "cpus"])
                new = new.set_axis(self._ids(new.index)).assign(updated=now)
                nodes = self._merge(nodes, new)
                s = scores.samples
                if isinstance(s["node"].dtype, pd.CategoricalDtype):
                    row_ids = self._ids(s["node"].cat.categories)[s["node"].cat.codes.to_numpy()]
                else:
                    row_ids = self._ids(s["node"].astype(str))
                keys = row_ids * 65536 + s["cpu"].to_numpy().astype(np.int64)
                newc = pd.DataFrame({"error": s["error"].to_numpy(), "updated": now}, index=keys)
                cpus = self._merge(cpus, newc)
            if len(nodes):
                nodes = nodes[nodes["updated"].to_numpy() >= now - self.stale_after_s]
            if len(cpus):
                cpus = cpus[cpus["updated"].to_numpy() >= now - self.stale_after_s]
            self._nodes, self._cpus = nodes.sort_index(), cpus.sort_index()
            if power is not None:
                self._power = power[np.isfinite(power.to_numpy(dtype=np.float64))].astype(np.float64)
            capped = len(cpus) > self.cpu_label_cap
            if capped and not self.cpu_series_capped:
                log.info(
                    "%d node-CPU series exceed the cardinality cap %d: didact_reconstruction_error_cpu is "
                    "not exported (raise --cpu-label-cap to export it)",
                    len(cpus),
                    self.cpu_label_cap,
                )
            self.cpu_series_capped = capped
            self.version += 1

    def text(self) -> str:
        """The per-node families in the Prometheus text format (written here, not by
        prometheus_client, whose per-sample formatting costs ~5× more at 1,000 nodes)."""
        with self._lock:
            nodes, cpus, power, capped = self._nodes, self._cpus, self._power, self.cpu_series_capped
            all_names = np.asarray([_label(n) for n in self._names], dtype=object)
        out: list[str] = []
        names = all_names[nodes.index.to_numpy()].tolist() if len(nodes) else []

        def family(name: str, help_: str, labels: list[str], values: list) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge\n")
            out.extend(f"{name}{{{lab}}} {_num(v)}\n" for lab, v in zip(labels, values))

        node_labels = [f'node="{n}"' for n in names]
        family("didact_reconstruction_error",
               "Mean reconstruction error of the node's CPU samples in the last interval",
               node_labels, nodes["error_mean"].tolist() if len(nodes) else [])  # fmt: skip
        family("didact_reconstruction_error_max",
               "Largest reconstruction error among the node's CPU samples in the last interval",
               node_labels, nodes["error_max"].tolist() if len(nodes) else [])  # fmt: skip
        cpu_labels, cpu_values = [], []
        if not capped and len(cpus):
            keys = cpus.index.to_numpy()
            cpu_labels = [
                f'node="{n}",cpu="{c}"'
                for n, c in zip(all_names[keys >> 16].tolist(), (keys & 0xFFFF).tolist())
            ]
            cpu_values = cpus["error"].tolist()
        family("didact_reconstruction_error_cpu",
               "Reconstruction error of one CPU thread's sample in the last interval "
               "(exported while nodes x CPUs <= the cardinality cap)", cpu_labels, cpu_values)  # fmt: skip
        lat_labels, lat_values = [], []
        for c in [c for c in nodes.columns if c.startswith("latent_")]:
            dim = c.removeprefix("latent_")
            lat_labels += [f'node="{n}",dim="{dim}"' for n in names]
            lat_values += nodes[c].tolist()
        family("didact_latent", "Mean latent coordinate of the node's CPU samples", lat_labels, lat_values)
        family("didact_ood",
               "1 when a CPU sample of the node is out of distribution (error above the model threshold) "
               "in the last interval", node_labels,
               [1 if v else 0 for v in nodes["ood"].tolist()] if len(nodes) else [])  # fmt: skip
        if len(power):
            family("didact_node_power_watts", "Power draw of the node as the live feed reports it",
                   [f'node="{_label(n)}"' for n in power.index.astype(str)], power.tolist())  # fmt: skip
        return "".join(out)


def _label(value: str) -> str:
    """A label value escaped for the text format."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isfinite(v):
        return repr(v)
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
