"""The model being served: a registered champion ready to score, and the facts about it
that the exporter shows (its training and evaluation metrics from MLflow)."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from didact_core.data.preprocess import split_feature_columns
from didact_core.errors import DidactError
from didact_core.learn.centroids import nearest_flavour
from didact_core.schema import NODE_FEATURES

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A champion ready to score: the detector, its version, and facts for the exporter."""

    detector: object
    version: int
    #: MLflow metrics of the version (holdout_error, latent_knn_accuracy, …) and the UTC midnight
    #: of its training day (day_timestamp_seconds), what could be read
    facts: dict = field(default_factory=dict)
    #: job flavour -> latent centroid (the version's ``centroids`` tag), for the review queue
    centroids: dict = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    _fused: bool | None = None
    #: the AI-ready features the model's columns are built from, and its window (timesteps)
    base_features: tuple[str, ...] = field(init=False)
    window: int = field(init=False)

    def __post_init__(self):
        # raises DidactError for columns preprocessing cannot produce (the watcher keeps the last model)
        self.base_features, self.window = split_feature_columns(self.detector.feature_names)

    @property
    def threshold(self) -> float:
        return float(self.detector.threshold_)

    @property
    def features(self) -> tuple[str, ...]:
        """The model's input columns (base features, then their lags)."""
        return tuple(self.detector.feature_names)

    @property
    def needs_node_metrics(self) -> bool:
        return any(f in NODE_FEATURES for f in self.base_features)

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction error (n,) float64, latent (n, d) float32) of raw feature rows."""
        if self._fused is None:
            self._fused = self._check_fused()
        if self._fused:
            return self._score_fused(X)
        return self.detector.score_samples(X), self.detector.embed(X)

    def _score_fused(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One encoder pass for both outputs.  Every didact family reconstructs as
        ``decoder(encode(x))`` and scores the mean squared error of that; whether this
        holds for the loaded model is checked once against ``score_samples``/``embed``."""
        import torch  # lazy: heavy, and only a loaded model needs it

        det = self.detector
        model = det.model_
        T = det.transform_.transform(X)
        if T.shape[0] == 0:
            return np.zeros(0), np.zeros((0, det.config.latent_dim), np.float32)
        device = next(model.parameters()).device
        with torch.inference_mode():
            x = torch.from_numpy(T).to(device)
            z = model.encode(x)
            err = (model.decoder(z) - x).pow(2).mean(dim=1)
        return err.to("cpu").numpy().astype(np.float64), z.to("cpu").numpy().astype(np.float32)

    def _check_fused(self) -> bool:
        det = self.detector
        model = getattr(det, "model_", None)
        if model is None or not hasattr(model, "decoder") or not hasattr(model, "encode"):
            return False
        probe = np.random.default_rng(0).dirichlet(np.ones(len(self.features)), 64).astype(np.float32)
        try:
            e, z = self._score_fused(probe)
            ok = np.allclose(e, det.score_samples(probe), rtol=1e-4, atol=1e-7) and np.allclose(
                z, det.embed(probe), rtol=1e-4, atol=1e-6
            )
        except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
            log.info(
                "model v%d: one-pass scoring unavailable (%s); using score_samples + embed", self.version, exc
            )
            return False
        if not ok:
            log.info(
                "model v%d: one-pass scoring differs from score_samples; using score_samples + embed",
                self.version,
            )
        return bool(ok)

    def nearest_flavour(self, Z: np.ndarray) -> list:
        """The job flavour whose latent centroid is nearest to each row of ``Z`` (None without centroids)."""
        return nearest_flavour(self.centroids, Z)


def model_facts(reg, version: int) -> dict:
    """Cheap MLflow facts of a version: the day it was trained on (its ``day`` tag, as
    ``day_timestamp_seconds``), its training run's last metrics and, when the version was
    evaluated (model_evaluation), the evaluation's held-out metrics."""
    from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy to import

    facts: dict = {}
    try:
        info = reg.version(version)
        facts["day_timestamp_seconds"] = day_timestamp(info.tags.get("day"))
        if info.run_id:
            m = reg.client.get_run(info.run_id).data.metrics
            for k in ("train_loss", "val_loss"):
                if k in m:
                    facts[k] = m[k]
            if "train_knn_accuracy" in m:
                facts["latent_knn_accuracy"] = m["train_knn_accuracy"]
        runs = reg.client.search_runs(
            [reg.experiment_id],
            filter_string=(
                f"tags.`didact.kind` = 'evaluate' and tags.`didact.challenger_version` = '{version}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            m = runs[0].data.metrics
            for name, key in (
                ("holdout_error", "challenger.holdout.mean_error"),
                ("latent_knn_accuracy", "challenger.holdout.latent_knn_accuracy"),
                ("fault_roc_auc", "challenger.holdout.fault_roc_auc"),
            ):
                if key in m:
                    facts[name] = m[key]
        if "holdout_error" not in facts and info.run_id:
            path = reg.client.download_artifacts(info.run_id, "promotion_gate.json")
            gate = json.loads(Path(path).read_text())
            err = gate.get("challenger", {}).get("holdout", {}).get("mean_error")
            if err is not None:
                facts["holdout_error"] = float(err)
    except (DidactError, MlflowException, OSError, ValueError) as e:
        log.info("model v%d: some MLflow facts unavailable (%s)", version, short_error(e))
    return facts


def day_timestamp(day: str | None) -> float:
    """UTC midnight of ``day`` ("YYYY-MM-DD", a version's ``day`` tag) in Unix seconds; 0 when
    the version has no such tag (registered by hand) or it is not a date."""
    if not day:
        return 0.0
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        log.info("model day tag %r is not a YYYY-MM-DD date; exporting day 0", day)
        return 0.0
    return float(calendar.timegm(date.timetuple()))


def short_error(e: BaseException) -> str:
    """An error's message, at most 300 characters (MLflow's can be pages)."""
    return str(getattr(e, "message", None) or e)[:300]
