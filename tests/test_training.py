"""The training loop: early stopping, warm starts, divergence, resident batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from didact_core.learn.batching import ResidentBatches
from didact_core.learn.models import ModelConfig, build_model, effective_batch_size
from didact_core.learn.detector import Detector
from didact_core.learn.training import TrainingDivergedError, evaluate_loss, train


# small batches gain nothing from threads, and lose a lot when the CPUs are shared
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fractions(n: int, seed: int = 0) -> np.ndarray:
    """Rows around 4 fixed job-like centres; ``seed`` draws a new day of the same cluster."""
    centres = np.random.default_rng(0).dirichlet(np.full(5, 0.5), size=4)
    rng = np.random.default_rng(seed)
    X = np.clip(centres[rng.integers(0, 4, n)] + rng.normal(0, 0.02, (n, 5)), 0, None)
    return (X / X.sum(axis=1, keepdims=True)).astype(np.float32)


CFG = ModelConfig(batch_size=256, max_epochs=8, patience=3, lr=3e-3)


def test_resident_batches_cover_each_sample_once_per_epoch_in_a_seeded_order():
    X = torch.arange(1000, dtype=torch.float32)[:, None]
    b = ResidentBatches(X, 128, seed=3, drop_last=False)
    first = torch.cat(list(b.epoch()))[:, 0]
    assert sorted(first.tolist()) == list(range(1000)) and len(b) == 8
    second = torch.cat(list(b.epoch()))[:, 0]
    assert not torch.equal(first, second)                    # a new permutation per epoch
    again = torch.cat(list(ResidentBatches(X, 128, seed=3, drop_last=False).epoch()))[:, 0]
    assert torch.equal(first, again)                         # same seed, same order
    # default: equal-shaped batches (the tail is dropped, a different one each epoch)
    shapes = {tuple(xb.shape) for xb in ResidentBatches(X, 128, seed=3).epoch()}
    assert shapes == {(128, 1)}


def test_train_reports_history_and_restores_the_best_epoch():
    X = fractions(3000)
    calls = []
    model = build_model(CFG)
    res = train(model, X[:2500], CFG, X_val=X[2500:], on_epoch=lambda e, t, v: calls.append((e, t, v)))
    assert [c[0] for c in calls] == list(range(res.epochs)) and res.epochs <= CFG.max_epochs
    assert all(np.isfinite(t) and np.isfinite(v) for _, t, v in calls)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    b = effective_batch_size(CFG, 2500)  # 79: 32 steps per epoch, the last partial batch dropped
    assert b == 79 and res.samples_seen == res.epochs * (2500 // b) * b and res.seconds > 0
    best = min(h["val_loss"] for h in res.history)
    assert res.best_loss == best and res.history[res.best_epoch]["val_loss"] == best
    assert evaluate_loss(model, torch.from_numpy(X[2500:])) == pytest.approx(best, rel=1e-5)


def test_early_stopping_stops_when_validation_stops_improving():
    X = fractions(2000)
    cfg = CFG.replace(max_epochs=200, patience=2, min_delta=1.0)    # no epoch improves by 1.0
    res = train(build_model(cfg), X[:1500], cfg, X_val=X[1500:])
    assert res.stopped_early and res.epochs == 3 and res.best_epoch == 0


def test_warm_start_continues_from_the_weights():
    X = fractions(4000, seed=1)
    det = Detector(CFG).fit(X)
    first = det.fit_result_
    det.fit(fractions(4000, seed=2))
    second = det.fit_result_
    # the second fit starts where the first ended, far below a fresh model's start
    assert second.initial_val_loss == pytest.approx(first.best_loss, rel=0.5)
    assert second.initial_val_loss < 0.2 * first.initial_val_loss
    # and its first epoch stays there (the lr warm-up protects the weights from Adam's restart)
    assert second.history[0]["train_loss"] < 1.5 * first.history[-1]["train_loss"]
    assert det.n_fits_ == 2 and det.samples_seen_ == first.samples_seen + second.samples_seen


def test_nan_in_the_data_raises_and_nothing_is_saved(tmp_path):
    X = fractions(1000)
    X[17, 2] = np.nan
    det = Detector(CFG)
    with pytest.raises(TrainingDivergedError, match="NaN") as err:
        det.fit(X)
    assert "rows [17]" in str(err.value)
    assert not det.is_fitted
    with pytest.raises(Exception, match="not fitted"):
        det.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_a_diverging_learning_rate_raises_and_keeps_the_previous_weights(tmp_path):
    X = fractions(2000)
    det = Detector(CFG.replace(max_epochs=2)).fit(X)
    before = det.score_samples(X[:100])
    det.set_params(lr=1e6)
    with pytest.raises(TrainingDivergedError, match="lr=1e\\+06"):
        det.fit(X)
    np.testing.assert_array_equal(det.score_samples(X[:100]), before)   # champion untouched
    assert det.n_fits_ == 1
    fresh = Detector(CFG.replace(lr=1e6))
    with pytest.raises(TrainingDivergedError):
        fresh.fit(X)
    assert not fresh.is_fitted


def test_a_failing_epoch_callback_leaves_the_detector_as_it_was():
    X = fractions(2000)
    det = Detector(CFG.replace(max_epochs=2)).fit(X)
    before = det.score_samples(X[:100])

    def tracking_server_down(epoch, train_loss, val_loss):
        raise ConnectionError("MLflow tracking server unreachable")

    with pytest.raises(ConnectionError):
        det.fit(X, on_epoch=tracking_server_down)
    np.testing.assert_array_equal(det.score_samples(X[:100]), before)
    assert det.n_fits_ == 1


def test_bf16_autocast_trains_a_float32_model_that_converges_like_fp32():
    X = fractions(3000)
    fp32 = Detector(CFG.replace(max_epochs=4, patience=0)).fit(X)
    bf16 = Detector(CFG.replace(max_epochs=4, patience=0, bf16=True)).fit(X)
    assert all(p.dtype == torch.float32 for p in bf16.model_.parameters())
    assert bf16.score_samples(X[:10]).dtype == np.float64
    assert bf16.fit_result_.best_loss < 1.5 * fp32.fit_result_.best_loss
