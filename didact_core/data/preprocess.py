"""Raw cumulative CPU counters → AI-ready per-interval fractions.

For every ``(node, cpu)`` series the counters of consecutive scrapes are differenced and
each mode's share of the interval becomes a feature (default ``idle, iowait, system,
user, other``; other = irq + nice + softirq + steal).  Damage is handled and *counted*,
never silently dropped:

================  ==========================================================  ==========
count             what                                                        the sample
================  ==========================================================  ==========
duplicates        a scrape with the same (node, cpu, ts) as an earlier one    dropped
out_of_order      a row that arrived before its predecessor in time           re-sorted
nan_rows          a row with a NaN counter                                    dropped
invalid_rows      a row with an infinite or negative counter                  dropped
counter_resets    an interval over which the counters went down (reboot)      unusable
gaps              an interval longer than 1.5 × the scrape interval           kept
long_gaps         … longer than ``max_gap_factor`` × the scrape interval      unusable
clock_skew        CPU seconds differ from wall seconds by more than 25 %      kept [*]_
stalled           an interval in which no counter moved                       unusable
clamped           a small negative step in one mode (kernel iowait quirk)     kept, 0
================  ==========================================================  ==========

.. [*] fractions are normalised by the counters' own total, not by wall time, so a
   skewed timestamp does not distort them.

Input rows must keep each (node, cpu) series whole within one call (blocks of whole
nodes); rows are expected grouped by series, and are grouped here if they are not.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from didact_core.data import rolling as roll
from didact_core.errors import DataQualityError, DidactError
from didact_core.schema import (
    CPU_FRACTIONS, CPU_MODES, NODE_COUNTERS, NODE_FEATURES, NODE_GAUGES, OTHER_MODES, validate_raw_cpu,
)

log = logging.getLogger(__name__)

#: features preprocessing can produce from the CPU counters
CPU_FEATURES: dict[str, tuple[str, ...]] = {
    **{m: (m,) for m in CPU_MODES},
    "other": OTHER_MODES,
    "busy": ("system", "user", "nice", "irq", "softirq", "steal"),
}
DEFAULT_FEATURES = CPU_FRACTIONS
#: node-level features computed from the CPU counters: per (node, scrape), the mean and the
#: standard deviation over the node's CPU threads of their ``busy`` fraction.  They give each
#: per-CPU row its node's context: one busy thread on an otherwise idle node (mean 1/C, high
#: spread) is not the same as an idle thread or as one of N busy threads
NODE_CPU_FEATURES = ("node_busy", "node_busy_std")
#: feature-list shorthands: ``cpu`` = the five fractions, ``node`` = every node-level feature;
#: ``rolling`` / ``rollingN`` (rolling statistics over 30 / N s) are expanded by :func:`check_features`
FEATURE_GROUPS = {"cpu": DEFAULT_FEATURES, "node": NODE_FEATURES + NODE_CPU_FEATURES}

GAP_FACTOR = 1.5
#: the suffix of a lagged copy of a feature (``user_lag2``)
_LAG_RE = re.compile(r"_lag[0-9]+$")
SKEW_TOLERANCE = 0.25


@dataclass
class CleaningReport:
    """What preprocessing found and did (all counts; additive over blocks)."""

    rows_in: int = 0
    series: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    nan_rows: int = 0
    invalid_rows: int = 0
    counter_resets: int = 0
    gaps: int = 0
    long_gaps: int = 0
    clock_skew: int = 0
    stalled: int = 0
    clamped: int = 0
    #: samples dropped because their node had no node-level metrics at that scrape
    missing_node_metrics: int = 0
    #: samples without a full window of history (series starts and after gaps; not damage)
    window_incomplete: int = 0
    rows_out: int = 0

    def __add__(self, other: "CleaningReport") -> "CleaningReport":
        return CleaningReport(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        )

    @property
    def unusable(self) -> int:
        """Samples lost to damage (dropped rows and unusable intervals)."""
        return (
            self.nan_rows + self.invalid_rows + self.counter_resets + self.long_gaps + self.stalled
            + self.missing_node_metrics
        )  # fmt: skip

    @property
    def unusable_fraction(self) -> float:
        total = self.rows_out + self.unusable
        return self.unusable / total if total else 1.0

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["unusable"] = self.unusable
        d["unusable_fraction"] = round(self.unusable_fraction, 6)
        return d


def check_features(features) -> tuple[str, ...]:
    """Validate a feature list (groups ``cpu``/``node``/``rolling[N]`` expanded) against what
    the CPU counters and node-level metrics can give.

    ``rolling`` adds the node statistics (context switches, interrupts) only when the list
    also holds a node-level feature: only a node-level model reads node exporter's metrics."""
    expanded: list[str] = []
    rolling_groups: list[int] = []
    for f in features:
        seconds = roll.group_seconds(f)
        if seconds is not None:
            rolling_groups.append(seconds)
        else:
            expanded.extend(FEATURE_GROUPS.get(f, (f,)))
    node_level = any(f in NODE_FEATURES for f in expanded)
    for seconds in rolling_groups:
        expanded.extend(roll.rolling_features(seconds, node=node_level))
    features = tuple(expanded)
    unknown = [f for f in features if f not in CPU_FEATURES and f not in NODE_FEATURES
               and f not in NODE_CPU_FEATURES and not roll.is_rolling(f)]  # fmt: skip
    if unknown or not features:
        raise DidactError(
            f"features {list(features)}",
            f"unknown feature(s) {unknown}" if unknown else "the list is empty",
            f"choose from {sorted(CPU_FEATURES)}, the node-level {list(NODE_FEATURES + NODE_CPU_FEATURES)}, "
            "rolling statistics like busy_std_30s, or the groups cpu, node and rolling[N] (DIDACT_FEATURES)",
        )
    if len(set(features)) != len(features):
        raise DidactError(f"features {list(features)}", "a feature is listed twice")
    if any(roll.sources((f,))[1] for f in features) and not node_level:
        raise DidactError(
            f"features {list(features)}",
            "rolling statistics of node-level rates need a node-level feature in the list too",
            "add the node group (DIDACT_FEATURES=cpu,node,rolling)",
        )
    return features


