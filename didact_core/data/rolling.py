"""Rolling statistics: longer temporal context than a window of lags, causal, and the same
numbers whether a day is preprocessed at once or served one scrape at a time.

A rolling feature is named ``<quantity>_<stat>_<W>s``: the statistic over the last ``R =
max(2, round(W / interval))`` samples of the same (node, cpu) series that lie within the
window (``ts − ts_k < (R − ½) × interval``: a missed scrape leaves a hole, not an older
sample).  A value at ``t`` uses only samples at or before ``t``.  A sample whose window
holds fewer than ``max(2, ⌈R / 2⌉)`` samples (series starts, after long gaps) is dropped
and counted as ``window_incomplete``; it still enters the history.

==================  ==================================================================
feature             what
==================  ==================================================================
``q_mean_Ws``       mean of ``q`` ∈ busy, user, system, iowait (this CPU's fractions)
``q_std_Ws``        its spread (population standard deviation)
``busy_ac1_Ws``     lag-1 autocorrelation of busy, mapped to [0, 1] as (1 + ρ) / 2
``busy_ac5_Ws``     … at lag 5 (0.5 when the window has no such pairs or no spread)
``ctxt_logmean_Ws`` log(1 + mean context-switch rate) of the node over the window
``ctxt_cv_Ws``      burstiness of context switches: std / (mean + 1) of the rate
``intr_logmean_Ws`` / ``intr_cv_Ws``: the same for interrupts
==================  ==================================================================

Every feature is ≥ 0 (a node-level model takes log1p of its inputs).  The feature group
``rolling`` (30 s) or ``rollingN`` (N s, 5–3600) expands to the CPU statistics, plus the
node statistics when the feature list also holds a node-level feature (their rates need
node exporter's metrics, which only a node-level model reads).  The scale-free ones
(``cv``, ``ac``) compare across machines whose absolute rates differ.

Batch (a day) and incremental (serving) go through one code path, :class:`RollingState`:
a fresh state for a day; serving keeps one across polls.  The sums run over the window
in a fixed order (oldest first), element by element, so both give the same bits.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from didact_core.errors import DidactError

#: the quantities a rolling statistic can be taken of → the AI-ready column they come from
CPU_QUANTITIES = {"busy": "busy", "user": "user", "system": "system", "iowait": "iowait"}
NODE_QUANTITIES = {"ctxt": "ctxt_rate", "intr": "intr_rate"}
#: the statistics each quantity offers
_STATS = {
    **{q: ("mean", "std") for q in CPU_QUANTITIES},
    "busy": ("mean", "std", "ac1", "ac5"),
    **{q: ("logmean", "cv") for q in NODE_QUANTITIES},
}
DEFAULT_SECONDS = 30
_NAME_RE = re.compile(r"^([a-z]+)_([a-z0-9]+)_([0-9]+)s$")
_GROUP_RE = re.compile(r"^rolling([0-9]*)$")
#: a near-constant series has no meaningful autocorrelation: its variance is padded by this
_AC_EPS = 1e-3
#: the ts of an empty history slot (fails every in-window test; ts - _NO_TS does not overflow)
_NO_TS = -(2**62)


def parse(name: str) -> tuple[str, str, int] | None:
    """``"busy_std_30s"`` → ``("busy", "std", 30)``; None for a name that is not a rolling feature."""
    m = _NAME_RE.match(name)
    if not m or m.group(2) not in _STATS.get(m.group(1), ()):
        return None
    return m.group(1), m.group(2), int(m.group(3))


def is_rolling(name: str) -> bool:
    return parse(name) is not None


def group_seconds(token: str) -> int | None:
    """Seconds of a ``rolling``/``rollingN`` group token; None for another token."""
    m = _GROUP_RE.match(token)
    if not m:
        return None
    seconds = int(m.group(1)) if m.group(1) else DEFAULT_SECONDS
    if not 5 <= seconds <= 3600:
        raise DidactError(f"feature group {token!r}", "rolling windows span 5 to 3600 seconds", "e.g. rolling30")
    return seconds


def rolling_features(seconds: int = DEFAULT_SECONDS, node: bool = True) -> tuple[str, ...]:
    """The features of a ``rolling`` group: CPU statistics, then (``node``) node statistics."""
    qs = [*CPU_QUANTITIES, *(NODE_QUANTITIES if node else ())]
    return tuple(f"{q}_{s}_{seconds}s" for q in qs for s in _STATS[q])


def sources(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(CPU feature columns, node-level feature columns) the rolling ``names`` are computed from."""
    qs = {p[0] for p in map(parse, names) if p}
    return (tuple(c for q, c in CPU_QUANTITIES.items() if q in qs), tuple(c for q, c in NODE_QUANTITIES.items() if q in qs))


def window_samples(seconds: int, interval_s: float) -> int:
    """Samples in a rolling window of ``seconds`` at scrapes every ``interval_s``."""
    return max(2, int(round(seconds / interval_s)))


