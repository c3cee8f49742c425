"""The detector as a user of didact_core sees it: fit on a day of telemetry, embed,
score, flag OOD samples, save, load, continue training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from didact_core.errors import DidactError, RegistryError
from didact_core.learn.evaluation import knn_accuracy, roc_auc
from didact_core.learn.models import ModelConfig, build_model, count_params
from didact_core.learn.detector import Detector
from didact_core.schema import CPU_FRACTIONS

FAST = dict(batch_size=256, max_epochs=25, patience=4, lr=3e-3)


def flavours(n: int, k: int = 5, seed: int = 0, noise: float = 0.015, shift: float = 0.0):
    """CPU-fraction-like rows around ``k`` well-separated job flavours (rows sum to 1)."""
    centres = np.array([
        [0.90, 0.02, 0.03, 0.03, 0.02],   # idle
        [0.10, 0.70, 0.10, 0.05, 0.05],   # IO bound
        [0.05, 0.02, 0.10, 0.80, 0.03],   # compute
        [0.30, 0.05, 0.50, 0.10, 0.05],   # system heavy (MPI)
        [0.40, 0.02, 0.05, 0.48, 0.05],   # half-loaded
    ])[:k]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    X = np.clip(centres[labels] + shift + rng.normal(0, noise, (n, 5)), 0, None)
    X /= X.sum(axis=1, keepdims=True)
    return X.astype(np.float32), labels


# small batches gain nothing from threads, and lose a lot when the CPUs are shared
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def day():
    return flavours(4000, seed=1)


@pytest.fixture(scope="module")
def fitted(day):
    X, labels = day
    return Detector(ModelConfig(**FAST)).fit(X, labels=labels)


def test_default_autoencoder_has_about_40k_parameters():
    n = count_params(build_model(ModelConfig()))
    print(f"default autoencoder over 5 features: {n:,} trainable parameters")
    assert 38_000 <= n <= 42_000
    assert Detector().n_params == n


@pytest.mark.parametrize("n_features", [5, 17, 51, 120])
def test_default_widths_keep_about_40k_parameters_for_any_input_count(n_features):
    from didact_core.config import Settings
    from didact_core.learn.models import hidden_for, model_config

    cfg = model_config(Settings(), n_features)
    n = count_params(build_model(cfg))
    assert 36_000 <= n <= 44_000, (cfg.hidden, n)
    assert cfg.hidden == hidden_for(n_features) and all(h % 8 == 0 for h in cfg.hidden)
    if n_features == 5:
        assert cfg.hidden == ModelConfig().hidden
    # explicit widths win
    assert model_config(Settings(model_hidden=("64", "32")), n_features).hidden == (64, 32)
    # the Dagster resource carries it to the assets' settings (configurable in the UI)
    from didact_assets.resources import DidactResource

    assert model_config(DidactResource(home="/nonexistent", model_hidden=[64, 32]).settings(), n_features).hidden == (64, 32)
    with pytest.raises(DidactError, match="model_hidden=144,abc: is not a comma list of positive layer widths"):
        Settings.from_env({"DIDACT_MODEL_HIDDEN": "144,abc"})


def test_small_data_gets_enough_steps_per_epoch():
    from didact_core.learn.models import effective_batch_size

    cfg = ModelConfig()  # batch 4096
    assert effective_batch_size(cfg, 1_000_000) == 4096
    assert effective_batch_size(cfg, 3_000) == 94  # 32 steps per epoch
    assert effective_batch_size(cfg, 500) == 64  # never below 64 ...
    assert effective_batch_size(cfg.replace(batch_size=32), 500) == 32  # ... nor above batch_size
    # 2,000 samples, 5 epochs: one 4096-batch per epoch barely moves the weights; 32 steps do
    X, _ = flavours(2000, seed=3)
    one = Detector(ModelConfig(max_epochs=5, patience=0, min_batches=1)).fit(X)
    many = Detector(ModelConfig(max_epochs=5, patience=0)).fit(X)
    assert many.fit_result_.history[-1]["train_loss"] < 0.5 * one.fit_result_.history[-1]["train_loss"]


def test_config_round_trips_through_json_and_rejects_bad_values():
    cfg = ModelConfig(family="vae", hidden=(64, 32), lr=1e-3, log1p=True)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(DidactError, match="family"):
        ModelConfig(family="transformer")
    with pytest.raises(DidactError, match="ood_quantile"):
        ModelConfig(ood_quantile=1.5)
    with pytest.raises(DidactError, match="unknown settings"):
        ModelConfig.from_dict({"lr": 1e-3, "learning_rate": 1})


def test_job_flavours_are_separate_in_the_2d_latent(fitted, day):
    X, labels = day
    Z = fitted.embed(X)
    assert Z.shape == (len(X), 2)
    acc = knn_accuracy(Z, labels)
    print(f"kNN accuracy in the latent: {acc:.3f} (chance 0.2)")
    assert acc >= 0.9
    assert fitted.fit_metrics_["knn_accuracy"] >= 0.9


def test_threshold_flags_injected_outliers(fitted, day):
    X, _ = day
    rng = np.random.default_rng(7)
    outliers = rng.dirichlet(np.ones(5), size=300).astype(np.float32)
    scores = fitted.score_samples(np.vstack([X[:3000], outliers]))
    auc = roc_auc(scores, np.r_[np.zeros(3000), np.ones(300)])
    print(f"ROC-AUC of injected outliers: {auc:.3f}")
    assert auc >= 0.95
    assert fitted.predict(outliers).mean() >= 0.7           # most outliers flagged
    assert fitted.predict(X).mean() <= 0.02                  # ~ 1 - ood_quantile of normal data
    np.testing.assert_allclose(fitted.decision_function(X[:10]), fitted.score_samples(X[:10]) - fitted.threshold_)


def test_save_load_gives_identical_scores_and_embedding(fitted, day, tmp_path):
    X, _ = day
    fitted.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.pt"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["feature_names"] == list(CPU_FRACTIONS) and meta["threshold"] == fitted.threshold_
    loaded = Detector.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))
    np.testing.assert_array_equal(loaded.embed(X), fitted.embed(X))
    assert loaded.threshold_ == fitted.threshold_ and loaded.config == fitted.config
    assert loaded.n_fits_ == 1 and loaded.samples_seen_ == fitted.samples_seen_


def test_dataframe_input_selects_columns_and_names_missing_ones(fitted, day):
    X, _ = day
    df = pd.DataFrame(X[:50], columns=CPU_FRACTIONS)
    df = df[list(reversed(CPU_FRACTIONS))].assign(node="n1")        # other order, extra column
    np.testing.assert_array_equal(fitted.score_samples(df), fitted.score_samples(X[:50]))
    with pytest.raises(DidactError, match=r"missing feature columns \['iowait', 'other'\]"):
        fitted.score_samples(df.drop(columns=["iowait", "other"]))
    with pytest.raises(DidactError, match="not \\(n_samples, 5\\)"):
        fitted.score_samples(X[:, :3])


def test_fit_is_deterministic_for_a_seed(day):
    X, _ = day
    cfg = ModelConfig(batch_size=512, max_epochs=3, patience=0)
    a = Detector(cfg).fit(X[:2000]).score_samples(X[:500])
    b = Detector(cfg).fit(X[:2000]).score_samples(X[:500])
    c = Detector(cfg.replace(seed=1)).fit(X[:2000]).score_samples(X[:500])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_transform_is_frozen_across_continual_fits(day, tmp_path):
    X, _ = day
    det = Detector(ModelConfig(standardize=True, batch_size=512, max_epochs=3, patience=0)).fit(X)
    stats = (det.transform_.mean, det.transform_.std)
    X2, _ = flavours(2000, seed=2, shift=0.05)            # a day whose distribution moved
    det.fit(X2)
    assert (det.transform_.mean, det.transform_.std) == stats
    assert det.n_fits_ == 2 and det.fits_[1]["warm_start"]
    det.save(tmp_path / "m")
    loaded = Detector.load(tmp_path / "m")
    assert (loaded.transform_.mean, loaded.transform_.std) == stats
    np.testing.assert_array_equal(loaded.score_samples(X2), det.score_samples(X2))
    with pytest.raises(DidactError, match="architecture"):
        det.set_params(hidden=(8,))
    det.set_params(lr=1e-4)                              # optimisation settings may change
    assert det.config.lr == 1e-4


def test_log1p_transform_rejects_negative_values():
    X = np.abs(np.random.default_rng(0).normal(size=(300, 3))).astype(np.float32) * 1000
    det = Detector(ModelConfig(n_features=3, log1p=True, standardize=True, batch_size=128, max_epochs=2))
    det.fit(X)
    assert det.transform_.transform(X).max() < 10                  # log-scaled, standardised
    with pytest.raises(DidactError, match="negative"):
        det.score_samples(-X)


def test_loading_a_damaged_folder_is_a_clear_error(fitted, tmp_path):
    d = fitted.save(tmp_path / "m")
    (d / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(RegistryError, match="weights.pt"):
        Detector.load(d)
    (d / "weights.pt").unlink()
    with pytest.raises(RegistryError, match="weights.pt.*missing"):
        Detector.load(d)
    (d / "config.json").write_text("{truncated")
    with pytest.raises(RegistryError, match="config.json"):
        Detector.load(d)
    with pytest.raises(RegistryError, match="config.json.*missing"):
        Detector.load(tmp_path / "nowhere")


def test_weights_that_do_not_match_the_architecture_are_refused(fitted, tmp_path):
    d = fitted.save(tmp_path / "m")
    meta = json.loads((d / "config.json").read_text())
    meta["model_config"]["hidden"] = [16, 8]
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="weights.pt.*architecture"):
        Detector.load(d)


def test_vae_has_the_same_interface(day, tmp_path):
    X, labels = day
    det = Detector(ModelConfig(family="vae", **FAST)).fit(X, labels=labels)
    Z = det.embed(X)
    assert Z.shape == (len(X), 2)
    acc = knn_accuracy(Z, labels)
    print(f"VAE kNN accuracy in the latent: {acc:.3f}")
    assert acc >= 0.8
    outliers = np.random.default_rng(7).dirichlet(np.ones(5), size=300).astype(np.float32)
    assert roc_auc(det.score_samples(np.vstack([X[:3000], outliers])), np.r_[np.zeros(3000), np.ones(300)]) >= 0.9
    loaded = Detector.load(det.save(tmp_path / "vae"))
    np.testing.assert_array_equal(loaded.score_samples(X[:100]), det.score_samples(X[:100]))
    assert set(np.unique(loaded.predict(X[:100]))) <= {0, 1}
