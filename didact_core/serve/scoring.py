"""Scoring one interval: consecutive polls → the interval's features (the training code's
``preprocess``, plus the window buffer's lags) → the model → per-node aggregates."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from didact_core.data.preprocess import CleaningReport, preprocess
from didact_core.data.rolling import RollingState, is_rolling
from didact_core.schema import CPU_MODES, NODE_FEATURES, validate_raw_cpu
from didact_core.serve.history import NodeHistory, WindowBuffer
from didact_core.serve.model import LoadedModel


@dataclass
class IntervalScores:
    """What one interval produced."""

    #: wall-clock time of the poll (UTC)
    ts: pd.Timestamp
    #: one row per scored (node, cpu): ts (interval end), node, cpu, dt_s, features, error, latent_<i>
    samples: pd.DataFrame
    #: index node: error_mean, error_max, worst (row of ``samples``), cpus, latent_<i>, ood
    nodes: pd.DataFrame
    report: CleaningReport
    model_version: int
    threshold: float
    seconds: float

    @property
    def ood_samples(self) -> int:
        return int((self.samples["error"] > self.threshold).sum()) if len(self.samples) else 0


class Scorer:
    """Consecutive polls → the interval's features (``preprocess``) → the model → per node.

    Keeps the previous poll per (node, cpu).  A series whose latest row is invalid (NaN,
    negative) keeps its previous valid row, so the next interval spans both scrapes; a
    series that has not been scraped again since the last poll gives no sample (not a
    duplicate: polling faster than scraping is normal).  Series unseen for
    ``forget_after_s`` (scrape time) are forgotten.

    Node-level metrics (``node_metrics``, raw rows of the feed's poll) are paired the way
    training pairs them: each node's rate is taken between its consecutive scrapes (the
    last two are kept), and joined to its CPU samples by scrape time; a model that needs
    them gets none without them (its samples are counted as ``missing_node_metrics``).

    For a model with a window T > 1 the lag columns come from :class:`WindowBuffer`.

    ``interval_s`` is the nominal scrape interval — what training infers as a day's
    median step — for preprocessing's gap tests and the windows' consecutive-scrape
    test; None estimates it as the median of the last intervals' median sample length
    (one interval's own median would call a pause of the whole cluster "no gap").
    """

    def __init__(self, forget_after_s: float = 3600.0, interval_s: float | None = None):
        self.forget_after_s = forget_after_s
        self.interval_s = interval_s
        self._prev: pd.DataFrame | None = None
        self._seen_invalid: set = set()
        self._nodes = NodeHistory(forget_after_s)
        self.windows = WindowBuffer(forget_after_s)
        #: rolling features (DIDACT_FEATURES=…,rolling): the recent samples they are computed over
        self.rolling = RollingState(forget_after_s)
        self._steps: list[float] = []

    def reset(self) -> None:
        self._prev = None
        self._seen_invalid = set()
        self._nodes = NodeHistory(self.forget_after_s)
        self.windows = WindowBuffer(self.forget_after_s)
        self.rolling = RollingState(self.forget_after_s)
        self._steps = []

    def step_s(self) -> float | None:
        """The scrape interval in seconds: ``interval_s`` when given, else the median of the
        last 32 intervals' median sample length (None before the first samples)."""
        if self.interval_s:
            return float(self.interval_s)
        return float(np.median(self._steps)) if self._steps else None

    def _observe(self, samples: pd.DataFrame) -> None:
        if not self.interval_s and len(samples):
            self._steps = [*self._steps[-31:], float(np.median(samples["dt_s"].to_numpy()))]

    def _pairs(self, raw: pd.DataFrame) -> pd.DataFrame | None:
        """Rows to preprocess (previous + new scrape of each series with a new scrape); updates the state."""
        modes = raw[list(CPU_MODES)].to_numpy()
        valid = np.isfinite(modes).all(axis=1) & (modes >= 0).all(axis=1)
        prev = self._prev
        if prev is None:
            self._prev = raw[valid].reset_index(drop=True)
            return None
        aligned = (
            len(prev) == len(raw)
            and prev["node"].equals(raw["node"])
            and np.array_equal(prev["cpu"].to_numpy(), raw["cpu"].to_numpy())
        )
        if aligned:
            fresh = raw["ts"].array.asi8 != prev["ts"].array.asi8
            if not valid.all():
                self._skip_seen_invalid(raw, valid, fresh)
            if fresh.all():
                pairs = pd.concat([prev, raw], ignore_index=True)
            else:
                pairs = pd.concat([prev[fresh], raw[fresh]], ignore_index=True)
            if valid.all():
                self._prev = raw
            else:
                self._prev = pd.concat([raw[valid], prev[~valid]], ignore_index=True)
            return pairs
        # general case: series appear, vanish or reorder
        key_prev = pd.MultiIndex.from_arrays([prev["node"].astype(str), prev["cpu"]])
        key_raw = pd.MultiIndex.from_arrays([raw["node"].astype(str), raw["cpu"]])
        pos = key_prev.get_indexer(key_raw)
        has = pos >= 0
        prev_ts = np.full(len(raw), np.iinfo(np.int64).min, dtype=np.int64)
        prev_ts[has] = prev["ts"].array.asi8[pos[has]]
        fresh = has & (raw["ts"].array.asi8 != prev_ts)
        self._skip_seen_invalid(raw, valid, fresh)
        pairs = pd.concat([prev.iloc[pos[fresh]], raw[fresh]], ignore_index=True)
        keep_new = raw[valid]
        replaced = np.zeros(len(prev), dtype=bool)
        replaced[pos[has & valid]] = True
        old = prev[~replaced]
        if len(old) and len(keep_new):
            cutoff = keep_new["ts"].max() - pd.Timedelta(seconds=self.forget_after_s)
            old = old[old["ts"] >= cutoff]
        self._prev = (
            pd.concat([keep_new, old], ignore_index=True) if len(old) else keep_new.reset_index(drop=True)
        )
        return pairs

    def _skip_seen_invalid(self, raw: pd.DataFrame, valid: np.ndarray, fresh: np.ndarray) -> None:
        """An invalid scrape is counted once: while a series' latest scrape is the same
        invalid one (the feed has nothing newer), it is not paired again.  (Rare rows only.)"""
        bad = np.flatnonzero(~valid)
        if not len(bad) and not self._seen_invalid:
            return
        rows = raw.iloc[bad]
        keys = list(zip(rows["node"].astype(str), rows["cpu"].tolist(), rows["ts"].array.asi8.tolist()))
        again = np.array([k in self._seen_invalid for k in keys], dtype=bool)
        fresh[bad[again]] = False
        self._seen_invalid = set(keys)

    def features(self, pairs: pd.DataFrame, model: LoadedModel, node_pairs: pd.DataFrame | None):
        """(samples with the model's columns, report) of one interval's paired rows."""
        base = model.base_features
        step = self.step_s()
        if model.needs_node_metrics and (node_pairs is None or node_pairs.empty):
            cpu_only = tuple(f for f in base if f not in NODE_FEATURES and not is_rolling(f))
            samples, report = preprocess(pairs, cpu_only or ("idle",), interval_s=step)
            self._observe(samples)
            report.missing_node_metrics, report.rows_out = len(samples), 0
            samples = samples.iloc[:0].assign(**{f: np.zeros(0, np.float32) for f in base})
        else:
            samples, report = preprocess(pairs, base, interval_s=step, node_metrics=node_pairs, rolling=self.rolling)
            self._observe(samples)
        if model.window > 1:
            step = self.step_s()
            step_ms = None if step is None else step * 1000.0
            samples, report.window_incomplete = self.windows.apply(samples, base, model.window, step_ms)
            report.rows_out = len(samples)
        return samples, report

    def score(
        self,
        raw: pd.DataFrame,
        model: LoadedModel | None,
        now: float | None = None,
        node_metrics: pd.DataFrame | None = None,
    ) -> IntervalScores | None:
        """Score the interval since the previous poll (None on the first poll or without a model).

        ``node_metrics``: the node-level metrics of the same poll (``LiveFeed.node_metrics()``),
        needed by models with node-level features."""
        t0 = time.perf_counter()
        raw = validate_raw_cpu(raw, "live feed poll")
        pairs = self._pairs(raw)
        # the first poll with node-level metrics (a node-level champion was just loaded) has
        # no previous node scrape to take rates from: like a first poll, it only sets the state
        warming = (
            node_metrics is not None and self._nodes.empty and model is not None and model.needs_node_metrics
        )
        node_pairs = self._nodes.pairs(node_metrics)
        if pairs is None or model is None or warming:
            return None
        samples, report = self.features(pairs, model, node_pairs)
        err, Z = model.score(samples[list(model.features)].to_numpy(dtype=np.float32))
        samples["error"] = err
        for d in range(Z.shape[1]):
            samples[f"latent_{d}"] = Z[:, d]
        nodes = aggregate_nodes(samples, err, Z, model.threshold)
        ts = pd.Timestamp(now if now is not None else time.time(), unit="s", tz="UTC").floor("ms")
        return IntervalScores(
            ts, samples, nodes, report, model.version, model.threshold, time.perf_counter() - t0
        )


def aggregate_nodes(samples: pd.DataFrame, err: np.ndarray, Z: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per node (vectorised): mean/max error over its CPUs, worst CPU's row, mean latent, OOD flag."""
    n = len(samples)
    cols = ["error_mean", "error_max", "worst", "cpus", *[f"latent_{d}" for d in range(Z.shape[1])], "ood"]
    if n == 0:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="node"))
    node = samples["node"]
    if isinstance(node.dtype, pd.CategoricalDtype):
        codes, names = node.cat.codes.to_numpy(), node.cat.categories
    else:
        codes, names = pd.factorize(node)
    if n > 1 and (codes[1:] < codes[:-1]).any():
        order = np.argsort(codes, kind="stable")  # group rows by node (preprocess usually has)
        codes, err, Z = codes[order], err[order], Z[order]
    else:
        order = None
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    counts = np.diff(np.r_[starts, n])
    emax = np.maximum.reduceat(err, starts)
    # the worst row of each group: the first row equal to the group's max
    hits = np.flatnonzero(err == np.repeat(emax, counts))
    group_of_hit = np.searchsorted(starts, hits, side="right") - 1
    first_hit = np.full(len(starts), -1, dtype=np.int64)
    first_hit[group_of_hit[::-1]] = hits[::-1]
    first_hit = np.where(first_hit < 0, starts, first_hit)
    out = {
        "error_mean": np.add.reduceat(err, starts) / counts,
        "error_max": emax,
        "worst": first_hit if order is None else order[first_hit],
        "cpus": counts,
    }
    zsum = np.add.reduceat(Z.astype(np.float64), starts, axis=0)
    for d in range(Z.shape[1]):
        out[f"latent_{d}"] = zsum[:, d] / counts
    out["ood"] = out["error_max"] > threshold
    return pd.DataFrame(out, index=pd.Index(np.asarray(names)[codes[starts]].astype(str), name="node"))
