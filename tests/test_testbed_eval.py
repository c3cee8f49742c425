"""Segment-honest testbed evaluation (issue 16): whole segments on one side of every split,
thin flavours and starved segments named and left out, seeds, cross-recording, `exclude`."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from didact_core.config import Settings
from didact_core.data import spine
from didact_core.data.labels import read_labels_csv
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError
from didact_core.schema import CPU_FRACTIONS, EXCLUDE
from didact_core.testbed import evaluation as tbe
from didact_core.testbed.eval_report import flavour_rows, report_lines
from didact_core.testbed.segments import load_segments, split_segments

from .days import fixed_days

#: mean CPU-mode fractions per flavour (idle, iowait, system, user, other)
SIGNATURES = {
    "idle": (0.97, 0.0, 0.01, 0.02, 0.0),
    "cpu": (0.02, 0.0, 0.03, 0.95, 0.0),
    "io": (0.45, 0.4, 0.1, 0.05, 0.0),
    "ctx": (0.05, 0.0, 0.8, 0.15, 0.0),
}
NODE = "tb01"


def record_day(settings, day: str, plan: list[tuple[str, float, int]], seed: int, exclude=()) -> pd.DataFrame:
    """A synthetic labelled recording: ``plan`` = (flavour, seconds, scrapes) back to back
    (with a 10 s unlabelled guard between), 2 CPUs, 1 s scrapes, written as job_labels and
    ai_ready_metrics of ``day``; ``exclude`` = (start offset s, end offset s) stretches."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=10)
    rows, labels, t = [], [], 0.0
    for flavour, seconds, scrapes in plan:
        start, end = t0 + pd.Timedelta(seconds=t), t0 + pd.Timedelta(seconds=t + seconds)
        labels.append((NODE, start, end, flavour))
        times = np.linspace(1, seconds, scrapes).round()
        mean = np.array(SIGNATURES[flavour]) + rng.normal(0, 0.03, 5)  # each segment a little different
        for s in times:
            for cpu in (0, 1):
                f = np.clip(mean + rng.normal(0, 0.05, 5), 0, None)
                rows.append((start + pd.Timedelta(seconds=float(s)), cpu, *(f / f.sum())))
        t += seconds + 10
    for a, b in exclude:
        labels.append((NODE, t0 + pd.Timedelta(seconds=a), t0 + pd.Timedelta(seconds=b), EXCLUDE))
    samples = pd.DataFrame(rows, columns=["ts", "cpu", *CPU_FRACTIONS]).assign(node=NODE, dt_s=1.0)
    samples["ts"] = samples["ts"].astype("datetime64[ms, UTC]")
    lab = pd.DataFrame(labels, columns=["node", "start", "end", "label"])
    jobs = lab[lab["label"] != EXCLUDE]
    samples["label"] = "unknown"
    for _, r in jobs.iterrows():
        mid = samples["ts"] - pd.Timedelta(milliseconds=500)
        samples.loc[(mid >= r["start"]) & (mid < r["end"]), "label"] = r["label"]
    for _, r in lab[lab["label"] == EXCLUDE].iterrows():
        mid = samples["ts"] - pd.Timedelta(milliseconds=500)
        samples = samples[~((mid >= r["start"]) & (mid < r["end"]))]
    wh = Warehouse(settings.home_path)
    wh.write(spine.LABELS, day, {"labels": lab}, code_version="test")
    wh.write(spine.AI_READY, day, {"samples": samples.reset_index(drop=True)}, code_version="test",
             metadata={"features": list(CPU_FRACTIONS), "window": 1})  # fmt: skip
    return lab


def rounds(n: int, flavours=tuple(SIGNATURES), seconds=40.0) -> list:
    return [(f, seconds, int(seconds)) for _ in range(n) for f in flavours]


@pytest.fixture
def tb(settings):
    return settings.replace(model_max_epochs=2, model_batch_size=256)


def quick(settings, days, **kw):
    return tbe.evaluate(settings, days, epochs=2, openset_epochs=1, log_to_mlflow=False, **kw)


