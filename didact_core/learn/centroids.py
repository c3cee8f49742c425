"""Job-flavour centroids in a model's latent space: the one home of "nearest flavour".

Training stores, with every registered version, the mean latent point of each job flavour
of its held-out sample (the version's ``centroids`` tag, JSON ``{flavour: [z0, z1, …]}``).
Serving names the flavour nearest to an OOD event's latent point with them, and the review
queue takes the same lookup injected (:class:`FlavourLookup`), so ``data`` needs nothing
from ``learn``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.learn.registry import ModelRegistry

Centroids = Mapping[str, Sequence[float]]


def centroids_of(registry: ModelRegistry, version: int) -> dict[str, list[float]]:
    """The ``centroids`` tag of a registered version ({} when absent, unreadable or malformed)."""
    try:
        cents = json.loads(registry.version(version).tags.get("centroids") or "{}")
        if not isinstance(cents, dict):
            return {}
        return {str(k): [float(x) for x in v] for k, v in cents.items()}
    except (DidactError, ValueError, TypeError):
        return {}


def nearest_flavour(centroids: Centroids, Z) -> list[str | None]:
    """The flavour whose centroid is nearest to each row of ``Z`` (n, d) — None for every row
    without centroids, or when they have more dimensions than ``Z``.  Centroids with fewer
    dimensions than ``Z`` are compared on the leading ones."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[None, :]
    if not centroids or len(Z) == 0:
        return [None] * len(Z)
    names = list(centroids)
    C = np.asarray([centroids[n] for n in names], dtype=np.float64)
    if C.ndim != 2 or C.shape[1] > Z.shape[1]:
        return [None] * len(Z)
    d = ((Z[:, None, : C.shape[1]] - C[None]) ** 2).sum(axis=2)
    return [names[i] for i in d.argmin(axis=1)]


class FlavourLookup:
    """``lookup(version, z)``: the nearest flavour of latent point ``z`` under model ``version``'s
    centroids (read from the registry once per version; None when there are none).  What
    :class:`didact_core.data.review.ReviewQueue` takes as ``nearest_flavour``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._registry: ModelRegistry | None = None
        self._cache: dict[int, dict] = {}

    def centroids(self, version: int) -> dict[str, list[float]]:
        if version not in self._cache:
            try:
                if self._registry is None:
                    self._registry = ModelRegistry(self.settings)
                self._cache[version] = centroids_of(self._registry, version)
            except DidactError:  # registry unreachable: no flavour, as for a version without centroids
                self._cache[version] = {}
        return self._cache[version]

    def __call__(self, version: int, z: Sequence[float]) -> str | None:
        return nearest_flavour(self.centroids(version), [list(z)])[0]
