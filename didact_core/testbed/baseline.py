"""A model-free baseline for a recording: per labelled segment the mean CPU-mode
fractions (and the spread of busy time across CPUs), classified by leave-one-segment-out
nearest centroid.  What a model's latent has to beat."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.labels import attach_intervals, read_labels
from didact_core.data.warehouse import Warehouse
from didact_core.schema import CPU_FRACTIONS


def segment_features(samples: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled segment: ``node, start, end, label, n`` (samples inside) and
    the mean of each CPU-mode fraction over the segment's samples (all CPUs), plus
    ``busy_spread``: the mean over timestamps of max − min busy fraction across CPUs
    (one busy thread vs all busy).  ``samples`` are AI-ready samples (``ts``, ``node``,
    ``cpu``, ``dt_s``, fractions); ``labels`` a labels frame."""
    cols = [c for c in CPU_FRACTIONS if c in samples.columns]
    lab = labels.reset_index(drop=True).copy()
    lab["segment"] = [f"s{i}" for i in range(len(lab))]
    seg = attach_intervals(samples[["ts", "node", *(["dt_s"] if "dt_s" in samples else [])]], lab, "segment", "")
    df = samples[["ts", "cpu", *cols]].copy()
    df["segment"] = np.asarray(seg, dtype=object)
    df = df[df["segment"] != ""]
    for c in cols:
        df[c] = df[c].astype(float)
    busy = 1.0 - df.get("idle", 0.0) - df.get("iowait", 0.0)
    df["busy"] = busy
    means = df.groupby("segment")[cols].mean()
    g = df.groupby(["segment", "ts"])["busy"]
    spread = (g.max() - g.min()).groupby("segment").mean()
    n = df.groupby("segment").size()
    out = lab.set_index("segment")[["node", "start", "end", "label"]].join(means, how="inner")
    out["busy_spread"] = spread
    out["n"] = n
    return out.reset_index(drop=True)


FEATURES_FOR_BASELINE = (*CPU_FRACTIONS, "busy_spread")


def nearest_centroid_loo(features: pd.DataFrame, columns: Sequence[str] | None = None) -> dict:
    """Leave-one-segment-out nearest-centroid classification of the segments' flavours.

    For every segment, each flavour's centroid is the mean of the *other* segments of
    that flavour; the segment is predicted as the flavour with the nearest centroid
    (Euclidean).  Returns accuracy, chance (1 / flavours), per-flavour accuracy and
    the confusion counts."""
    cols = [c for c in (columns or FEATURES_FOR_BASELINE) if c in features.columns]
    X = features[cols].to_numpy(float)
    y = features["label"].astype(str).to_numpy()
    classes = sorted(set(y))
    pred = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        best, best_d = None, np.inf
        for c in classes:
            m = keep & (y == c)
            if not m.any():
                continue
            d = float(np.linalg.norm(X[i] - X[m].mean(axis=0)))
            if d < best_d:
                best, best_d = c, d
        pred.append(best)
    pred = np.array(pred, dtype=object)
    ok = pred == y
    per = {c: float(ok[y == c].mean()) for c in classes}
    confusion = pd.crosstab(pd.Series(y, name="true"), pd.Series(pred, name="predicted"))
    return {
        "accuracy": float(ok.mean()) if len(y) else float("nan"),
        "chance": 1.0 / len(classes) if classes else float("nan"),
        "segments": int(len(y)),
        "flavours": len(classes),
        "per_flavour": per,
        "confusion": confusion,
        "columns": cols,
    }


def recorded_segment_features(settings: Settings, day: dt.date, labels_csv: str | Path) -> pd.DataFrame:
    """:func:`segment_features` of a stored ``ai_ready_metrics`` day and the CSV's labels."""
    wh = Warehouse(settings.home_path)
    samples = wh.read("ai_ready_metrics", day.isoformat(), "samples")
    samples = samples.assign(node=samples["node"].astype(str))
    lab = read_labels(labels_csv)
    lo = pd.Timestamp(day, tz="UTC")
    lab = lab[(lab["end"] > lo) & (lab["start"] < lo + pd.Timedelta(days=1))]
    return segment_features(samples, lab.assign(node=lab["node"].astype(str), label=lab["label"].astype(str)))
