"""The one training loop of didact.

``train(model, X_train, cfg, X_val=..., on_epoch=...)`` runs AdamW over device-resident
shuffled batches (``didact_core.learn.batching``), stops early on the validation loss and
restores the best weights, and returns a :class:`TrainResult`.  A non-finite loss
raises :class:`TrainingDivergedError` at once, so a caller never saves diverged weights.

Fast path (what ``bench/bench_training.py`` measures, see ``bench/README_training.md``):
the data is resident on the device, the optimiser is fused AdamW, gradients are set
to ``None`` instead of zeroed, ReLU runs in place, the epoch loss is accumulated on the
device (one host sync per epoch on GPUs), and long runs compile the loss with
``torch.compile``.  ``cfg.bf16`` (off by default) trains under bfloat16 autocast.

The loop is deterministic for a given ``cfg.seed`` on a given machine: the caller seeds
the model's initialisation, the batch order comes from a seeded ``torch.Generator``
and the VAE's sampling noise from torch's RNG, seeded here inside ``fork_rng`` so that
the global RNG state of the caller is left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from didact_core.learn.batching import ResidentBatches, pick_device, to_device_tensor
from didact_core.errors import DidactError
from didact_core.learn.models.config import ModelConfig, effective_batch_size

log = logging.getLogger(__name__)

#: compile="auto" compiles when a fit will process at least this many samples: the
#: compile (tens of seconds on 2 cores, a few with a warm cache) then pays for itself
COMPILE_AUTO_MIN_SAMPLES = 100_000_000
#: validation and scoring run in chunks of this many samples
EVAL_CHUNK = 65_536

OnEpoch = Callable[[int, float, "float | None"], None]


class TrainingDivergedError(DidactError):
    """The loss became NaN or infinite; no weights of this run may be kept."""


@dataclass
class TrainResult:
    """What one ``train`` call did; ``history`` has one dict per epoch."""

    history: list[dict] = field(default_factory=list)
    #: epoch whose weights were restored (the best monitored loss)
    best_epoch: int = -1
    best_loss: float = math.inf
    #: "val_loss" or "train_loss" (when there is no validation data)
    monitored: str = "val_loss"
    stopped_early: bool = False
    samples_seen: int = 0
    seconds: float = 0.0
    #: validation loss of the starting weights (a warm start should begin near the end)
    initial_val_loss: float | None = None
    compiled: bool = False
    device: str = "cpu"

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "best_epoch", "best_loss", "monitored", "stopped_early", "samples_seen",
            "seconds", "initial_val_loss", "compiled", "device",
        )}
        d["epochs"] = self.epochs
        return d


def should_compile(cfg: ModelConfig, n_train: int, device: torch.device) -> bool:
    """Decide ``cfg.compile``: "on", "off", or "auto" (long runs, with a C compiler on CPU)."""
    if cfg.compile == "on":
        return True
    if cfg.compile == "off":
        return False
    if device.type == "cpu" and shutil.which("gcc") is None and shutil.which("cc") is None:
        return False
    return n_train * cfg.max_epochs >= COMPILE_AUTO_MIN_SAMPLES


def _diverged(where: str, value: float, cfg: ModelConfig) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"training ({where})",
        f"the loss became {value} (lr={cfg.lr:g})",
        "check the input for NaN/inf values, or lower lr; no weights of this run were kept",
    )


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, X: torch.Tensor) -> float:
    """Mean training loss of ``model`` over ``X`` in eval mode (deterministic)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=X.device, dtype=torch.float64)
    for i in range(0, X.shape[0], EVAL_CHUNK):
        xb = X[i : i + EVAL_CHUNK]
        total += model.loss(xb).double() * xb.shape[0]
    model.train(was_training)
    return float(total.item() / max(X.shape[0], 1))


