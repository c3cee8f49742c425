"""How good is a detector?  Metrics (numpy / scikit-learn) and plots (PNG bytes).

Labels (job flavours) are optional everywhere in didact; these helpers are what uses
them.  Every metric subsamples large inputs with a fixed seed, so it is cheap on a
day of telemetry and reproducible.

Metrics: :func:`knn_accuracy`, :func:`pca_structure_agreement`, :func:`roc_auc`,
:func:`per_label_error`.  Plots (matplotlib's Agg canvas, no pyplot state, safe in
worker threads): :func:`plot_latent`, :func:`plot_losses`, :func:`plot_error_hist`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from didact_core.schema import UNLABELLED, has_label

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 20_000


def _labels(labels: Sequence) -> np.ndarray:
    """Labels as strings (mixed types allowed); a sample without a label (missing, or a
    ``schema.NO_LABEL_MARKERS`` value such as the AI-ready ``"unknown"``) -> ``UNLABELLED``."""
    ser = pd.Series(np.asarray(labels, dtype=object))
    return ser.where(has_label(ser), UNLABELLED).astype(str).to_numpy()


def _subsample(n: int, max_samples: int | None, seed: int) -> np.ndarray:
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def knn_accuracy(
    Z: np.ndarray, labels: Sequence, k: int = 5, folds: int = 5,
    max_samples: int | None = DEFAULT_MAX_SAMPLES, seed: int = 0,
) -> float | None:
    """Cross-validated accuracy of a k-nearest-neighbour classifier of ``labels`` on ``Z``.

    Stratified ``folds``-fold (fewer when the rarest label has fewer samples).  A high
    value means the embedding keeps job flavours apart.  Samples without a label
    (None/NaN, or a ``schema.NO_LABEL_MARKERS`` value) are left out; None when fewer than two labels remain.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score  # lazy: sklearn takes a second to import
    from sklearn.neighbors import KNeighborsClassifier  # lazy: sklearn takes a second to import

    y = _labels(labels)
    known = y != UNLABELLED
    Z, y = np.asarray(Z, dtype=np.float64)[known], y[known]
    idx = _subsample(len(y), max_samples, seed)
    Z, y = Z[idx], y[idx]
    _, counts = np.unique(y, return_counts=True)
    if counts.size < 2:
        return None
    n_splits = int(min(folds, counts.min()))
    if n_splits < 2:
        # a label seen once cannot be both trained on and tested: drop such labels
        keep = np.isin(y, np.unique(y)[counts >= 2])
        Z, y = Z[keep], y[keep]
        if np.unique(y).size < 2:
            return None
        n_splits = int(min(folds, np.unique(y, return_counts=True)[1].min()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(y) - len(y) // n_splits - 1) or 1)
    return float(cross_val_score(clf, Z, y, cv=cv).mean())


def pca_structure_agreement(
    X: np.ndarray, Z: np.ndarray, n_clusters: int = 8, k: int = 10,
    max_samples: int | None = 5000, seed: int = 0,
) -> dict[str, float]:
    """Does the latent space keep the structure a PCA-2 of the features shows?

    Returns ``{"ari": ..., "knn_overlap": ...}``:

    - ``ari``: adjusted Rand index between k-means (``n_clusters``) on PCA-2 of ``X``
      and k-means on ``Z`` (1 = same partition, ~0 = unrelated);
    - ``knn_overlap``: mean fraction of each sample's ``k`` nearest neighbours in
      PCA-2 that are also among its ``k`` nearest neighbours in ``Z`` (1 = identical
      neighbourhoods; k/n for random).
    """
    from sklearn.cluster import KMeans  # lazy: sklearn takes a second to import
    from sklearn.decomposition import PCA  # lazy: sklearn takes a second to import
    from sklearn.metrics import adjusted_rand_score  # lazy: sklearn takes a second to import
    from sklearn.neighbors import NearestNeighbors  # lazy: sklearn takes a second to import

    X = np.asarray(X, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    idx = _subsample(X.shape[0], max_samples, seed)
    X, Z = X[idx], Z[idx]
    n = X.shape[0]
    P = PCA(n_components=min(2, X.shape[1]), random_state=seed).fit_transform(X)
    c = min(n_clusters, n)
    lab_p = KMeans(n_clusters=c, n_init=4, random_state=seed).fit_predict(P)
    lab_z = KMeans(n_clusters=c, n_init=4, random_state=seed).fit_predict(Z)
    kk = min(k, n - 1)
    nn_p = NearestNeighbors(n_neighbors=kk + 1).fit(P).kneighbors(P, return_distance=False)[:, 1:]
    nn_z = NearestNeighbors(n_neighbors=kk + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
    overlap = np.mean([np.intersect1d(a, b, assume_unique=True).size / kk for a, b in zip(nn_p, nn_z)])
    return {"ari": float(adjusted_rand_score(lab_p, lab_z)), "knn_overlap": float(overlap)}


def roc_auc(scores: np.ndarray, is_anomaly: Sequence[bool]) -> float | None:
    """ROC-AUC of ``scores`` (higher = more anomalous) against ground truth; None if one class is absent."""
    from sklearn.metrics import roc_auc_score  # lazy: sklearn takes a second to import

    y = np.asarray(is_anomaly).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(s)
    y, s = y[keep], s[keep]
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, s))


def per_label_error(scores: np.ndarray, labels: Sequence) -> pd.DataFrame:
    """Reconstruction error per label: columns label, n, mean, median, p95; worst first."""
    df = pd.DataFrame({"label": _labels(labels), "score": np.asarray(scores, dtype=np.float64)})
    g = df.groupby("label", sort=False)["score"]
    out = pd.DataFrame({
        "n": g.size(), "mean": g.mean(), "median": g.median(), "p95": g.quantile(0.95),
    }).reset_index()
    return out.sort_values("mean", ascending=False, ignore_index=True)


# -- plots ---------------------------------------------------------------------------
def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def plot_latent(
    Z: np.ndarray, labels: Sequence | None = None, title: str = "latent space",
    max_points: int = DEFAULT_MAX_SAMPLES, seed: int = 0,
) -> bytes:
    """Scatter of the 2-d embedding (first two dims), coloured by label when given."""
    Z = np.asarray(Z)
    idx = _subsample(Z.shape[0], max_points, seed)
    fig = _figure()
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(Z[idx, 0], Z[idx, 1], s=2, alpha=0.5)
    else:
        y = _labels(labels)[idx]
        for lab in np.unique(y):
            m = y == lab
            ax.scatter(Z[idx][m, 0], Z[idx][m, 1], s=2, alpha=0.6, label=str(lab))
        ax.legend(markerscale=5, fontsize="small", loc="best")
    ax.set_xlabel("z0")
    ax.set_ylabel("z1" if Z.shape[1] > 1 else "")
    ax.set_title(title)
    return _png(fig)


def plot_losses(history: Sequence[dict], title: str = "training") -> bytes:
    """Train and validation loss per epoch (log scale) from ``TrainResult.history``."""
    fig = _figure()
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    val = [h.get("val_loss") for h in history]
    if any(v is not None for v in val):
        ax.plot(epochs, [np.nan if v is None else v for v in val], marker="o", label="validation")
    if history and all(h["train_loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def plot_error_hist(scores: np.ndarray, threshold: float | None = None, title: str = "reconstruction error") -> bytes:
    """Histogram of the scores (log-spaced bins) with the OOD threshold as a line."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    fig = _figure()
    ax = fig.add_subplot()
    if s.size and (s > 0).all() and s.max() > s.min():
        bins = np.geomspace(s.min(), s.max(), 60)
        ax.set_xscale("log")
    else:
        bins = 60
    ax.hist(s, bins=bins)
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("score (higher = more anomalous)")
    ax.set_ylabel("samples")
    ax.set_title(title)
    return _png(fig)
