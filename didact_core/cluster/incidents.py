"""Cluster incidents: stretches of time whose incident score crosses the threshold.

Hysteresis: an incident opens at a step whose score reaches the model's ``threshold``, stays
open while the score is at least ``low_threshold``, and incidents apart by at most
``merge_gap_steps`` steps are one.  Each incident names its racks (those whose rack score
reached ``low_threshold`` during it, highest first), the nodes it touched (a node whose
excess anomaly was positive during at least half of it) and the jobs running on them.

:func:`incident_events` puts incidents in the review queue's event shape (as serving's OOD
events are), so an operator vets them the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.cluster.model import ClusterScores

INCIDENT_COLUMNS = [
    "incident_id", "start", "end", "steps", "peak_score", "mean_score", "threshold", "scope", "top_rack",
    "racks", "n_nodes", "nodes", "jobs",
]  # fmt: skip
#: at most this many node names per incident (n_nodes counts them all)
MAX_NODES_LISTED = 64


def _runs(s: np.ndarray, high: float, low: float, gap: int) -> list[tuple[int, int]]:
    """[first, last] step index pairs of the hysteresis runs, merged across short gaps."""
    runs: list[list[int]] = []
    t, T = 0, len(s)
    while t < T:
        if np.isfinite(s[t]) and s[t] >= high:
            a = t
            while a > 0 and np.isfinite(s[a - 1]) and s[a - 1] >= low:  # the rise belongs to it
                a -= 1
            b = t
            while b + 1 < T and np.isfinite(s[b + 1]) and s[b + 1] >= low:
                b += 1
            if runs and a - runs[-1][1] - 1 <= gap:
                runs[-1][1] = b
            else:
                runs.append([a, b])
            t = b + 1
        else:
            t += 1
    return [(a, b) for a, b in runs]


def find_incidents(scores: ClusterScores, jobs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The incidents of a scored stretch (one row each, :data:`INCIDENT_COLUMNS`).

    ``jobs``: membership rows (job_id, node, start, end) to name the jobs touched."""
    steps = scores.timesteps
    s = steps["incident_score"].to_numpy(dtype=np.float64)
    ts = pd.DatetimeIndex(steps["ts"])
    step = ts.to_series().diff().median() if len(ts) > 1 else pd.Timedelta(seconds=60)
    gap = scores.merge_gap_steps
    rows = []
    for k, (a, b) in enumerate(_runs(s, scores.threshold, scores.low_threshold, gap)):
        seg = s[a : b + 1]
        peak = a + int(np.nanargmax(seg))
        rack_seg = scores.rack_scores.iloc[a : b + 1]
        rack_peak = rack_seg.max(axis=0)
        racks = [str(r) for r in rack_peak[rack_peak >= scores.low_threshold].sort_values(ascending=False).index]
        top = str(rack_peak.idxmax()) if rack_peak.notna().any() else None
        ex = scores.node_excess.iloc[a : b + 1]
        hit = (ex.fillna(0) > 0).mean(axis=0)
        nodes = [str(n) for n in hit[hit >= 0.5].sort_values(ascending=False).index]
        start, end = ts[a], ts[b] + step
        rows.append({
            "incident_id": k, "start": start, "end": end, "steps": b - a + 1,
            "peak_score": float(s[peak]), "mean_score": float(np.nanmean(seg)), "threshold": scores.threshold,
            "scope": "cluster" if steps["cluster_score"].iloc[peak] >= steps["top_rack_score"].iloc[peak] else "rack",
            "top_rack": top, "racks": racks, "n_nodes": len(nodes), "nodes": nodes[:MAX_NODES_LISTED],
            "jobs": _jobs_touched(jobs, set(nodes), start, end),
        })  # fmt: skip
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in INCIDENT_COLUMNS})
    return pd.DataFrame(rows, columns=INCIDENT_COLUMNS)


def _jobs_touched(jobs: pd.DataFrame | None, nodes: set, start, end) -> list[str]:
    if jobs is None or len(jobs) == 0 or not nodes:
        return []
    j = jobs[jobs["node"].astype(str).isin(nodes)]
    j = j[(pd.to_datetime(j["start"], utc=True) < end) & (pd.to_datetime(j["end"], utc=True) > start)]
    return sorted(j["job_id"].astype(str).unique().tolist())


def incident_events(incidents: pd.DataFrame, model_version: int | None = None) -> pd.DataFrame:
    """Incidents in the review queue's event shape (``ReviewQueue.add_events``): ts = start,
    node ``cluster`` or ``rack:<rack>``, cpu -1, score = peak, features = the incident's facts."""
    cols = ["ts", "node", "cpu", "score", "threshold", "model_version", "features", "latent_0", "latent_1",
            "nearest_flavour"]  # fmt: skip
    if incidents is None or incidents.empty:
        return pd.DataFrame(columns=cols)
    node = [
        "cluster" if r["scope"] == "cluster" or not r["top_rack"] else f"rack:{r['top_rack']}"
        for r in incidents.to_dict("records")
    ]
    feats = [
        {"kind": "cluster_incident", "start": str(r["start"]), "end": str(r["end"]), "steps": int(r["steps"]),
         "racks": list(r["racks"]), "jobs": list(r["jobs"])[:32], "n_nodes": int(r["n_nodes"]),
         "mean_score": round(float(r["mean_score"]), 4)}
        for r in incidents.to_dict("records")
    ]  # fmt: skip
    return pd.DataFrame({
        "ts": pd.to_datetime(incidents["start"], utc=True).to_numpy(), "node": node, "cpu": -1,
        "score": incidents["peak_score"].to_numpy(dtype=np.float64),
        "threshold": incidents["threshold"].to_numpy(dtype=np.float64), "model_version": model_version,
        "features": feats, "latent_0": np.nan, "latent_1": np.nan, "nearest_flavour": None,
    }, columns=cols)  # fmt: skip