def _min_samples(R: int) -> int:
    return max(2, math.ceil(R / 2))


class _Buffer:
    """One window length's history: per series its last R − 1 source rows, oldest first."""

    def __init__(self, depth: int, n_src: int):
        self.depth = depth
        self.keys = pd.Index([], dtype=object)
        self.vals = np.zeros((0, depth, n_src), np.float64)
        self.ts = np.zeros((0, depth), np.int64)

    def resize(self, depth: int) -> None:
        """Keep the newest ``min(depth, old)`` rows of each series."""
        S, keep = len(self.keys), min(depth, self.depth)
        vals = np.full((S, depth, self.vals.shape[2]), np.nan, np.float64)
        ts = np.full((S, depth), _NO_TS, np.int64)
        if keep:
            vals[:, depth - keep :], ts[:, depth - keep :] = self.vals[:, self.depth - keep :], self.ts[:, self.depth - keep :]
        self.vals, self.ts, self.depth = vals, ts, depth


class RollingState:
    """Per (node, cpu) series, the recent samples the rolling features need, kept across
    calls (serving: one per poll; a day: one call on a fresh state).  Series unseen for
    ``forget_after_s`` are dropped now and then."""

    COMPACT_EVERY = 64

    def __init__(self, forget_after_s: float = 3600.0):
        self.forget_after_s = forget_after_s
        self.sources: tuple[str, ...] = ()
        self._bufs: dict[int, _Buffer] = {}
        self._calls = 0

    def apply(self, samples: pd.DataFrame, names, interval_s: float) -> tuple[pd.DataFrame, int]:
        """``samples`` (with the source columns, any number of rows per series, each series in
        time order) plus the rolling columns ``names``; rows whose window holds too few
        samples dropped.  Returns (frame, rows dropped) and updates the history."""
        names = tuple(names)
        parsed = {n: parse(n) for n in names}
        bad = [n for n, p in parsed.items() if p is None]
        if bad:
            raise DidactError(f"rolling features {bad}", "are not rolling feature names", "e.g. busy_std_30s")
        cpu_src, node_src = sources(names)
        src = cpu_src + node_src
        if src != self.sources:  # other inputs: nothing of the old history applies
            self.sources, self._bufs = src, {}
        n = len(samples)
        if n == 0:
            return samples.assign(**{c: np.zeros(0, np.float32) for c in names}), 0
        X = np.column_stack([samples[c].to_numpy(dtype=np.float64) for c in src])
        ts = samples["ts"].array.asi8
        keys = _series_keys(samples)
        out: dict[str, np.ndarray] = {}
        ok = np.ones(n, dtype=bool)
        for seconds in sorted({p[2] for p in parsed.values()}):
            R = window_samples(seconds, interval_s)
            want = {n_: p for n_, p in parsed.items() if p[2] == seconds}
            cols, count = self._one_window(seconds, R, (R - 0.5) * interval_s * 1000.0, keys, ts, X, src, want)
            out.update(cols)
            ok &= count >= _min_samples(R)
        self._calls += 1
        if self._calls % self.COMPACT_EVERY == 0:
            self._forget(int(ts.max()) - int(self.forget_after_s * 1000))
        frame = samples.assign(**{c: out[c] for c in names})
        if not ok.all():
            frame = frame[ok].reset_index(drop=True)
        return frame, int(n - ok.sum())

    def _one_window(self, seconds, R, limit_ms, keys, ts, X, src, want) -> tuple[dict, np.ndarray]:
        D = R - 1
        buf = self._bufs.get(seconds)
        if buf is None:
            buf = self._bufs[seconds] = _Buffer(D, len(src))
        elif buf.depth != D:
            buf.resize(D)
        codes, uniq = pd.factorize(keys)
        order = np.lexsort((ts, codes))
        c_s = codes[order]
        starts = np.flatnonzero(np.r_[True, c_s[1:] != c_s[:-1]])
        counts = np.diff(np.r_[starts, len(c_s)])
        G = len(starts)
        group_keys = pd.Index(uniq[c_s[starts]], dtype=object)
        slots = buf.keys.get_indexer(group_keys)
        hist_v = np.full((G, D, X.shape[1]), np.nan, np.float64)
        hist_t = np.full((G, D), _NO_TS, np.int64)
        have = slots >= 0
        hist_v[have], hist_t[have] = buf.vals[slots[have]], buf.ts[slots[have]]
        # extended rows: each group's D history rows, then its new rows (in time order)
        off = np.arange(G) * D + starts
        group = np.repeat(np.arange(G), counts)
        pos = off[group] + D + (np.arange(len(c_s)) - starts[group])
        hpos = (off[:, None] + np.arange(D)[None, :]).ravel()
        ext_v = np.empty((G * D + len(c_s), X.shape[1]), np.float64)
        ext_t = np.empty(G * D + len(c_s), np.int64)
        ext_v[hpos], ext_t[hpos] = hist_v.reshape(G * D, -1), hist_t.ravel()
        ext_v[pos], ext_t[pos] = X[order], ts[order]
        cols, count = _statistics(ext_v, ext_t, pos, R, limit_ms, src, want)
        self._store(buf, group_keys, slots, ext_v, ext_t, off + counts, D)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return {k: v[inv] for k, v in cols.items()}, count[inv]

    @staticmethod
    def _store(buf: _Buffer, group_keys, slots, ext_v, ext_t, first, D) -> None:
        """The last D extended rows of each group become its history."""
        idx = (first[:, None] + np.arange(D)[None, :]).ravel()
        new_v = ext_v[idx].reshape(len(first), D, -1)
        new_t = ext_t[idx].reshape(len(first), D)
        have = slots >= 0
        buf.vals[slots[have]], buf.ts[slots[have]] = new_v[have], new_t[have]
        if (~have).any():
            buf.keys = buf.keys.append(group_keys[~have])
            buf.vals = np.concatenate([buf.vals, new_v[~have]])
            buf.ts = np.concatenate([buf.ts, new_t[~have]])

    def _forget(self, cutoff_ms: int) -> None:
        for buf in self._bufs.values():
            keep = buf.ts[:, -1] >= cutoff_ms if buf.depth else np.zeros(len(buf.keys), bool)
            if not keep.all():
                buf.keys, buf.vals, buf.ts = buf.keys[keep], buf.vals[keep], buf.ts[keep]


