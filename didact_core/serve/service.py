"""Serving: score every node with the champion in near real time and export to Prometheus.

    serve(settings, host="127.0.0.1", port=9108, interval_s=15, reload_s=30)   # until SIGTERM/SIGINT
    python -m didact_core.serve.service --port 9108 --interval 15 --reload 30 [--feed simulator|prometheus|…]

Every ``interval_s`` the :class:`ServingService`

1. polls the live feed (:mod:`didact_core.ingest.live`) for the latest counters of every
   (node, cpu) — and, when the champion uses node-level features, the node-level
   metrics of the same scrapes — and pairs them with the previous poll;
2. turns each pair into the interval's features with :func:`~didact_core.data.preprocess.preprocess`
   (the training code: counter resets, NaN, skew … are handled and counted, exported as
   ``didact_cleaning_events_total{kind}``; node-level rates joined by node and scrape
   time); for a champion with temporal context (window T > 1) the lag columns come from
   a rolling buffer of each series' last T − 1 samples, as training's ``add_windows``
   builds them from consecutive scrapes (a series without full history yet is counted
   as ``window_incomplete`` and not scored);
3. applies the champion (its frozen feature transform included) to all samples at once:
   reconstruction error and latent coordinates per (node, cpu), then per node the mean
   and max error over CPUs, the mean latent point and the OOD flag (a CPU's error above
   the champion's ``threshold_``);
4. updates the exported metrics, and sends the interval's OOD events (one per OOD node:
   its worst CPU's sample) and totals to the review queue in one batch.

A :class:`ModelWatcher` follows the registry's ``champion`` alias every ``reload_s``
(in a thread of its own, so a slow registry never delays scoring): when the alias moves
(promotion or rollback) the new version is loaded and swapped in without a restart;
when the registry is unreachable the last good model keeps serving, ``didact_registry_up``
is 0, a warning is logged and the check is retried with exponential backoff.  Without a
champion, serving says so and keeps polling (``didact_champion_version`` 0).

What the champion needs is read from its ``feature_names``
(:func:`~didact_core.data.preprocess.split_feature_columns`: base features and window), so any
model the nightly training produces (``DIDACT_FEATURES``, ``DIDACT_WINDOW``) is served with
the same features and transform it was trained on.  A windowed model's lags are the
series' previous *scrapes*: poll more often than the source scrapes (e.g. ``--interval 7.5``
for 15 s scrapes; a poll that finds no new scrape costs little and scores nothing), or a
scrape the feed never showed makes a gap and leaves the next T − 1 samples without history
(serving warns when that happens often).

Exported metrics (Prometheus naming: ``didact_`` prefix, base units, ``_total`` counters;
labels ``node``, plus ``cpu`` only while nodes × CPUs ≤ ``cpu_label_cap``)::

    didact_reconstruction_error{node}          mean over the node's CPUs, last interval
    didact_reconstruction_error_max{node}      max over the node's CPUs
    didact_reconstruction_error_cpu{node,cpu}  per CPU (only under the cardinality cap)
    didact_latent{node,dim}                    mean latent point of the node's CPUs
    didact_ood{node}                           1 when a CPU's error > the model threshold
    didact_node_power_watts{node}              when the feed knows power
    didact_ood_events_total                    events sent to the review queue
    didact_ood_samples_total                   CPU samples above the threshold
    didact_samples_scored_total                CPU samples scored
    didact_cleaning_events_total{kind}         preprocessing's counts (counter_resets, gaps, …,
                                               missing_node_metrics, window_incomplete)
    didact_scoring_duration_seconds            histogram: preprocess + model + aggregation
    didact_feed_poll_duration_seconds          the last poll of the feed
    didact_feed_up                             0 when the last poll failed
    didact_last_poll_timestamp_seconds         wall-clock time of the last successful poll
    didact_champion_version                    0 when there is none
    didact_model_threshold                     the champion's OOD threshold
    didact_model_reloads_total                 model switches (the first load included)
    didact_registry_up                         0 while the registry is unreachable
    didact_registry_errors_total               failed registry checks and loads
    didact_review_errors_total                 failed writes to the review queue
    didact_model_holdout_error                 the champion's held-out mean error (evaluation run)
    didact_model_latent_knn_accuracy           its latent kNN accuracy of job flavours
    didact_model_fault_roc_auc                 its ROC AUC on labelled faults (when evaluated)
    didact_model_train_loss / _val_loss        the last epoch of its training run
    didact_serving_info{feed,model}            1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError, RegistryError, SourceUnavailableError
from didact_core.ingest.live import FEEDS, LiveFeed, make_feed
from didact_core.data.preprocess import CleaningReport, preprocess, split_feature_columns
from didact_core.schema import CPU_MODES, NODE_COUNTERS, NODE_FEATURES, NODE_GAUGES, TS_DTYPE, validate_raw_cpu

log = logging.getLogger("didact_core.serve.service")  # the same name when run as __main__

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
DEFAULT_INTERVAL_S = 15.0
DEFAULT_RELOAD_S = 30.0
#: export per-CPU series only while nodes × CPUs stays at or below this
DEFAULT_CPU_LABEL_CAP = 4096
#: longest wait between two registry checks while it is unreachable (and at most 10 × reload_s)
MAX_BACKOFF_S = 60.0
#: preprocessing counts exported as didact_cleaning_events_total{kind}
CLEANING_KINDS = (
    "duplicates",
    "out_of_order",
    "nan_rows",
    "invalid_rows",
    "counter_resets",
    "gaps",
    "long_gaps",
    "clock_skew",
    "stalled",
    "clamped",
    "missing_node_metrics",
    "window_incomplete",
)
SCORING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# -- the model being served ------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A champion ready to score: the detector, its version, and facts for the exporter."""

    detector: object
    version: int
    #: MLflow metrics of the version (holdout_error, latent_knn_accuracy, …), what could be read
    facts: dict = field(default_factory=dict)
    #: job flavour -> latent centroid (the version's ``centroids`` tag), for the review queue
    centroids: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    _fused: bool | None = None
    #: the AI-ready features the model's columns are built from, and its window (timesteps)
    base_features: tuple[str, ...] = field(init=False)
    window: int = field(init=False)

    def __post_init__(self):
        # raises DidactError for columns preprocessing cannot produce (the watcher keeps the last model)
        self.base_features, self.window = split_feature_columns(self.detector.feature_names)

    @property
    def threshold(self) -> float:
        return float(self.detector.threshold_)

    @property
    def features(self) -> tuple[str, ...]:
        """The model's input columns (base features, then their lags)."""
        return tuple(self.detector.feature_names)

    @property
    def needs_node_metrics(self) -> bool:
        return any(f in NODE_FEATURES for f in self.base_features)

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction error (n,) float64, latent (n, d) float32) of raw feature rows."""
        if self._fused is None:
            self._fused = self._check_fused()
        if self._fused:
            return self._score_fused(X)
        return self.detector.score_samples(X), self.detector.embed(X)

    def _score_fused(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One encoder pass for both outputs.  Every didact family reconstructs as
        ``decoder(encode(x))`` and scores the mean squared error of that; whether this
        holds for the loaded model is checked once against ``score_samples``/``embed``."""
        import torch

        det = self.detector
        model = det.model_
        T = det.transform_.transform(X)
        if T.shape[0] == 0:
            return np.zeros(0), np.zeros((0, det.config.latent_dim), np.float32)
        device = next(model.parameters()).device
        with torch.inference_mode():
            x = torch.from_numpy(T).to(device)
            z = model.encode(x)
            err = (model.decoder(z) - x).pow(2).mean(dim=1)
        return err.to("cpu").numpy().astype(np.float64), z.to("cpu").numpy().astype(np.float32)

    def _check_fused(self) -> bool:
        det = self.detector
        model = getattr(det, "model_", None)
        if model is None or not hasattr(model, "decoder") or not hasattr(model, "encode"):
            return False
        probe = np.random.default_rng(0).dirichlet(np.ones(len(self.features)), 64).astype(np.float32)
        try:
            e, z = self._score_fused(probe)
            ok = np.allclose(e, det.score_samples(probe), rtol=1e-4, atol=1e-7) and np.allclose(
                z, det.embed(probe), rtol=1e-4, atol=1e-6
            )
        except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
            log.info(
                "model v%d: one-pass scoring unavailable (%s); using score_samples + embed", self.version, exc
            )
            return False
        if not ok:
            log.info(
                "model v%d: one-pass scoring differs from score_samples; using score_samples + embed",
                self.version,
            )
        return bool(ok)

    def nearest_flavour(self, Z: np.ndarray) -> list:
        """The job flavour whose latent centroid is nearest to each row of ``Z`` (None without centroids)."""
        if not self.centroids or len(Z) == 0:
            return [None] * len(Z)
        names = list(self.centroids)
        C = np.asarray([self.centroids[n] for n in names], dtype=np.float64)
        if C.ndim != 2 or C.shape[1] > Z.shape[1]:
            return [None] * len(Z)
        d = ((Z[:, None, : C.shape[1]] - C[None]) ** 2).sum(axis=2)
        return [names[i] for i in d.argmin(axis=1)]


