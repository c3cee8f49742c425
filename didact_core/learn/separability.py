"""How well a detector separates labelled job flavours, and flags one it never saw.

* :func:`separability` — kNN accuracy of the flavours in the detector's latent, next to
  the same classifier on PCA-2 of the (transformed) features and on the raw features,
  with folds over samples and over whole segments (:func:`segment_ids`);
* :func:`openset` — for each flavour F: train a fresh detector on every other flavour,
  then the ROC-AUC of the reconstruction error for held-out samples of F (positives)
  against held-out samples of the others (negatives).

``model_evaluation`` (``learn.evaluate_day``) and the testbed evaluation
(``testbed.evaluation``) both use them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError
from didact_core.learn.detector import Detector
from didact_core.learn.evaluation import roc_auc
from didact_core.learn.models.config import model_config

log = logging.getLogger(__name__)


def segment_ids(frame: pd.DataFrame) -> np.ndarray:
    """One id per run of a label: per node, in time order, a new id where the label changes.
    A recording's segments are such runs (two back-to-back segments of one flavour become one
    run: coarser groups, never leakier ones); a sample of the rows keeps them intact."""
    node = frame["node"].astype(str).to_numpy()
    label = frame["label"].astype(str).to_numpy()
    order = np.lexsort((pd.to_datetime(frame["ts"], utc=True).array.asi8, node))
    n, lab = node[order], label[order]
    new = np.r_[True, (n[1:] != n[:-1]) | (lab[1:] != lab[:-1])]
    ids = np.empty(len(frame), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def separability(detector, frame: pd.DataFrame, features: list[str], seed: int = 0) -> dict:
    """kNN accuracy of the labels in the latent, in PCA-2 and in the raw features; per flavour too.

    ``*_knn_accuracy``: 5-fold stratified over samples (neighbouring seconds of one segment
    fall in different folds, which flatters every space alike); ``*_knn_accuracy_by_segment``:
    folds of whole segments (``segment_ids``), each segment judged only by the others."""
    from sklearn.decomposition import PCA  # lazy: sklearn takes a second to import
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict  # lazy: as above
    from sklearn.neighbors import KNeighborsClassifier  # lazy: as above

    y = frame["label"].astype(str).to_numpy()
    z = detector.embed(frame[features])
    t = detector.transform_.transform(frame[features])
    spaces = {"latent": z, "pca2": PCA(2, random_state=seed).fit_transform(t), "raw": t}
    out: dict = {}
    counts = pd.Series(y).value_counts()
    folds = int(min(5, counts.min()))
    if folds < 2:
        raise DataQualityError("labelled samples", f"flavour {counts.idxmin()!r} has only {counts.min()} sample")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    groups = segment_ids(frame) if {"node", "ts"} <= set(frame.columns) else None
    per_flavour_segments = pd.Series(groups).groupby(y).nunique() if groups is not None else None
    by_segment = groups is not None and per_flavour_segments.min() >= 2
    for name, X in spaces.items():
        pred = cross_val_predict(KNeighborsClassifier(n_neighbors=5), X, y, cv=cv)
        out[f"{name}_knn_accuracy"] = float(np.mean(pred == y))
        if name == "latent":
            out["latent_knn_by_flavour"] = {k: float(np.mean(pred[y == k] == k)) for k in sorted(set(y))}
        if by_segment:
            gcv = GroupKFold(n_splits=int(min(5, len(np.unique(groups)))))
            pred = cross_val_predict(KNeighborsClassifier(n_neighbors=5), X, y, cv=gcv, groups=groups)
            out[f"{name}_knn_accuracy_by_segment"] = float(np.mean(pred == y))
            if name == "latent":
                out["latent_knn_by_segment_by_flavour"] = {k: float(np.mean(pred[y == k] == k)) for k in sorted(set(y))}
    if groups is not None:
        out["segments"] = int(len(np.unique(groups)))
    return out


def openset(settings: Settings, train: pd.DataFrame, test: pd.DataFrame, features: list[str], epochs: int = 5) -> dict:
    """Leave-one-flavour-out ROC-AUC of the reconstruction error (see module doc)."""
    cfg = model_config(settings, len(features)).replace(max_epochs=epochs)
    per: dict[str, float | None] = {}
    for flavour in sorted(train["label"].astype(str).unique()):
        det = Detector(cfg, features).fit(train.loc[train["label"].astype(str) != flavour, features])
        s = det.score_samples(test[features])
        per[flavour] = roc_auc(s, (test["label"].astype(str) == flavour).to_numpy())
        log.info("open set without %s: AUC %s", flavour, per[flavour])
    aucs = [v for v in per.values() if v is not None]
    return {"openset_auc": float(np.mean(aucs)) if aucs else None, "openset_auc_by_flavour": per}