def feature_columns(features, window: int = 1) -> tuple[str, ...]:
    """The model's input columns: the features, then each feature ``k`` steps back."""
    features = check_features(features)
    if window < 1:
        raise DidactError(f"window={window}", "must be at least 1 timestep")
    return features + tuple(f"{f}_lag{k}" for k in range(1, window) for f in features)


def split_feature_columns(names) -> tuple[tuple[str, ...], int]:
    """The inverse of :func:`feature_columns`: a model's input columns → (base features, window).

    ``("idle", "user", "idle_lag1", "user_lag1")`` → ``(("idle", "user"), 2)``.  Raises
    :class:`DidactError` when the names are not ``feature_columns(base, window)`` of known
    features (a model trained on columns preprocessing cannot produce)."""
    names = tuple(str(n) for n in names)
    base = []
    for n in names:
        if _LAG_RE.search(n):
            break
        base.append(n)
    base = tuple(base)
    window = len(names) // len(base) if base else 0
    if not base or window * len(base) != len(names):
        raise DidactError(
            f"model feature columns {list(names)}",
            "are not the base features followed by whole lag blocks (f_lag1 … f_lag{T-1})",
            "serve a model trained on didact's AI-ready columns (feature_columns(features, window))",
        )
    expected = feature_columns(base, window)
    if expected != names:
        raise DidactError(
            f"model feature columns {list(names)}",
            f"differ from the columns of features {list(base)} with window {window}: {list(expected)}",
            "serve a model trained on didact's AI-ready columns (feature_columns(features, window))",
        )
    return base, window


def node_features(node_metrics: pd.DataFrame) -> pd.DataFrame:
    """Node-level counters → per-second rates (gauges as they are), per (node, ts).

    A rate over a counter reset (a counter going down) or a non-positive step is NaN.
    """
    need = ["ts", "node", *NODE_COUNTERS, *NODE_GAUGES]
    missing = [c for c in need if c not in node_metrics.columns]
    if missing:
        raise DataQualityError("node-level metrics", f"lack column(s) {missing}", "re-ingest the raw partition")
    df = node_metrics[need].copy()
    df["node"] = df["node"].astype(str)
    df = df.sort_values(["node", "ts"], kind="stable").drop_duplicates(["node", "ts"]).reset_index(drop=True)
    same = (df["node"].to_numpy()[1:] == df["node"].to_numpy()[:-1])
    ts = df["ts"].array.asi8 if isinstance(df["ts"].dtype, pd.DatetimeTZDtype) else df["ts"].astype("int64").to_numpy()
    dt_s = np.r_[np.nan, np.where(same, np.diff(ts) / 1000.0, np.nan)]
    out = {"ts": df["ts"], "node": df["node"]}
    for c in NODE_COUNTERS:
        v = df[c].to_numpy(dtype=np.float64)
        d = np.r_[np.nan, np.diff(v)]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = d / dt_s
        r[(d < 0) | ~(dt_s > 0)] = np.nan
        out[f"{c}_rate"] = r.astype(np.float32)
    for g in NODE_GAUGES:
        out[g] = df[g].to_numpy(dtype=np.float32)
    return pd.DataFrame(out)