# -- scoring ---------------------------------------------------------------------------------------


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
        self._steps: list[float] = []

    def reset(self) -> None:
        self._prev = None
        self._seen_invalid = set()
        self._nodes = NodeHistory(self.forget_after_s)
        self.windows = WindowBuffer(self.forget_after_s)
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
            cpu_only = tuple(f for f in base if f not in NODE_FEATURES)
            samples, report = preprocess(pairs, cpu_only or ("idle",), interval_s=step)
            self._observe(samples)
            report.missing_node_metrics, report.rows_out = len(samples), 0
            samples = samples.iloc[:0].assign(**{f: np.zeros(0, np.float32) for f in base})
        else:
            samples, report = preprocess(pairs, base, interval_s=step, node_metrics=node_pairs)
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


class NodeHistory:
    """The last two scrapes of each node's node-level metrics: with the newest poll they
    give the rows whose consecutive differences are the rates, as training computes them
    over a day (``preprocess.node_features``).  Two, not one, so a CPU scrape that is one
    poll behind its node's metrics (a scrape landing between two instant queries) still
    finds its node's rate.  No metrics in a poll clears the history (a rate must never
    span an interval the feed did not read)."""

    KEEP = 2

    def __init__(self, forget_after_s: float = 3600.0):
        self.forget_after_s = forget_after_s
        self._hist: pd.DataFrame | None = None

    @property
    def empty(self) -> bool:
        return self._hist is None or self._hist.empty

    def pairs(self, node_metrics: pd.DataFrame | None) -> pd.DataFrame | None:
        """Rows for ``preprocess(..., node_metrics=…)`` (each node's last three scrapes); updates the state."""
        if node_metrics is None:
            self._hist = None
            return None
        cols = ["ts", "node", *NODE_COUNTERS, *NODE_GAUGES]
        new = node_metrics[cols]
        if new["ts"].dtype != TS_DTYPE:
            new = new.assign(ts=pd.to_datetime(new["ts"], utc=True).astype(TS_DTYPE))
        new = new.assign(node=new["node"].astype(str).to_numpy(dtype=object))
        both = new if self._hist is None else pd.concat([self._hist, new], ignore_index=True)
        if both.empty:
            self._hist = None
            return None
        codes, _ = pd.factorize(both["node"].to_numpy())
        ts = both["ts"].array.asi8
        order = np.lexsort((ts, codes))  # by node, then time; stable: the newest poll last among equals
        c, t = codes[order], ts[order]
        dup = np.r_[(c[1:] == c[:-1]) & (t[1:] == t[:-1]), False]
        order, c, t = order[~dup], c[~dup], t[~dup]
        ends = np.flatnonzero(np.r_[c[1:] != c[:-1], True])
        group = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
        from_end = ends[group] - np.arange(len(c))
        recent = t >= t.max() - int(self.forget_after_s * 1000)
        self._hist = both.iloc[order[(from_end < self.KEEP) & recent]].reset_index(drop=True)
        return both.iloc[order[from_end <= self.KEEP]].reset_index(drop=True)


