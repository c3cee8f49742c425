"""model_evaluation on real recordings (DIDACT_EVAL_RECORDINGS, issue 16): each recording
within itself and every ordered pair across, by whole segments, for the challenger and the
champion, in the MLflow run and at the top of the asset's metadata; bad folders are clear
errors before any work."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from didact_assets.assets.metadata import evaluation_metadata
from didact_core.data import spine as pipeline
from didact_core.data.preprocess import feature_columns
from didact_core.errors import DidactError
from didact_core.learn import continual
from didact_core.learn.recordings_eval import load_recording, recording_folders
from didact_core.learn.registry import ModelRegistry

from .conftest import REPO
from .days import fixed_days

FIXTURE = REPO / "ci" / "fixtures" / "testbed-a-2026-12-02"
SLICE = ("cpu.parquet", "node_metrics.parquet", "labels.csv", "fixture.json")


def split_fixture(out: Path) -> dict[str, pd.DataFrame]:
    """The committed fixture cut into two recordings by whole segments (first / second half of
    its labels), written as ``didact testbed export`` writes a slice; {name: its labels}."""
    labels = pd.read_csv(FIXTURE / "labels.csv")
    cpu = pd.read_parquet(FIXTURE / "cpu.parquet")
    nm = pd.read_parquet(FIXTURE / "node_metrics.parquet")
    half = len(labels) // 2
    cut = pd.Timestamp(labels["start"].iloc[half])  # the second half's first segment starts here
    halves = {"rec-a": (labels.iloc[:half], cpu["ts"] < cut, nm["ts"] < cut),
              "rec-b": (labels.iloc[half:], cpu["ts"] >= cut, nm["ts"] >= cut)}  # fmt: skip
    for name, (lab, in_cpu, in_nm) in halves.items():
        d = out / name
        d.mkdir(parents=True)
        cpu[in_cpu].to_parquet(d / "cpu.parquet", index=False)
        nm[in_nm].to_parquet(d / "node_metrics.parquet", index=False)
        lab.to_csv(d / "labels.csv", index=False)
        summary = {"source": "labels_a.csv", "start": lab["start"].iloc[0], "end": lab["end"].iloc[-1],
                   "segments": len(lab), "flavours": sorted(lab["label"].unique())}  # fmt: skip
        (d / "fixture.json").write_text(json.dumps(summary, indent=1) + "\n")
    return {name: lab for name, (lab, _, _) in halves.items()}


def test_recordings_are_judged_within_and_across_for_both_models(settings, tmp_path):
    s = settings.replace(max_train_samples=2000, model_max_epochs=3, model_batch_size=512)
    labels = split_fixture(tmp_path / "recordings")
    a, b = (str(tmp_path / "recordings" / n) for n in labels)
    days = fixed_days(2)
    for d in days:  # day 1 trains the champion, day 2 the challenger from it
        pipeline.ingest_raw(s, dt.date.fromisoformat(d))
        pipeline.build_ai_ready(s, dt.date.fromisoformat(d))
        continual.train_day(s, d)
    ev = continual.evaluate_day(s.replace(eval_recordings=f"{a}{os.pathsep}{b}"), days[-1])

    both = sorted(set(labels["rec-a"]["label"]) & set(labels["rec-b"]["label"]))
    for who in ("challenger", "champion"):
        rec = ev.metrics[who]["recordings"]
        for name, lab in labels.items():  # within: leave-one-segment-out, counts as in the labels
            within = rec[name]
            assert within["segments"] == len(lab)
            per = lab["label"].value_counts()
            assert {f: c["segments"] for f, c in within["by_flavour"].items()} == per.to_dict()
            assert sum(c["samples"] for c in within["by_flavour"].values()) == within["samples"] > 0
            assert 0 <= within["latent_knn_by_segment"] <= 1
            assert "leave-one-segment-out" in within["knn_scheme"]
            # a flavour with one segment here cannot be judged by another of its own: named, not nan
            assert set(within["left_out"]) == set(per[per < 2].index)
        for x, y in (("rec-a", "rec-b"), ("rec-b", "rec-a")):  # both directions
            pair = rec[f"{x}_to_{y}"]
            assert 0 <= pair["latent_knn_by_segment"] <= 1
            assert pair["flavours"] == both and not pair["left_out"]
            assert sorted(pair["latent_knn_by_segment_by_flavour"]) == both
            assert all(0 <= v <= 1 for v in pair["latent_knn_by_segment_by_flavour"].values())
            assert pair["train_segments"] == len(labels[x]) and pair["test_segments"] == len(labels[y])
            assert pair["test_samples"] == rec[y]["samples"] and pair["train_samples"] == rec[x]["samples"]
        pairs = [rec[k]["latent_knn_by_segment"] for k in ("rec-a_to_rec-b", "rec-b_to_rec-a")]
        assert rec["cross_latent_knn_by_segment"] == pytest.approx(sum(pairs) / 2)
        assert rec["n_pairs"] == 2 and rec["n_recordings"] == 2

    # the MLflow run holds them (one metric per number), the metadata starts with the headline
    logged = ModelRegistry(s).client.get_run(ev.mlflow_run_id).data.metrics
    for who in ("challenger", "champion"):
        head = ev.metrics[who]["recordings"]["cross_latent_knn_by_segment"]
        assert logged[f"{who}.recordings.cross_latent_knn_by_segment"] == pytest.approx(head)
        assert f"{who}.recordings.rec-b_to_rec-a.latent_knn_by_segment" in logged
        assert f"{who}.recordings.rec-a.by_flavour.idle.segments" in logged
    meta = evaluation_metadata(ev)
    assert list(meta)[:2] == ["challenger/recordings/cross_latent_knn_by_segment",
                              "champion/recordings/cross_latent_knn_by_segment"]  # fmt: skip
    assert 0 <= meta["challenger/recordings/cross_latent_knn_by_segment"] <= 1
    assert isinstance(meta["champion/recordings/rec-a_to_rec-b/latent_knn_by_segment"], float)


def test_bad_recording_folders_are_clear_errors_before_any_work(settings, tmp_path):
    empty = tmp_path / "no-slices"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not a slice")
    # checked first: this home has no day, no model
    want = rf"DIDACT_EVAL_RECORDINGS folder {re.escape(str(empty))}: holds no recording slice"
    with pytest.raises(DidactError, match=want):
        continual.evaluate_day(settings.replace(eval_recordings=str(empty)), fixed_days(1)[0])
    with pytest.raises(DidactError, match=r"does not exist — export one with didact testbed export"):
        recording_folders(settings.replace(eval_recordings=str(tmp_path / "missing")))
    one, other = tmp_path / "x" / "rec", tmp_path / "y" / "rec"
    for d in (one, other):
        shutil.copytree(FIXTURE, d)
    with pytest.raises(DidactError, match=r"names two recordings alike \(rec\)"):
        recording_folders(settings.replace(eval_recordings=f"{one}{os.pathsep}{other}"))
    assert recording_folders(settings) == []  # unset: no recordings section


def test_a_folder_of_slices_is_one_recording_and_missing_features_are_named(settings, tmp_path):
    labels = split_fixture(tmp_path / "both")
    [rec] = recording_folders(settings.replace(eval_recordings=str(tmp_path / "both")))
    assert (rec.name, rec.is_slice, rec.slices) == ("both", False, 2)
    frame = load_recording(rec, list(feature_columns(settings.features, settings.window)), seed=0)
    assert frame["segment"].nunique() == sum(len(lab) for lab in labels.values())

    bare = tmp_path / "bare"  # a slice recorded without node-level metrics
    shutil.copytree(FIXTURE, bare, ignore=shutil.ignore_patterns("node_metrics.parquet"))
    [rec] = recording_folders(settings.replace(eval_recordings=str(bare)))
    assert rec.is_slice
    want = rf"DIDACT_EVAL_RECORDINGS recording {re.escape(str(bare))}: .*node-level metrics"
    with pytest.raises(DidactError, match=want):
        load_recording(rec, list(feature_columns(("cpu", "node"), 1)), seed=0)
