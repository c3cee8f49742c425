"""Ablation: which features move the testbed figures.  For each feature set, the labelled
days of a home are preprocessed again (``ai_ready_metrics``, a new version per set) and
evaluated with ``didact_core.testbed.evaluation.evaluate``; one table at the end.

    python bench/bench_features.py --home /tmp/tbA                 # a recording home (didact testbed ingest)
    python bench/bench_features.py --simulate                      # smoke test: a small simulated labelled home
    python bench/bench_features.py --home /tmp/tbA --sets "cpu@1;cpu,node@3;cpu,node,rolling60@1" --seeds 0,1,2

Feature sets are ``features@window`` separated by ``;`` (default: ``cpu@1``, ``cpu,node@1``,
``cpu,node@3``, ``cpu,node,rolling@1``).  Every float figure ``evaluate`` returns whose
name starts with ``latent_knn``, ``openset_auc`` or ``cross`` (the cross-recording
figures, once evaluation has them) is printed; with several ``--seeds`` as mean ± spread.

Real figures need the two recordings (set A and set B, ``didact testbed record --set B``)
and the cross-recording evaluation; the simulated home only shows the command runs.  The
home's AI-ready partitions are left as the settings of the environment make them
(``DIDACT_FEATURES`` / ``DIDACT_WINDOW``): they are rebuilt that way at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from didact_core.config import Settings  # noqa: E402
from didact_core.data import spine  # noqa: E402
from didact_core.data.preprocess import feature_columns  # noqa: E402
from didact_core.data.warehouse import Warehouse  # noqa: E402
from didact_core.testbed import evaluation  # noqa: E402

DEFAULT_SETS = "cpu@1;cpu,node@1;cpu,node@3;cpu,node,rolling@1"
PREFIXES = ("latent_knn", "openset_auc", "cross")


def parse_sets(text: str) -> list[tuple[tuple[str, ...], int]]:
    out = []
    for item in filter(None, (x.strip() for x in text.split(";"))):
        feats, _, window = item.partition("@")
        out.append((tuple(f.strip() for f in feats.split(",") if f.strip()), int(window or 1)))
    return out


def simulated_home(days: int) -> tuple[Settings, list[str]]:
    home = tempfile.mkdtemp(prefix="didact-bench-features-")
    s = Settings.from_env(home=home, nodes=6, cpus=2, interval_s=60.0, fault_rate=0.0, workers=1)
    last = dt.date(2026, 2, 10)
    names = [(last - dt.timedelta(days=i)).isoformat() for i in reversed(range(days))]
    for d in names:
        spine.ingest_raw(s, dt.date.fromisoformat(d))
    return s, names


def run_set(settings: Settings, days: list[str], features, window: int, seeds: list[int], options: dict) -> dict:
    s = settings.replace(features=features, window=window)
    for d in days:
        spine.build_ai_ready(s, dt.date.fromisoformat(d))
    params = inspect.signature(evaluation.evaluate).parameters
    kw = {k: v for k, v in {"log_to_mlflow": False, **options}.items() if k in params and v is not None}
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        r = evaluation.evaluate(s.replace(seed=seed), days, **kw)
        r["_seconds"] = time.perf_counter() - t0
        runs.append(r)
    figures = sorted({k for r in runs for k, v in r.items() if isinstance(v, float) and k.startswith(PREFIXES)})
    return {
        "features": ",".join(features),
        "window": window,
        "inputs": len(feature_columns(features, window)),
        "params": runs[0].get("n_params"),
        "figures": {k: [r.get(k) for r in runs] for k in figures},
        "seconds": sum(r["_seconds"] for r in runs),
    }


def fmt(values) -> str:
    vals = [v for v in values if isinstance(v, float) and v == v]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f}"


def table(rows: list[dict]) -> str:
    figures = sorted({k for r in rows for k in r["figures"]})
    head = ["features", "window", "inputs", "params", *figures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['features']}`", str(r["window"]), str(r["inputs"]), f"{r['params']:,}" if r["params"] else "?"]
        cells += [fmt(r["figures"].get(k, [])) for k in figures]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", help="a DIDACT_HOME with ingested, labelled recordings")
    ap.add_argument("--days", help="comma list of days (default: every raw partition of the home)")
    ap.add_argument("--simulate", action="store_true", help="smoke test on a small simulated labelled home")
    ap.add_argument("--sim-days", type=int, default=1)
    ap.add_argument("--sets", default=DEFAULT_SETS, help=f"feature sets, default {DEFAULT_SETS!r}")
    ap.add_argument("--seeds", default="0", help="comma list of seeds")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the settings')")
    ap.add_argument("--openset-epochs", type=int, default=None, help="epochs of each open-set model")
    ap.add_argument("--max-train", type=int, default=None, help="training samples at most")
    ap.add_argument("--max-test", type=int, default=None, help="held-out samples at most")
    args = ap.parse_args(argv)
    if args.simulate:
        settings, days = simulated_home(args.sim_days)
    elif args.home:
        settings = Settings.from_env(home=args.home)
        days = args.days.split(",") if args.days else Warehouse(settings.home_path).partitions(spine.RAW)
    else:
        ap.error("give --home (a recording home) or --simulate")
    seeds = [int(x) for x in args.seeds.split(",")]
    print(f"home {settings.home}, days {', '.join(days)}, seeds {seeds}", flush=True)
    rows = []
    try:
        for features, window in parse_sets(args.sets):
            options = {"epochs": args.epochs, "openset_epochs": args.openset_epochs, "max_train": args.max_train,
                       "max_test": args.max_test}  # fmt: skip
            r = run_set(settings, days, features, window, seeds, options)
            print(f"  {r['features']} @ {window}: {r['seconds']:.0f} s", flush=True)
            rows.append(r)
    finally:
        for d in days:  # leave the home as its own settings build it
            spine.build_ai_ready(settings, dt.date.fromisoformat(d))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
