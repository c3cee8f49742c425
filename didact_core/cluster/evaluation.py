"""How good is the cluster model against labelled truth (the simulator's, or a person's)?

Truth frames (the simulator's ``RawBlock.meta`` / ``ClusterPlan.frames``; ``end`` exclusive):

* incidents: ``kind, start, end, racks`` (a list, or a comma string); rack-level kinds
  (``rack_*``, or any incident whose ``racks`` holds one rack) are the localisation cases;
* stragglers: ``job_id, node, start, end``.

:func:`evaluate` returns plain numbers: incident detection ROC-AUC per timestep (the model
and each simple baseline), rack localisation accuracy (the model and the per-rack-maximum
baseline), straggler precision / recall at the model's peer threshold, and the incidents
found on the stretch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.cluster.incidents import find_incidents
from didact_core.cluster.model import ClusterScores
from didact_core.learn.evaluation import roc_auc

BASELINES = ("frac_ood", "mean_error", "rack_max_error")
#: a job member is a straggler when the median of its smoothed peer scores over the job crosses the
#: threshold: unlike its peers for at least half the time it ran with them (a short fault is not)
PAIR_QUANTILE = 0.5


def as_list(value) -> list[str]:
    """A truth cell (list, array, tuple, comma string, None) as a list of names."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def incident_labels(ts, incidents: pd.DataFrame | None) -> np.ndarray:
    """Per timestep: True when an incident of the truth is on (start <= ts < end)."""
    t = _ns(ts)
    y = np.zeros(len(t), dtype=bool)
    if incidents is None or incidents.empty:
        return y
    for s, e in zip(_ns(incidents["start"]), _ns(incidents["end"])):
        y |= (t >= s) & (t < e)
    return y


def _ns(values) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds (whatever unit they came in)."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


def _is_rack_level(row: dict) -> bool:
    return str(row.get("kind", "")).startswith("rack") or len(as_list(row.get("racks"))) == 1


def localisation(scores: ClusterScores, incidents: pd.DataFrame | None) -> dict:
    """Rack localisation of the rack-level incidents: the rack with the highest mean rack score
    over the incident's window (the model), or the highest mean per-rack max error (baseline)."""
    out = {"rack_incidents": 0, "rack_accuracy": None, "rack_accuracy_baseline": None}
    if incidents is None or incidents.empty:
        return out
    ts = pd.DatetimeIndex(scores.timesteps["ts"])
    hits, base = [], []
    for row in incidents.to_dict("records"):
        if not _is_rack_level(row):
            continue
        on = (ts >= pd.Timestamp(row["start"])) & (ts < pd.Timestamp(row["end"]))
        if not on.any():
            continue
        truth = set(as_list(row["racks"]))
        if not scores.rack_scores[on].notna().any().any():
            continue
        hits.append(str(scores.rack_scores[on].mean(axis=0).idxmax()) in truth)
        base.append(str(scores.rack_max_error[on].mean(axis=0).idxmax()) in truth)
    out["rack_incidents"] = len(hits)
    if hits:
        out["rack_accuracy"], out["rack_accuracy_baseline"] = float(np.mean(hits)), float(np.mean(base))
    return out