def test_no_segment_lies_on_both_sides_and_the_seed_changes_the_split(tb):
    day = fixed_days(1)[0]
    record_day(tb, day, rounds(6), seed=0)
    seg = load_segments(tb, [day], list(CPU_FRACTIONS))
    assert len(seg.table) == 24 and seg.table["usable"].all()
    # one segment per labelled interval, and a segment's samples all share its label
    assert (seg.frame.groupby("segment")["label"].nunique() == 1).all()
    splits = []
    for seed in (0, 1, 2):
        train, test, why = split_segments(seg.table, seed, tbe.HOLDOUT)
        assert not train & test and train | test == set(seg.table["segment"]) and not why
        assert all(len(set(ids) & test) == 2 for ids in seg.table.groupby("label")["segment"].apply(list))
        splits.append(test)
    assert splits[0] != splits[1] or splits[1] != splits[2]
    # the detector's training set and every judged set hold disjoint segments
    for seed in (0, 1):
        train, test, positives, why = tbe._sets(seg, None, seed, tbe.HOLDOUT)
        assert not set(train["segment"]) & set(test["segment"])
        for f, pos in positives.items():  # open set: F's model never trains on F at all
            assert set(pos["label"]) == {f}
    r0, r1 = (quick(tb, [day], seeds=[s]) for s in (0, 1))
    assert r0["runs"][0]["per_seed"][0]["seed"] == 0 and r1["runs"][0]["per_seed"][0]["seed"] == 1
    assert r0["latent_knn_accuracy_by_segment"] > 0.7


def test_thin_flavours_and_starved_segments_are_named_and_left_out_without_nan(tb):
    day = fixed_days(1)[0]
    plan = rounds(4, ("idle", "cpu", "io"))
    plan += [("ctx", 40.0, 40), ("ctx", 40.0, 40)]  # two segments: none can be held out
    plan += [("ctx", 40.0, 4)]  # starved: 4 scrapes in 40 s at 1 s
    record_day(tb, day, plan, seed=1)
    r = quick(tb, [day], seeds=[0, 1])
    run = r["runs"][0]
    rows = {row["flavour"]: row for row in flavour_rows(r)}
    assert set(rows) == {"idle", "cpu", "io", "ctx"}  # never silently dropped
    assert "ctx" not in run["by_flavour"]["knn"] or run["by_flavour"]["knn"]["ctx"] is None
    assert "2 usable segment(s)" in rows["ctx"]["note"] and rows["ctx"]["kNN by segment"] == "–"
    assert rows["ctx"]["segments"] == "2 of 3"
    text = "\n".join(report_lines(r)) + "\n" + "\n".join(str(row) for row in rows.values())
    assert "nan" not in text.lower()
    assert "starved" in text and "4 scrapes of 40 expected" in text
    assert "ctx: not scored" in text
    assert "±" in text  # two seeds: a spread
    s = run["summary"]["latent_knn_accuracy_by_segment"]
    assert s["n"] == 2 and np.isfinite(s["mean"]) and np.isfinite(s["std"])


def test_open_set_resting_on_few_samples_is_reported_not_averaged(tb):
    day = fixed_days(1)[0]
    record_day(tb, day, rounds(3, ("idle", "cpu", "io")) + [("ctx", 8.0, 8)] * 3, seed=2)
    r = quick(tb, [day])
    per = r["runs"][0]["per_seed"][0]["openset"]
    # ctx: 3 short segments of 16 samples each: 48 positives, counted; all others too
    assert all(v["counted"] for v in per.values())
    record_day(tb, day, rounds(3, ("idle", "cpu", "io")) + [("ctx", 4.0, 4)] * 3, seed=2)
    r = quick(tb, [day])
    run = r["runs"][0]
    assert "ctx" in run["per_seed"][0]["not_scored"]  # 8 held-out samples < MIN_SAMPLES
    counted = [f for f, v in run["per_seed"][0]["openset"].items() if v["counted"]]
    assert r["openset_auc"] == pytest.approx(np.mean([run["per_seed"][0]["openset"][f]["auc"] for f in counted]))


