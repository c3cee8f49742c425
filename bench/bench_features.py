"""Ablation: which features move the testbed figures.  For each feature set, the labelled
days of a home are preprocessed again (``ai_ready_metrics``, a new version per set) and
evaluated with ``didact_core.testbed.evaluation.evaluate``; one table at the end.

    python bench/bench_features.py --home /tmp/tbA                 # a recording home (didact testbed ingest)
    python bench/bench_features.py --simulate                      # smoke test: a small simulated labelled home
    python bench/bench_features.py --home /tmp/tbA --sets "cpu@1;cpu,node@3;cpu,node,rolling60@1" --seeds 0,1,2
    python bench/bench_features.py --home /tmp/tbrec --train-labels A.csv --test-labels B.csv --cross --seeds 0,1,2

Feature sets are ``features@window`` separated by ``;`` (default: ``cpu@1``, ``cpu,node@1``,
``cpu,node@3``, ``cpu,node,rolling@1``).  Each direction's latent-2 kNN by segment and
open-set AUC are printed (within one recording: held-out segments; across: A→B and B→A),
with several ``--seeds`` as mean ± std.

Real figures need the two recordings (set A and set B, ``didact testbed record --set B``)
and the cross-recording evaluation (``--train-labels``/``--test-labels``: each recording's
labels CSV, which also tells apart two recordings of one UTC day); the simulated home only
shows the command runs.  The
home's AI-ready partitions are left as the settings of the environment make them
(``DIDACT_FEATURES`` / ``DIDACT_WINDOW``): they are rebuilt that way at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from didact_core.data.labels import read_labels  # noqa: E402
from didact_core.testbed import eval_report, evaluation  # noqa: E402
from didact_core.testbed.ingest import labels_days  # noqa: E402

DEFAULT_SETS = "cpu@1;cpu,node@1;cpu,node@3;cpu,node,rolling@1"
#: the figures of each direction in the table (mean ± std over the seeds)
FIGURES = ("latent_knn_accuracy_by_segment", "openset_auc")


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
    """Rebuild the days' AI-ready data with ``features``/``window``, evaluate over ``seeds``;
    per direction (one within a recording; A→B and B→A across) the headline figures."""
    s = settings.replace(features=features, window=window)
    for d in sorted(set(days) | set(options.get("test_days") or [])):
        spine.build_ai_ready(s, dt.date.fromisoformat(d))
    t0 = time.perf_counter()
    r = evaluation.evaluate(s, days, log_to_mlflow=False, seeds=seeds,
                            **{k: v for k, v in options.items() if v is not None})  # fmt: skip
    figures = {}
    for run in r["runs"]:
        tag = "" if len(r["runs"]) == 1 else run["name"].split(" → ")[0] + "→ "
        for k in FIGURES:
            figures[tag + k] = run["summary"].get(k)
    return {
        "features": ",".join(features), "window": window, "inputs": len(feature_columns(features, window)),
        "params": r.get("n_params"), "figures": figures, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def fmt(stat) -> str:
    return eval_report.fmt(stat) if stat else "—"


def table(rows: list[dict]) -> str:
    figures = list(dict.fromkeys(k for r in rows for k in r["figures"]))
    head = ["features", "window", "inputs", "params", *figures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['features']}`", str(r["window"]), str(r["inputs"]), f"{r['params']:,}" if r["params"] else "?"]
        cells += [fmt(r["figures"].get(k)) for k in figures]
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
    ap.add_argument("--train-labels", help="recording A's labels CSV: train on A (its days unless --days)")
    ap.add_argument("--test-labels", help="recording B's labels CSV: judge on B; with --cross also B→A")
    ap.add_argument("--cross", action="store_true", help="with --test-labels: both directions")
    args = ap.parse_args(argv)
    if bool(args.train_labels) != bool(args.test_labels) or (args.cross and not args.test_labels):
        ap.error("--train-labels and --test-labels go together (and --cross needs them)")
    if args.simulate:
        settings, days = simulated_home(args.sim_days)
    elif args.home:
        settings = Settings.from_env(home=args.home)
        days = args.days.split(",") if args.days else Warehouse(settings.home_path).partitions(spine.RAW)
        if args.train_labels and not args.days:
            days = [d.isoformat() for d in labels_days(args.train_labels)]
    else:
        ap.error("give --home (a recording home) or --simulate")
    seeds = [int(x) for x in args.seeds.split(",")]
    print(f"home {settings.home}, days {', '.join(days)}, seeds {seeds}", flush=True)
    rows = []
    try:
        for features, window in parse_sets(args.sets):
            options = {"epochs": args.epochs, "openset_epochs": args.openset_epochs, "max_train": args.max_train,
                       "max_test": args.max_test}  # fmt: skip
            if args.test_labels:
                options.update(train_labels=read_labels(args.train_labels), test_labels=read_labels(args.test_labels),
                               test_days=[d.isoformat() for d in labels_days(args.test_labels)], cross=args.cross,
                               names=(Path(args.train_labels).stem, Path(args.test_labels).stem))  # fmt: skip
            r = run_set(settings, days, features, window, seeds, options)
            print(f"  {r['features']} @ {window}: {r['seconds']:.0f} s", flush=True)
            rows.append(r)
    finally:
        for d in sorted(set(days) | {d.isoformat() for d in (labels_days(args.test_labels) if args.test_labels else [])}):
            # leave the home as its own settings build it
            spine.build_ai_ready(settings, dt.date.fromisoformat(d))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