#: the ts of an empty history slot: far enough back to fail every consecutive-scrape test,
#: near enough that ``ts - NO_TS`` does not overflow int64
_NO_TS = -(2**62)


class WindowBuffer:
    """Per (node, cpu) series, the features of its last T − 1 AI-ready samples, for the
    lag columns ``f_lag1 … f_lag{T-1}`` exactly as :func:`~didact_core.data.preprocess.add_windows`
    builds them for consecutive scrapes: lag k is the series' k-th previous sample, usable
    when it is at most 1.5 × k scrape intervals older; a sample without a full usable
    history is dropped and counted (and still enters the history, as in training).

    Vectorised: a series is a slot of two arrays (features (slots, T − 1, F) float32, and
    scrape times (slots, T − 1) int64), found through one ``Index.get_indexer`` per
    interval; no per-series Python.  A change of features empties the buffer; a change of
    window keeps what fits.  Series unseen for ``forget_after_s`` are dropped now and then.
    """

    COMPACT_EVERY = 64

    def __init__(self, forget_after_s: float = 3600.0):
        self.forget_after_s = forget_after_s
        self.features: tuple[str, ...] = ()
        self.depth = 0
        self._node_ids = pd.Index([], dtype=object)
        self._keys = pd.Index([], dtype=np.int64)
        self._vals = np.zeros((0, 0, 0), np.float32)
        self._ts = np.zeros((0, 0), np.int64)
        self._calls = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _configure(self, features: tuple[str, ...], depth: int) -> None:
        if features != self.features:  # another model: nothing of the old history applies
            self.features = features
            self._node_ids = pd.Index([], dtype=object)
            self._keys = pd.Index([], dtype=np.int64)
            self._vals = np.zeros((0, depth, len(features)), np.float32)
            self._ts = np.zeros((0, depth), np.int64)
        elif depth != self.depth:
            S, keep = len(self._keys), min(depth, self.depth)
            vals = np.full((S, depth, len(features)), np.nan, np.float32)
            ts = np.full((S, depth), _NO_TS, np.int64)
            vals[:, :keep], ts[:, :keep] = self._vals[:, :keep], self._ts[:, :keep]
            self._vals, self._ts = vals, ts
        self.depth = depth

    def _slots(self, samples: pd.DataFrame) -> np.ndarray:
        node = samples["node"]
        if isinstance(node.dtype, pd.CategoricalDtype):
            names, codes = node.cat.categories.astype(str), node.cat.codes.to_numpy()
        else:
            codes, names = pd.factorize(node.astype(str))
            names = pd.Index(names)
        ids = self._node_ids.get_indexer(names)
        if (ids < 0).any():
            self._node_ids = self._node_ids.append(pd.Index(names[ids < 0], dtype=object))
            ids = self._node_ids.get_indexer(names)
        keys = ids.astype(np.int64)[codes] * 65536 + samples["cpu"].to_numpy().astype(np.int64)
        slots = self._keys.get_indexer(keys)
        new = slots < 0
        if new.any():
            add = pd.unique(keys[new])
            self._keys = self._keys.append(pd.Index(add, dtype=np.int64))
            n = len(add)
            self._vals = np.concatenate(
                [self._vals, np.full((n, self.depth, len(self.features)), np.nan, np.float32)]
            )
            self._ts = np.concatenate([self._ts, np.full((n, self.depth), _NO_TS, np.int64)])
            slots = self._keys.get_indexer(keys)
        return slots

    def apply(
        self, samples: pd.DataFrame, features, window: int, step_ms: float | None
    ) -> tuple[pd.DataFrame, int]:
        """``samples`` (one per series) with the lag columns, rows without full history
        dropped; returns (frame, how many were dropped).  Updates the history."""
        features, depth = tuple(features), window - 1
        self._configure(features, depth)
        n = len(samples)
        names = [f"{f}_lag{k}" for k in range(1, window) for f in features]
        if n == 0:
            return samples.assign(**{c: np.zeros(0, np.float32) for c in names}), 0
        slots = self._slots(samples)
        ts = samples["ts"].array.asi8
        X = np.column_stack([samples[f].to_numpy(dtype=np.float32) for f in features])
        hist_ts, hist_vals = self._ts[slots], self._vals[slots]  # (n, depth), (n, depth, F): copies
        ok = np.ones(n, dtype=bool)
        if step_ms is None:
            ok[:] = False
        else:
            for k in range(1, window):
                ok &= ts - hist_ts[:, k - 1] <= 1.5 * k * step_ms
        # (n, depth × F) in feature_columns' order: lag 1 of every feature, then lag 2, …
        lags = pd.DataFrame(hist_vals.reshape(n, depth * len(features)), columns=names, index=samples.index)
        # the history moves one step: this sample becomes lag 1
        if depth > 1:
            self._vals[slots, 1:] = hist_vals[:, :-1]
            self._ts[slots, 1:] = hist_ts[:, :-1]
        self._vals[slots, 0] = X
        self._ts[slots, 0] = ts
        self._calls += 1
        if self._calls % self.COMPACT_EVERY == 0:
            self._forget(int(ts.max()) - int(self.forget_after_s * 1000))
        out = pd.concat([samples, lags], axis=1)
        if not ok.all():
            out = out[ok].reset_index(drop=True)
        return out, int(n - ok.sum())

    def _forget(self, cutoff_ms: int) -> None:
        keep = self._ts[:, 0] >= cutoff_ms
        if keep.all():
            return
        self._keys = self._keys[keep]
        self._vals, self._ts = self._vals[keep], self._ts[keep]


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