def test_cross_recording_runs_both_ways_and_logs_to_mlflow(tb):
    a, b = fixed_days(2)
    record_day(tb, a, rounds(3), seed=10)
    record_day(tb, b, rounds(3), seed=20)
    r = tbe.evaluate(tb, [a], test_days=[b], cross=True, seeds=[0, 1], epochs=2, openset_epochs=1)
    names = [run["name"] for run in r["runs"]]
    assert names == [f"{a} → {b}", f"{b} → {a}"]
    for run in r["runs"]:
        first = run["per_seed"][0]
        assert first["train_segments"] == 12 and first["test_segments"] == 12  # every segment of each day
        assert run["summary"]["latent_knn_accuracy_by_segment"]["n"] == 2
    assert r["latent_knn_accuracy_by_segment"] > 0.6 and 0.5 < r["openset_auc"] <= 1.0
    from didact_core.learn.registry import ModelRegistry

    run = ModelRegistry(tb).client.get_run(r["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "a_to_b.openset_auc" in run.data.metrics
    assert run.data.params["test_days"] == b
    with pytest.raises(DidactError, match="needs test days"):
        tbe.evaluate(tb, [a], cross=True)


def test_excluded_stretches_are_left_out_of_segments_and_lengths(tb):
    day = fixed_days(1)[0]
    # the first cpu segment (offset 50-90 s) loses 20 s to an exclude label
    record_day(tb, day, rounds(3), seed=3, exclude=[(50, 70)])
    seg = load_segments(tb, [day], list(CPU_FRACTIONS))
    first_cpu = seg.table[seg.table["label"] == "cpu"].iloc[0]
    assert first_cpu["seconds"] == pytest.approx(20) and first_cpu["usable"]
    assert EXCLUDE not in set(seg.frame["label"])


def test_exclude_is_honoured_by_the_spine_training_data_and_counts(settings):
    """A labels CSV with `exclude` over a simulated day: its samples are not in AI-ready
    (so neither training nor evaluation can see them) and are counted."""
    s = settings.replace(nodes=2)
    day = fixed_days(1)[0]
    spine.ingest_raw(s, dt.date.fromisoformat(day))
    csv = s.home_path / "labels.csv"
    csv.write_text("node,start,end,label\n"
                   f"node0000,{day}T01:00:00Z,{day}T05:00:00Z,busy\n"
                   f"node0000,{day}T02:00:00Z,{day}T03:00:00Z,exclude\n"   # inside a job label: allowed
                   f"node0001,{day}T06:00:00Z,{day}T07:00:00Z,{EXCLUDE}\n")  # fmt: skip
    s = s.replace(labels_csv=str(csv))
    lab = spine.build_job_labels(s, dt.date.fromisoformat(day))
    assert lab.counts["excluded_intervals"] == 2 and lab.counts["labelled_intervals"] == 1
    res = spine.build_ai_ready(s, dt.date.fromisoformat(day))
    # 60 s scrapes: 60 intervals in each excluded hour, per CPU thread (2)
    assert res.excluded_samples == 2 * 60 * 2
    meta = Warehouse(s.home_path).require(spine.AI_READY, day).metadata
    assert meta["excluded_samples"] == 240 and meta["cleaning"]["excluded_samples"] == 240
    df = Warehouse(s.home_path).read(spine.AI_READY, day, "samples")
    hour = df["ts"].dt.hour
    assert not ((df["node"].astype(str) == "node0000") & (hour == 2) & (df["ts"].dt.minute > 0)).any()
    assert (df["label"].astype(str) == "busy").sum() == 2 * 60 * 3  # 4 h labelled, 1 h of it excluded
    assert EXCLUDE not in set(df["label"].astype(str))
    from didact_core.learn.split import load_split

    train = load_split(Warehouse(s.home_path), day, "train", None, s)
    assert len(train) + len(load_split(Warehouse(s.home_path), day, "holdout", None, s)) == len(df)


def test_unknown_node_names_the_known_ones_and_the_setting():
    text = "node,start,end,label\ntestbed01,0,60,idle\n"
    with pytest.raises(DidactError) as e:
        read_labels_csv(text, known_nodes=[f"127.0.0.{i}:9100" for i in range(12)])
    msg = str(e.value)
    assert "unknown node(s) ['testbed01']" in msg and "127.0.0.0:9100" in msg and "… and 2 more" in msg
    assert "DIDACT_PROMETHEUS_NODE_LABEL" in msg


def test_exclude_may_overlap_job_labels_but_jobs_may_not_overlap():
    ok = "node,start,end,label\nn,0,60,idle\nn,30,40,exclude\n"
    assert list(read_labels_csv(ok)["label"]) == ["idle", "exclude"]
    with pytest.raises(DidactError, match="overlap"):
        read_labels_csv("node,start,end,label\nn,0,60,idle\nn,30,40,cpu\n")


def test_the_evaluate_flags_do_what_they_say(tb, capsys):
    import argparse

    from didact_assets.cli_testbed_eval import add_evaluate_arguments

    a, b = fixed_days(2)
    record_day(tb, a, rounds(6), seed=10)
    record_day(tb, b, rounds(3), seed=20)
    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    args = p.parse_args(["--train-days", a, "--test-days", b, "--cross", "--seeds", "3,4", "--epochs", "1",
                         "--openset-epochs", "1", "--max-test", "300"])  # fmt: skip
    assert args.func(args, tb) == 0
    out = capsys.readouterr().out
    assert f"{a} → {b}" in out and f"{b} → {a}" in out and "seeds 3, 4" in out and "both directions" in out
    assert "(12 of them, 300 samples, seed 3)" in out  # --max-test caps the judged samples
    assert "nan" not in out.lower()
    args = p.parse_args(["--days", a, "--seed", "5", "--holdout", "0.5", "--epochs", "1", "--openset-epochs", "1"])
    assert args.func(args, tb) == 0
    out = capsys.readouterr().out
    # half of each flavour's 6 segments held out (the default third: 2 each, 8 in all)
    assert "seeds 5" in out and "held-out segments (12 of them" in out and "seed 5)" in out
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "a,b"])