def _series_keys(samples: pd.DataFrame) -> np.ndarray:
    """One string per row naming its (node, cpu) series; built per distinct series only."""
    node = samples["node"]
    codes, names = (
        (node.cat.codes.to_numpy(), node.cat.categories.astype(str))
        if isinstance(node.dtype, pd.CategoricalDtype)
        else pd.factorize(node.astype(str))
    )
    k = codes.astype(np.int64) * 65536 + samples["cpu"].to_numpy().astype(np.int64)
    kc, ku = pd.factorize(k)
    labels = np.array([f"{names[u // 65536]}\x1f{u % 65536}" for u in ku], dtype=object)
    return labels[kc]


def _statistics(ext_v, ext_t, pos, R, limit_ms, src, want) -> tuple[dict, np.ndarray]:
    """The wanted statistics at rows ``pos`` of the extended arrays over their window of R
    rows (a row k back counts when it is less than ``limit_ms`` older); sums in a fixed
    order, oldest first.  Returns (float32 columns, samples in each window)."""
    t_now = ext_t[pos]
    masks = [(t_now - ext_t[pos - k]) < limit_ms for k in range(R)]  # masks[0]: the row itself
    count = np.zeros(len(pos), np.float64)
    total = np.zeros((len(pos), ext_v.shape[1]), np.float64)
    for k in range(R - 1, -1, -1):
        count += masks[k]
        total += np.where(masks[k][:, None], ext_v[pos - k], 0.0)
    mean = total / count[:, None]
    sq = np.zeros_like(total)
    for k in range(R - 1, -1, -1):
        d = ext_v[pos - k] - mean
        sq += np.where(masks[k][:, None], d * d, 0.0)
    var = sq / count[:, None]
    col = {c: i for i, c in enumerate(src)}
    out = {}
    for name, (q, stat, _) in want.items():
        i = col[CPU_QUANTITIES.get(q) or NODE_QUANTITIES[q]]
        if stat == "mean":
            v = mean[:, i]
        elif stat == "std":
            v = np.sqrt(var[:, i])
        elif stat == "logmean":
            v = np.log1p(np.maximum(mean[:, i], 0.0))
        elif stat == "cv":
            v = np.sqrt(var[:, i]) / (np.maximum(mean[:, i], 0.0) + 1.0)
        else:  # ac<lag>
            v = _autocorrelation(ext_v[:, i], pos, masks, mean[:, i], var[:, i], int(stat[2:]))
        out[name] = v.astype(np.float32)
    return out, count


def _autocorrelation(x, pos, masks, mean, var, lag) -> np.ndarray:
    """(1 + ρ_lag) / 2 over the pairs of in-window rows ``lag`` apart (0.5 without pairs)."""
    R = len(masks)
    cov = np.zeros(len(pos), np.float64)
    pairs = np.zeros(len(pos), np.float64)
    for k in range(R - 1 - lag, -1, -1):  # the pair (k + lag, k): older row first
        both = masks[k] & masks[k + lag]
        pairs += both
        cov += np.where(both, (x[pos - k - lag] - mean) * (x[pos - k] - mean), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(pairs > 0, cov / np.maximum(pairs, 1.0) / (var + _AC_EPS), 0.0)
    return (1.0 + np.clip(rho, -1.0, 1.0)) / 2.0