def add_node_features(samples: pd.DataFrame, node_metrics: pd.DataFrame | None, wanted) -> tuple[pd.DataFrame, int]:
    """Join the wanted node-level features onto per-CPU samples by (node, ts); rows whose
    node has no usable metrics at that scrape are dropped and counted."""
    wanted = [f for f in wanted if f in NODE_FEATURES]
    if not wanted:
        return samples, 0
    if node_metrics is None or node_metrics.empty:
        raise DataQualityError(
            "node-level features",
            f"{wanted} were asked for but the raw partition has no node-level metrics",
            "ingest from a source that has them (simulator, Prometheus with node exporter), "
            "or drop them from DIDACT_FEATURES",
        )
    nf = node_features(node_metrics)[["ts", "node", *wanted]]
    # join on integer keys (node code, epoch ms): a hash lookup, not a string merge
    node = samples["node"]
    cats = node.cat.categories.astype(str) if isinstance(node.dtype, pd.CategoricalDtype) else None
    names = pd.Index(sorted(set(nf["node"]) | set(cats if cats is not None else node.astype(str).unique())))
    if cats is not None:
        s_codes = names.get_indexer(cats)[node.cat.codes.to_numpy()]
    else:
        s_codes = names.get_indexer(node.astype(str))
    s_key = _node_ts_key(s_codes, samples["ts"])
    n_key = _node_ts_key(names.get_indexer(nf["node"]), nf["ts"])
    pos = pd.Index(n_key).get_indexer(s_key)
    found = pos >= 0
    values = nf[wanted].to_numpy(dtype=np.float32)[np.where(found, pos, 0)]
    values[~found] = np.nan
    bad = ~found | np.isnan(values).any(axis=1)
    merged = samples.assign(**{f: values[:, i] for i, f in enumerate(wanted)})[~bad].reset_index(drop=True)
    return merged, int(bad.sum())


def _node_ts_key(codes: np.ndarray, ts: pd.Series) -> np.ndarray:
    ms = pd.to_datetime(ts, utc=True).astype("datetime64[ms, UTC]").array.asi8
    return codes.astype(np.int64) * (1 << 42) + ms


def add_windows(samples: pd.DataFrame, features, window: int, interval_s: float | None = None) -> tuple[pd.DataFrame, int]:
    """Lagged copies of the features (``f_lag1`` … ``f_lag{window-1}``) from the same
    (node, cpu) series, consecutive scrapes only; rows without full history are dropped
    and counted."""
    if window <= 1 or samples.empty:
        return samples, 0
    node = samples["node"].astype(str).to_numpy()
    cpu = samples["cpu"].to_numpy()
    ts = samples["ts"].array.asi8
    step = np.median(np.diff(ts)) if interval_s is None else interval_s * 1000
    ok = np.ones(len(samples), dtype=bool)
    lagged = {}
    for k in range(1, window):
        same = np.zeros(len(samples), dtype=bool)
        same[k:] = (node[k:] == node[:-k]) & (cpu[k:] == cpu[:-k]) & (ts[k:] - ts[:-k] <= 1.5 * k * step)
        ok &= same
        for f in features:
            v = samples[f].to_numpy()
            lag = np.empty_like(v)
            lag[k:] = v[:-k]
            lag[:k] = np.nan
            lagged[f"{f}_lag{k}"] = lag
    out = samples.assign(**lagged)[ok].reset_index(drop=True)
    return out, int((~ok).sum())