def train(
    model: torch.nn.Module,
    X_train: np.ndarray | torch.Tensor,
    cfg: ModelConfig,
    *,
    X_val: np.ndarray | torch.Tensor | None = None,
    on_epoch: OnEpoch | None = None,
    device: torch.device | str | None = None,
    warmup_steps: int = 0,
) -> TrainResult:
    """Train ``model`` in place on already-transformed float32 features.

    Continues from the model's current weights (warm start); the optimiser state is
    fresh for each call.  Early stopping watches the validation loss (or the training
    loss when ``X_val`` is empty) with ``cfg.patience`` and ``cfg.min_delta``; the
    best weights are restored at the end.  ``on_epoch(epoch, train_loss, val_loss)`` is
    called after every epoch (``val_loss`` is None without validation data).
    ``warmup_steps`` ramps the learning rate linearly from ~0 to ``cfg.lr``: a warm
    start uses it so that the fresh Adam moments (whose first steps move every weight
    by about ``lr``) do not knock a trained model off its minimum.

    Raises :class:`TrainingDivergedError` on a non-finite loss; the model's weights
    are then undefined and the caller must restore or discard them.
    """
    dev = pick_device(cfg.device) if device is None else torch.device(device)
    t_start = time.perf_counter()
    model.to(dev)
    batches = ResidentBatches(X_train, effective_batch_size(cfg, len(X_train)), device=dev, seed=cfg.seed)
    if batches.n == 0:
        raise DidactError("training data", "is empty", "train on a partition with samples")
    val = to_device_tensor(X_val, dev) if X_val is not None and len(X_val) else None
    loop = _Loop(model, cfg, dev, batches, warmup_steps)

    result = TrainResult(compiled=loop.compiled, device=str(dev),
                         monitored="val_loss" if val is not None else "train_loss")  # fmt: skip
    if val is not None:
        result.initial_val_loss = evaluate_loss(model, val)
        if not math.isfinite(result.initial_val_loss):
            raise _diverged("validation loss of the starting weights", result.initial_val_loss, cfg)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad_epochs = 0
    log.info(
        "training %s: %d samples (%d batches of %d), %s validation samples, device %s%s",
        cfg.family, batches.n, len(batches), batches.batch_size,
        0 if val is None else val.shape[0], dev, ", compiled" if loop.compiled else "",
    )

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.max_epochs):
            t0 = time.perf_counter()
            train_loss = loop.epoch(epoch)
            result.samples_seen += batches.samples_per_epoch
            val_loss = evaluate_loss(model, val) if val is not None else None
            if val_loss is not None and not math.isfinite(val_loss):
                raise _diverged(f"validation after epoch {epoch}", val_loss, cfg)
            _record_epoch(result, cfg, epoch, train_loss, val_loss, batches.samples_per_epoch,
                          time.perf_counter() - t0)  # fmt: skip
            if on_epoch is not None:
                on_epoch(epoch, train_loss, val_loss)

            monitored = val_loss if val_loss is not None else train_loss
            if monitored < result.best_loss - cfg.min_delta:
                result.best_loss, result.best_epoch, bad_epochs = monitored, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                if cfg.patience and bad_epochs >= cfg.patience:
                    result.stopped_early = epoch < cfg.max_epochs - 1
                    log.info("early stop after epoch %d (best epoch %d)", epoch + 1,
                             result.best_epoch + 1)
                    break

    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t_start
    return result


class _Loop:
    """One optimiser over the resident batches: :meth:`epoch` runs one pass, returns its mean loss."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, dev: torch.device,
                 batches: ResidentBatches, warmup_steps: int):  # fmt: skip
        self.model, self.cfg, self.batches, self.warmup_steps = model, cfg, batches, warmup_steps
        self.dev = dev
        self.compiled = should_compile(cfg, batches.n, dev)
        self.loss_fn = torch.compile(model.loss) if self.compiled else model.loss
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
            fused=dev.type in ("cpu", "cuda"),
        )
        # a host sync per step costs nothing on CPU and stops a divergence at once;
        # on a GPU check every few steps to keep the device queue full
        self.check_every = 1 if dev.type == "cpu" else 50
        self.autocast = (
            (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if cfg.bf16 else contextlib.nullcontext
        )
        self.global_step = 0

    def epoch(self, epoch: int) -> float:
        cfg, opt = self.cfg, self.opt
        self.model.train()
        running = torch.zeros((), device=self.dev)
        for step, xb in enumerate(self.batches.epoch()):
            if self.global_step < self.warmup_steps:  # linear ramp, reaching cfg.lr at the last step
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (self.global_step + 1) / self.warmup_steps
            self.global_step += 1
            with self.autocast():
                loss = self.loss_fn(xb)
            if step % self.check_every == 0 and not math.isfinite(v := loss.item()):
                raise _diverged(f"epoch {epoch}, step {step}", v, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()
        train_loss = float(running.item()) / len(self.batches)
        if not math.isfinite(train_loss):
            raise _diverged(f"epoch {epoch}", train_loss, cfg)
        return train_loss


def _record_epoch(result: TrainResult, cfg: ModelConfig, epoch: int, train_loss: float,
                  val_loss: float | None, samples: int, seconds: float) -> None:  # fmt: skip
    result.history.append({
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
        "seconds": seconds, "samples": samples,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
    })
    log.info(
        "epoch %d/%d: train loss %.4g, val loss %s, %.1f s (%.0f samples/s)",
        epoch + 1, cfg.max_epochs, train_loss,
        "-" if val_loss is None else f"{val_loss:.4g}", seconds, result.history[-1]["samples_per_s"],
    )
