"""The cluster model's arithmetic for one timestep (numpy, vectorised over nodes and jobs).

Shared by batch scoring (a day's :class:`~didact_core.cluster.frames.ScoreTensor`, one step
at a time) and live scoring (one interval), so both give the same numbers.

Per node: ``a = clip((log error − median) / scale, 0, ∞)`` against the clean days' robust
statistics, and its *excess* ``x = clip(a − excess_z, 0, excess_cap)`` (normal jitter → 0;
one wild node adds at most ``excess_cap``); the same for the node's latent deviation (its
distance to a slow EMA of its own latent: a state the detector finds normal, e.g. idle, but
that a whole rack enters at once), and the node's excess is the larger of the two.  Per scope (the whole cluster, each rack): the
mean excess over its scored nodes, smoothed over time (EMA), then put in units of the clean
days (``(s − q50) / (q99 − q50)``: 1.0 = a clean day's 99th percentile).

Co-movement (what no per-node score sees): each node's log error against its *own* slow
baseline (an EMA), in robust sd and clipped to ``± co_cap`` — its drift.  A node's own job
change drifts it up or down, at its own time; an incident drifts many nodes up at once.  The
scope mean of the signed drifts cancels the former and adds up the latter, so a faint
incident that keeps every node under its own threshold still lifts its scope.  Per scope the
score is the excess score plus (× ``co_weight``) the co-movement score, each in clean-day units.
A rack's drift mean leaves out its lowest and highest ``co_trim`` share (two of eight nodes whose
multi-node job starts at once drift together as a faint rack event does).

Level (what the robust scores discard): the log of the scope's mean error, smoothed, in
clean-day units (each rack against its own clean level).  The excess ignores rises below
``excess_z``, and the co-movement is in units of the broad cross-node spread of the log error; a
faint incident that lifts a few nodes' errors tenfold while others' jobs end shows in neither but
moves the scope's mean error.  Each node counts at most up to the top of the normal range and the
scope's highest node not at all (``level_trim_beyond``: only when it is beyond that top; the
excess and co-movement means leave it out too with ``trim_top``): one wild node — a straggler,
a node fault — is not an incident of its rack.  The scope score is the larger of the two
(× ``level_weight``; 0 = off).  The incident score is the largest of the cluster's and every
rack's score: a filesystem stall lifts the cluster, a rack event lifts its rack.

Per job (≥ ``min_peers`` members scored): each member's latent distance to the job's median
latent and its log error against the job's median, each as a robust z over the job's peers
(MAD, with a floor learnt on clean days so identical peers do not divide by ~0); the peer
score is the larger of the two, smoothed per (job, node) over time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

_MAD = 1.4826  # MAD → standard deviation of a normal


@dataclass
class Calibration:
    """What fitting learns (plain floats, JSON-able).  ``raw()``: identity units, no floors —
    the scorer then returns raw smoothed values (how ``fit`` collects them)."""

    err_median: float = 0.0
    err_scale: float = 1.0
    lat_median: float = 0.0
    lat_scale: float = 1.0
    cluster_q50: float = 0.0
    cluster_unit: float = 1.0
    rack_q50: float = 0.0
    rack_unit: float = 1.0
    #: the co-movement scores' units (scope mean of the nodes' drifts)
    co_cluster_q50: float = 0.0
    co_cluster_unit: float = 1.0
    co_rack_q50: float = 0.0
    co_rack_unit: float = 1.0
    #: the level scores' units (log of the scope's mean error); each rack against its own clean
    #: level (``level_racks``: rack → [q50, unit]), a rack not seen in training against all racks'
    level_cluster_q50: float = 0.0
    level_cluster_unit: float = 1.0
    level_rack_q50: float = 0.0
    level_rack_unit: float = 1.0
    level_racks: dict = field(default_factory=dict)
    #: incident threshold on the incident score (and the hysteresis's lower end)
    threshold: float = float("inf")
    low_threshold: float = float("inf")
    peer_lat_floor: float = 1e-6
    peer_err_floor: float = 1e-6
    peer_threshold: float = float("inf")

    def to_dict(self) -> dict:
        out = {k: (None if not np.isfinite(v) else float(v)) for k, v in asdict(self).items() if k != "level_racks"}
        out["level_racks"] = {str(k): [float(a), float(b)] for k, (a, b) in self.level_racks.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        names = {f.name for f in fields(cls)} - {"level_racks"}
        cal = cls(**{k: (float("inf") if v is None else float(v)) for k, v in d.items() if k in names})
        cal.level_racks = {str(k): (float(v[0]), float(v[1])) for k, v in (d.get("level_racks") or {}).items()}
        return cal

    def level_rack_units(self, racks) -> tuple[np.ndarray, np.ndarray]:
        """(q50, unit) arrays of the racks' level scores, in ``racks`` order (all racks' for an unseen one)."""
        pairs = [self.level_racks.get(r, (self.level_rack_q50, self.level_rack_unit)) for r in racks]
        return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=np.float64)

    def blend(self, new: "Calibration", weight: float) -> "Calibration":
        """``(1 − weight)·self + weight·new`` field by field (continual training); a rack in one
        of the two only keeps that one's level units."""
        out = {}
        for f in fields(self):
            if f.name == "level_racks":
                continue
            a, b = getattr(self, f.name), getattr(new, f.name)
            out[f.name] = b if not (np.isfinite(a) and np.isfinite(b)) else (1 - weight) * a + weight * b
        racks = {**self.level_racks, **new.level_racks}
        for k in set(self.level_racks) & set(new.level_racks):
            racks[k] = tuple((1 - weight) * a + weight * b for a, b in zip(self.level_racks[k], new.level_racks[k]))
        return Calibration(**out, level_racks=racks)


