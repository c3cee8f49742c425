"""Benchmark: record real, labelled telemetry on this node, ingest it, and say how well
the flavours can be told apart.

    python bench/bench_testbed.py                                   # 45 × 60 s over 9 flavours (≈ 47 min)
    python bench/bench_testbed.py --segments 9 --segment-seconds 20 # a short run (≈ 4 min)

1. ``didact_core.testbed.recorder.record``: a node exporter and a Prometheus (1 s scrapes) on free
   127.0.0.1 ports, the flavours back to back in seeded random rounds, the labels CSV;
2. ``ingest_recording``: the stored TSDB served again, then ``raw_node_metrics`` →
   ``job_labels`` → ``ai_ready_metrics`` for the recorded day(s) — the asset functions;
3. per flavour: labelled segments and AI-ready samples; the model-free baseline: per
   segment the mean CPU-mode fractions (and the spread of busy time across CPUs),
   classified by leave-one-segment-out nearest centroid (accuracy vs chance, confusion);
4. the model evaluation: ``didact_core.testbed.evaluation.evaluate`` — split by whole
   labelled segments, over ``--seeds`` (mean ± std), per flavour with its counts and every
   flavour or segment left out with the reason (``testbed.eval_report.report_lines``).
   Cross-recording (train on one recording, judge another) is ``didact testbed evaluate
   --train-days A --test-days B --cross`` (bench/README_testbed.md).

Everything goes into a fresh DIDACT_HOME (``--home``, default a new temp folder, kept so
the recording can be looked at or trained on afterwards).  The node is whatever else
runs on it too: its load average is printed before and after, since other work's CPU
time lands in the same counters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from didact_core import testbed  # noqa: E402
from didact_core.config import Settings  # noqa: E402
from didact_core.errors import DidactError  # noqa: E402
from didact_core.data.labels import read_labels  # noqa: E402
from didact_core.data.warehouse import Warehouse  # noqa: E402
from didact_core.schema import CPU_FRACTIONS  # noqa: E402
from didact_core.testbed.eval_report import report_lines  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def evaluate_recording(settings: Settings, days: list[dt.date], seeds: list[int]) -> dict:
    """The segment-honest model evaluation of a recording (``didact_core.testbed.evaluation``)
    on the ingested, labelled AI-ready days, over ``seeds``."""
    from didact_core.testbed import evaluation as testbed_eval

    return testbed_eval.evaluate(settings, [d.isoformat() for d in days], seeds=seeds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", type=int, default=45, help="segments to record (default 45 = 5 rounds of 9)")
    p.add_argument("--segment-seconds", type=float, default=60.0)
    p.add_argument("--flavours", default=None, help=f"comma list (default all: {','.join(testbed.WORKLOADS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of the recording's segment order")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the evaluation's split and model (default 0,1,2)")
    p.add_argument("--home", default=None, help="DIDACT_HOME to record into (default: a new temp folder)")
    p.add_argument("--prometheus-url", default=None, help="use this Prometheus instead of starting one")
    p.add_argument("--node-name", default=None)
    p.add_argument("--reuse", action="store_true",
                   help="record nothing: ingest and evaluate the recording already in --home (after an "
                        "interruption, or again with other DIDACT_FEATURES / DIDACT_WINDOW)")
    args = p.parse_args(argv)
    if args.reuse and not args.home:
        p.error("--reuse needs --home (the DIDACT_HOME holding the recording)")

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="didact-bench-testbed-"))
    settings = Settings.from_env(home=str(home), workers=1)
    csv = home / "testbed" / "labels.csv"
    flavours = testbed.resolve_flavours(args.flavours)
    print(f"bench_testbed: {cpu_model()}, {os.cpu_count()} CPU threads ({testbed.usable_cpus()} usable), "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"home {home}; {args.segments} segments × {args.segment_seconds:g} s over {len(flavours)} flavours; "
          f"load average before {os.getloadavg()[0]:.2f}")  # fmt: skip

    t0 = time.monotonic()

    def progress(ev: testbed.ProgressEvent) -> None:
        if ev.kind != "tick":
            print(f"  {time.monotonic() - t0:7.1f}s {testbed.format_event(ev)[:150]}", flush=True)

    if args.reuse:
        if not csv.exists():
            print(f"--reuse: no recording in {home} ({csv} does not exist)", file=sys.stderr)
            return 2
        days = testbed.labels_days(csv)
        rec = types.SimpleNamespace(days=days, segments=[], interrupted=False, skipped={})
        print(f"reusing the recording in {home}: {len(read_labels(csv))} labelled segments on "
              f"{', '.join(d.isoformat() for d in days)} (no per-segment other_load: it is measured while recording)")
    else:
        rec = testbed.record(flavours=flavours, segments=args.segments, segment_seconds=args.segment_seconds,
                             out_csv=csv, prometheus_url=args.prometheus_url, node_name=args.node_name,
                             seed=args.seed, progress=progress, settings=settings)  # fmt: skip
    t_rec = time.monotonic() - t0
    load_after = os.getloadavg()[0]
    if rec.interrupted:
        print("recording interrupted: evaluating what was recorded")
    t1 = time.monotonic()
    ingested = testbed.ingest_recording(settings, csv, rec.days, prometheus_url=args.prometheus_url)
    t_ing = time.monotonic() - t1
    print(f"\nrecorded in {t_rec:.0f} s, ingested in {t_ing:.1f} s; load average after {load_after:.2f}")
    for o in ingested:
        print(f"  {o['day']}: {o['raw_rows']} raw rows, {o['ai_ready_rows']} AI-ready rows, "
              f"{o['labelled_intervals']} labelled intervals, unusable {100 * o['unusable_fraction']:.2f}%")  # fmt: skip
    if rec.skipped:
        print("skipped flavours: " + "; ".join(f"{k}: {v}" for k, v in rec.skipped.items()))

    wh = Warehouse(settings.home_path)
    samples = pd.concat([wh.read("ai_ready_metrics", d.isoformat(), "samples") for d in rec.days], ignore_index=True)
    samples["node"] = samples["node"].astype(str)
    labels = read_labels(csv)
    feats = testbed.segment_features(samples, labels.assign(node=labels["node"].astype(str)))
    counts = samples["label"].astype(str).value_counts()
    table = feats.groupby("label").agg(segments=("n", "size"))
    table["samples"] = counts.reindex(table.index).fillna(0).astype(int)
    for c in (*CPU_FRACTIONS, "busy_spread"):
        table[c] = feats.groupby("label")[c].mean().round(3)
    other = pd.DataFrame([(s.flavour, s.other_load) for s in rec.segments if s.labelled], columns=["label", "o"])
    if len(other):
        table["other_load"] = other.groupby("label")["o"].mean().round(2)
    res = testbed.nearest_centroid_loo(feats)
    enough = table["segments"].min() >= 2
    if enough:
        table["baseline_acc"] = pd.Series(res["per_flavour"]).round(2)
    print(f"\nper flavour (samples = AI-ready rows, i.e. per CPU thread and second; mean fractions over segments);"
          f" unlabelled samples: {int(counts.get('unknown', 0))}")  # fmt: skip
    print(table.to_string())
    if done := [s for s in rec.segments if s.labelled]:
        mean_other = float(other["o"].mean())
        svc = sum(s.services_cpu_s for s in done) / max(1e-9, sum(s.cpus * (s.stop - s.start) for s in done))
        print(f"other_load = share of the node's CPU used by anything but the flavour and the recorder's services "
              f"(other jobs, kernel threads): mean {100 * mean_other:.0f}%"
              + (" — NOT a quiet node: these figures measure the other work as much as the flavours"
                 if mean_other > testbed.OTHER_LOAD_WARN else ""))  # fmt: skip
        print(f"the recorder's node exporter + Prometheus (1 s scrapes) used {100 * svc:.1f}% of the node's CPU")
    if enough:
        print(f"\nbaseline (per-segment mean fractions + busy spread, leave-one-segment-out nearest centroid): "
              f"accuracy {res['accuracy']:.3f} over {res['segments']} segments, chance {res['chance']:.3f}")  # fmt: skip
        print(res["confusion"].to_string())
    else:
        print("\nbaseline: needs at least 2 segments of every flavour (record 2 rounds or more: --segments 18)")

    t2 = time.monotonic()
    try:
        model = evaluate_recording(settings, rec.days, [int(x) for x in args.seeds.split(",") if x.strip()])
    except DidactError as e:
        print(f"\nmodel evaluation: failed: {e}")
        return 1
    print(f"\nmodel evaluation (didact_core.testbed.evaluation.evaluate, {time.monotonic() - t2:.0f} s):")
    (home / "testbed" / "latent.png").write_bytes(model.pop("plot_png"))
    for run in model["runs"]:
        print(f"per flavour, {run['name']}:")
        print(pd.DataFrame(run["flavour_rows"]).to_string(index=False))
    print("\n".join(report_lines(model)))
    print(f"latent plot {home / 'testbed' / 'latent.png'}; MLflow run {model.get('mlflow_run_id', '')}")
    print(f"\nthe recording stays in {home}: labels {csv}, TSDB {testbed.tsdb_dir(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
