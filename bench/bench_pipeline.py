"""Benchmark: one reference day from the simulator to AI-ready samples.

    python bench/bench_pipeline.py                 # 1,000 nodes × 8 threads × 15 s ≈ 46M samples
    python bench/bench_pipeline.py --nodes 100     # quicker

Runs the same code the Dagster assets run (pipeline.ingest_raw then build_ai_ready,
into a temporary DIDACT_HOME) and prints wall time per stage, rows/s, and the peak
resident memory of the whole process tree (the parent and its worker processes,
sampled every 0.1 s).  Target on a 2-core machine: ≤ 60 s and ≤ 8 GiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from didact_core.data import spine as pipeline  # noqa: E402
from didact_core.config import Settings  # noqa: E402


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeRss:
    """Peak RSS of this process plus its children, sampled in a thread."""

    def __init__(self, every: float = 0.1):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(os.getpid())))
            time.sleep(every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per core)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="didact-bench-"))
    s = Settings(home=str(home), nodes=args.nodes, cpus=args.cpus, interval_s=args.interval, workers=args.workers)
    day = dt.date(2026, 11, 20)
    print(f"reference day: {args.nodes} nodes × {args.cpus} threads × {args.interval:g} s scrapes, "
          f"{s.worker_count} worker(s), {os.cpu_count()} cores")  # fmt: skip
    try:
        with TreeRss() as rss:
            t0 = time.perf_counter()
            raw = pipeline.ingest_raw(s, day)
            t1 = time.perf_counter()
            ai = pipeline.build_ai_ready(s, day)
            t2 = time.perf_counter()
        disk = sum(f.stat().st_size for f in home.rglob("*.parquet"))
        total = t2 - t0
        print(f"{'stage':<28}{'seconds':>9}{'rows':>14}{'rows/s':>14}")
        print(f"{'simulate + write raw':<28}{t1 - t0:>9.1f}{raw.rows:>14,}{raw.rows / (t1 - t0):>14,.0f}")
        print(f"{'read raw + preprocess + write':<28}{t2 - t1:>9.1f}{ai.report.rows_out:>14,}"
              f"{ai.report.rows_in / (t2 - t1):>14,.0f}")  # fmt: skip
        print(f"{'total':<28}{total:>9.1f}{raw.rows:>14,}{raw.rows / total:>14,.0f}")
        print(f"peak RSS (process tree): {rss.peak / 2**30:.2f} GiB   parquet on disk: {disk / 2**30:.2f} GiB")
        print(f"cleaning: {ai.report.as_dict()}")
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}")


if __name__ == "__main__":
    main()
