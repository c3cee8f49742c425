"""The model families of didact and their config.

``config.py`` holds :class:`ModelConfig` (every hyperparameter, JSON-able) and the size
helpers; ``autoencoder.py`` and ``vae.py`` the two families, one module each, with the
same interface (``encode``, ``forward``, ``loss``, ``sample_error``).

    >>> from didact_core.learn.models import ModelConfig, build_model, count_params
    >>> cfg = ModelConfig(n_features=5)
    >>> model = build_model(cfg)          # an nn.Module with encode/forward/loss
    >>> count_params(model)
    39367

The estimator around a model (fit / score / save) is :class:`didact_core.learn.detector.Detector`.
"""

from __future__ import annotations

from didact_core.learn.models.autoencoder import Autoencoder
from didact_core.learn.models.config import (
    ACTIVATIONS,
    ARCHITECTURE_FIELDS,
    COMPILE_MODES,
    DEFAULT_PARAMS,
    FAMILIES,
    ModelConfig,
    count_params,
    effective_batch_size,
    hidden_for,
    mlp_params,
    model_config,
)
from didact_core.learn.models.vae import VAE

__all__ = [
    "ACTIVATIONS", "ARCHITECTURE_FIELDS", "COMPILE_MODES", "DEFAULT_PARAMS", "FAMILIES", "Autoencoder", "VAE",
    "ModelConfig", "build_model", "count_params", "effective_batch_size", "hidden_for", "mlp_params",
    "model_config",
]  # fmt: skip


def build_model(cfg: ModelConfig) -> Autoencoder | VAE:
    """The nn.Module of ``cfg.family``, freshly initialised from torch's global RNG."""
    return VAE(cfg) if cfg.family == "vae" else Autoencoder(cfg)
