"""Many writers on one MLflow backend at once: do they all get through, and how long do they wait?

    python deploy/mlflow/check_concurrency.py --uri sqlite:////tmp/m/mlflow.db --writers 8 --days 10
    python deploy/mlflow/check_concurrency.py --uri http://127.0.0.1:5000 --writers 8 --days 10

Each writer is its own process and does, per "day", what didact's nightly steps do to MLflow:
one run with 12 params, 20 epochs × 2 metrics, a JSON and a small file artifact, a new version
of one shared registered model and the ``challenger`` alias moved to it; every second day also
an evaluation run (8 metrics).  Printed: calls that failed (by message), the slowest day and the
median day per writer, and the wall time.  Used for deploy/mlflow/README.md ("Does it
help?"); it never touches didact's own store. `--no-init` shows the race of several processes
opening a new SQLite store at once (its schema is created by whoever comes first).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

MODEL = "didact-concurrency-check"


def writer(uri: str, days: int, index: int, queue) -> None:
    """One writer process; always reports (index, seconds per day, failed calls)."""
    try:
        queue.put((index, *_write(uri, days, index)))
    except Exception as e:  # noqa: BLE001 — a writer that dies is a result too, not a hang
        queue.put((index, [], [f"writer died: {type(e).__name__}: {str(e).splitlines()[0][:160]}"]))


def _write(uri: str, days: int, index: int) -> tuple[list[float], list[str]]:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    from mlflow import MlflowClient  # lazy: seconds to import, and only in the writer processes

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    errors: list[str] = []
    times: list[float] = []

    def attempt(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 — the point is to count whatever the backend raises
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            return None

    # a database URI has no artifact root of its own (MLflow would use ./mlruns): a temporary one
    where = None if uri.startswith("http") else (Path(tempfile.gettempdir()) / "mlflow-check-artifacts").as_uri()
    exp_id = attempt(client.create_experiment, f"concurrency-check-{index}-{uuid.uuid4().hex[:6]}", where)
    try:  # one registered model for all writers: the first creates it, the others may race it
        client.create_registered_model(MODEL)
    except Exception as e:  # noqa: BLE001 — "already exists" is the race lost, anything else counts
        if "already exists" not in str(e) and "RESOURCE_ALREADY_EXISTS" not in str(e):
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    with tempfile.TemporaryDirectory() as tmp:
        art = os.path.join(tmp, "weights.txt")
        with open(art, "w") as f:
            f.write("x" * 40_000)
        for day in range(days):
            t0 = time.perf_counter()
            run = attempt(client.create_run, exp_id, run_name=f"w{index} train {day}")
            if run is None:
                continue
            rid = run.info.run_id
            for k in range(12):
                attempt(client.log_param, rid, f"p{k}", k)
            for epoch in range(20):
                attempt(client.log_metric, rid, "train_loss", 1.0 / (epoch + 1), step=epoch)
                attempt(client.log_metric, rid, "val_loss", 1.1 / (epoch + 1), step=epoch)
            attempt(client.log_dict, rid, {"day": day}, "data_versions.json")
            attempt(client.log_artifact, rid, art, "model")
            mv = attempt(client.create_model_version, MODEL, f"runs:/{rid}/model", rid)
            if mv is not None:
                attempt(client.set_registered_model_alias, MODEL, "challenger", mv.version)
            attempt(client.set_terminated, rid, "FINISHED")
            if day % 2:
                ev = attempt(client.create_run, exp_id, run_name=f"w{index} eval {day}")
                if ev is not None:
                    for k in range(8):
                        attempt(client.log_metric, ev.info.run_id, f"m{k}", k)
                    attempt(client.set_terminated, ev.info.run_id, "FINISHED")
            times.append(time.perf_counter() - t0)
    return times, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", required=True, help="tracking URI: sqlite:////abs/path.db, postgresql+psycopg2://…, http://…")
    ap.add_argument("--writers", type=int, default=8, help="writer processes at once (default 8)")
    ap.add_argument("--days", type=int, default=10, help="days each writer logs (default 10)")
    ap.add_argument("--no-init", action="store_true",
                    help="let the writers open a new store all at once (default: this process opens it first)")
    args = ap.parse_args()
    if args.writers < 1 or args.days < 1:
        ap.error("--writers and --days must be at least 1")
    if not args.no_init:  # a new SQLite store's schema is created by whoever opens it first
        from mlflow import MlflowClient  # lazy: seconds to import

        MlflowClient(tracking_uri=args.uri, registry_uri=args.uri).search_experiments(max_results=1)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(args.uri, args.days, i, queue)) for i in range(args.writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    days = [t for _, times, _ in results for t in times]
    errors: dict[str, int] = {}
    for _, _, errs in results:
        for e in errs:
            errors[e] = errors.get(e, 0) + 1
    print(f"{args.uri.split('@')[-1]}: {args.writers} writers × {args.days} days, wall {wall:.1f} s")
    print(f"days done {len(days)}/{args.writers * args.days}; per day median {statistics.median(days):.2f} s, "
          f"max {max(days):.2f} s" if days else "no day done")
    print(f"failed calls: {sum(errors.values())}")
    for msg, n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {n:>5} × {msg}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