@dataclass(frozen=True)
class StepParams:
    """The hyperparameters the step arithmetic needs: a subset of ``ClusterConfig``'s fields, same
    names, no defaults of their own (``ClusterConfig.params()`` fills them)."""

    excess_z: float
    excess_cap: float
    alpha: float
    min_peers: int
    peer_alpha: float
    peer_cap: float
    lat_beta: float
    lat_weight: float
    co_beta: float
    co_cap: float
    co_weight: float
    level_weight: float
    trim_top: bool
    co_trim: float
    level_trim_beyond: bool


def node_excess(error: np.ndarray, deviation: np.ndarray | None, cal: Calibration, p: StepParams) -> np.ndarray:
    """Per-node excess anomaly (NaN where the node has no score): the larger of the error's
    and (× ``lat_weight``) the latent deviation's excess over ``excess_z`` robust sd."""
    le = np.log(np.maximum(error, 1e-12))
    a = np.maximum((le - cal.err_median) / cal.err_scale, 0.0)
    x = np.clip(a - p.excess_z, 0.0, p.excess_cap)
    if deviation is not None and p.lat_weight > 0:
        b = np.maximum((deviation - cal.lat_median) / cal.lat_scale, 0.0)
        xl = p.lat_weight * np.clip(b - p.excess_z, 0.0, p.excess_cap)
        x = np.maximum(x, np.where(np.isfinite(xl), xl, 0.0))
    return np.where(np.isfinite(error), x, np.nan)


