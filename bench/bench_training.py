"""Training throughput: DataLoader-fed baselines vs didact's device-resident loop.

    python bench/bench_training.py                 # 1M samples x 5 features, 2 epochs
    python bench/bench_training.py --samples 2000000 --epochs 3
    python bench/bench_training.py --quick         # 200K samples, 1 epoch, no compile
    python bench/bench_training.py --bf16          # adds a bf16-autocast row

In ONE run, on the same synthetic fractions-like data and the same default model
(``ModelConfig()``, same initial weights, same batch size and learning rate):

  (a) torch DataLoader over a pandas-backed Dataset (one ``df.iloc[i]`` per sample:
      the reference project's CPU-fed baseline), timed for ``--a-seconds`` only;
  (b) torch DataLoader over a TensorDataset, the textbook loop (Adam, zero_grad);
  (c) ``didact_core.learn.training.train`` itself (device-resident batches, fused AdamW),
      eager, and (c+) the same with ``compile="on"`` unless ``--no-compile``; with
      ``--bf16`` also a row under bfloat16 autocast (its "% limit" is against fp32).

For each: samples/s, and the fraction of the FLOP-bound limit
``samples/s * 6 * params / matmul FLOP/s``, where the matmul rate is measured in the
same run (a 4096x4096 fp32 torch.mm, best of 5 repeats, same thread count as training).
It also measures the ceiling set by the model's own matmul shapes (every GEMM of one
training step, timed alone) to show how much of the gap is the shapes themselves.
Convergence: the full-data loss after the same epochs is printed for (b) and (c).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from didact_core.learn.models import ModelConfig, build_model, count_params  # noqa: E402
from didact_core.learn.training import evaluate_loss, train  # noqa: E402


def synthetic_fractions(n: int, n_features: int = 5, flavours: int = 10, seed: int = 0) -> np.ndarray:
    """Rows that sum to 1, drawn around ``flavours`` job-like centres."""
    rng = np.random.default_rng(seed)
    centres = rng.dirichlet(np.full(n_features, 0.5), size=flavours)
    lab = rng.integers(0, flavours, n)
    X = centres[lab] + rng.normal(0.0, 0.03, (n, n_features))
    X = np.clip(X, 0.0, None)
    X /= X.sum(axis=1, keepdims=True) + 1e-12
    return X.astype(np.float32)


class PandasRowDataset(Dataset):
    """The reference project's Dataset: one DataFrame row per ``__getitem__``."""

    def __init__(self, df: pd.DataFrame):
        self.df = df

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i):
        return torch.tensor(self.df.iloc[i].to_numpy(dtype=np.float32))


