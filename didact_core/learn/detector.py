"""``Detector``: an anomaly/OOD detector with the scikit-learn / PyOD estimator shape.

    det = Detector(ModelConfig(max_epochs=10))
    det.fit(X)                      # X: (n, n_features) float32 or a DataFrame
    det.embed(X)                    # (n, latent_dim) embedding for plots
    det.score_samples(X)            # per-sample reconstruction error
    det.predict(X)                  # 1 = out of distribution, 0 = normal
    det.save("model/"); Detector.load("model/")
    det.fit(X_next_day)             # continual training: continues from the weights

**Sign convention.** ``score_samples`` is the reconstruction error (mean squared
error over the transformed features): *higher means more anomalous*.  This follows
PyOD's ``decision_scores_``, and is the opposite of scikit-learn's IsolationForest /
LocalOutlierFactor ``score_samples`` (where lower is more abnormal).
``decision_function(X) = score_samples(X) - threshold_`` is positive for OOD samples,
and ``threshold_`` is the ``ood_quantile`` of the errors on the latest training data.

Continual training: ``fit`` on a fitted detector starts from its weights (a fresh
optimiser each time, its lr ramped up over ``warmup_steps``) and keeps the feature transform frozen, so scores stay
comparable across days; ``threshold_`` is re-learnt from the new training data.

On disk (``save``/``load``): ``config.json`` (ModelConfig, transform parameters,
threshold, feature names, training facts, the weights' sha256) and ``weights.pt``
(a ``state_dict`` only, loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from didact_core.learn.batching import pick_device
from didact_core.errors import DataQualityError, DidactError, RegistryError
from didact_core.data.features import FeatureTransform, as_feature_array
from didact_core.schema import CPU_FRACTIONS
from didact_core.learn.training import EVAL_CHUNK, OnEpoch, TrainingDivergedError, TrainResult, train
from didact_core.learn.evaluation import knn_accuracy
from didact_core.learn.models import ARCHITECTURE_FIELDS, ModelConfig, build_model, count_params

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = "didact-detector"
FORMAT_VERSION = 1
#: labelled evaluation at the end of ``fit`` uses at most this many samples
_EVAL_MAX_SAMPLES = 5000


def default_feature_names(n_features: int) -> tuple[str, ...]:
    """The five CPU fractions for 5 features, else ``x0..x{n-1}``."""
    if n_features == len(CPU_FRACTIONS):
        return CPU_FRACTIONS
    return tuple(f"x{i}" for i in range(n_features))


def _count_nonfinite(A: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(A)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise TrainingDivergedError(
            what,
            f"has {int(bad.sum())} NaN/inf values in {rows.size} rows (first rows {rows[:5].tolist()}); "
            "the loss would be NaN",
            "drop or repair those rows (ai_ready_metrics counts them) before training",
        )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Detector:
    """Autoencoder/VAE anomaly detector; see the module docstring for the contract."""

    def __init__(self, config: ModelConfig | None = None, feature_names: Sequence[str] | None = None):
        if config is None:
            config = ModelConfig(n_features=len(feature_names)) if feature_names else ModelConfig()
        names = tuple(feature_names) if feature_names else default_feature_names(config.n_features)
        if len(names) != config.n_features:
            raise DidactError(
                f"feature_names {list(names)}",
                f"has {len(names)} names but the model config has n_features={config.n_features}",
                "pass one name per feature, or set n_features to match",
            )
        self.config = config
        self.feature_names = names
        # fitted state (None / 0 until fit or load)
        self.model_: torch.nn.Module | None = None
        self.transform_: FeatureTransform | None = None
        self.threshold_: float | None = None
        self.n_fits_ = 0
        self.samples_seen_ = 0
        #: one summary dict per fit, oldest first (saved in config.json)
        self.fits_: list[dict] = []
        #: TrainResult of the latest fit in this process (history per epoch)
        self.fit_result_: TrainResult | None = None
        #: labelled metrics of the latest fit (when ``labels`` were given)
        self.fit_metrics_: dict[str, float | None] = {}

    # -- estimator API ------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    @property
    def n_params(self) -> int:
        return count_params(self.model_ if self.model_ is not None else build_model(self.config))

    def get_params(self) -> dict[str, Any]:
        return self.config.to_dict()

    def set_params(self, **changes) -> "Detector":
        """Change hyperparameters (e.g. a lower ``lr`` for a continual fit).

        Architecture and transform settings cannot change once the detector is fitted.
        """
        frozen = sorted(set(changes) & set(ARCHITECTURE_FIELDS)) if self.is_fitted else []
        frozen = [k for k in frozen if changes[k] != getattr(self.config, k)]
        if frozen:
            raise DidactError(
                f"settings {frozen}", "fix the architecture or feature transform of a fitted detector",
                "train a new Detector to change them",
            )
        self.config = self.config.replace(**changes)
        if self.model_ is not None:
            self.model_.cfg = self.config        # e.g. the VAE reads beta from it
        return self

    def fit(
        self,
        X: Any,
        X_val: Any = None,
        labels: Sequence | None = None,
        on_epoch: OnEpoch | None = None,
    ) -> "Detector":
        """Train (or continue training) on ``X``; returns ``self``.

        ``X_val`` is the early-stopping set; without it ``val_fraction`` of ``X`` is
        held out (a seeded split).  ``labels`` (one per row of ``X``, optional) are
        never used for training, only for ``fit_metrics_`` (kNN accuracy of the
        embedding).  ``on_epoch(epoch, train_loss, val_loss)`` is called per epoch.

        Raises :class:`TrainingDivergedError` (NaN/inf in the data or in the loss); the
        detector is then left exactly as it was before the call (as it is when
        ``on_epoch`` raises or the fit is interrupted).
        """
        cfg = self.config
        A = as_feature_array(X, self.feature_names, "training data")
        if A.shape[0] == 0:
            raise DataQualityError("training data", "has no samples", "train on a non-empty partition")
        _count_nonfinite(A, "training data")
        A_val = None
        if X_val is not None:
            A_val = as_feature_array(X_val, self.feature_names, "validation data")
            _count_nonfinite(A_val, "validation data")

        new_transform = self.transform_ is None
        transform = (
            FeatureTransform(self.feature_names, log1p=cfg.log1p, standardize=cfg.standardize).fit(A)
            if new_transform else self.transform_
        )
        T = transform.transform(A, "training data")
        if A_val is not None:
            T_train, T_val = T, transform.transform(A_val, "validation data")
        else:
            T_train, T_val = self._split(T)

        new_model = self.model_ is None
        if new_model:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = build_model(cfg)
            snapshot = None
        else:
            model = self.model_
            snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}

        try:
            result = train(model, T_train, cfg, X_val=T_val, on_epoch=on_epoch,
                           warmup_steps=0 if new_model else cfg.warmup_steps)
        except BaseException:  # diverged, interrupted, or on_epoch failed: undo, re-raise
            if snapshot is not None:
                model.load_state_dict(snapshot)
                model.eval()
            raise

        self.model_, self.transform_ = model, transform
        scores = self._scores_transformed(T)
        self.threshold_ = float(np.quantile(scores, cfg.ood_quantile))
        self.n_fits_ += 1
        self.samples_seen_ += result.samples_seen
        self.fit_result_ = result
        self.fits_.append({
            **result.to_dict(),
            "n_train": int(T_train.shape[0]),
            "n_val": 0 if T_val is None else int(T_val.shape[0]),
            "threshold": self.threshold_,
            "warm_start": not new_model,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        self.fit_metrics_ = self._label_metrics(T, labels) if labels is not None else {}
        log.info(
            "fit %d done: %d samples seen, best epoch %d, threshold %.4g",
            self.n_fits_, result.samples_seen, result.best_epoch + 1, self.threshold_,
        )
        return self

    def embed(self, X: Any) -> np.ndarray:
        """The latent embedding, (n, latent_dim) float32 (the VAE's posterior mean)."""
        self._check_fitted()
        T = self.transform_.transform(X)
        return self._run(T, lambda m, xb: m.encode(xb)).astype(np.float32)

    def score_samples(self, X: Any) -> np.ndarray:
        """Reconstruction error per sample, float64: higher = more anomalous.

        Rows with NaN/inf get a NaN score (and ``predict`` 0); a warning counts them.
        """
        self._check_fitted()
        T = self.transform_.transform(X)
        nonfinite = ~np.isfinite(T).all(axis=1)
        if nonfinite.any():
            log.warning("%d of %d rows have NaN/inf features; their score is NaN",
                        int(nonfinite.sum()), T.shape[0])
        return self._scores_transformed(T)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - threshold_``: positive = out of distribution."""
        return self.score_samples(X) - self.threshold_

    def predict(self, X: Any) -> np.ndarray:
        """1 for out-of-distribution samples (error above ``threshold_``), else 0."""
        return (self.decision_function(X) > 0).astype(np.int64)

    # -- persistence ----------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``weights.pt`` into ``directory`` (created if needed).

        ``weights.pt`` is written first and ``config.json`` (which records its sha256)
        last, each atomically, so a folder with a ``config.json`` is complete.
        """
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model_.state_dict().items()}
        buf = _tensor_bytes(state)
        _atomic_write(d / WEIGHTS_FILE, buf)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": self.config.to_dict(),
            "feature_names": list(self.feature_names),
            "transform": self.transform_.to_dict(),
            "threshold": self.threshold_,
            "n_params": self.n_params,
            "training": {
                "n_fits": self.n_fits_,
                "samples_seen": self.samples_seen_,
                "fits": self.fits_,
            },
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": hashlib.sha256(buf).hexdigest(),
            "torch_version": torch.__version__,
            "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _atomic_write(d / CONFIG_FILE, json.dumps(meta, indent=2, allow_nan=False).encode())
        log.info("saved detector to %s", d)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Detector":
        """Rebuild a detector saved by :meth:`save`; a bad folder is a :class:`RegistryError`."""
        d = Path(directory)
        cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE

        def fail(path: Path, problem: str, fix: str = "re-save the model, or load another version"):
            return RegistryError(f"model file {path}", problem, fix)

        if not cfg_path.is_file():
            raise fail(cfg_path, "is missing", "point at a folder written by Detector.save")
        try:
            meta = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise fail(cfg_path, f"cannot be read as JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise fail(cfg_path, f"is not a {FORMAT} config")
        if meta.get("format_version") != FORMAT_VERSION:
            raise fail(cfg_path, f"has format_version {meta.get('format_version')!r}, "
                                 f"this didact reads {FORMAT_VERSION}", "upgrade didact")
        try:
            config = ModelConfig.from_dict(meta["model_config"])
            det = cls(config, meta["feature_names"])
            det.transform_ = FeatureTransform.from_dict(meta["transform"])
            det.threshold_ = float(meta["threshold"])
            training = meta.get("training", {})
            det.n_fits_ = int(training.get("n_fits", 0))
            det.samples_seen_ = int(training.get("samples_seen", 0))
            det.fits_ = list(training.get("fits", []))
            expected_sha = meta["weights_sha256"]
        except DidactError as e:
            raise fail(cfg_path, f"holds an invalid model config ({e})") from None
        except (KeyError, TypeError, ValueError) as e:
            raise fail(cfg_path, f"lacks or has a malformed entry ({e!r})") from None

        if not w_path.is_file():
            raise fail(w_path, "is missing")
        try:
            raw = w_path.read_bytes()
        except OSError as e:
            raise fail(w_path, f"cannot be read ({e.strerror or e})") from None
        if hashlib.sha256(raw).hexdigest() != expected_sha:
            raise fail(w_path, "does not match the sha256 recorded in config.json (corrupt or replaced)")
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
            raise fail(w_path, f"is not a readable state_dict ({e})") from None
        with torch.random.fork_rng(devices=[]):
            model = build_model(config)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise fail(w_path, f"does not fit the {config.family} architecture in config.json ({e})") from None
        det.model_ = model.to(pick_device(config.device)).eval()
        log.info("loaded detector from %s (%d fits, threshold %.4g)", d, det.n_fits_, det.threshold_)
        return det

    # -- internals ------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise DidactError("detector", "is not fitted", "call fit(X) or Detector.load(folder) first")

    def _split(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        n = T.shape[0]
        n_val = int(round(n * self.config.val_fraction))
        if n_val < 1 or n - n_val < 1:
            return T, None
        perm = np.random.default_rng(self.config.seed).permutation(n)
        return T[perm[n_val:]], T[perm[:n_val]]

    @torch.no_grad()
    def _run(self, T: np.ndarray, fn) -> np.ndarray:
        model = self.model_
        model.eval()
        device = next(model.parameters()).device
        out = []
        for i in range(0, T.shape[0], EVAL_CHUNK):
            xb = torch.from_numpy(T[i : i + EVAL_CHUNK]).to(device)
            out.append(fn(model, xb).to("cpu"))
        if not out:
            return np.zeros((0,), np.float32)
        return torch.cat(out).numpy()

    def _scores_transformed(self, T: np.ndarray) -> np.ndarray:
        return self._run(T, lambda m, xb: m.sample_error(xb)).astype(np.float64)

    def _label_metrics(self, T: np.ndarray, labels: Sequence) -> dict[str, float | None]:
        labels = np.asarray(labels)
        if labels.shape[0] != T.shape[0]:
            raise DidactError(
                f"labels ({labels.shape[0]} values)", f"do not match the {T.shape[0]} training rows",
                "pass one label per row of X, or none",
            )
        idx = np.random.default_rng(self.config.seed).permutation(T.shape[0])[:_EVAL_MAX_SAMPLES]
        Z = self._run(T[idx], lambda m, xb: m.encode(xb))
        return {"knn_accuracy": knn_accuracy(Z, labels[idx])}

    def __repr__(self) -> str:
        state = f"fitted, {self.n_fits_} fits, threshold={self.threshold_:.4g}" if self.is_fitted else "unfitted"
        return f"Detector({self.config.family}, features={list(self.feature_names)}, {state})"


def _tensor_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()