def drift_step(values: np.ndarray, baseline: np.ndarray | None, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(each node's values minus its own slow baseline, the updated baseline) for (N,) or (N, k)
    values; the baseline is an EMA (weight ``beta``) started at a node's first value, and a
    node without a value (NaN) keeps it."""
    vec = values.ndim == 2
    ok = np.isfinite(values).all(axis=1) if vec else np.isfinite(values)
    if baseline is None:
        baseline = np.full(values.shape, np.nan)
    fresh = ok & ~(np.isfinite(baseline).all(axis=1) if vec else np.isfinite(baseline))
    okv, freshv = (ok[:, None], fresh[:, None]) if vec else (ok, fresh)
    baseline = np.where(freshv, values, baseline)
    diff = np.where(okv, values - baseline, np.nan)
    return diff, np.where(okv, baseline + beta * (values - baseline), baseline)


def deviation_step(latent: np.ndarray, baseline: np.ndarray | None, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(each node's latent distance to its own slow baseline, the updated baseline).

    The baseline is an EMA (weight ``beta``) of the node's latent: a node whose job changes
    deviates for a while on its own; an incident moves many nodes at once."""
    if latent.shape[1] == 0:
        return np.full(latent.shape[0], np.nan), latent
    diff, baseline = drift_step(latent, baseline, beta)
    return np.linalg.norm(diff, axis=1), baseline


def co_drift(le: np.ndarray, baseline: np.ndarray | None, cal: Calibration, p: StepParams) -> tuple[np.ndarray, np.ndarray]:
    """(each node's signed drift: log error minus its own baseline in robust sd, clipped to
    ± ``co_cap``; the updated baseline)."""
    diff, baseline = drift_step(le, baseline, p.co_beta)
    return np.clip(diff / cal.err_scale, -p.co_cap, p.co_cap), baseline


def deviations(latent: np.ndarray, beta: float) -> np.ndarray:
    """(T, N) latent deviations of a (T, N, d) stretch, stepping :func:`deviation_step`."""
    out = np.full(latent.shape[:2], np.nan)
    base = None
    for t in range(latent.shape[0]):
        out[t], base = deviation_step(latent[t].astype(np.float64), base, beta)
    return out


def scope_means(x: np.ndarray, onehot: np.ndarray, trim_top: bool = False) -> tuple[float, np.ndarray]:
    """(cluster mean, per-rack means) of a node vector, ignoring NaN (NaN for an empty scope).
    ``trim_top``: without the scope's highest node where it has ≥ 3 (one wild node — a straggler,
    a node fault — is not an incident of its rack or of the cluster)."""
    ok = np.isfinite(x)
    xs = np.where(ok, x, 0.0)
    n = ok.sum()
    counts = ok.astype(np.float64) @ onehot
    sums = xs @ onehot
    total = float(xs.sum())
    if trim_top:
        hi = np.where(ok, x, -np.inf)
        top = np.where(onehot > 0, hi[:, None], -np.inf).max(axis=0)
        cut = counts >= 3
        sums = np.where(cut, sums - np.where(cut, top, 0.0), sums)
        counts = np.where(cut, counts - 1, counts)
        if n >= 3:
            total, n = total - float(hi.max()), n - 1
    cluster = float(total / n) if n else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        racks = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    return cluster, racks


def rack_members(rack_of: np.ndarray, n_racks: int) -> np.ndarray:
    """(R, M) node indices of each rack, padded with -1 (M: the largest rack's size)."""
    rack_of = np.asarray(rack_of)
    sizes = np.bincount(rack_of, minlength=n_racks)
    out = np.full((n_racks, int(sizes.max()) if len(sizes) else 0), -1, dtype=np.int64)
    for r in range(n_racks):
        idx = np.flatnonzero(rack_of == r)
        out[r, : len(idx)] = idx
    return out


def trimmed_rack_means(x: np.ndarray, members: np.ndarray, frac: float, trim_top: bool = False) -> np.ndarray:
    """Per rack, the mean of its known values without the ``floor(frac · n)`` lowest and highest
    (and, with ``trim_top``, at least its highest where it has ≥ 3); NaN for a rack without a value.
    ``members`` from :func:`rack_members`; ``frac`` < 0.5, so a rack with a value keeps one.

    Two nodes of a rack of eight whose jobs change at once drift together for an hour and lift
    the rack's plain mean as a faint rack event does; with ``frac`` 0.25 they are cut off, while
    an event on half the rack or more still moves what is left."""
    vals = np.where(members >= 0, x[np.maximum(members, 0)], np.nan)
    vals = np.sort(vals, axis=1)  # NaN last
    n = np.isfinite(vals).sum(axis=1)
    lo = np.floor(frac * n).astype(np.int64)
    hi = np.maximum(lo, (trim_top & (n >= 3)).astype(np.int64))
    pos = np.arange(vals.shape[1])[None, :]
    keep = (pos >= lo[:, None]) & (pos < (n - hi)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(keep, vals, 0.0).sum(axis=1) / keep.sum(axis=1), np.nan)


def ema(prev: np.ndarray | None, new: np.ndarray, alpha: float) -> np.ndarray:
    """One EMA step; a missing (NaN) new value keeps the previous, a missing previous takes the new."""
    if prev is None:
        return new.copy()
    out = alpha * new + (1 - alpha) * prev
    out = np.where(np.isfinite(prev), out, new)
    return np.where(np.isfinite(new), out, prev)


@dataclass
class PeerStep:
    """One step's peer scores: ``rows`` index the active membership rows given."""

    rows: np.ndarray
    score: np.ndarray
    #: per job in the step: the peers' robust spread of latent distance and of log error
    lat_spread: np.ndarray
    err_spread: np.ndarray


def _group(jc: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(group of each row, position within its group, groups, max size) for rows sorted by job."""
    _, start, cnt = np.unique(jc, return_index=True, return_counts=True)
    g = np.repeat(np.arange(len(cnt)), cnt)
    pos = np.arange(len(jc)) - np.repeat(start, cnt)
    return g, pos, len(cnt), int(cnt.max())


def nan_median(M: np.ndarray) -> np.ndarray:
    """Median over axis 1 ignoring NaN (every slice has a value): np.nanmedian is slow on small arrays."""
    S = np.sort(M, axis=1)  # NaN sort last
    n = np.isfinite(M).sum(axis=1, keepdims=True)
    lo = np.take_along_axis(S, (n - 1) // 2, axis=1)
    hi = np.take_along_axis(S, n // 2, axis=1)
    return ((lo + hi) / 2).squeeze(1)


def _robust_z(values: np.ndarray, g: np.ndarray, pos: np.ndarray, G: int, K: int, floor: float, two_sided: bool):
    """Robust z of each row's value against its group's median and MAD (floored)."""
    M = np.full((G, K), np.nan)
    M[g, pos] = values
    med = nan_median(M)
    spread = _MAD * nan_median(np.abs(M - med[:, None]))
    dev = values - med[g]
    if two_sided:
        dev = np.abs(dev)
    return dev / np.maximum(spread[g], floor), spread


def peer_step(
    le: np.ndarray, lat: np.ndarray, job_code: np.ndarray, node_index: np.ndarray, cal: Calibration, p: StepParams,
) -> PeerStep:
    """Peer scores of the active membership rows (``job_code``, ``node_index``) at one step.

    Rows whose node has no score, and jobs with fewer than ``min_peers`` scored members, get none."""
    empty = PeerStep(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
    if not len(job_code):
        return empty
    ok = np.isfinite(le[node_index])
    if lat.shape[1]:
        ok &= np.isfinite(lat[node_index]).all(axis=1)
    rows = np.flatnonzero(ok)
    counts = np.bincount(job_code[rows], minlength=int(job_code.max()) + 1)
    rows = rows[counts[job_code[rows]] >= p.min_peers]
    if not len(rows):
        return empty
    rows = rows[np.argsort(job_code[rows], kind="stable")]
    ni = node_index[rows]
    g, pos, G, K = _group(job_code[rows])
    ze, err_spread = _robust_z(le[ni], g, pos, G, K, cal.peer_err_floor, two_sided=True)
    if lat.shape[1]:
        L = np.full((G, K, lat.shape[1]), np.nan)
        L[g, pos] = lat[ni]
        centre = nan_median(L)
        dist = np.linalg.norm(lat[ni] - centre[g], axis=1)
        zd, lat_spread = _robust_z(dist, g, pos, G, K, cal.peer_lat_floor, two_sided=False)
        score = np.maximum(zd, ze)
    else:
        score, lat_spread = ze, np.zeros(G)
    return PeerStep(rows, np.clip(score, 0.0, p.peer_cap), lat_spread, err_spread)