def preprocess(
    raw: pd.DataFrame,
    features=DEFAULT_FEATURES,
    interval_s: float | None = None,
    max_gap_factor: float = 4.0,
    node_metrics: pd.DataFrame | None = None,
    window: int = 1,
    rolling: roll.RollingState | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Counters → features for whole (node, cpu) series.

    ``interval_s`` is the nominal scrape interval; ``None`` infers it as the median
    step.  Node-level features in ``features`` come from ``node_metrics`` (joined by node
    and scrape time); rolling features (:mod:`didact_core.data.rolling`) from the history
    in ``rolling`` (serving keeps one across polls; None: a fresh one, as for a day), rows
    with too short a rolling history counted as ``window_incomplete``; ``window > 1``
    adds each feature's previous ``window − 1`` values.  Returns the AI-ready frame
    (``ts`` = interval end, ``node``, ``cpu``, ``dt_s`` and :func:`feature_columns`,
    float32) and the :class:`CleaningReport`.
    """
    all_features = check_features(features)
    rolled = tuple(f for f in all_features if roll.is_rolling(f))
    cpu_src, node_src = roll.sources(rolled)
    # the columns the rolling statistics are taken of, computed beside the features, then dropped
    helpers = tuple(c for c in cpu_src + node_src if c not in all_features)
    computed = tuple(f for f in all_features if not roll.is_rolling(f)) + helpers
    samples, rep = _cpu_fractions(raw, computed, interval_s, max_gap_factor)
    if any(f in NODE_FEATURES for f in computed):
        samples, rep.missing_node_metrics = add_node_features(samples, node_metrics, computed)
    if rolled:
        step = interval_s or (float(np.median(samples["dt_s"])) if len(samples) else 1.0)
        state = rolling if rolling is not None else roll.RollingState()
        samples, rep.window_incomplete = state.apply(samples, rolled, step)
        samples = samples.drop(columns=list(helpers))
    if window > 1:
        samples, incomplete = add_windows(samples, all_features, window, interval_s)
        rep.window_incomplete += incomplete
    rep.rows_out = len(samples)
    return samples, rep


def _cpu_fractions(raw, features, interval_s, max_gap_factor) -> tuple[pd.DataFrame, CleaningReport]:
    all_features = check_features(features)
    features = tuple(f for f in all_features if f in CPU_FEATURES)
    raw = validate_raw_cpu(raw)
    rep = CleaningReport(rows_in=len(raw))
    if len(raw) == 0:
        return _empty(features + tuple(f for f in all_features if f in NODE_CPU_FEATURES)), rep
    key, ts, node_codes, node_names, cols = _series(raw, rep)
    key, ts, node_codes, cols = _drop_bad_rows(key, ts, node_codes, cols, rep)
    iv, dt_s, deltas, total, good = _intervals(key, ts, cols, interval_s, max_gap_factor, rep)

    sel = iv[good]
    rows = sel + 1  # the interval's end row
    inv_total = 1.0 / total[good]
    out = {
        "ts": pd.Series(ts[rows].view("M8[ms]")).dt.tz_localize("UTC"),
        "node": pd.Categorical.from_codes(node_codes[rows], node_names),
        "cpu": (key[rows] % 65536).astype(np.int16),
        "dt_s": dt_s[good].astype(np.float32),
    }
    idx = {m: i for i, m in enumerate(CPU_MODES)}
    for f in features:
        part = deltas[idx[CPU_FEATURES[f][0]]][good]
        for m in CPU_FEATURES[f][1:]:
            part += deltas[idx[m]][good]
        part *= inv_total
        out[f] = part.astype(np.float32)
    if any(f in NODE_CPU_FEATURES for f in all_features):
        busy = np.zeros(len(sel))
        for m in CPU_FEATURES["busy"]:
            busy += deltas[idx[m]][good]
        busy *= inv_total
        mean, std = _per_scrape_mean_std(node_codes[rows], ts[rows], busy)
        for f, v in (("node_busy", mean), ("node_busy_std", std)):
            if f in all_features:
                out[f] = v.astype(np.float32)
    return pd.DataFrame(out), rep


def _series(raw: pd.DataFrame, rep: CleaningReport):
    """Series keys (node code × 65536 + cpu), epoch-ms timestamps, node codes and names, and
    the counters column-wise; grouped by series (stable) and in time order within each."""
    node_codes, node_names = _factorize(raw["node"])
    key = node_codes.astype(np.int64) * 65536 + raw["cpu"].to_numpy().astype(np.int64)
    ts = raw["ts"].array.asi8.copy()  # epoch ms (validated unit)
    cols = [raw[m].to_numpy(dtype=np.float64) for m in CPU_MODES]
    if len(key) > 1 and np.any(key[1:] < key[:-1]):
        order = np.argsort(key, kind="stable")
        key, ts, node_codes = key[order], ts[order], node_codes[order]
        cols = [c[order] for c in cols]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    rep.series = len(starts)

    # out-of-order arrivals: sort only the series that have them
    inversions = (key[1:] == key[:-1]) & (ts[1:] < ts[:-1])
    rep.out_of_order = int(np.count_nonzero(inversions))
    if rep.out_of_order:
        cols = [c.copy() for c in cols]
        bounds = np.r_[starts, len(key)]
        for s in np.unique(np.searchsorted(starts, np.flatnonzero(inversions) + 1, side="right") - 1):
            a, b = bounds[s], bounds[s + 1]
            o = a + np.argsort(ts[a:b], kind="stable")
            ts[a:b] = ts[o]
            for c in cols:
                c[a:b] = c[o]
    return key, ts, node_codes, node_names, cols


def _drop_bad_rows(key, ts, node_codes, cols, rep: CleaningReport):
    """Duplicates (same series and ts: keep the first) and unusable rows (NaN, inf,
    negative) dropped and counted."""
    same = key[1:] == key[:-1]
    dup = np.r_[False, same & (ts[1:] == ts[:-1])]
    nan = np.zeros(len(ts), dtype=bool)
    bad = np.zeros(len(ts), dtype=bool)
    for c in cols:
        nan |= np.isnan(c)
        bad |= ~np.isfinite(c) | (c < 0)  # NaN compares False, isfinite catches it
    invalid = bad & ~nan
    rep.duplicates = int(np.count_nonzero(dup))
    rep.nan_rows = int(np.count_nonzero(nan & ~dup))
    rep.invalid_rows = int(np.count_nonzero(invalid & ~dup))
    drop = dup | bad
    if drop.any():
        keep = ~drop
        key, ts, node_codes = key[keep], ts[keep], node_codes[keep]
        cols = [c[keep] for c in cols]
    return key, ts, node_codes, cols


def _intervals(key, ts, cols, interval_s, max_gap_factor, rep: CleaningReport):
    """Intervals between consecutive scrapes of a series: (start rows, seconds, counter
    deltas per mode, total delta, usable mask); resets, gaps, stalls, skew counted."""
    iv = np.flatnonzero(key[1:] == key[:-1])  # interval i runs from row i to row i + 1
    dt_s = (ts[iv + 1] - ts[iv]) / 1000.0
    deltas = [c[iv + 1] - c[iv] for c in cols]
    if interval_s is None:
        interval_s = float(np.median(dt_s)) if len(dt_s) else 1.0
    tol = np.maximum(0.01 * dt_s, 1e-3)
    reset = np.zeros(len(iv), dtype=bool)
    for d in deltas:
        reset |= d < -tol
    clamped = np.zeros(len(iv), dtype=bool)
    for d in deltas:
        neg = (d < 0) & ~reset
        if neg.any():
            clamped |= neg
            d[neg] = 0.0
    total = deltas[0].copy()
    for d in deltas[1:]:
        total += d
    reset |= total < 0
    gap = dt_s > GAP_FACTOR * interval_s
    long_gap = dt_s > max_gap_factor * interval_s
    stalled = ~reset & (total <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = ~reset & ~stalled & (np.abs(total / dt_s - 1.0) > SKEW_TOLERANCE)
    rep.clamped = int(np.count_nonzero(clamped))
    rep.counter_resets = int(np.count_nonzero(reset))
    rep.gaps = int(np.count_nonzero(gap & ~reset))
    rep.long_gaps = int(np.count_nonzero(long_gap & ~reset))
    rep.stalled = int(np.count_nonzero(stalled & ~long_gap))
    rep.clock_skew = int(np.count_nonzero(skew))
    good = ~(reset | long_gap | stalled)
    rep.rows_out = int(np.count_nonzero(good))
    return iv, dt_s, deltas, total, good


def _per_scrape_mean_std(node_codes: np.ndarray, ts: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of ``v`` over the rows of each (node, ts),
    broadcast back to the rows."""
    group, _ = pd.factorize(node_codes.astype(np.int64) * (1 << 42) + ts, sort=False)
    n = np.bincount(group).astype(np.float64)
    mean = np.bincount(group, weights=v) / n
    var = np.bincount(group, weights=v * v) / n - mean * mean
    return mean[group], np.sqrt(np.maximum(var, 0.0))[group]


def _factorize(nodes: pd.Series) -> tuple[np.ndarray, pd.Index]:
    if isinstance(nodes.dtype, pd.CategoricalDtype):
        if nodes.isna().any():
            raise DataQualityError("raw CPU samples", "some rows have no node name", "drop or fix them")
        return nodes.cat.codes.to_numpy(), nodes.cat.categories
    codes, names = pd.factorize(nodes, sort=False)
    if (codes < 0).any():
        raise DataQualityError("raw CPU samples", "some rows have no node name", "drop or fix them")
    return codes, pd.Index(names.astype(str))


def _empty(features) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Series([], dtype="datetime64[ms, UTC]"),
            "node": pd.Categorical([]),
            "cpu": pd.Series([], dtype=np.int16),
            "dt_s": pd.Series([], dtype=np.float32),
            **{f: pd.Series([], dtype=np.float32) for f in features},
        }
    )
