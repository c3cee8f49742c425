"""The autoencoder: encoder MLP -> 2-d latent -> decoder MLP.

One readable module.  Every family (see ``vae.py``) has the same interface:

- ``encode(x)``      -> (n, latent_dim) embedding
- ``forward(x)``     -> (n, n_features) reconstruction
- ``loss(x)``        -> scalar training loss (what the optimiser minimises)
- ``sample_error(x)``-> (n,) per-sample reconstruction error, the anomaly score

Inputs are already transformed features (see ``didact_core.data.features``).
"""

from __future__ import annotations

import torch
from torch import nn

from didact_core.learn.models.config import ModelConfig

# ReLU runs in place on the Linear output (which its backward does not need): one
# pass over the activations instead of an allocation plus a pass
_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
}


def mlp(widths: list[int], activation: str) -> nn.Sequential:
    """Linear layers through ``widths``, with an activation between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = mlp([cfg.n_features, *cfg.hidden, cfg.latent_dim], cfg.activation)
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), cfg.n_features], cfg.activation)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def sample_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error of each sample (over its features)."""
        return (self(x).float() - x).pow(2).mean(dim=1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error over the batch and the features (float32
        even under bf16 autocast)."""
        return (self(x).float() - x).pow(2).mean()
