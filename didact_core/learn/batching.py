"""Device-resident batches: the whole training set lives on the device, once.

The reference project fed its model through a ``DataLoader`` whose ``Dataset`` read a
pandas row per sample; the per-sample Python (``__getitem__`` then ``collate``) cost
more than the model.  Here the data is one tensor on the training device, each epoch
draws one shuffled permutation from a seeded ``torch.Generator`` on that device, and a
batch is ``index_select`` of a slice of that permutation: no per-sample Python, no
worker processes, no host-to-device copy per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device_tensor(X: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous float32 tensor on ``device`` (no copy when it already is one)."""
    t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device, dtype=torch.float32).contiguous()


class ResidentBatches:
    """Shuffled mini-batches of a tensor kept on the device.

    ``drop_last`` (default on when there is more than one batch) keeps every batch the
    same shape, which a compiled model needs to avoid recompiling; the dropped tail
    differs each epoch because the permutation does.
    """

    def __init__(
        self,
        X: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
    ):
        self.device = torch.device(device)
        self.data = to_device_tensor(X, self.device)
        self.n = int(self.data.shape[0])
        self.batch_size = min(int(batch_size), self.n) if self.n else int(batch_size)
        self.drop_last = self.n > self.batch_size if drop_last is None else drop_last
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        if self.n == 0:
            return 0
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    @property
    def samples_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.n

    def epoch(self) -> Iterator[torch.Tensor]:
        """One pass over a fresh permutation of the data."""
        perm = torch.randperm(self.n, generator=self.generator, device=self.device)
        B = self.batch_size
        for i in range(len(self)):
            yield self.data.index_select(0, perm[i * B : (i + 1) * B])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.epoch()
