"""What scoring remembers between polls: each node's last node-level scrapes (for their
rates) and each series' last samples (for a windowed model's lag columns)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.schema import NODE_COUNTERS, NODE_GAUGES, TS_DTYPE


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
