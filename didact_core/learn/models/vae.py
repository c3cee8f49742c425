"""A variational autoencoder with the autoencoder's interface.

The encoder outputs a mean and a log-variance per latent dimension.  ``encode``
returns the mean (the embedding), ``forward`` decodes the mean (a deterministic
reconstruction, used for scoring), and ``loss`` is the beta-VAE objective

    per-feature MSE of a reparameterised sample  +  beta * KL(q(z|x) || N(0, I)) / latent_dim

averaged over the batch.  MSE and KL are both per-dimension means so that ``beta``
does not depend on the number of features; with fractions in [0, 1] the MSE is of
order 1e-3, hence the small default ``beta``.  In eval mode (validation) the loss
uses the mean instead of a sample, so it is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

from didact_core.learn.models.config import ModelConfig
from didact_core.learn.models.autoencoder import mlp


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # one head for mean and log-variance: 2 * latent_dim outputs
        self.encoder = mlp([cfg.n_features, *cfg.hidden, 2 * cfg.latent_dim], cfg.activation)
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), cfg.n_features], cfg.activation)

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(-20.0, 10.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._posterior(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))

    def sample_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the deterministic reconstruction, per sample."""
        return (self(x).float() - x).pow(2).mean(dim=1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self._posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = (self.decoder(z).float() - x).pow(2).mean()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
        return recon + self.cfg.beta * kl