def ood_events(scores: IntervalScores, model: LoadedModel) -> pd.DataFrame:
    """The interval's OOD events in the review queue's shape: one per OOD node, its worst CPU's sample."""
    bad = scores.nodes[scores.nodes["ood"]]
    cols = [
        "ts",
        "node",
        "cpu",
        "score",
        "threshold",
        "model_version",
        "features",
        "latent_0",
        "latent_1",
        "nearest_flavour",
    ]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    rows = scores.samples.iloc[bad["worst"].to_numpy()]
    feats = rows[list(model.features)].to_numpy(dtype=np.float64)
    zcols = [c for c in rows.columns if c.startswith("latent_")]
    Z = rows[zcols].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(),
            "node": rows["node"].astype(str).to_numpy(),
            "cpu": rows["cpu"].astype(int).to_numpy(),
            "score": rows["error"].to_numpy(dtype=np.float64),
            "threshold": scores.threshold,
            "model_version": int(scores.model_version),
            "features": [{f: round(float(v), 6) for f, v in zip(model.features, r)} for r in feats],
            "latent_0": Z[:, 0] if Z.shape[1] > 0 else np.nan,
            "latent_1": Z[:, 1] if Z.shape[1] > 1 else np.nan,
            "nearest_flavour": model.nearest_flavour(Z),
        }
    )


# -- the exporter ----------------------------------------------------------------------------------


class _NodeCollector:
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


class ServingMetrics:
    """didact's serving metrics on their own ``CollectorRegistry`` (see the module doc)."""

    def __init__(
        self,
        cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
        stale_after_s: float = 300.0,
        registry=None,
        feed: str = "",
        model_name: str = "",
    ):
        import prometheus_client as pc

        pc.disable_created_metrics()  # no *_created series: low cardinality, nothing the dashboards use
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        r = self.registry
        #: per-node families, rendered next to the registry's (see :meth:`text`)
        self.nodes = _NodeCollector(cpu_label_cap, stale_after_s)
        self.ood_events = pc.Counter("didact_ood_events", "OOD events sent to the review queue", registry=r)
        self.ood_samples = pc.Counter(
            "didact_ood_samples", "CPU samples above the model threshold", registry=r
        )
        self.samples_scored = pc.Counter("didact_samples_scored", "CPU samples scored", registry=r)
        self.cleaning = pc.Counter(
            "didact_cleaning_events", "What preprocessing found in the live counters", ["kind"], registry=r
        )
        for k in CLEANING_KINDS:
            self.cleaning.labels(k)
        self.scoring_seconds = pc.Histogram(
            "didact_scoring_duration_seconds",
            "Time to preprocess, score and aggregate one interval",
            buckets=SCORING_BUCKETS,
            registry=r,
        )
        self.poll_seconds = pc.Gauge(
            "didact_feed_poll_duration_seconds", "Time of the last feed poll", registry=r
        )
        self.feed_up = pc.Gauge(
            "didact_feed_up", "1 when the last poll of the live feed succeeded", registry=r
        )
        self.last_poll = pc.Gauge(
            "didact_last_poll_timestamp_seconds", "Wall-clock time of the last successful poll", registry=r
        )
        self.champion_version = pc.Gauge(
            "didact_champion_version", "Registry version of the model being served (0: none)", registry=r
        )
        self.threshold = pc.Gauge(
            "didact_model_threshold", "OOD threshold of the model being served", registry=r
        )
        self.reloads = pc.Counter(
            "didact_model_reloads", "Model switches (the first load included)", registry=r
        )
        self.registry_up = pc.Gauge(
            "didact_registry_up", "1 when the model registry answered the last check", registry=r
        )
        self.registry_errors = pc.Counter(
            "didact_registry_errors", "Failed registry checks and model loads", registry=r
        )
        self.review_errors = pc.Counter(
            "didact_review_errors", "Failed writes to the OOD review queue", registry=r
        )
        self.facts = {
            "holdout_error": pc.Gauge(
                "didact_model_holdout_error",
                "Mean reconstruction error of the served model on its day's held-out split",
                registry=r,
            ),
            "latent_knn_accuracy": pc.Gauge(
                "didact_model_latent_knn_accuracy",
                "kNN accuracy of job flavours in the served model's latent space",
                registry=r,
            ),
            "fault_roc_auc": pc.Gauge(
                "didact_model_fault_roc_auc",
                "ROC AUC of the served model's error on labelled faults",
                registry=r,
            ),
            "train_loss": pc.Gauge(
                "didact_model_train_loss", "Last training loss of the served model", registry=r
            ),
            "val_loss": pc.Gauge(
                "didact_model_val_loss", "Last validation loss of the served model", registry=r
            ),
        }
        self.info = pc.Gauge(
            "didact_serving_info",
            "The serving process: live feed and registered model",
            ["feed", "model"],
            registry=r,
        )
        self.info.labels(feed, model_name).set(1)
        self.feed_up.set(0)
        self.registry_up.set(0)
        self.champion_version.set(0)

    def model_loaded(self, model: LoadedModel) -> None:
        self.champion_version.set(model.version)
        self.threshold.set(model.threshold)
        self.reloads.inc()
        for name, gauge in self.facts.items():
            v = model.facts.get(name)
            gauge.set(float(v) if v is not None else float("nan"))

    def interval(
        self,
        scores: IntervalScores | None,
        power: pd.Series | None,
        now: float,
        poll_seconds: float,
        events: int,
    ) -> None:
        self.feed_up.set(1)
        self.last_poll.set(now)
        self.poll_seconds.set(poll_seconds)
        self.nodes.update(scores, power, now)
        if scores is None:
            return
        self.scoring_seconds.observe(scores.seconds)
        self.samples_scored.inc(len(scores.samples))
        self.ood_samples.inc(scores.ood_samples)
        self.ood_events.inc(events)
        rep = scores.report
        for k in CLEANING_KINDS:
            v = getattr(rep, k)
            if v:
                self.cleaning.labels(k).inc(v)

    def text(self) -> bytes:
        """The exposition text, as ``/metrics`` serves it: the per-node families, then the registry's."""
        from prometheus_client import generate_latest

        return self.nodes.text().encode() + generate_latest(self.registry)


