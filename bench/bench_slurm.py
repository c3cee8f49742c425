"""Benchmark: the same work through local processes and through Slurm, same machine, same run.

    python bench/bench_slurm.py                          # starts a throwaway single-node Slurm (root)
    python bench/bench_slurm.py --slurm-conf /etc/slurm/slurm.conf --partition cpu
    python bench/bench_slurm.py --nodes 50 --days 3      # quicker

1. **One partition**: a day of ``--nodes`` × ``--cpus`` × ``--interval`` s, raw and AI-ready,
   once with ``DIDACT_EXECUTOR=local`` (the worker pool) and once with ``slurm`` (one job
   array per stage), each into a fresh home.  Printed: wall time per stage, the longest
   task's own run time, and the overhead (Slurm wall − local wall).
2. **A backfill of ``--days`` days**, in order, the nightly chain per day (raw → labels →
   AI-ready → ``champion_model`` trained from the previous day's champion, registered
   and gated), local vs Slurm (the node blocks as arrays, the fit as one job).
   Printed: wall time per day and in total.

Without ``--slurm-conf`` it starts the tests' single-node Slurm (``tests/slurm_cluster.py``:
Debian's slurmctld/slurmd/munge, as root) in a temporary folder and stops it afterwards.
Both executors run on the same cores, so the figures are the price of going through
Slurm (sbatch, scheduling, task start-up, polling), not the speed-up of a farm.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from didact_core.config import Settings  # noqa: E402
from didact_core.data import spine  # noqa: E402

LAST_DAY = dt.date(2026, 2, 10)


def _task_max_s(meta: dict) -> float | None:
    job = meta.get("executor") or {}
    return (job.get("elapsed_s") or {}).get("max")


def one_partition(settings: Settings, day: dt.date) -> dict:
    """Raw and AI-ready of ``day``: wall seconds per stage and the longest task's run time."""
    t0 = time.perf_counter()
    raw = spine.ingest_raw(settings, day)
    t1 = time.perf_counter()
    ai = spine.build_ai_ready(settings, day)
    t2 = time.perf_counter()
    return {"raw_s": t1 - t0, "ai_s": t2 - t1, "raw_task_s": _task_max_s(raw.meta),
            "ai_task_s": _task_max_s(ai.version.metadata), "rows": raw.rows,
            "data_version": (raw.version.data_version, ai.version.data_version)}  # fmt: skip


def backfill(settings: Settings, days: list[dt.date]) -> list[float]:
    """The nightly chain for each day, in order; wall seconds per day."""
    from didact_core.learn import continual, job  # lazy: torch and mlflow

    walls = []
    for day in days:
        t0 = time.perf_counter()
        spine.ingest_raw(settings, day)
        spine.build_job_labels(settings, day)
        spine.build_ai_ready(settings, day)
        if settings.executor == "slurm":
            job.train_day_as_job(settings, day.isoformat())
        else:
            continual.train_day(settings, day.isoformat())
        walls.append(time.perf_counter() - t0)
    return walls


@contextlib.contextmanager
def slurm_conf(args, work: Path):
    if args.slurm_conf:
        yield Path(args.slurm_conf)
        return
    from tests.slurm_cluster import start_slurm  # the tests' throwaway single-node Slurm

    with start_slurm(work / "slurm") as cluster:
        yield cluster.conf


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100, help="simulated nodes (default 100)")
    ap.add_argument("--cpus", type=int, default=8, help="CPU threads per node (default 8)")
    ap.add_argument("--interval", type=float, default=15.0, help="scrape interval, seconds (default 15)")
    ap.add_argument("--days", type=int, default=3, help="days of the backfill (default 3; 0 skips it)")
    ap.add_argument("--train-samples", type=int, default=20000, help="training samples per day (default 20000)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per day (default 2)")
    ap.add_argument("--slurm-conf", help="an existing cluster's slurm.conf (default: start a throwaway one)")
    ap.add_argument("--partition", default="", help="Slurm partition (default: the cluster's default)")
    args = ap.parse_args()
    for name in ("nodes", "cpus", "train_samples", "epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.days < 0 or args.interval <= 0:
        ap.error("--days must be ≥ 0 and --interval > 0")
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="didact-bench-slurm-"))
    base = dict(nodes=args.nodes, cpus=args.cpus, interval_s=args.interval, start_date="2026-01-01",
                max_train_samples=args.train_samples, model_max_epochs=args.epochs)  # fmt: skip
    print(f"machine: {os.cpu_count()} cores; day: {args.nodes} nodes × {args.cpus} threads × {args.interval:g} s")
    try:
        with slurm_conf(args, work) as conf:
            farm = dict(executor="slurm", slurm_conf=str(conf), slurm_partition=args.partition,
                        slurm_time_limit="2:00:00", slurm_wait_timeout_s=7200.0)  # fmt: skip
            runs = {}
            for kind, extra in (("local", {}), ("slurm", farm)):
                runs[kind] = one_partition(Settings(home=str(work / f"part-{kind}"), **base, **extra), LAST_DAY)
            loc, slu = runs["local"], runs["slurm"]
            print(f"\n1. one partition ({loc['rows']:,} raw samples)")
            print(f"{'stage':<12}{'local s':>9}{'slurm s':>9}{'task s':>8}{'overhead s':>12}")
            for stage in ("raw", "ai"):
                print(f"{stage:<12}{loc[stage + '_s']:>9.1f}{slu[stage + '_s']:>9.1f}"
                      f"{_fmt(slu[stage + '_task_s']):>8}{slu[stage + '_s'] - loc[stage + '_s']:>12.1f}")  # fmt: skip
            same = "same" if loc["data_version"] == slu["data_version"] else "DIFFERENT"
            print(f"data versions local vs slurm: {same}")
            if args.days:
                days = [LAST_DAY - dt.timedelta(days=i) for i in reversed(range(args.days))]
                walls = {kind: backfill(Settings(home=str(work / f"fill-{kind}"), **base, **extra), days)
                         for kind, extra in (("local", {}), ("slurm", farm))}  # fmt: skip
                print(f"\n2. backfill of {args.days} days, raw → labels → AI-ready → training ({args.epochs} epochs, "
                      f"≤ {args.train_samples:,} samples), in order")  # fmt: skip
                print(f"{'day':<12}{'local s':>9}{'slurm s':>9}")
                for i, day in enumerate(days):
                    print(f"{day.isoformat():<12}{walls['local'][i]:>9.1f}{walls['slurm'][i]:>9.1f}")
                tl, ts = sum(walls["local"]), sum(walls["slurm"])
                print(f"{'total':<12}{tl:>9.1f}{ts:>9.1f}   slurm/local {ts / tl:.2f}×")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