def member_calls(scores: ClusterScores, stragglers: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per scored job member (index ``job_id␟node``): ``score`` (the :data:`PAIR_QUANTILE`
    of its smoothed peer score over the job), ``called`` (score ≥ the peer threshold) and
    ``truth`` (a straggler in ``stragglers``)."""
    peers = scores.peers
    key = peers["job_id"].astype(str) + "\x1f" + peers["node"].astype(str)
    pair = peers.assign(key=key).groupby("key")["peer_score"].quantile(PAIR_QUANTILE)
    tkey = set() if stragglers is None else set(stragglers["job_id"].astype(str) + "\x1f" + stragglers["node"].astype(str))
    return pd.DataFrame({"score": pair, "called": pair.to_numpy() >= scores.peer_threshold,
                         "truth": pair.index.isin(list(tkey))}, index=pair.index)


def straggler_metrics(scores: ClusterScores, stragglers: pd.DataFrame | None) -> dict:
    """Precision / recall of the job members the model calls stragglers (per job member: the
    :data:`PAIR_QUANTILE` of its smoothed peer score over the job against the peer threshold),
    and per member-timestep inside the straggling windows."""
    peers = scores.peers
    out = {"members_scored": 0, "straggler_truth": 0, "straggler_found": 0, "straggler_flagged": 0,
           "straggler_precision": None, "straggler_recall": None,
           "straggler_step_precision": None, "straggler_step_recall": None}  # fmt: skip
    if peers.empty:
        return out
    truth = stragglers if stragglers is not None else pd.DataFrame(columns=["job_id", "node", "start", "end"])
    calls = member_calls(scores, truth)
    y, pred = calls["truth"].to_numpy(), calls["called"].to_numpy()
    tkey = set(truth["job_id"].astype(str) + "\x1f" + truth["node"].astype(str))
    # recall over every true straggler, scored or not (a job too small to have peers misses it)
    out.update(members_scored=len(calls), straggler_truth=len(tkey), straggler_found=int((pred & y).sum()),
               straggler_flagged=int(pred.sum()), straggler_precision=_ratio((pred & y).sum(), pred.sum()),
               straggler_recall=_ratio((pred & y).sum(), len(tkey)))
    # per member-timestep: inside the straggling window
    ys = np.zeros(len(peers), dtype=bool)
    t = _ns(peers["ts"])
    for r in truth.to_dict("records"):
        m = (peers["job_id"].astype(str).to_numpy() == str(r["job_id"])) & (peers["node"].astype(str).to_numpy() == str(r["node"]))
        ys |= m & (t >= _ns([r["start"]])[0]) & (t < _ns([r["end"]])[0])
    ps = peers["outlier"].to_numpy(dtype=bool)
    out.update(straggler_step_precision=_ratio((ps & ys).sum(), ps.sum()), straggler_step_recall=_ratio((ps & ys).sum(), ys.sum()))
    return out


def _ratio(a, b) -> float | None:
    return float(a) / float(b) if b else None


def evaluate(
    scores: ClusterScores, incidents: pd.DataFrame | None = None, stragglers: pd.DataFrame | None = None,
    jobs: pd.DataFrame | None = None,
) -> dict:
    """Every figure of the stretch against the truth (None where the truth has no case)."""
    steps = scores.timesteps
    y = incident_labels(steps["ts"], incidents)
    out: dict = {"steps": len(steps), "incident_steps": int(y.sum()), "auc": roc_auc(steps["incident_score"].to_numpy(), y)}
    for b in BASELINES:
        out[f"auc_{b}"] = roc_auc(steps[b].to_numpy(), y)
    base = [out[f"auc_{b}"] for b in BASELINES if out[f"auc_{b}"] is not None]
    out["auc_best_baseline"] = max(base) if base else None
    found = find_incidents(scores, jobs)
    out["incidents_found"] = len(found)
    out["incidents_truth"] = 0 if incidents is None else len(incidents)
    if incidents is not None and len(incidents):
        hit = [_overlaps(found, r["start"], r["end"]) for r in incidents.to_dict("records")]
        out["incident_recall"] = float(np.mean(hit))
        false = [not _overlaps(incidents, r["start"], r["end"]) for r in found.to_dict("records")]
        out["false_incidents"] = int(np.sum(false))
    else:
        out["incident_recall"], out["false_incidents"] = None, len(found)
    out["steps_above_threshold_clean"] = int((steps["incident_score"].to_numpy()[~y] >= scores.threshold).sum())
    out.update(localisation(scores, incidents))
    out.update(straggler_metrics(scores, stragglers))
    return out


def _overlaps(frame: pd.DataFrame, start, end) -> bool:
    if frame is None or frame.empty:
        return False
    s = pd.to_datetime(frame["start"], utc=True)
    e = pd.to_datetime(frame["end"], utc=True)
    return bool(((s < pd.Timestamp(end)) & (e > pd.Timestamp(start))).any())
