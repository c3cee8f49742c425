"""How well a detector separates labelled job flavours and flags one it never saw.

For labelled telemetry (a testbed recording, or the simulator):

* **separability** — kNN accuracy of the flavours in the detector's 2-d latent, next to
  the same classifier on PCA-2 of the (transformed) features and on the raw features;
* **open-set detection** — for each flavour F: train a fresh detector on every other
  flavour, then the ROC-AUC of the reconstruction error for held-out samples of F
  (positives) against held-out samples of the others (negatives); averaged over F.

:func:`evaluate` runs both on AI-ready partitions, logs them to MLflow as one run, and
returns the numbers (per flavour too) and a latent scatter plot.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError

log = logging.getLogger(__name__)

UNLABELLED = ("unknown", "", "nan", "None", "<NA>")


def labelled_frame(settings: Settings, days: list[str], split: str, n_max: int) -> pd.DataFrame:
    """Labelled AI-ready samples of ``days`` (one split), at most ``n_max`` in all."""
    from didact_core.learn.continual import load_split
    from didact_core.data.warehouse import Warehouse

    wh = Warehouse(settings.home_path)
    per_day = max(1, n_max // max(1, len(days)))
    frames = [load_split(wh, d, split, per_day, settings) for d in days]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty or "label" not in df:
        raise DataQualityError(
            f"AI-ready samples of {', '.join(days)}",
            "have no job labels",
            "set DIDACT_LABELS_CSV to the recording's labels and re-materialise job_labels and ai_ready_metrics",
        )
    df = df[~df["label"].astype(str).isin(UNLABELLED)].reset_index(drop=True)
    if df["label"].nunique() < 2:
        raise DataQualityError(f"labelled samples of {', '.join(days)}", "hold fewer than two flavours")
    return df


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
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

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
    from didact_core.learn.continual import model_config
    from didact_core.learn.evaluation import roc_auc
    from didact_core.learn.detector import Detector

    cfg = model_config(settings, len(features)).replace(max_epochs=epochs)
    per: dict[str, float | None] = {}
    for flavour in sorted(train["label"].astype(str).unique()):
        det = Detector(cfg, features).fit(train.loc[train["label"].astype(str) != flavour, features])
        s = det.score_samples(test[features])
        per[flavour] = roc_auc(s, (test["label"].astype(str) == flavour).to_numpy())
        log.info("open set without %s: AUC %s", flavour, per[flavour])
    aucs = [v for v in per.values() if v is not None]
    return {"openset_auc": float(np.mean(aucs)) if aucs else None, "openset_auc_by_flavour": per}


def evaluate(
    settings: Settings,
    days: list[str],
    max_train: int = 60_000,
    max_test: int = 10_000,
    epochs: int | None = None,
    openset_epochs: int = 5,
    log_to_mlflow: bool = True,
) -> dict:
    """Train a detector on the labelled days, then separability and open-set detection."""
    from didact_core.learn.continual import _log_png, model_config, model_features
    from didact_core.learn.evaluation import plot_latent
    from didact_core.learn.detector import Detector

    t0 = time.perf_counter()
    features = list(model_features(settings))
    train = labelled_frame(settings, days, "train", max_train)
    test = labelled_frame(settings, days, "holdout", max_test)
    cfg = model_config(settings, len(features))
    if epochs:
        cfg = cfg.replace(max_epochs=epochs)
    det = Detector(cfg, features).fit(train[features])
    result = {
        "days": days,
        "features": features,
        "window": settings.window,
        "n_params": det.n_params,
        "train_samples": len(train),
        "test_samples": len(test),
        "flavours": sorted(test["label"].astype(str).unique()),
        "samples_by_flavour": test["label"].astype(str).value_counts().sort_index().to_dict(),
        **separability(det, test, features, settings.seed),
        **openset(settings, train, test, features, openset_epochs),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    png = plot_latent(det.embed(test[features]), test["label"].astype(str).to_numpy(), title="testbed latent")
    result["plot_png"] = png
    if log_to_mlflow:
        import mlflow

        from didact_core.learn.registry import ModelRegistry

        reg = ModelRegistry(settings)
        with reg.run(f"testbed evaluation {','.join(days)}", tags={"didact.kind": "testbed_eval"}) as run:
            mlflow.log_params({"days": ",".join(days), "features": ",".join(features)[:500], "window": settings.window,
                               "train_samples": len(train), "n_params": det.n_params})  # fmt: skip
            mlflow.log_metrics({k: v for k, v in result.items() if isinstance(v, float)})
            for k in ("latent_knn_by_flavour", "latent_knn_by_segment_by_flavour", "openset_auc_by_flavour"):
                mlflow.log_metrics({f"{k}.{f}": v for f, v in result.get(k, {}).items() if v is not None})
            mlflow.log_dict({k: v for k, v in result.items() if k != "plot_png"}, "testbed_evaluation.json")
            _log_png(png, "testbed_latent.png")
            result["mlflow_run_id"] = run.info.run_id
    return result
