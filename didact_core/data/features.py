"""The feature transform a detector owns: fitted once, saved, then frozen.

By default it is the identity (CPU fractions are already in [0, 1]).  Options:

- ``log1p``: ``log(1 + x)`` per feature, for heavy-tailed rates (context switches,
  interrupts, bytes/s), which must be non-negative;
- ``standardize``: subtract the mean and divide by the standard deviation, both
  fitted on the first training data (after log1p when both are on).

The fitted parameters are frozen for continual training: later fits reuse them, so
a reconstruction error means the same thing on every day and in serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError, DidactError

#: a feature whose standard deviation is below this is only centred, not scaled
_MIN_STD = 1e-8


def as_feature_array(X: Any, feature_names: Sequence[str], what: str = "input") -> np.ndarray:
    """``X`` as a contiguous float32 array with the columns of ``feature_names``, in order.

    A DataFrame is selected by column name (extra columns are ignored; missing ones are
    a :class:`DidactError` naming them).  An array must have ``len(feature_names)``
    columns, taken to be in that order.
    """
    names = list(feature_names)
    if isinstance(X, pd.DataFrame):
        missing = [c for c in names if c not in X.columns]
        if missing:
            raise DidactError(
                f"{what} columns",
                f"missing feature columns {missing} (the model was trained on {names})",
                "pass a frame with these columns, or train a model on the features you have",
            )
        X = X[names].to_numpy(dtype=np.float32)
    else:
        X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1 and len(names) == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DidactError(
            f"{what} of shape {X.shape}",
            f"is not (n_samples, {len(names)}) for the features {names}",
            "pass a 2-d array with one column per feature, or a DataFrame",
        )
    return np.ascontiguousarray(X, dtype=np.float32)


@dataclass
class FeatureTransform:
    """Feature names, options and (once fitted) the frozen standardisation statistics."""

    feature_names: tuple[str, ...]
    log1p: bool = False
    standardize: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fitted: bool = False

    def __post_init__(self):
        self.feature_names = tuple(self.feature_names)
        if self.mean is not None:
            self.mean = tuple(float(v) for v in self.mean)
        if self.std is not None:
            self.std = tuple(float(v) for v in self.std)

    def select(self, X: Any, what: str = "input") -> np.ndarray:
        return as_feature_array(X, self.feature_names, what)

    def _log1p(self, X: np.ndarray, what: str) -> np.ndarray:
        if (X < 0).any():
            bad = [n for n, neg in zip(self.feature_names, (X < 0).any(axis=0)) if neg]
            raise DataQualityError(
                f"{what} features {bad}",
                "have negative values, which log1p cannot take",
                "turn log1p off for signed features, or clean the data",
            )
        return np.log1p(X)

    def fit(self, X: Any) -> "FeatureTransform":
        """Fit the statistics once; a fitted transform is frozen and left unchanged."""
        if self.fitted:
            return self
        A = self.select(X, "training data")
        if self.standardize:
            A = self._log1p(A, "training data") if self.log1p else A
            finite = np.where(np.isfinite(A), A, np.nan)
            mean = np.nanmean(finite, axis=0, dtype=np.float64)
            std = np.nanstd(finite, axis=0, dtype=np.float64)
            if not np.isfinite(mean).all():
                raise DataQualityError(
                    "training data", "has a feature with no finite value to standardise",
                    "clean the data before training",
                )
            self.mean = tuple(float(v) for v in mean)
            self.std = tuple(float(v) if v > _MIN_STD else 1.0 for v in std)
        self.fitted = True
        return self

    def transform(self, X: Any, what: str = "input") -> np.ndarray:
        """Select the feature columns and apply the (frozen) transform; float32 out."""
        if not self.fitted:
            raise DidactError("feature transform", "is not fitted", "fit the detector first")
        A = self.select(X, what)
        if self.log1p:
            A = self._log1p(A, what)
        if self.standardize:
            A = (A - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(A, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "log1p": self.log1p,
            "standardize": self.standardize,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "fitted": self.fitted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureTransform":
        return cls(**d)
