"""Evaluation helpers: what a user reads to judge a model (metrics, plots)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.learn.evaluation import (
    knn_accuracy,
    pca_structure_agreement,
    per_label_error,
    plot_error_hist,
    plot_latent,
    plot_losses,
    roc_auc,
)

from didact_core.schema import UNLABELLED, has_label

PNG = b"\x89PNG\r\n\x1a\n"


def blobs(n=1500, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = rng.normal(0, 5, (k, 5))
    return centres[labels] + rng.normal(0, 0.3, (n, 5)), labels


def test_knn_accuracy_separates_structure_from_noise():
    X, labels = blobs()
    assert knn_accuracy(X[:, :2], labels) >= 0.95
    rng = np.random.default_rng(1)
    chance = knn_accuracy(rng.normal(size=(1500, 2)), labels)
    assert 0.1 < chance < 0.4                                # ~1/4
    assert knn_accuracy(X, np.zeros(len(X))) is None         # one label: nothing to measure
    # a label seen only once does not break the cross-validation
    assert knn_accuracy(X, np.r_[labels[:-1], 99]) >= 0.95
    # unlabelled samples (None / NaN, as from a partial scheduler export) are left out
    partial = np.array([f"job{l}" if i % 3 else None for i, l in enumerate(labels)], dtype=object)
    assert knn_accuracy(X[:, :2], partial) >= 0.95
    assert knn_accuracy(X, [None] * len(X)) is None


def test_samples_without_a_label_are_one_thing_everywhere():
    """AI-ready rows outside every labelled interval say "unknown"; a CSV may give "" or
    "nan": none of them is a flavour, in the metrics and in the tables alike."""
    X, labels = blobs()
    markers = np.array(["unknown", "", "nan", None, pd.NA], dtype=object)
    mixed = np.array([f"job{l}" if i % 3 else markers[i % 5] for i, l in enumerate(labels)], dtype=object)
    # the noise of unlabelled rows would pull a 5-class kNN far below the 4 flavours' score
    assert knn_accuracy(X[:, :2], mixed) >= 0.95
    assert list(has_label(mixed)) == [bool(i % 3) for i in range(len(labels))]
    table = per_label_error(np.ones(len(mixed)), mixed)
    assert set(table["label"]) == {f"job{k}" for k in range(4)} | {UNLABELLED}
    assert table.set_index("label").loc[UNLABELLED, "n"] == (~has_label(mixed)).sum()


def test_pca_structure_agreement_is_high_for_a_faithful_embedding_and_low_for_noise():
    X, _ = blobs()
    from sklearn.decomposition import PCA

    faithful = pca_structure_agreement(X, PCA(2).fit_transform(X) * 3 + 1)
    assert faithful["ari"] > 0.95 and faithful["knn_overlap"] > 0.9
    noise = pca_structure_agreement(X, np.random.default_rng(0).normal(size=(len(X), 2)))
    assert noise["ari"] < 0.1 and noise["knn_overlap"] < 0.1


def test_roc_auc_and_per_label_error():
    scores = np.r_[np.linspace(0, 1, 90), np.linspace(2, 3, 10)]
    truth = np.r_[np.zeros(90), np.ones(10)]
    assert roc_auc(scores, truth) == 1.0
    assert roc_auc(scores, np.zeros(100)) is None
    table = per_label_error(scores, np.r_[["idle"] * 90, ["io"] * 10])
    assert list(table["label"]) == ["io", "idle"]                 # worst first
    assert list(table["n"]) == [10, 90]
    assert table.loc[0, "mean"] == np.mean(np.linspace(2, 3, 10))


def test_plots_are_png_bytes():
    X, labels = blobs(300)
    assert plot_latent(X[:, :2], labels).startswith(PNG)
    assert plot_latent(X[:, :2]).startswith(PNG)
    history = [{"epoch": i, "train_loss": 1 / (i + 1), "val_loss": 1.1 / (i + 1)} for i in range(5)]
    assert plot_losses(history).startswith(PNG)
    assert plot_error_hist(np.abs(X[:, 0]) + 1e-3, threshold=2.0).startswith(PNG)
