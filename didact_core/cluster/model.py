"""``ClusterModel``: from every node's score to the state of the cluster, its racks and its jobs.

    model = ClusterModel(ClusterConfig())
    model.fit(clean_scores, topology, jobs)        # node scores of clean-ish days; no labels
    out = model.score(day_scores, topology, jobs)   # ClusterScores: per timestep, rack, job member
    model.fit(next_day, topology, jobs)             # continual: blends into what it knew
    model.save("cluster/"); ClusterModel.load("cluster/")
    scorer = model.scorer(topology)                 # live, one interval at a time

What it is: robust statistics over the node detector's outputs, learnt unsupervised (see
:mod:`didact_core.cluster.core` for the arithmetic).  ``fit`` learns the clean days' node
error level and spread, the clean spread of the cluster's and racks' mean excess (the units
of the scores), the peers' clean spread of latent distance and error (the floors of the peer
z), and the thresholds (a high quantile of the clean incident and peer scores, times a
margin).  A fit on a fitted model is **continual**: each learnt number moves
``update_weight`` of the way to the new day's, so the scale stays comparable across days.

Why robust statistics and not a trained network (torch): there are no labels to train a
set or graph model on, and its unsupervised proxies (reconstructing a node from its peers)
reward exactly what an incident is — many nodes moving together; the model must score
1,000 nodes in a few milliseconds inside ``didact serve``; and each number it learns has a
meaning an operator can check (a clean day's error level, a rack's clean spread).

On disk: ``config.json`` only — the config, the learnt numbers and the fit history, plain
JSON (nothing executable, nothing pickled).  Sign convention as the node detector: higher
score = more anomalous; scores are in clean-day units (1.0 = a clean day's 99th percentile).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.cluster.core import Calibration, StepParams, deviations
from didact_core.cluster.frames import RackMap, to_tensor, validate_jobs, validate_node_scores
from didact_core.cluster.scorer import ClusterScorer, StepTrace, _plus, score_tensor
from didact_core.errors import DataQualityError, DidactError, RegistryError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT = "didact-cluster-model"
FORMAT_VERSION = 1
_MAD = 1.4826


@dataclass(frozen=True)
class ClusterConfig:
    """Every hyperparameter of the cluster model (JSON-able)."""

    #: a node counts toward a scope once its error is this many robust sd above the clean median
    excess_z: float = 2.0
    #: the most one node adds to its scope's mean (one wild node is not an incident)
    excess_cap: float = 3.0
    #: EMA weight of the newest step (cluster and racks); 1 = no smoothing
    alpha: float = 0.5
    #: jobs with fewer scored members have no peer scores
    min_peers: int = 3
    peer_alpha: float = 0.3
    peer_cap: float = 50.0
    #: the clean quantile that is one unit of a scope score
    unit_quantile: float = 0.99
    unit_floor: float = 0.02
    err_scale_floor: float = 0.05
    #: incident threshold: this quantile of the clean incident scores × margin (at least min_threshold)
    threshold_quantile: float = 0.999
    margin: float = 1.2
    min_threshold: float = 2.0
    #: an incident stays open while the score is above low_fraction × threshold
    low_fraction: float = 0.5
    #: incidents closer than this many steps are merged
    merge_gap_steps: int = 2
    #: peer threshold: this quantile of the clean peer scores × margin, at least peer_min_threshold
    #: (robust z over the peers; clean days hold node faults too, so the floor is what usually holds)
    peer_quantile: float = 0.95
    peer_margin: float = 3.0
    peer_min_threshold: float = 7.0
    #: continual training: how far each learnt number moves toward the new day's
    update_weight: float = 0.5
    #: EMA weight of a node's latent baseline, and how much its deviation counts.  Off (0) by
    #: default: a node's own job changes move its latent as much as an incident does (measured:
    #: bench/README_cluster.md)
    lat_beta: float = 0.05
    lat_weight: float = 0.0
    #: co-movement (core docstring): EMA weight of each node's own log-error baseline, the clip
    #: of a node's drift (robust sd), and the weight of the co-movement score (0 = off)
    co_beta: float = 0.02
    co_cap: float = 4.0
    co_weight: float = 1.0
    #: the level score's weight (the log of a scope's mean error in clean-day units; 0 = off)
    level_weight: float = 1.0
    #: the excess and co-movement means of a scope leave out its highest node (one wild node —
    #: a straggler, a node fault — must not open an incident of its rack); the level always does
    trim_top: bool = True
    #: a rack's co-movement mean leaves out this share of its lowest and of its highest drifts
    #: (two nodes of eight changing jobs at once are not a rack event; 0 = only ``trim_top``)
    co_trim: float = 0.25
    #: the level leaves out a scope's highest node only when it is beyond the normal range (false:
    #: always, which biases a clean scope low and lets one wild node lift it; models saved before)
    level_trim_beyond: bool = True

    def params(self) -> StepParams:
        return StepParams(**{f.name: getattr(self, f.name) for f in fields(StepParams)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClusterConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DidactError("cluster model config", f"has unknown keys {unknown}", "remove them, or upgrade didact")
        return cls(**d).validate()

    def validate(self) -> "ClusterConfig":
        bad = [k for k in ("alpha", "peer_alpha", "update_weight", "low_fraction", "lat_beta", "co_beta")
               if not 0 < getattr(self, k) <= 1]  # fmt: skip
        bad += [k for k in ("lat_weight", "co_weight", "level_weight") if getattr(self, k) < 0]
        bad += ["co_cap"] if self.co_cap <= 0 else []
        bad += ["co_trim"] if not 0 <= self.co_trim < 0.5 else []
        bad += [k for k in ("unit_quantile", "threshold_quantile", "peer_quantile") if not 0.5 <= getattr(self, k) < 1]
        bad += [k for k in ("excess_cap", "unit_floor", "err_scale_floor", "margin", "peer_margin") if getattr(self, k) <= 0]
        if self.min_peers < 3:
            bad.append("min_peers")
        bad += [k for k in ("trim_top", "level_trim_beyond") if not isinstance(getattr(self, k), bool)]
        if bad:
            raise DidactError("cluster model config", f"has out-of-range values for {bad}",
                              "weights in (0, 1], quantiles in [0.5, 1), positive scales, min_peers >= 3, "
                              "co_trim in [0, 0.5), trim_top and level_trim_beyond true or false")
        return self


@dataclass
class ClusterScores:
    """A scored stretch of time."""

    #: per timestep: ts, incident_score, cluster_score, top_rack, top_rack_score, nodes_scored,
    #: and the baselines frac_ood, mean_error, rack_max_error (max over racks)
    timesteps: pd.DataFrame
    #: (T, R) rack scores and per-rack max error (baseline), columns = racks
    rack_scores: pd.DataFrame
    rack_max_error: pd.DataFrame
    #: per scored job member and timestep: ts, job_id, node, peer_score (smoothed), peer_raw, outlier
    peers: pd.DataFrame
    #: (T, N) per-node excess anomaly, columns = nodes
    node_excess: pd.DataFrame
    threshold: float
    low_threshold: float
    peer_threshold: float
    racks: RackMap
    merge_gap_steps: int = 2


class ClusterModel:
    """Robust-statistics cluster model; see the module docstring for the contract."""

    def __init__(self, config: ClusterConfig | None = None):
        self.config = (config or ClusterConfig()).validate()
        self.calibration_: Calibration | None = None
        self.n_fits_ = 0
        self.fits_: list[dict] = []

    @property
    def is_fitted(self) -> bool:
        return self.calibration_ is not None

    @property
    def threshold_(self) -> float:
        self._check_fitted()
        return self.calibration_.threshold

    def scorer(self, topology) -> ClusterScorer:
        """A live scorer over ``topology`` (fresh smoothing state)."""
        self._check_fitted()
        return ClusterScorer(self.calibration_, self.config.params(), RackMap.from_any(topology))

    # -- fit ----------------------------------------------------------------------------
    def fit(self, scores: pd.DataFrame, topology, jobs: pd.DataFrame | None = None, day: str | None = None) -> "ClusterModel":
        """Learn (or continue learning) from node scores of clean-ish days; returns ``self``."""
        racks = RackMap.from_any(topology)
        rows = validate_node_scores(scores, "cluster training scores")
        le = np.log(np.maximum(rows["error"].to_numpy(), 1e-12))
        le = le[np.isfinite(rows["error"].to_numpy())]
        if le.size < 10:
            raise DataQualityError("cluster training scores", f"have {le.size} scored node-intervals",
                                   "train on at least a few intervals of a cluster")
        tensor = to_tensor(rows, racks, "cluster training scores")
        members = validate_jobs(jobs, racks)
        cfg, old = self.config, self.calibration_
        cal = self._node_stats(le, deviations(tensor.latent, cfg.lat_beta), old)
        # raw pass: the excess scores alone (co_weight, level_weight 0) beside the raw co-movement and level scores
        raw = replace(cfg.params(), co_weight=0.0, level_weight=0.0)
        first = score_tensor(ClusterScorer(cal, raw, racks), tensor, members)
        cal = self._calibrate_scopes(cal, first, racks)
        if first.lat_spread.size:
            cal.peer_lat_floor = max(float(np.median(first.lat_spread)), 1e-6)
            cal.peer_err_floor = max(float(np.median(first.err_spread)), 1e-6)
            second = score_tensor(ClusterScorer(cal, cfg.params(), racks), tensor, members)
            held = second.peer_score[np.isfinite(second.peer_score)]  # NaN: held during an incident
            q = float(np.quantile(held, cfg.peer_quantile)) if held.size else 0.0
            cal.peer_threshold = max(q * cfg.peer_margin, cfg.peer_min_threshold)
        elif old is not None:
            cal.peer_lat_floor, cal.peer_err_floor, cal.peer_threshold = old.peer_lat_floor, old.peer_err_floor, old.peer_threshold
        else:  # no multi-node job yet: the node-level spreads stand in for the peers'
            cal.peer_lat_floor, cal.peer_err_floor = cal.lat_scale, cal.err_scale
            cal.peer_threshold = cfg.peer_min_threshold
        if old is not None:
            scopes = old.blend(cal, cfg.update_weight)
            scopes.err_median, scopes.err_scale = cal.err_median, cal.err_scale
            scopes.lat_median, scopes.lat_scale = cal.lat_median, cal.lat_scale
            cal = scopes
        self.calibration_ = cal
        self.n_fits_ += 1
        self.fits_.append({
            "day": day, "steps": len(tensor.ts), "nodes": int(np.isfinite(tensor.error).any(axis=0).sum()),
            "racks": racks.n_racks, "job_members": len(members), "warm_start": old is not None,
            "threshold": cal.threshold, "peer_threshold": cal.peer_threshold,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })  # fmt: skip
        log.info("cluster fit %d: %d steps, threshold %.3g, peer threshold %.3g",
                 self.n_fits_, len(tensor.ts), cal.threshold, cal.peer_threshold)
        return self

    def _node_stats(self, le: np.ndarray, dev: np.ndarray, old: Calibration | None) -> Calibration:
        """Clean median and robust sd of the log error and the latent deviation; a continual
        fit moves them first, so the scopes' units are learnt in the blended terms."""
        cfg = self.config

        def robust(v: np.ndarray, floor: float) -> tuple[float, float]:
            v = v[np.isfinite(v)]
            if not v.size:
                return 0.0, 1.0
            med = float(np.median(v))
            return med, max(_MAD * float(np.median(np.abs(v - med))), floor)

        (em, es), (lm, ls) = robust(le, cfg.err_scale_floor), robust(dev.ravel(), 1e-3)
        cal = Calibration(err_median=em, err_scale=es, lat_median=lm, lat_scale=ls)
        if old is not None:
            w = cfg.update_weight
            for k in ("err_median", "err_scale", "lat_median", "lat_scale"):
                setattr(cal, k, (1 - w) * getattr(old, k) + w * getattr(cal, k))
        return cal

    def _calibrate_scopes(self, cal: Calibration, trace: StepTrace, racks: RackMap) -> Calibration:
        """Units of the cluster and rack scores, and the incident threshold, from raw smoothed values."""
        cfg = self.config

        def unit(values: np.ndarray) -> tuple[float, float]:
            v = values[np.isfinite(values)]
            if not v.size:
                return 0.0, cfg.unit_floor
            q50 = float(np.median(v))
            return q50, max(float(np.quantile(v, cfg.unit_quantile)) - q50, cfg.unit_floor)

        # the trace's scores are raw (identity units): cluster = raw mean excess, co_* = raw mean drift
        cal.cluster_q50, cal.cluster_unit = unit(trace.cluster)
        cal.rack_q50, cal.rack_unit = unit(trace.racks.ravel())
        c = (trace.cluster - cal.cluster_q50) / cal.cluster_unit
        r = (trace.racks - cal.rack_q50) / cal.rack_unit
        if cfg.co_weight > 0 and trace.co_cluster is not None:
            cal.co_cluster_q50, cal.co_cluster_unit = unit(trace.co_cluster)
            cal.co_rack_q50, cal.co_rack_unit = unit(trace.co_racks.ravel())
            c = _plus(c, cfg.co_weight * (trace.co_cluster - cal.co_cluster_q50) / cal.co_cluster_unit)
            r = _plus(r, cfg.co_weight * (trace.co_racks - cal.co_rack_q50) / cal.co_rack_unit)
        if cfg.level_weight > 0 and trace.level_cluster is not None:
            cal.level_cluster_q50, cal.level_cluster_unit = unit(trace.level_cluster)
            cal.level_rack_q50, cal.level_rack_unit = unit(trace.level_racks.ravel())
            cal.level_racks = {name: unit(trace.level_racks[:, j]) for j, name in enumerate(racks.racks)
                               if np.isfinite(trace.level_racks[:, j]).sum() >= 10}  # fmt: skip
            q50, u = cal.level_rack_units(racks.racks)
            c = np.fmax(c, cfg.level_weight * (trace.level_cluster - cal.level_cluster_q50) / cal.level_cluster_unit)
            r = np.fmax(r, cfg.level_weight * (trace.level_racks - q50) / u)
        both = np.column_stack([c, r])
        s = np.where(np.isfinite(both).any(axis=1), np.nanmax(np.where(np.isfinite(both), both, -np.inf), axis=1), np.nan)
        s = s[np.isfinite(s)]
        q = float(np.quantile(s, cfg.threshold_quantile)) if s.size else 0.0
        cal.threshold = max(q * cfg.margin, cfg.min_threshold)
        cal.low_threshold = cal.threshold * cfg.low_fraction
        return cal

    # -- score ----------------------------------------------------------------------------
    def score(self, scores: pd.DataFrame, topology, jobs: pd.DataFrame | None = None) -> ClusterScores:
        """Score a stretch of node scores (a day) step by step, from a fresh smoothing state."""
        self._check_fitted()
        racks = RackMap.from_any(topology)
        rows = validate_node_scores(scores, "cluster scoring input")
        tensor = to_tensor(rows, racks, "cluster scoring input")
        members = validate_jobs(jobs, racks)
        tr = score_tensor(self.scorer(racks), tensor, members)
        names = list(racks.racks)
        top = np.array([int(np.nanargmax(r)) if np.isfinite(r).any() else -1 for r in tr.racks])
        steps = pd.DataFrame({
            "ts": tensor.ts, "incident_score": tr.incident, "cluster_score": tr.cluster,
            "top_rack": [names[i] if i >= 0 else None for i in top],
            "top_rack_score": np.where(top >= 0, tr.racks[np.arange(len(top)), np.maximum(top, 0)], np.nan),
            "nodes_scored": np.isfinite(tensor.error).sum(axis=1),
            "frac_ood": tr.frac_ood, "mean_error": tr.mean_error,
            "rack_max_error": np.nanmax(np.where(np.isfinite(tr.rack_max), tr.rack_max, -np.inf), axis=1),
        })  # fmt: skip
        peers = pd.DataFrame({
            "ts": tensor.ts[tr.peer_t], "job_id": members["job_id"].to_numpy()[tr.peer_row],
            "node": members["node"].to_numpy()[tr.peer_row], "peer_score": tr.peer_score, "peer_raw": tr.peer_raw,
            "outlier": tr.peer_score >= self.calibration_.peer_threshold,
        }) if len(tr.peer_t) else pd.DataFrame(columns=["ts", "job_id", "node", "peer_score", "peer_raw", "outlier"])  # fmt: skip
        cal = self.calibration_
        return ClusterScores(
            steps, pd.DataFrame(tr.racks, index=tensor.ts, columns=names),
            pd.DataFrame(tr.rack_max, index=tensor.ts, columns=names), peers,
            pd.DataFrame(tr.excess, index=tensor.ts, columns=list(racks.nodes)),
            cal.threshold, cal.low_threshold, cal.peer_threshold, racks, self.config.merge_gap_steps,
        )

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config.to_dict(),
            "calibration": self.calibration_.to_dict(), "training": {"n_fits": self.n_fits_, "fits": self.fits_},
            "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (atomically) into ``directory`` (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(), indent=2, allow_nan=False).encode()
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{CONFIG_FILE}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, d / CONFIG_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return d

    @classmethod
    def from_dict(cls, meta: dict, what: str = "cluster model") -> "ClusterModel":
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RegistryError(what, f"is not a {FORMAT} config", "point at a folder written by ClusterModel.save")
        if meta.get("format_version") != FORMAT_VERSION:
            raise RegistryError(what, f"has format_version {meta.get('format_version')!r}, this didact reads "
                                      f"{FORMAT_VERSION}", "upgrade didact")
        try:
            config = ClusterConfig.from_dict(meta["config"])
            if "level_cluster_unit" not in meta["calibration"]:  # saved before the level score: it has no units
                config = replace(config, level_weight=0.0)
            if "trim_top" not in meta["config"]:  # saved before trimming: its units are of untrimmed means
                config = replace(config, trim_top=False)
            if "co_trim" not in meta["config"]:  # saved before the rack co-movement was trimmed
                config = replace(config, co_trim=0.0)
            if "level_trim_beyond" not in meta["config"]:  # its level units are of always-trimmed means
                config = replace(config, level_trim_beyond=False)
            model = cls(config)
            model.calibration_ = Calibration.from_dict(meta["calibration"])
            model.n_fits_ = int(meta.get("training", {}).get("n_fits", 0))
            model.fits_ = list(meta.get("training", {}).get("fits", []))
        except DidactError as e:
            raise RegistryError(what, f"holds an invalid config ({e})", "re-save the model") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RegistryError(what, f"lacks or has a malformed entry ({e!r})", "re-save the model") from None
        return model

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ClusterModel":
        """Rebuild a model saved by :meth:`save`; a bad folder is a :class:`RegistryError`."""
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise RegistryError(f"cluster model file {path}", "is missing", "point at a folder written by ClusterModel.save")
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RegistryError(f"cluster model file {path}", f"cannot be read as JSON ({e})", "re-save the model") from None
        return cls.from_dict(meta, f"cluster model file {path}")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise DidactError("cluster model", "is not fitted", "call fit(scores, topology) or ClusterModel.load(folder)")

    def __repr__(self) -> str:
        state = f"{self.n_fits_} fits, threshold={self.calibration_.threshold:.3g}" if self.is_fitted else "unfitted"
        return f"ClusterModel({state})"
