"""``didact testbed evaluate``: its options and what it prints (issue 16: whole segments on
one side of every split, seeds with their spread, train on one recording and judge on
another)."""

from __future__ import annotations

import argparse
from pathlib import Path

from didact_assets import cli_args as args_
from didact_assets.cli_output import console, table
from didact_core.config import Settings
from didact_core.errors import DidactError


def seed_list(raw: str) -> list[int]:
    """``0,1,2`` → [0, 1, 2]; a usage error otherwise."""
    try:
        seeds = [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a list of seeds: give e.g. 0,1,2")
    return seeds


def fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a fraction between 0 and 1: give e.g. 0.33")
    return value


def add_evaluate_arguments(ev: argparse.ArgumentParser) -> None:
    """The options of ``didact testbed evaluate``."""
    ev.add_argument("--days", "--train-days", dest="days", type=args_.days,
                    help="comma-separated days YYYY-MM-DD of the recording to evaluate, or to train on with "
                    "--test-days (default yesterday)")  # fmt: skip
    ev.add_argument("--test-days", type=args_.days,
                    help="judge on these days (another recording): the detector and kNN fit on --days only")
    ev.add_argument("--train-labels", metavar="CSV",
                    help="one recording's labels CSV: only samples inside its intervals train (days default to the "
                    "days it touches); tells two recordings of one UTC day apart")  # fmt: skip
    ev.add_argument("--test-labels", metavar="CSV",
                    help="another recording's labels CSV to judge on (with --train-labels; days default to the days "
                    "it touches)")  # fmt: skip
    ev.add_argument("--cross", action="store_true",
                    help="with --test-days: also train on the test days and judge --days (A→B and B→A)")
    ev.add_argument("--seeds", type=seed_list,
                    help="comma-separated seeds, e.g. 0,1,2: each redraws the segment split, the samples and the "
                    "model; figures are mean ± std over them (default: --seed)")  # fmt: skip
    ev.add_argument("--seed", type=int, help="one seed of the split, sampling and model (default: DIDACT_SEED)")
    ev.add_argument("--holdout", type=fraction, default=1 / 3,
                    help="share of each flavour's segments held out within one recording (default 0.33; at least "
                    "one segment, leaving two to train on)")  # fmt: skip
    ev.add_argument("--max-train", type=args_.int_at_least(1, "--max-train 60000"), default=60_000,
                    help="training samples at most (default 60000)")  # fmt: skip
    ev.add_argument("--max-test", type=args_.int_at_least(1, "--max-test 10000"), default=10_000,
                    help="judged samples at most (default 10000)")  # fmt: skip
    ev.add_argument("--epochs", type=args_.int_at_least(1, "--epochs 20"), default=None,
                    help="training epochs (default: DIDACT_MODEL_MAX_EPOCHS)")  # fmt: skip
    ev.add_argument("--openset-epochs", type=args_.int_at_least(1, "--openset-epochs 5"), default=5,
                    help="epochs of each leave-one-flavour-out model (default 5)")  # fmt: skip
    ev.set_defaults(func=run_evaluate)


def run_evaluate(args, settings: Settings) -> int:
    """Evaluate, then print the per-flavour table(s), the headline and every warning."""
    from didact_core.testbed import evaluation as testbed_eval  # the learning stage: torch, sklearn
    from didact_core.testbed.eval_report import report_lines

    if args.seed is not None:
        settings = settings.replace(seed=args.seed)
    seeds = args.seeds or [settings.seed]
    train_labels, test_labels, names, days, test_days = _recordings(args)
    days = days or args_.last_days(1)
    names = (names[0] or ",".join(days), names[1] or ",".join(test_days or []))
    what = f"{names[0]} → {names[1]}" if test_days else ", ".join(days)
    console.print(f"evaluating {what}{' and back' if args.cross else ''} with features "
                  f"{', '.join(settings.features)}, window {settings.window}, seeds {', '.join(map(str, seeds))}")  # fmt: skip
    r = testbed_eval.evaluate(settings, days, max_train=args.max_train, max_test=args.max_test, epochs=args.epochs,
                              openset_epochs=args.openset_epochs, seeds=seeds, test_days=test_days,
                              cross=args.cross, holdout=args.holdout, train_labels=train_labels,
                              test_labels=test_labels, names=names)  # fmt: skip
    for run in r["runs"]:
        console.print(table(f"per flavour: {run['name']}", run["flavour_rows"]))
    for line in report_lines(r):
        console.print(line, markup=False, highlight=False)
    console.print(f"MLflow run {r.get('mlflow_run_id', '')}")
    return 0


def _recordings(args):
    """(train labels, test labels, (train name, test name), train days, test days) from
    ``--train-labels``/``--test-labels`` and ``--days``/``--test-days``."""
    from didact_core.data.labels import read_labels
    from didact_core.testbed.ingest import labels_days

    if args.test_labels and not args.train_labels:
        raise DidactError("--test-labels", "needs --train-labels", "give both recordings' labels CSVs")
    if args.train_labels and args.test_days and not args.test_labels:
        raise DidactError("--test-days with --train-labels", "leaves the test side unnamed",
                          "give --test-labels CSV of the other recording")  # fmt: skip
    sides = []
    for path, days in ((args.train_labels, args.days), (args.test_labels, args.test_days)):
        if not path:
            sides.append((None, None, days))
            continue
        labels = read_labels(path)
        days = days or [d.isoformat() for d in labels_days(path)]
        sides.append((labels, Path(path).stem, days))
    (tr, tr_name, tr_days), (te, te_name, te_days) = sides
    return tr, te, (tr_name, te_name), tr_days, te_days
