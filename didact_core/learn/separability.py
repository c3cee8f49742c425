"""How well a detector separates labelled job flavours, and flags one it never saw.

* :func:`separability` — kNN accuracy of the flavours in the detector's latent, next to
  the same classifier on PCA-2 of the (transformed) features and on the raw features,
  with folds over samples and over whole segments (:func:`segment_ids`);
* :func:`openset` — for each flavour F: train a fresh detector on every other flavour,
  then the ROC-AUC of the reconstruction error for held-out samples of F (positives)
  against held-out samples of the others (negatives); :func:`openset_auc` for one F;
* :func:`knn_transfer` — kNN fit on one set (training segments, a training recording),
  scored on another.

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


#: kNN neighbours, and the samples a flavour needs to be scored by kNN at all
KNN_K = 5
MIN_KNN_SAMPLES = 10
#: folds of the per-sample kNN; segments up to this many are judged leave-one-segment-out,
#: more by as many group folds
SAMPLE_FOLDS = 5
MAX_LOSO_SEGMENTS = 60


def separability(detector, frame: pd.DataFrame, features: list[str], seed: int = 0) -> dict:
    """kNN accuracy of the labels in the latent, in PCA-2 and in the raw features; per flavour too.

    ``*_knn_accuracy``: 5-fold stratified over samples (neighbouring seconds of one segment
    fall in different folds, which flatters every space alike); ``*_knn_accuracy_by_segment``:
    leave-one-segment-out (``segment_ids``; group folds beyond :data:`MAX_LOSO_SEGMENTS`),
    each segment judged only by the others.  The fold count never depends on the smallest
    flavour: a flavour with fewer than :data:`MIN_KNN_SAMPLES` samples (or, by segment, fewer
    than 2 segments) is left out of that figure and named in ``knn_left_out`` /
    ``knn_by_segment_left_out`` with the reason; ``knn_scheme`` says how it was folded."""
    from sklearn.decomposition import PCA  # lazy: sklearn takes a second to import

    y_all = frame["label"].astype(str).to_numpy()
    counts = pd.Series(y_all).value_counts()
    left_out = {f: f"{n} samples (< {MIN_KNN_SAMPLES})" for f, n in counts.items() if n < MIN_KNN_SAMPLES}
    keep = ~np.isin(y_all, list(left_out))
    if len(set(y_all[keep])) < 2:
        raise DataQualityError(
            "labelled samples", f"hold fewer than two flavours with {MIN_KNN_SAMPLES}+ samples ({counts.to_dict()})",
            "label more of the recording, or evaluate more days",
        )  # fmt: skip
    frame, y = frame[keep], y_all[keep]
    z = detector.embed(frame[features])
    t = detector.transform_.transform(frame[features])
    spaces = {"latent": z, "pca2": PCA(2, random_state=seed).fit_transform(t), "raw": t}
    out: dict = {"knn_left_out": left_out}
    sample_cv = _sample_folds(y, seed)
    groups = segment_ids(frame) if {"node", "ts"} <= set(frame.columns) else None
    seg_cv, seg_keep, seg_left = _segment_folds(y, groups)
    out["knn_scheme"] = f"{sample_cv[1]}; by segment: {seg_cv[1] if seg_cv else 'none (no segments)'}"
    if groups is not None:
        out["segments"] = int(len(np.unique(groups)))
        out["knn_by_segment_left_out"] = {**left_out, **seg_left}
    for name, X in spaces.items():
        pred = _cv_predict(X, y, sample_cv[0])
        out[f"{name}_knn_accuracy"] = float(np.mean(pred == y))
        if name == "latent":
            out["latent_knn_by_flavour"] = _per_flavour(pred, y)
        if seg_cv is not None:
            pred = _cv_predict(X[seg_keep], y[seg_keep], seg_cv[0], groups[seg_keep])
            out[f"{name}_knn_accuracy_by_segment"] = float(np.mean(pred == y[seg_keep]))
            if name == "latent":
                out["latent_knn_by_segment_by_flavour"] = _per_flavour(pred, y[seg_keep])
    return out


def _per_flavour(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {k: float(np.mean(pred[y == k] == k)) for k in sorted(set(y))}


def _cv_predict(X, y, cv, groups=None) -> np.ndarray:
    from sklearn.model_selection import cross_val_predict  # lazy: sklearn takes a second to import
    from sklearn.neighbors import KNeighborsClassifier  # lazy: as above

    return cross_val_predict(KNeighborsClassifier(n_neighbors=KNN_K), X, y, cv=cv, groups=groups)


def _sample_folds(y: np.ndarray, seed: int):
    """(cv, description): stratified folds over samples; every kept flavour has enough samples."""
    from sklearn.model_selection import StratifiedKFold  # lazy: sklearn takes a second to import

    # every kept flavour has MIN_KNN_SAMPLES >= SAMPLE_FOLDS samples: the count cannot collapse
    cv = StratifiedKFold(n_splits=SAMPLE_FOLDS, shuffle=True, random_state=seed)
    return cv, f"{SAMPLE_FOLDS}-fold stratified over samples"


def _segment_folds(y: np.ndarray, groups: np.ndarray | None):
    """((cv, description) or None, kept rows, {flavour: why left out}) for folds of whole segments."""
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut  # lazy: sklearn takes a second to import

    if groups is None:
        return None, np.ones(len(y), dtype=bool), {}
    per = pd.Series(groups).groupby(y).nunique()
    left = {f: f"{n} segment (a segment is judged only by other segments of its flavour: needs 2+)"
            for f, n in per.items() if n < 2}  # fmt: skip
    keep = ~np.isin(y, list(left))
    if len(set(y[keep])) < 2:
        return None, keep, left
    n = len(np.unique(groups[keep]))
    if n <= MAX_LOSO_SEGMENTS:
        return (LeaveOneGroupOut(), f"leave-one-segment-out over {n} segments"), keep, left
    return (GroupKFold(n_splits=MAX_LOSO_SEGMENTS), f"{MAX_LOSO_SEGMENTS} folds of whole segments ({n} segments)"), keep, left


def openset(settings: Settings, train: pd.DataFrame, test: pd.DataFrame, features: list[str], epochs: int = 5) -> dict:
    """Leave-one-flavour-out ROC-AUC of the reconstruction error (see module doc)."""
    per: dict[str, float | None] = {}
    for flavour in sorted(train["label"].astype(str).unique()):
        per[flavour] = openset_auc(settings, train, test, features, flavour, epochs)
    aucs = [v for v in per.values() if v is not None]
    return {"openset_auc": float(np.mean(aucs)) if aucs else None, "openset_auc_by_flavour": per}


def openset_auc(
    settings: Settings, train: pd.DataFrame, test: pd.DataFrame, features: list[str], flavour: str, epochs: int = 5
) -> float | None:
    """ROC-AUC of a detector trained on ``train`` without ``flavour``: its samples in ``test``
    (positives) against the others there; None when either side is empty."""
    cfg = model_config(settings, len(features)).replace(max_epochs=epochs)
    det = Detector(cfg, features).fit(train.loc[train["label"].astype(str) != flavour, features])
    auc = roc_auc(det.score_samples(test[features]), (test["label"].astype(str) == flavour).to_numpy())
    log.info("open set without %s: AUC %s", flavour, auc)
    return auc


def knn_transfer(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, dict]:
    """kNN fit on one set, scored on another (e.g. training segments → held-out segments):
    (accuracy, per-flavour accuracy of the test set)."""
    from sklearn.neighbors import KNeighborsClassifier  # lazy: sklearn takes a second to import

    pred = KNeighborsClassifier(n_neighbors=min(KNN_K, len(train_y))).fit(train_x, train_y).predict(test_x)
    return float(np.mean(pred == test_y)), _per_flavour(pred, test_y)