def test_overlapping_labels_need_the_setting_that_allows_them(settings):
    """Overlapping job labels on a node are refused with the setting named; with
    DIDACT_LABELS_ALLOW_OVERLAP the label that started last holds a sample."""
    s = settings.replace(nodes=2)
    day = fixed_days(1)[0]
    spine.ingest_raw(s, dt.date.fromisoformat(day))
    csv = s.home_path / "labels.csv"
    csv.write_text("node,start,end,label\n"
                   f"node0000,{day}T01:00:00Z,{day}T05:00:00Z,outer\n"
                   f"node0000,{day}T02:00:00Z,{day}T03:00:00Z,inner\n")  # fmt: skip
    with pytest.raises(DidactError, match="DIDACT_LABELS_ALLOW_OVERLAP"):
        spine.build_job_labels(s.replace(labels_csv=str(csv)), dt.date.fromisoformat(day))
    s = s.replace(labels_csv=str(csv), labels_allow_overlap=True)
    assert Settings.from_env({"DIDACT_LABELS_ALLOW_OVERLAP": "on"}).labels_allow_overlap
    spine.build_job_labels(s, dt.date.fromisoformat(day))
    spine.build_ai_ready(s, dt.date.fromisoformat(day))
    df = Warehouse(s.home_path).read(spine.AI_READY, day, "samples")
    labels = df.loc[df["node"].astype(str) == "node0000", "label"].astype(str)
    assert (labels == "inner").sum() == 2 * 60 and (labels == "outer").sum() == 2 * 60 * 3


def test_two_recordings_of_one_day_are_told_apart_by_their_labels_files(tb, tmp_path, capsys):
    """Recordings made on one UTC day share its partitions: ``--train-labels`` /
    ``--test-labels`` keep each side to its own recording's intervals; ``merge_labels``
    gives ``testbed ingest`` the union of their CSVs."""
    import argparse

    from didact_assets.cli_testbed_eval import add_evaluate_arguments
    from didact_core.testbed.labels_csv import merge_labels, write_rows

    day = fixed_days(1)[0]
    lab = record_day(tb, day, rounds(6), seed=30).sort_values("start").reset_index(drop=True)
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    paths = []
    for name, part in (("rec_a", lab.iloc[:12]), ("rec_b", lab.iloc[12:])):
        paths.append(tmp_path / f"{name}.csv")
        write_rows(paths[-1], [(r.node, iso(r.start), iso(r.end), r.label) for r in part.itertuples()])
    merged = read_labels_csv(merge_labels(paths + paths[:1], tmp_path / "merged.csv"))
    assert len(merged) == 24  # both recordings, the repeated file once
    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    args = p.parse_args(["--train-labels", str(paths[0]), "--test-labels", str(paths[1]), "--cross", "--seeds", "0",
                         "--epochs", "1", "--openset-epochs", "1"])  # fmt: skip
    assert args.func(args, tb) == 0
    out = capsys.readouterr().out
    assert "rec_a → rec_b" in out and "rec_b → rec_a" in out
    r = tbe.evaluate(tb, [day], test_days=[day], train_labels=read_labels_csv(paths[0]),
                     test_labels=read_labels_csv(paths[1]), seeds=[0], epochs=1, openset_epochs=1,
                     log_to_mlflow=False)  # fmt: skip
    first = r["runs"][0]["per_seed"][0]
    assert first["train_segments"] == 12 and first["test_segments"] == 12  # no segment of B trains
    seg = load_segments(tb, [day], list(CPU_FRACTIONS), only=read_labels_csv(paths[0]))
    assert len(seg.table) == 12 and seg.frame["ts"].max() < lab["start"].iloc[12]
    args = p.parse_args(["--test-labels", str(paths[1])])
    with pytest.raises(DidactError, match="needs --train-labels"):
        args.func(args, tb)