# -- following the registry ------------------------------------------------------------------------


class ModelWatcher:
    """Follows the registry's ``champion`` alias; keeps the last good model when it cannot.

    :meth:`check` is one look (returns True when it switched models); :meth:`due` says
    whether the next look is due (every ``reload_s``; after failures, exponential backoff
    up to :data:`MAX_BACKOFF_S`).  For a sqlite registry the database file must exist:
    serving never creates a registry; a file that vanished counts as unreachable, one
    that never existed as "nothing trained yet" (``didact_registry_up`` 0, no backoff).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ServingMetrics | None = None,
        reload_s: float = DEFAULT_RELOAD_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.metrics = metrics
        self.reload_s = reload_s
        self._clock = clock
        self.current: LoadedModel | None = None
        self.up: bool | None = None
        self.failures = 0
        self.last_error: str = ""
        self._next = 0.0
        self._reg = None
        self._db_id = None
        self._said_no_champion = False

    # -- registry access --
    def _sqlite_path(self) -> Path | None:
        uri = self.settings.tracking_uri
        return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None

    def _registry(self):
        from didact_core.learn.registry import ModelRegistry

        path = self._sqlite_path()
        if path is not None:
            try:
                st = path.stat()
            except OSError:
                self._reg = None
                if self._db_id is None and self.current is None:
                    return None  # never seen: nothing has been trained in this home yet
                raise RegistryError(
                    f"MLflow registry {path}",
                    "does not exist (moved or deleted?)",
                    "restore it or fix DIDACT_MLFLOW_TRACKING_URI; the last model keeps serving",
                ) from None
            db_id = (st.st_dev, st.st_ino)
            if self._reg is not None and db_id != self._db_id:  # replaced: reconnect to the new file
                self._reg = None
            self._db_id = db_id
        if self._reg is None:
            self._reg = ModelRegistry(self.settings)
        return self._reg

    def due(self) -> bool:
        return self._clock() >= self._next

    def check(self) -> bool:
        """Look at the champion alias once; load and switch when it moved."""
        from mlflow.exceptions import MlflowException

        from didact_core.learn.registry import CHAMPION

        try:
            reg = self._registry()
            version = None if reg is None else _champion_version(reg, CHAMPION)
        except (DidactError, MlflowException, OSError) as e:
            self._failed(f"checking the champion alias: {_msg(e)}")
            return False
        if reg is None:
            self._next = self._clock() + self.reload_s
            if self.metrics is not None:
                self.metrics.registry_up.set(0)
            if not self._said_no_champion:
                log.warning(
                    "no model registry at %s yet (nothing trained in this home): serving waits and checks "
                    "every %gs — train a champion (didact demo, or materialise champion_model)",
                    self._sqlite_path(),
                    self.reload_s,
                )
                self._said_no_champion = True
            return False
        self._ok()
        if version is None:
            if self.current is None:
                if not self._said_no_champion:
                    log.warning(
                        "no champion in the registry %s (model %s) yet: serving waits and checks every "
                        "%gs — train one (didact demo, or materialise champion_model)",
                        _redact_uri(self.settings.tracking_uri),
                        self.settings.model_name,
                        self.reload_s,
                    )
                    self._said_no_champion = True
            else:
                log.warning(
                    "the champion alias of %s is gone; still serving v%d",
                    self.settings.model_name,
                    self.current.version,
                )
            return False
        if self.current is not None and version == self.current.version:
            return False
        try:
            detector = reg.load(version)
        except (DidactError, MlflowException, OSError) as e:
            self._failed(f"loading champion v{version}: {_msg(e)}", registry_down=False)
            return False
        try:
            model = LoadedModel(
                detector, version, facts=_model_facts(reg, version), centroids=_centroids(reg, version)
            )
        except DidactError as e:
            self._failed(f"champion v{version} cannot be served: {_msg(e)}", registry_down=False)
            return False
        model.score(
            np.zeros((1, len(model.features)), np.float32)
        )  # decide one-pass scoring now, not mid-interval
        old = self.current
        self.current = model
        self._said_no_champion = False
        if self.metrics is not None:
            self.metrics.model_loaded(model)
        log.info(
            "serving %s v%d (threshold %.4g; %d features%s%s)%s",
            self.settings.model_name,
            version,
            model.threshold,
            len(model.base_features),
            ", node-level" if model.needs_node_metrics else "",
            f", window {model.window}" if model.window > 1 else "",
            f", was v{old.version}" if old else "",
        )
        return True

    def _ok(self) -> None:
        if self.up is False:
            log.warning("model registry reachable again after %d failed check(s)", self.failures)
        self.up, self.failures, self.last_error = True, 0, ""
        self._next = self._clock() + self.reload_s
        if self.metrics is not None:
            self.metrics.registry_up.set(1)

    def _failed(self, problem: str, registry_down: bool = True) -> None:
        self.failures += 1
        self.last_error = problem
        delay = min(
            self.reload_s * 2 ** (self.failures - 1),
            max(self.reload_s, min(MAX_BACKOFF_S, 10 * self.reload_s)),
        )
        self._next = self._clock() + delay
        keeping = f"keeping v{self.current.version}" if self.current else "no model to serve yet"
        log.warning("model registry: %s — %s; retry in %.0fs", problem, keeping, delay)
        if self.metrics is not None:
            self.metrics.registry_errors.inc()
            if registry_down:
                self.metrics.registry_up.set(0)
        if registry_down:
            self.up = False
            self._reg = None


def _champion_version(reg, alias: str) -> int | None:
    """The version ``alias`` points at (None: no such model or alias), in one request.

    Reads the registered model's aliases rather than ``ModelRegistry.alias``, which takes
    any error mentioning "alias" for a missing alias: a tracking server that is down must
    count as unreachable, not as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        model = reg.client.get_registered_model(reg.name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            return None
        raise
    version = (getattr(model, "aliases", None) or {}).get(alias)
    return int(version) if version is not None else None


def _msg(e: BaseException) -> str:
    return str(getattr(e, "message", None) or e)[:300]


def _redact_uri(uri: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


def _model_facts(reg, version: int) -> dict:
    """Cheap MLflow facts of a version: its training run's last metrics and, when the
    version was evaluated (model_evaluation), the evaluation's held-out metrics."""
    from mlflow.exceptions import MlflowException

    facts: dict = {}
    try:
        info = reg.version(version)
        if info.run_id:
            m = reg.client.get_run(info.run_id).data.metrics
            for k in ("train_loss", "val_loss"):
                if k in m:
                    facts[k] = m[k]
            if "train_knn_accuracy" in m:
                facts["latent_knn_accuracy"] = m["train_knn_accuracy"]
        runs = reg.client.search_runs(
            [reg.experiment_id],
            filter_string=(
                f"tags.`didact.kind` = 'evaluate' and tags.`didact.challenger_version` = '{version}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            m = runs[0].data.metrics
            for name, key in (
                ("holdout_error", "challenger.holdout.mean_error"),
                ("latent_knn_accuracy", "challenger.holdout.latent_knn_accuracy"),
                ("fault_roc_auc", "challenger.holdout.fault_roc_auc"),
            ):
                if key in m:
                    facts[name] = m[key]
        if "holdout_error" not in facts and info.run_id:
            path = reg.client.download_artifacts(info.run_id, "promotion_gate.json")
            gate = json.loads(Path(path).read_text())
            err = gate.get("challenger", {}).get("holdout", {}).get("mean_error")
            if err is not None:
                facts["holdout_error"] = float(err)
    except (DidactError, MlflowException, OSError, ValueError) as e:
        log.info("model v%d: some MLflow facts unavailable (%s)", version, _msg(e))
    return facts


def _centroids(reg, version: int) -> dict:
    try:
        raw = reg.version(version).tags.get("centroids") or "{}"
        cents = json.loads(raw)
        return {str(k): [float(x) for x in v] for k, v in cents.items()} if isinstance(cents, dict) else {}
    except (DidactError, ValueError, TypeError):
        return {}


# -- the review queue ------------------------------------------------------------------------------


class ReviewSink:
    """Sends each interval's OOD events and totals to :class:`didact_core.data.review.ReviewQueue`
    in one batch; what fails is kept (bounded) and retried with the next interval."""

    def __init__(self, settings: Settings, max_pending: int = 10_000):
        self.settings = settings
        self.max_pending = max_pending
        self._queue = None
        self._events: list[pd.DataFrame] = []
        self._stats: list[tuple] = []
        self.dropped = 0

    def submit(self, events: pd.DataFrame, stats: tuple | None) -> int:
        """Queue ``events`` and one ``(ts, samples, ood, model_version)`` row; write all pending.
        Returns the number of events written (raises nothing: failures are logged and counted)."""
        import duckdb

        if len(events):
            self._events.append(events)
        if stats is not None:
            self._stats.append(stats)
        n_pending = sum(len(e) for e in self._events)
        if n_pending > self.max_pending:
            drop = n_pending - self.max_pending
            batch = pd.concat(self._events, ignore_index=True)
            self._events = [batch.iloc[drop:]]
            self.dropped += drop
            log.warning("review queue unreachable: dropped the %d oldest pending OOD events", drop)
        self._stats = self._stats[-self.max_pending :]
        if not self._events and not self._stats:
            return 0
        try:
            if self._queue is None:
                from didact_core.data.review import ReviewQueue

                self._queue = ReviewQueue(self.settings)
            batch = pd.concat(self._events, ignore_index=True) if self._events else None
            if batch is not None and len(batch):
                self._queue.add_events(batch)
            self._events = []
            for ts, samples, ood, version in self._stats:
                self._queue.record_scoring(ts, samples, ood, version)
            self._stats = []
            return 0 if batch is None else len(batch)
        except (DidactError, OSError, ImportError, duckdb.Error) as e:
            self._queue = None
            raise _ReviewFailed(str(e)[:300]) from None


class _ReviewFailed(Exception):
    pass


# -- the service -----------------------------------------------------------------------------------


class ServingService:
    """Feed → scorer → exporter + review queue, with a :class:`ModelWatcher` (see module doc).

    ``run_once()`` does one interval (tests, benchmarks); ``run(stop)`` loops until
    ``stop`` is set, with the watcher in a thread of its own.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        feed: LiveFeed | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        reload_s: float = DEFAULT_RELOAD_S,
        cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
        review: bool = True,
        stale_after_s: float | None = None,
    ):
        self.settings = settings or Settings.from_env()
        if not interval_s > 0 or not reload_s > 0:
            raise DidactError(
                f"serving interval {interval_s}s / reload {reload_s}s", "must be positive seconds"
            )
        if cpu_label_cap < 0:
            raise DidactError(
                f"cpu_label_cap={cpu_label_cap}", "must not be negative", "0 disables per-CPU series"
            )
        self.feed = feed or make_feed(None, self.settings)
        self.interval_s = float(interval_s)
        self.reload_s = float(reload_s)
        stale = stale_after_s if stale_after_s is not None else max(10 * self.interval_s, 120.0)
        self.metrics = ServingMetrics(
            cpu_label_cap, stale, feed=self.feed.name, model_name=self.settings.model_name
        )
        self.watcher = ModelWatcher(self.settings, self.metrics, self.reload_s)
        self.scorer = Scorer(interval_s=getattr(self.feed, "scrape_interval_s", None))
        self.review = ReviewSink(self.settings) if review else None
        self.last: IntervalScores | None = None
        self.intervals = 0
        self._http = None
        self._watch_thread: threading.Thread | None = None
        self._warned_no_node_metrics = False
        self._warned_gaps_at = -math.inf

    # -- one interval --
    def run_once(self) -> IntervalScores | None:
        """Poll, score, export, enqueue events.  Checks the registry first when no watcher
        thread runs and a check is due.  Returns the interval's scores (None: first poll,
        no model, or the feed failed)."""
        if self._watch_thread is None and self.watcher.due():
            self.watcher.check()
        model = self.watcher.current
        want_nodes = model is not None and model.needs_node_metrics
        t0 = time.perf_counter()
        try:
            raw = self.feed.poll(node_metrics=True) if want_nodes else self.feed.poll()
            node_metrics = self.feed.node_metrics() if want_nodes else None
        except SourceUnavailableError as e:
            self.metrics.feed_up.set(0)
            log.warning("live feed %s: %s", self.feed.name, e)
            return None
        poll_s = time.perf_counter() - t0
        if want_nodes and node_metrics is None and not self._warned_no_node_metrics:
            log.warning(
                "live feed %s gives no node-level metrics, which champion v%d uses (%s): its samples are "
                "counted as missing_node_metrics and not scored",
                self.feed.name,
                model.version,
                ", ".join(f for f in model.base_features if f in NODE_FEATURES),
            )
        self._warned_no_node_metrics = want_nodes and node_metrics is None
        now = time.time()
        scores = self.scorer.score(raw, model, now, node_metrics=node_metrics)
        events = pd.DataFrame()
        if scores is not None:
            events = ood_events(scores, model)
            self._check_skipped_scrapes(scores, model)
        sent = len(events)
        self.metrics.interval(scores, self.feed.power(), now, poll_s, sent)
        if self.review is not None and scores is not None:
            try:
                self.review.submit(
                    events, (scores.ts, len(scores.samples), scores.ood_samples, scores.model_version)
                )
            except _ReviewFailed as e:
                self.metrics.review_errors.inc()
                log.warning("review queue: %s — %d event(s) kept for the next interval", e, sent)
        self.intervals += 1
        self.last = scores
        if scores is not None:
            log.debug(
                "interval: %d samples, %d nodes, %d OOD, %.1f ms",
                len(scores.samples),
                len(scores.nodes),
                int(scores.nodes["ood"].sum()),
                scores.seconds * 1e3,
            )
        return scores

    def _check_skipped_scrapes(self, scores: IntervalScores, model: LoadedModel) -> None:
        """Warn (at most hourly) when a windowed model's samples often span skipped scrapes."""
        rep = scores.report
        seen = rep.rows_out + rep.window_incomplete + rep.missing_node_metrics
        if model.window <= 1 or seen == 0 or rep.gaps <= 0.1 * seen:
            return
        if time.monotonic() - self._warned_gaps_at < 3600:
            return
        self._warned_gaps_at = time.monotonic()
        log.warning(
            "%d of %d samples span more than one scrape interval (%.3gs): champion v%d's window of %d "
            "needs consecutive scrapes — poll more often than the source scrapes (--interval, e.g. half "
            "the scrape interval)",
            rep.gaps,
            seen,
            self.scorer.step_s() or float("nan"),
            model.version,
            model.window,
        )

    # -- HTTP --
    def start_http(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Serve ``/metrics`` on host:port in a thread (port 0 picks a free one); returns the port."""
        try:
            server = _make_server(host, port, _MetricsApp(self.metrics))
        except OSError as e:
            raise DidactError(
                f"metrics address {host}:{port}",
                f"cannot be bound ({e.strerror or e})",
                "pick a free port with --port (or stop what holds it)",
            ) from None
        thread = threading.Thread(target=server.serve_forever, name="didact-metrics-http", daemon=True)
        thread.start()
        self._http = (server, thread)
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None

    # -- loops --
    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.watcher.due():
                try:
                    self.watcher.check()
                except Exception as e:  # noqa: BLE001 — the watcher must outlive any registry surprise
                    self.watcher._failed(f"unexpected {type(e).__name__}: {e}")
            stop.wait(min(1.0, self.reload_s))

    def run(self, stop: threading.Event, max_intervals: int | None = None) -> None:
        """Score every ``interval_s`` until ``stop`` is set (or ``max_intervals`` ran)."""
        self.watcher.check()  # the first interval already has the champion, if there is one
        self._watch_thread = threading.Thread(
            target=self._watch, args=(stop,), name="didact-model-watcher", daemon=True
        )
        self._watch_thread.start()
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                self.run_once()
                if max_intervals is not None and self.intervals >= max_intervals:
                    break
                next_t += self.interval_s
                late = time.monotonic() - next_t
                if late > 0:  # an interval overran: skip ahead rather than bursting to catch up
                    next_t += math.ceil(late / self.interval_s) * self.interval_s
                stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            stop.set()
            self._watch_thread.join(timeout=max(5.0, self.reload_s + 1))
            self._watch_thread = None

    def close(self) -> None:
        self.stop_http()
        self.feed.close()


class _MetricsApp:
    """WSGI app: ``/metrics`` (gzip when asked, as Prometheus does), 404 elsewhere."""

    def __init__(self, metrics: ServingMetrics):
        self.metrics = metrics

    def __call__(self, environ, start_response):
        import gzip

        from prometheus_client import CONTENT_TYPE_LATEST

        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"didact serving: see /metrics\n"]
        body = self.metrics.text()
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]


def _make_server(host: str, port: int, app):
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, fmt, *args):
            log.debug("http: " + fmt, *args)

    return make_server(host, port, app, Server, handler_class=QuietHandler)


def serve(
    settings: Settings | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    interval_s: float = DEFAULT_INTERVAL_S,
    reload_s: float = DEFAULT_RELOAD_S,
    feed: LiveFeed | str | None = None,
    *,
    cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
    review: bool = True,
    max_intervals: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set, or ``max_intervals``); returns 0.

    ``feed``: a :class:`~didact_core.ingest.live.LiveFeed`, or its name (``simulator``,
    ``prometheus``, ``localhost``); default: the settings' source.  Signal handlers are
    installed only when called from the main thread.
    """
    settings = settings or Settings.from_env()
    # a dead HTTP tracking server should cost a check seconds, not MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if feed is None or isinstance(feed, str):
        feed = make_feed(feed, settings)
    service = ServingService(
        settings, feed, interval_s=interval_s, reload_s=reload_s, cpu_label_cap=cpu_label_cap, review=review
    )
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum, frame):
            log.info("%s: stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        bound = service.start_http(host, port)
        log.info(
            "didact serving: feed %s, every %gs, champion checked every %gs, metrics on %s:%d",
            feed.name,
            interval_s,
            reload_s,
            host,
            bound,
        )
        service.run(stop, max_intervals=max_intervals)
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("didact serving stopped after %d intervals", service.intervals)
    return 0


# -- command line ----------------------------------------------------------------------------------


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``serve`` (for ``python -m didact_core.serve.service`` and ``didact serve``)."""
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="metrics port (default %(default)s; 0: any free)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between scoring intervals (default: DIDACT_INTERVAL_S)",
    )
    p.add_argument(
        "--reload",
        type=float,
        default=DEFAULT_RELOAD_S,
        help="seconds between checks of the champion alias (default %(default)s)",
    )
    p.add_argument(
        "--feed",
        choices=FEEDS,
        default=None,
        help="live feed (default: prometheus if DIDACT_SOURCE=prometheus, else simulator)",
    )
    p.add_argument(
        "--cpu-label-cap",
        type=int,
        default=DEFAULT_CPU_LABEL_CAP,
        help="export per-CPU series only while nodes x CPUs <= this (default %(default)s)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulator feed: simulated seconds per wall-clock second (default 1: real time)",
    )
    p.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="NODE=KIND",
        help="simulator feed: make NODE behave as fault KIND (cpu_hog, io_stall, steal_storm, "
        "softirq_storm) or as MODE:FRACTION,… (e.g. system:0.95,idle:0.05) from the start; "
        "repeatable",
    )
    p.add_argument("--no-review", action="store_true", help="do not write OOD events to the review queue")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="CPU threads for the model (default 0: torch's choice, one per core; 1 is steadier on a "
        "node shared with other work)",
    )
    p.add_argument("--max-intervals", type=int, default=None, help="stop after this many intervals")
    return p


def _parse_signature(item: str, text: str) -> dict[str, float]:
    """``system:0.95,idle:0.05`` → {"system": 0.95, "idle": 0.05}."""
    out = {}
    for part in text.split(","):
        mode, _, frac = part.partition(":")
        try:
            out[mode.strip()] = float(frac)
        except ValueError:
            raise DidactError(
                f"--inject-fault {item!r}", f"{part!r} is not MODE:FRACTION", "e.g. system:0.95,idle:0.05"
            ) from None
    return out


def serve_from_args(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run :func:`serve` with the options of :func:`add_serve_arguments`; returns the exit code.

    Raises :class:`DidactError` for bad options or settings (the caller prints it)."""
    settings = settings or Settings.from_env()
    kind = args.feed or ("prometheus" if settings.source == "prometheus" else "simulator")
    kw: dict = {}
    if kind == "simulator":
        faults = {}
        for item in args.inject_fault:
            node, sep, fault = item.partition("=")
            if not sep or not fault:
                raise DidactError(
                    f"--inject-fault {item!r}",
                    "is not NODE=KIND or NODE=MODE:FRACTION,…",
                    "e.g. node0003=io_stall or node0003=system:0.95,idle:0.05",
                )
            faults[node] = _parse_signature(item, fault) if ":" in fault else fault
        kw = {"speed": args.speed, "faults": faults}
    elif args.inject_fault or args.speed != 1.0:
        raise DidactError("--inject-fault / --speed", f"apply to the simulator feed only, not {kind}")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    feed = make_feed(kind, settings, **kw)
    return serve(
        settings,
        args.host,
        args.port,
        args.interval or settings.interval_s,
        args.reload,
        feed,
        cpu_label_cap=args.cpu_label_cap,
        review=not args.no_review,
        max_intervals=args.max_intervals,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m didact_core.serve.service",
        description="Score every node with the registry's champion and export the results on /metrics. "
        "Settings (DIDACT_HOME, DIDACT_NODES, …) come from the environment.",
    )
    add_serve_arguments(p)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return serve_from_args(args)
    except DidactError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