def matmul_flops(n: int = 4096, repeats: int = 5, inner: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n**3 / best


def model_gemm_ceiling(cfg: ModelConfig, repeats: int = 5, inner: int = 20) -> float:
    """Samples/s if one training step cost only its matmuls (each timed alone, best of)."""
    B = cfg.batch_size
    total = 0.0
    for i, layer in enumerate(m for m in build_model(cfg).modules() if isinstance(m, torch.nn.Linear)):
        x = torch.randn(B, layer.in_features)
        gy = torch.randn(B, layer.out_features)
        W, bias = layer.weight.detach(), layer.bias.detach()
        ops = [lambda: torch.addmm(bias, x, W.t()), lambda: gy.t().mm(x)]
        if i > 0:  # no input gradient for the first layer
            ops.append(lambda: gy.mm(W))
        for op in ops:
            op()
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(inner):
                    op()
                best = min(best, (time.perf_counter() - t) / inner)
            total += best
    return B / total


def run_dataloader(model, loader, cfg: ModelConfig, epochs: int, max_seconds: float | None = None):
    """The textbook loop: DataLoader batches, Adam, zero_grad, backward, step."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    seen, t0, best_rate = 0, time.perf_counter(), 0.0
    for _ in range(epochs):
        te, se = time.perf_counter(), 0
        for xb in loader:
            xb = xb[0] if isinstance(xb, (list, tuple)) else xb
            loss = model.loss(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            se += xb.shape[0]
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
        seen += se
        best_rate = max(best_rate, se / (time.perf_counter() - te))
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    return seen, time.perf_counter() - t0, best_rate


def fresh_model(cfg: ModelConfig):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: ModelConfig().batch_size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--a-seconds", type=float, default=15.0, help="time budget of (a)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (b) and (c); best counts")
    p.add_argument("--bf16", action="store_true", help="add a (c) row under bf16 autocast")
    p.add_argument("--no-compile", action="store_true", help="skip the (c+) compiled row")
    p.add_argument("--quick", action="store_true", help="200K samples, 1 epoch, no compile")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.no_compile, args.a_seconds, args.rounds = 200_000, 1, True, 5.0, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    if args.batch_size:
        cfg = cfg.replace(batch_size=args.batch_size)
    # (c) runs the real training loop: no validation split, no early stopping
    cfg = cfg.replace(max_epochs=args.epochs, patience=0, val_fraction=0.0, device="cpu")

    X = synthetic_fractions(args.samples)
    Xt = torch.from_numpy(X)
    params = count_params(build_model(cfg))
    load0 = os.getloadavg()
    flops = matmul_flops()
    ceiling = model_gemm_ceiling(cfg)

    def limit_frac(sps: float) -> float:
        return sps * 6 * params / flops

    print(f"# didact training benchmark — {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# data: {args.samples:,} samples x {X.shape[1]} features (synthetic fractions), "
          f"{args.epochs} epoch(s); model: {cfg.family} {cfg.hidden}, {params:,} params, "
          f"batch {cfg.batch_size}, lr {cfg.lr:g}")
    print(f"# matmul rate: {flops / 1e9:.1f} GFLOP/s (4096x4096 fp32 torch.mm, best of 5 repeats, "
          f"{torch.get_num_threads()} threads) -> FLOP-bound limit "
          f"{flops / (6 * params):,.0f} samples/s (6 x params FLOP per sample)")

    rows = []

    # (a) pandas-backed Dataset, time-boxed
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    g = torch.Generator().manual_seed(cfg.seed)
    loader_a = DataLoader(PandasRowDataset(df), batch_size=cfg.batch_size, shuffle=True, generator=g)
    seen, secs, best = run_dataloader(fresh_model(cfg), loader_a, cfg, args.epochs, args.a_seconds)
    rows.append(["(a) DataLoader, pandas Dataset", seen, secs, seen / secs, None])

    # (b) and (c) in interleaved rounds (other processes on a shared machine slow one
    # round or another; the best round of each row is its figure)
    variants = [("(c) resident, training.train", "off", False)]
    if not args.no_compile:
        variants.append(("(c+) same, compile=on", "on", False))
    if args.bf16:
        variants.append(("(c bf16) same, bf16 autocast", "off", True))
    rows += [["(b) DataLoader, TensorDataset", 0, 0.0, 0.0, None]] + [[v[0], 0, 0.0, 0.0, None] for v in variants]
    round_rates = run_rounds(rows, variants, X, Xt, cfg, args)
    report(rows, round_rates, cfg, args, flops, ceiling, params, load0)
    return 0


def run_rounds(rows: list, variants: list, X, Xt, cfg: ModelConfig, args) -> dict[str, list[float]]:
    """(b) and (c) rows, best round each (updated in ``rows``); the rates of every round."""
    round_rates: dict[str, list[float]] = {r[0]: [] for r in rows[1:]}
    for rnd in range(args.rounds):
        g = torch.Generator().manual_seed(cfg.seed)
        loader_b = DataLoader(TensorDataset(Xt), batch_size=cfg.batch_size, shuffle=True, generator=g)
        model_b = fresh_model(cfg)
        seen, secs, best = run_dataloader(model_b, loader_b, cfg, args.epochs)
        round_rates[rows[1][0]].append(best)
        if best > rows[1][3]:
            rows[1][1:] = [seen, secs, best, evaluate_loss(model_b, Xt)]
        for row, (name, mode, bf16) in zip(rows[2:], variants):
            model_c = fresh_model(cfg)
            res = train(model_c, X, cfg.replace(compile=mode, bf16=bf16))
            steady = max(h["samples_per_s"] for h in res.history)
            if mode == "on" and rnd == 0:
                print(f"# (c+) first epoch incl. compile: {res.history[0]['seconds']:.1f} s; "
                      f"overall incl. compile {res.samples_seen / res.seconds:,.0f} samples/s")
            round_rates[name].append(steady)
            if steady > row[3]:
                row[1:] = [res.samples_seen, res.seconds, steady, evaluate_loss(model_c, Xt)]
        print(f"# round {rnd + 1}/{args.rounds}: " + ", ".join(f"{r[0].split()[0]} {r[3]:,.0f}" for r in rows[1:]),
              flush=True)
    return round_rates


def report(rows: list, round_rates: dict, cfg: ModelConfig, args, flops: float, ceiling: float, params: int,
           load0) -> None:  # fmt: skip
    """The table, the speed-ups and the machine's state, on stdout."""

    def limit_frac(sps: float) -> float:
        return sps * 6 * params / flops

    flops_end = matmul_flops()
    ceiling = max(ceiling, model_gemm_ceiling(cfg))
    spread = max((max(v) / min(v) for v in round_rates.values() if len(v) > 1), default=1.0)
    busy = abs(flops_end - flops) > 0.1 * max(flops, flops_end) or spread > 1.15
    if flops_end > flops:
        print(f"# matmul rate re-measured at the end: {flops_end / 1e9:.1f} GFLOP/s (was {flops / 1e9:.1f}); "
              "the higher one is the limit below")
        flops = flops_end
    print(f"# the model's own GEMM shapes alone (batch {cfg.batch_size}): {ceiling:,.0f} samples/s "
          f"= {limit_frac(ceiling):.0%} of the limit")
    print()
    print(f"{'path':34s} {'samples':>11s} {'seconds':>8s} {'samples/s':>11s} {'% limit':>8s} {'final loss':>11s}")
    for name, seen, secs, sps, loss in rows:
        loss_s = "-" if loss is None else f"{loss:.4e}"
        print(f"{name:34s} {seen:>11,d} {secs:>8.1f} {sps:>11,.0f} {limit_frac(sps):>8.1%} {loss_s:>11s}")
    a, b = rows[0][3], rows[1][3]
    print()
    for name, _, _, sps, loss in rows[2:]:
        print(f"{name}: {sps / a:.1f}x (a), {sps / b:.2f}x (b), {limit_frac(sps):.1%} of the FLOP-bound limit; "
              f"final loss {loss:.4e} vs (b) {rows[1][4]:.4e} ({(loss - rows[1][4]) / rows[1][4]:+.1%})")
    print()
    print(f"# samples/s: (a) over its time box; (b), (c) best epoch of the best of {args.rounds} interleaved "
          "rounds (steady state, excludes compile); final loss = MSE over all samples")
    print(f"# load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
          f"(other processes on this machine slow every row)")
    if busy:
        print(f"# WARNING: the machine was busy (matmul rate moved by >10%, or a row's rounds differ by "
              f"{spread - 1:.0%} > 15%): "
              "rows were slowed unequally, rerun on an idle machine before quoting these figures")


if __name__ == "__main__":
    raise SystemExit(main())
