"""Scoring the cluster one timestep at a time: :class:`ClusterScorer` keeps the smoothing
state (cluster, racks, each job member) between steps.

Live (``didact serve``): one scorer per champion; each interval call :meth:`ClusterScorer.score`
with the interval's per-node frame.  Batch: :func:`score_tensor` steps a scorer through a
:class:`~didact_core.cluster.frames.ScoreTensor` (what ``ClusterModel.score`` does), so batch
and live give the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from didact_core.cluster.core import (
    Calibration,
    PeerStep,
    StepParams,
    co_drift,
    deviation_step,
    ema,
    node_excess,
    peer_step,
    rack_members,
    scope_means,
    trimmed_rack_means,
)
from didact_core.cluster.frames import (
    RackMap,
    ScoreTensor,
    latent_columns,
    validate_jobs,
    validate_node_scores,
)
from didact_core.errors import DidactError


@dataclass
class StepScores:
    """One timestep.  Scores are in clean-day units (1.0 = a clean day's 99th percentile)."""

    #: max(cluster_score, max rack_score): what incidents are cut from
    incident_score: float
    cluster_score: float
    #: (R,) per rack, in ``RackMap.racks`` order (NaN: no node of the rack scored)
    rack_score: np.ndarray
    #: index of the highest-scoring rack (-1 when none scored)
    top_rack: int
    #: membership rows scored (indices into the jobs given) and their smoothed / raw peer scores
    peer_rows: np.ndarray
    peer_score: np.ndarray
    peer_raw: np.ndarray
    #: the simple baselines: fraction of OOD nodes, mean error, per-rack maximum error (R,)
    frac_ood: float
    mean_error: float
    rack_max_error: np.ndarray
    nodes_scored: int
    #: per-node excess anomaly (N,) — which nodes an incident touches
    node_excess: np.ndarray
    #: per job of the step: peers' spread of latent distance / log error (for calibration)
    peer: PeerStep | None = None
    #: the co-movement scores alone (clean-day units; already in cluster_score / rack_score)
    co_cluster: float = float("nan")
    co_rack: np.ndarray | None = None
    #: the level scores alone (clean-day units; in cluster_score / rack_score as their floor)
    level_cluster: float = float("nan")
    level_rack: np.ndarray | None = None


@dataclass
class ClusterInterval:
    """One live interval's cluster view (what serving exports)."""

    ts: pd.Timestamp
    incident_score: float
    cluster_score: float
    #: index rack: score, max_error
    racks: pd.DataFrame
    top_rack: str | None
    #: one row per scored job member: job_id, node, peer_score, peer_raw, outlier
    peers: pd.DataFrame
    frac_ood: float
    mean_error: float
    threshold: float
    peer_threshold: float
    seconds: float

    @property
    def incident(self) -> bool:
        return bool(self.incident_score >= self.threshold)


def _plus(a, b):
    """a + b where both are known, else whichever is (the excess and co-movement scores of a scope)."""
    return np.where(np.isfinite(a) & np.isfinite(b), a + b, np.fmax(a, b))


def _rack_max(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = np.where(mask, np.where(np.isfinite(values), values, -np.inf)[:, None], -np.inf).max(axis=0)
    return np.where(np.isinf(m), np.nan, m)


class ClusterScorer:
    """Steps the cluster model through time.  ``calibration``/``params`` come from a fitted
    :class:`~didact_core.cluster.model.ClusterModel` (``model.scorer(topology)``)."""

    def __init__(self, calibration: Calibration, params: StepParams, racks: RackMap):
        self.cal, self.params, self.racks = calibration, params, racks
        self.onehot = np.zeros((len(racks.nodes), racks.n_racks))
        self.onehot[np.arange(len(racks.nodes)), racks.rack_of] = 1.0
        self._mask = self.onehot.astype(bool)
        self._members = rack_members(racks.rack_of, racks.n_racks)
        self._level_q50, self._level_unit = calibration.level_rack_units(racks.racks)
        self.reset()

    def reset(self) -> None:
        self._cluster: np.ndarray | None = None
        self._racks: np.ndarray | None = None
        self._baseline: np.ndarray | None = None
        self._own: np.ndarray | None = None  # each node's log-error baseline (co-movement)
        self._co_cluster: np.ndarray | None = None
        self._co_racks: np.ndarray | None = None
        self._level_cluster: np.ndarray | None = None
        self._level_racks: np.ndarray | None = None
        self._peers = pd.Series(dtype=np.float64)
        self._peer_arr = np.zeros(0)
        self._jobs_seen: tuple | None = None

    def step(self, error, ood, latent, job_code=None, node_index=None, keys=None) -> StepScores:
        """One timestep of arrays in the topology's node order: error (N,) NaN = not scored,
        ood (N,), latent (N, d); active job members as (job_code, node_index, keys) arrays."""
        cal, p = self.cal, self.params
        dev, self._baseline = deviation_step(np.asarray(latent, dtype=np.float64), self._baseline, p.lat_beta)
        x = node_excess(error, dev, cal, p)
        c_raw, r_raw = scope_means(x, self.onehot, trim_top=self.params.trim_top)
        self._cluster = ema(self._cluster, np.array([c_raw]), p.alpha)
        self._racks = ema(self._racks, r_raw, p.alpha)
        cluster = float((self._cluster[0] - cal.cluster_q50) / cal.cluster_unit)
        racks = (self._racks - cal.rack_q50) / cal.rack_unit
        co_cluster, co_racks = self._co_movement(error)
        if p.co_weight > 0:
            cluster = float(_plus(cluster, p.co_weight * co_cluster))
            racks = _plus(racks, p.co_weight * co_racks)
        level_cluster, level_racks = self._level(error)
        if p.level_weight > 0:
            cluster = float(np.fmax(cluster, p.level_weight * level_cluster))
            racks = np.fmax(racks, p.level_weight * level_racks)
        top = int(np.nanargmax(racks)) if np.isfinite(racks).any() else -1
        best = max(cluster if np.isfinite(cluster) else -np.inf, racks[top] if top >= 0 else -np.inf)
        scored = np.isfinite(error)
        if job_code is None or not len(job_code):
            ps = peer_step(error, latent, np.zeros(0, np.int64), np.zeros(0, np.int64), cal, p)
        else:
            le = np.log(np.maximum(error, 1e-12))
            ps = peer_step(le, latent, np.asarray(job_code), np.asarray(node_index), cal, p)
        # while an incident is on, a member unlike its peers is likely the incident's doing
        # (it hit part of the job): the peer scores hold their value until it is over
        hold = bool(np.isfinite(best) and best >= cal.low_threshold)
        smoothed = self._smooth_peers(ps, keys, hold)
        return StepScores(
            incident_score=float(best) if np.isfinite(best) else float("nan"), cluster_score=cluster,
            rack_score=racks, top_rack=top, peer_rows=ps.rows, peer_score=smoothed, peer_raw=ps.score,
            frac_ood=float(ood[scored].mean()) if scored.any() else float("nan"),
            mean_error=float(error[scored].mean()) if scored.any() else float("nan"),
            rack_max_error=_rack_max(error, self._mask), nodes_scored=int(scored.sum()), node_excess=x, peer=ps,
            co_cluster=co_cluster, co_rack=co_racks, level_cluster=level_cluster, level_rack=level_racks,
        )

    def _co_movement(self, error: np.ndarray) -> tuple[float, np.ndarray]:
        """Co-movement scores (cluster, per rack) of this step, in clean-day units (core docstring)."""
        cal, p = self.cal, self.params
        u, self._own = co_drift(np.log(np.maximum(error, 1e-12)), self._own, cal, p)
        c_raw, r_raw = scope_means(u, self.onehot, trim_top=p.trim_top)
        if p.co_trim > 0:  # a rack's drifts without its lowest and highest co_trim share
            r_raw = trimmed_rack_means(u, self._members, p.co_trim, p.trim_top)
        self._co_cluster = ema(self._co_cluster, np.array([c_raw]), p.alpha)
        self._co_racks = ema(self._co_racks, r_raw, p.alpha)
        return (float((self._co_cluster[0] - cal.co_cluster_q50) / cal.co_cluster_unit),
                (self._co_racks - cal.co_rack_q50) / cal.co_rack_unit)

    def _level(self, error: np.ndarray) -> tuple[float, np.ndarray]:
        """Level scores (cluster, per rack): the log of the scope's mean error (each node's clipped at
        the normal range's top, the highest node left out when beyond it), smoothed, in clean-day units
        (each rack against its own clean level)."""
        cal, p = self.cal, self.params
        # a node counts at most up to the top of the normal range (excess_z robust sd above the clean
        # median), and the scope's highest node not at all: one node off its normal cannot lift its scope.
        # With level_trim_beyond the highest is left out only when it is beyond that top: always leaving
        # it out biases a clean scope's mean low (its highest normal node is gone), so a wild node — left
        # out instead — would lift its scope by that bias (in a rack of alike nodes, most of a unit)
        top = np.exp(cal.err_median + p.excess_z * cal.err_scale)
        clipped = np.minimum(error, top)
        c_raw, r_raw = scope_means(clipped, self.onehot, trim_top=True)
        if p.level_trim_beyond:
            c_all, r_all = scope_means(clipped, self.onehot, trim_top=False)
            beyond = np.where(np.isfinite(error), error >= top, False).astype(np.float64)
            r_raw = np.where(beyond @ self.onehot > 0, r_raw, r_all)
            c_raw = c_raw if beyond.any() else c_all
        with np.errstate(invalid="ignore", divide="ignore"):
            c_log, r_log = np.log(np.maximum(np.array([c_raw]), 1e-12)), np.log(np.maximum(r_raw, 1e-12))
        self._level_cluster = ema(self._level_cluster, c_log, p.alpha)
        self._level_racks = ema(self._level_racks, r_log, p.alpha)
        return (float((self._level_cluster[0] - cal.level_cluster_q50) / cal.level_cluster_unit),
                (self._level_racks - self._level_q50) / self._level_unit)

    def _smooth_peers(self, ps: PeerStep, keys, hold: bool = False) -> np.ndarray:
        if not len(ps.rows):
            self._peers = pd.Series(dtype=np.float64)
            return np.zeros(0)
        keys = np.asarray(keys)[ps.rows]
        if np.issubdtype(keys.dtype, np.integer):  # batch: keys are membership rows, state an array
            if self._peer_arr.size <= keys.max():
                self._peer_arr = np.r_[self._peer_arr, np.full(keys.max() + 1 - self._peer_arr.size, np.nan)]
            prev = self._peer_arr[keys]
            out = prev if hold else ema(prev, ps.score, self.params.peer_alpha)
            self._peer_arr[keys] = out
            return out
        k = pd.Index(keys)
        prev = self._peers.reindex(k).to_numpy(dtype=np.float64)
        out = prev if hold else ema(prev, ps.score, self.params.peer_alpha)
        self._peers = pd.Series(out, index=k)
        return out

    # -- live -------------------------------------------------------------------------
    def score(self, nodes: pd.DataFrame, ts=None, jobs: pd.DataFrame | None = None) -> ClusterInterval:
        """Score one interval: ``nodes`` is serving's per-node frame (index node, error_mean,
        ood, latent_<i>; ``ts`` required) or node-score rows of one ts.  ``jobs``: the running
        jobs' membership (job_id, node[, start, end]; rows outside [start, end) of ts are ignored)."""
        t0 = time.perf_counter()
        if "error" not in nodes.columns and "error_mean" in nodes.columns:
            if ts is None:
                raise DidactError("cluster scoring input", "is a per-node frame without a ts",
                                  "pass the interval's ts (IntervalScores.ts)")  # fmt: skip
            rows = _serving_rows(nodes)
        else:
            rows = validate_node_scores(nodes, "cluster scoring input")
        if ts is None:
            ts = rows["ts"].max() if len(rows) else pd.Timestamp.now(tz="UTC")
        ts = pd.Timestamp(ts)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        ni = self.racks.index_of(rows["node"], "cluster scoring input")
        N, lat = len(self.racks.nodes), latent_columns(rows)
        error, ood = np.full(N, np.nan), np.zeros(N, dtype=bool)
        latent = np.full((N, len(lat)), np.nan, dtype=np.float32)
        error[ni], ood[ni] = rows["error"].to_numpy(), rows["ood"].to_numpy()
        if lat:
            latent[ni] = rows[lat].to_numpy(dtype=np.float32)
        jc = nidx = keys = None
        if jobs is not None and self._jobs_seen is not None and self._jobs_seen[0] is jobs:
            valid = self._jobs_seen[1]  # the same frame as last interval: validated already
        else:
            valid = _valid_live_jobs(jobs, self.racks)
            self._jobs_seen = (jobs, valid) if jobs is not None else None
        members = valid[(valid["start"] <= ts) & (valid["end"] > ts)]
        members = members.drop_duplicates(["job_id", "node"]).reset_index(drop=True)
        if len(members):
            jc = pd.factorize(members["job_id"])[0]
            nidx = members["node_index"].to_numpy(dtype=np.int64)
            keys = (members["job_id"] + "\x1f" + members["node"]).to_numpy()
        s = self.step(error, ood, latent, jc, nidx, keys)
        peers = pd.DataFrame({
            "job_id": members["job_id"].to_numpy()[s.peer_rows] if len(s.peer_rows) else [],
            "node": members["node"].to_numpy()[s.peer_rows] if len(s.peer_rows) else [],
            "peer_score": s.peer_score, "peer_raw": s.peer_raw,
            "outlier": s.peer_score >= self.cal.peer_threshold,
        })  # fmt: skip
        racks = pd.DataFrame({"score": s.rack_score, "max_error": s.rack_max_error}, index=pd.Index(self.racks.racks, name="rack"))
        return ClusterInterval(
            ts, s.incident_score, s.cluster_score, racks, self.racks.racks[s.top_rack] if s.top_rack >= 0 else None,
            peers, s.frac_ood, s.mean_error, self.cal.threshold, self.cal.peer_threshold, time.perf_counter() - t0,
        )


def _serving_rows(nodes: pd.DataFrame) -> pd.DataFrame:
    """Serving's per-node frame (index node) as checked node-score columns, without the
    frame-wide validation (the hot path of every interval)."""
    if nodes.index.has_duplicates:
        raise DidactError("cluster scoring input", "names a node twice", "aggregate to one row per node")
    err = nodes["error_mean"].to_numpy(dtype=np.float64)
    if (err[np.isfinite(err)] < 0).any():
        raise DidactError("cluster scoring input", "has negative errors", "pass the detector's errors (>= 0)")
    out = {"node": nodes.index.astype(str).to_numpy(), "error": err, "ood": nodes["ood"].to_numpy(dtype=bool)}
    out.update({c: nodes[c].to_numpy(dtype=np.float32) for c in latent_columns(nodes)})
    return pd.DataFrame(out)


def _valid_live_jobs(jobs: pd.DataFrame | None, racks: RackMap) -> pd.DataFrame:
    if jobs is None or len(jobs) == 0:
        return validate_jobs(None, racks)
    if "start" not in jobs.columns or "end" not in jobs.columns:
        far = pd.Timestamp.max.tz_localize("UTC") - pd.Timedelta(days=1)
        jobs = jobs.assign(start=pd.Timestamp(0, tz="UTC"), end=far)
    return validate_jobs(jobs, racks, "running jobs")


@dataclass
class StepTrace:
    """Everything :func:`score_tensor` saw, step by step (arrays over T)."""

    ts: pd.DatetimeIndex
    incident: np.ndarray
    cluster: np.ndarray
    racks: np.ndarray            # (T, R)
    frac_ood: np.ndarray
    mean_error: np.ndarray
    rack_max: np.ndarray         # (T, R)
    excess: np.ndarray           # (T, N)
    #: long peers: t index, membership row, smoothed, raw
    peer_t: np.ndarray
    peer_row: np.ndarray
    peer_score: np.ndarray
    peer_raw: np.ndarray
    lat_spread: np.ndarray
    err_spread: np.ndarray
    #: the co-movement scores alone: (T,) and (T, R)
    co_cluster: np.ndarray | None = None
    co_racks: np.ndarray | None = None
    #: the level scores alone: (T,) and (T, R)
    level_cluster: np.ndarray | None = None
    level_racks: np.ndarray | None = None


def score_tensor(scorer: ClusterScorer, tensor: ScoreTensor, jobs: pd.DataFrame) -> StepTrace:
    """Step ``scorer`` through every timestep of ``tensor``; ``jobs`` validated membership."""
    T, R = len(tensor.ts), scorer.racks.n_racks
    inc, clu, fo, me = (np.full(T, np.nan) for _ in range(4))
    rk, rm, cor = np.full((T, R), np.nan), np.full((T, R), np.nan), np.full((T, R), np.nan)
    coc, lvc, lvr = np.full(T, np.nan), np.full(T, np.nan), np.full((T, R), np.nan)
    ex = np.full(tensor.error.shape, np.nan)
    codes = pd.factorize(jobs["job_id"])[0] if len(jobs) else np.zeros(0, np.int64)
    nidx = jobs["node_index"].to_numpy(dtype=np.int64) if len(jobs) else np.zeros(0, np.int64)
    start = jobs["start"].array.asi8 if len(jobs) else np.zeros(0, np.int64)
    end = jobs["end"].array.asi8 if len(jobs) else np.zeros(0, np.int64)
    keys = np.arange(len(jobs))
    pt, pr, psc, praw, ls, es = [], [], [], [], [], []
    for t, now in enumerate(tensor.ts.asi8):
        active = np.flatnonzero((start <= now) & (end > now))
        s = scorer.step(tensor.error[t], tensor.ood[t], tensor.latent[t], codes[active], nidx[active], keys[active])
        inc[t], clu[t], fo[t], me[t] = s.incident_score, s.cluster_score, s.frac_ood, s.mean_error
        rk[t], rm[t], ex[t] = s.rack_score, s.rack_max_error, s.node_excess
        coc[t], cor[t], lvc[t], lvr[t] = s.co_cluster, s.co_rack, s.level_cluster, s.level_rack
        if len(s.peer_rows):
            pt.append(np.full(len(s.peer_rows), t))
            pr.append(active[s.peer_rows])
            psc.append(s.peer_score)
            praw.append(s.peer_raw)
            ls.append(s.peer.lat_spread)
            es.append(s.peer.err_spread)

    def cat(parts, dtype=np.float64):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return StepTrace(tensor.ts, inc, clu, rk, fo, me, rm, ex, cat(pt, np.int64), cat(pr, np.int64),
                     cat(psc), cat(praw), cat(ls), cat(es), coc, cor, lvc, lvr)
