"""A day's node scores in batch: AI-ready samples → the node detector → one row per (ts, node).

The batch twin of serving's ``aggregate_nodes`` (what the nightly ``cluster_model`` /
``cluster_evaluation`` read): per (interval end, node) the mean reconstruction error over
the node's CPU threads (``error``), the OOD flag (its worst CPU above the detector's
threshold, as serving flags it) and the mean latent point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.errors import DidactError


def aggregate_samples(samples: pd.DataFrame, err: np.ndarray, Z: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per (ts, node) of scored samples: ts, node, error (mean), error_max, ood, latent_<i> (mean)."""
    if len(samples) == 0:
        return pd.DataFrame(columns=["ts", "node", "error", "error_max", "ood",
                                     *[f"latent_{d}" for d in range(Z.shape[1] if Z.ndim == 2 else 0)]])  # fmt: skip
    keys = pd.MultiIndex.from_arrays([pd.DatetimeIndex(samples["ts"]), samples["node"].astype(str)])
    codes, uniq = pd.factorize(keys)
    n = len(uniq)
    counts = np.bincount(codes, minlength=n).astype(np.float64)
    err = np.asarray(err, dtype=np.float64)
    emax = np.full(n, -np.inf)
    np.maximum.at(emax, codes, err)
    out = pd.DataFrame({
        "ts": uniq.get_level_values(0), "node": uniq.get_level_values(1),
        "error": np.bincount(codes, weights=err, minlength=n) / counts, "error_max": emax,
    })  # fmt: skip
    out["ood"] = out["error_max"] > threshold
    for d in range(Z.shape[1]):
        out[f"latent_{d}"] = (np.bincount(codes, weights=Z[:, d].astype(np.float64), minlength=n) / counts).astype(np.float32)
    return out.sort_values(["ts", "node"], ignore_index=True)


def score_day(samples: pd.DataFrame, detector) -> pd.DataFrame:
    """Score AI-ready ``samples`` (ts, node, cpu, the detector's features) with a fitted
    :class:`~didact_core.learn.detector.Detector`; one row per (ts, node)."""
    missing = [f for f in detector.feature_names if f not in samples.columns]
    if missing:
        raise DidactError("AI-ready samples", f"lack the detector's feature column(s) {missing}",
                          "preprocess the day with the features the champion was trained on")  # fmt: skip
    X = samples[list(detector.feature_names)].to_numpy(dtype=np.float32)
    err = detector.score_samples(X)
    Z = detector.embed(X)
    ok = np.isfinite(err)
    return aggregate_samples(samples[ok], err[ok], Z[ok], float(detector.threshold_))
