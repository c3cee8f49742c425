"""The model's config dataclass and its size helpers (this module needs no torch).

All hyperparameters of a detector live in one dataclass, :class:`ModelConfig`.  It is
JSON-able (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`), so the same
dict is logged as MLflow params and saved next to the weights to rebuild the
architecture at load time.  :func:`hidden_for` sizes the encoder widths for an input
count, :func:`effective_batch_size` the batch for small data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from didact_core.config import Settings
from didact_core.data.preprocess import check_features
from didact_core.errors import DidactError
from didact_core.schema import NODE_FEATURES

FAMILIES = ("autoencoder", "vae")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
COMPILE_MODES = ("auto", "on", "off")

#: fields that fix the architecture or the feature space; they cannot change between
#: continual fits of one detector (the weights and the frozen transform depend on them)
ARCHITECTURE_FIELDS = (
    "family", "n_features", "latent_dim", "hidden", "activation", "log1p", "standardize",
)


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter of a didact detector.

    The default autoencoder over the five CPU fractions has 39,367 trainable
    parameters (hidden widths 144 and 128, mirrored in the decoder).
    """

    #: "autoencoder" or "vae"
    family: str = "autoencoder"
    n_features: int = 5
    #: size of the embedding; 2 so that it can be plotted as is
    latent_dim: int = 2
    #: encoder hidden widths; the decoder mirrors them
    hidden: tuple[int, ...] = (144, 128)
    activation: str = "relu"
    # optimisation (AdamW)
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 4096
    #: small data: the batch shrinks (not below 64) so that an epoch has at least this many
    #: optimisation steps; a few thousand samples in one 4096-batch would train 1 step/epoch
    min_batches: int = 32
    max_epochs: int = 20
    #: early stopping: epochs without a validation improvement of at least min_delta
    patience: int = 3
    min_delta: float = 0.0
    #: fraction of the training data held out for early stopping when no X_val is given
    val_fraction: float = 0.1
    #: a continual fit ramps lr up over this many steps (fresh Adam moments would
    #: otherwise knock the trained weights off their minimum); 0 disables
    warmup_steps: int = 50
    seed: int = 0
    #: the OOD threshold is this quantile of the training reconstruction errors
    ood_quantile: float = 0.995
    #: VAE only: weight of the KL term (per latent dim) against the per-feature MSE
    beta: float = 1e-3
    # feature transform (fitted on the first training data, then frozen)
    log1p: bool = False
    standardize: bool = False
    #: torch.compile the loss: "auto" compiles long runs only (see training.py)
    compile: str = "auto"
    #: train under bfloat16 autocast (fast on CPUs with AMX/AVX512-BF16 and on GPUs);
    #: the weights, the loss, the threshold and scoring stay float32
    bf16: bool = False
    #: "auto" = cuda when available, else cpu
    device: str = "auto"

    def __post_init__(self):
        # JSON gives lists; keep the dataclass hashable and comparable
        if not isinstance(self.hidden, tuple):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`DidactError` naming the first bad setting."""

        def bad(name: str, problem: str, fix: str | None = None):
            raise DidactError(f"model setting {name}={getattr(self, name)!r}", problem, fix)

        if self.family not in FAMILIES:
            bad("family", "is not a known model family", f"use one of {', '.join(FAMILIES)}")
        if self.activation not in ACTIVATIONS:
            bad("activation", "is not a known activation", f"use one of {', '.join(ACTIVATIONS)}")
        if self.compile not in COMPILE_MODES:
            bad("compile", "is not a compile mode", f"use one of {', '.join(COMPILE_MODES)}")
        for name in ("n_features", "latent_dim", "batch_size", "max_epochs", "min_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            bad("hidden", "must be a non-empty list of positive layer widths")
        if not isinstance(self.patience, int) or self.patience < 0:
            bad("patience", "must be a non-negative integer (0 disables early stopping)")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup_steps", "must be a non-negative integer")
        if not (self.lr > 0):
            bad("lr", "must be a positive learning rate")
        for name in ("weight_decay", "min_delta", "beta"):
            if not getattr(self, name) >= 0:
                bad(name, "must not be negative")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", "must be in [0, 1)")
        if not 0 < self.ood_quantile < 1:
            bad("ood_quantile", "must be strictly between 0 and 1", "e.g. 0.995")

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists) usable as MLflow params."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`DidactError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DidactError(
                "model config",
                f"has unknown settings {unknown}",
                f"remove them; known settings are {sorted(known)}",
            )
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


#: the default model's size: the autoencoder over the five CPU fractions, widths (144, 128)
DEFAULT_PARAMS = 39_367


def mlp_params(n_features: int, hidden, latent_dim: int = 2, family: str = "autoencoder") -> int:
    """Trainable parameters of an encoder ``n_features → hidden… → latent`` and its mirrored
    decoder (the VAE's encoder head is twice as wide)."""
    head = 2 * latent_dim if family == "vae" else latent_dim
    enc = [n_features, *hidden, head]
    dec = [latent_dim, *reversed(tuple(hidden)), n_features]
    return sum(a * b + b for w in (enc, dec) for a, b in zip(w[:-1], w[1:]))


def hidden_for(n_features: int, budget: int = DEFAULT_PARAMS, latent_dim: int = 2,
               base: tuple[int, ...] = (144, 128), family: str = "autoencoder") -> tuple[int, ...]:
    """Hidden widths of ``base``'s shape, scaled (multiples of 8) so that the model over
    ``n_features`` inputs has about ``budget`` parameters: more inputs, narrower layers.
    Five inputs give ``base`` itself."""
    best, best_gap = base, None
    for w0 in range(8, 8 * 129, 8):
        widths = tuple(max(8, int(round(w0 * b / base[0] / 8)) * 8) for b in base)
        gap = abs(mlp_params(n_features, widths, latent_dim, family) - budget)
        if best_gap is None or gap < best_gap:
            best, best_gap = widths, gap
    return best


def effective_batch_size(cfg: "ModelConfig", n: int) -> int:
    """``cfg.batch_size``, or smaller for small data: at least ``cfg.min_batches`` steps per
    epoch, batches of at least 64 samples (never more than ``cfg.batch_size``)."""
    return max(1, min(cfg.batch_size, max(64, -(-n // cfg.min_batches))))


def count_params(model) -> int:
    """Number of trainable parameters of a module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_config(settings: Settings, n_features: int) -> ModelConfig:
    """The config of a new detector over ``n_features`` inputs, as the settings ask for it."""
    node_level = any(f in NODE_FEATURES for f in check_features(settings.features))
    hidden = tuple(int(h) for h in settings.model_hidden) or hidden_for(n_features, family=settings.model_family)
    return ModelConfig(
        hidden=hidden,
        # rates and byte counts span decades: log1p, then standardise (frozen after day one)
        log1p=node_level,
        standardize=node_level,
        family=settings.model_family,
        n_features=n_features,
        lr=settings.model_lr,
        max_epochs=settings.model_max_epochs,
        batch_size=settings.model_batch_size,
        seed=settings.seed,
    )
