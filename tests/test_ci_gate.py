"""``didact ci gate``: a change that degrades the model fails with the metric named, the same
code passes, ``--accept`` alone writes the reference, a bad thresholds file is a clear error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from didact_assets import cli_ci
from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.learn.ci_gate import run_gate
from didact_core.learn.ci_thresholds import Rule, load_thresholds, parse_thresholds

REPO = Path(__file__).resolve().parent.parent

#: the tests' rules: the tiny profile is too small for the committed floors (quick's)
TEST_RULES = """
[metrics.error_mean]
greater_is_better = false
max_relative_regression = 1.5

[metrics.openset_auc]
greater_is_better = true
max_absolute_regression = 0.2

[metrics."error_by_flavour.*"]
greater_is_better = false
max_relative_regression = 4.0
gate = false
"""


@pytest.fixture(scope="module")
def gate_files(tmp_path_factory):
    """A thresholds file, and a reference recorded by the tiny profile with --accept."""
    d = tmp_path_factory.mktemp("ci")
    (d / "thresholds.toml").write_text(TEST_RULES)
    outcome = run_gate("tiny", thresholds=d / "thresholds.toml", reference=d / "reference.json", accept=True)
    assert outcome.accepted and (d / "reference.json").is_file()
    return d


def _run_cli(argv: list[str], home: Path) -> int:
    parser = argparse.ArgumentParser()
    cli_ci.add_parsers(parser.add_subparsers(dest="command"))
    if argv[:2] == ["ci", "gate"] and "--fixtures" not in argv:  # the reference above was recorded without one
        (home / "no-fixtures").mkdir(exist_ok=True)
        argv = [*argv, "--fixtures", str(home / "no-fixtures")]
    args = parser.parse_args(argv)
    return args.func(args, Settings(home=str(home)))


def test_the_same_code_passes_and_leaves_the_reference_alone(gate_files, tmp_path):
    ref = gate_files / "reference.json"
    before = ref.read_bytes()
    code = _run_cli(["ci", "gate", "--profile", "tiny", "--thresholds", str(gate_files / "thresholds.toml"),
                     "--reference", str(ref), "--report", str(tmp_path / "report")], tmp_path)  # fmt: skip
    assert code == 0
    assert ref.read_bytes() == before
    report = (tmp_path / "report" / "report.md").read_text()
    assert "didact ci gate: PASS (profile tiny)" in report
    assert all((tmp_path / "report" / f).stat().st_size > 1000 for f in ("latent.png", "error_hist.png",
                                                                        "error_by_flavour.png", "losses.png"))  # fmt: skip
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    # the same code on the same machine trains the same floats: not one metric moved
    recorded = json.loads(before)["profiles"]["tiny"]
    assert {v["metric"]: v["change"] for v in summary["verdicts"] if v["metric"].startswith("error")} == {
        m: "±0" for m in recorded["metrics"] if m.startswith("error")
    }
    assert summary["record"]["data_version"] == recorded["data_version"]
    assert summary["record"]["code_version"]["didact_core"] == recorded["code_version"]["didact_core"]


def test_a_far_off_learning_rate_fails_the_gate_with_the_metric_named(gate_files, tmp_path):
    ref = gate_files / "reference.json"
    before = ref.read_bytes()
    outcome = run_gate("tiny", thresholds=gate_files / "thresholds.toml", reference=ref,
                       overrides={"lr": 1e-5}, report_dir=tmp_path)  # fmt: skip
    assert not outcome.passed
    failed = {v.metric: v for v in outcome.failures}
    assert "error_mean" in failed
    assert "worse by" in failed["error_mean"].broken[0]
    assert failed["error_mean"].value > 10 * failed["error_mean"].baseline
    report = (tmp_path / "report.md").read_text()
    assert "FAIL" in report and "### What failed" in report and "| error_mean |" in report
    assert ref.read_bytes() == before  # no --accept: the reference stays


def test_accept_records_the_new_metrics_and_keeps_other_profiles(gate_files, tmp_path):
    ref = tmp_path / "reference.json"
    doc = json.loads((gate_files / "reference.json").read_text())
    doc["profiles"]["quick"] = {"metrics": {"error_mean": 1.0}}
    ref.write_text(json.dumps(doc))
    outcome = run_gate("tiny", thresholds=gate_files / "thresholds.toml", reference=ref,
                       overrides={"lr": 1e-5}, accept=True)  # fmt: skip
    assert not outcome.passed and outcome.accepted  # accepting an intended change records it anyway
    after = json.loads(ref.read_text())
    assert after["profiles"]["tiny"]["metrics"]["error_mean"] == outcome.metrics["error_mean"]
    assert after["profiles"]["tiny"]["model_config"]["lr"] == 1e-5
    assert after["profiles"]["quick"] == {"metrics": {"error_mean": 1.0}}


@pytest.mark.parametrize("text, key, fix", [
    ("[metrics.error_mean]\nmax_relative_regression = 0.1\n", "metrics.error_mean.greater_is_better", "greater_is_better = true"),
    ("[metrics.error_mean]\ngreater_is_better = false\nmax_relative_regresion = 0.1\n",
     "metrics.error_mean.max_relative_regresion", "max_relative_regression"),
    ("[metrics.error_mean]\ngreater_is_better = 'no'\nthreshold = 1\n", "metrics.error_mean.greater_is_better", "false"),
    ("[metrics.error_mean]\ngreater_is_better = false\nthreshold = 'high'\n", "metrics.error_mean.threshold", "threshold = 0.1"),
    ("[metrics.error_mean]\ngreater_is_better = false\nmax_absolute_regression = -1\n",
     "metrics.error_mean.max_absolute_regression", "≥ 0"),
    ("[metrics.error_mean]\ngreater_is_better = false\n", "metrics.error_mean", "gate = false"),
    ("[metric.error_mean]\ngreater_is_better = false\n", "key metric", "[metrics.<name>]"),
    ("[metrics.error_mean\n", "is not valid TOML", "greater_is_better"),
])  # fmt: skip
def test_a_bad_thresholds_file_is_a_clear_error_before_any_training(tmp_path, text, key, fix):
    bad = tmp_path / "thresholds.toml"
    bad.write_text(text)
    with pytest.raises(DidactError) as err:
        run_gate("tiny", thresholds=bad, reference=tmp_path / "none.json")
    msg = str(err.value)
    assert str(bad) in msg and key in msg and fix in msg


def test_a_missing_reference_says_how_to_record_one(tmp_path):
    (tmp_path / "t.toml").write_text(TEST_RULES)
    with pytest.raises(DidactError, match="--profile tiny --accept"):
        run_gate("tiny", thresholds=tmp_path / "t.toml", reference=tmp_path / "reference.json")
    assert not (tmp_path / "reference.json").exists()


def test_the_committed_files_are_valid():
    rules = load_thresholds(REPO / "ci" / "thresholds.toml")
    assert rules.rule_for("error_mean").max_relative_regression > 0
    assert rules.rule_for("error_by_flavour.io_bad").gate is False  # the glob
    assert rules.rule_for("train_samples_per_second").gate is False  # machines differ
    ref = json.loads((REPO / "ci" / "reference.json").read_text())
    assert {"quick", "full", "tiny"} <= set(ref["profiles"])
    assert all(rules.rule_for(m) is None or ref["profiles"]["quick"]["metrics"].get(m) is not None
               for m in ("error_mean", "fault_roc_auc", "latent_knn_by_segment", "openset_auc"))  # fmt: skip


def test_rules_follow_mlflow_metric_threshold_and_its_mirror():
    lower = Rule("e", greater_is_better=False, threshold=1.0, max_relative_regression=0.1)
    assert lower.check(0.5, 0.5) == [] and lower.check(0.54, 0.5) == []
    assert "worse by 20 %" in lower.check(0.6, 0.5)[0]
    assert "above the floor" in lower.check(1.5, None)[0]  # no baseline: the floor alone
    higher = Rule("a", greater_is_better=True, max_absolute_regression=0.02, min_relative_change=None)
    assert higher.check(0.79, 0.8) == [] and higher.check(0.77, 0.8)
    improve = Rule("a", greater_is_better=True, min_absolute_change=0.01)  # MLflow: must improve
    assert improve.check(0.805, 0.8) and not improve.check(0.82, 0.8)
    assert Rule("a", greater_is_better=True, threshold=0.5).check(None, 0.8) == ["value is missing (None)"]
    rules = parse_thresholds({"metrics": {"x.*": {"greater_is_better": True, "threshold": 0.1},
                                          "x.y": {"greater_is_better": False, "threshold": 0.2}}}, "t")  # fmt: skip
    assert rules.rule_for("x.y").greater_is_better is False and rules.rule_for("x.z").threshold == 0.1


def test_against_a_champion_scored_on_the_same_split(tmp_path):
    """--against-registry: the baseline is a model scored on the same held-out days; the
    champion trained exactly like the candidate gives the candidate's metrics."""
    from didact_core.learn.ci_gate import PROFILES, candidate_config, reference_set, torch_threads
    from didact_core.learn.detector import Detector

    prof = PROFILES["tiny"]
    settings, cfg = candidate_config(Settings(), prof, None)
    ref = reference_set(prof, ["idle", "iowait", "system", "user", "other"])
    with torch_threads(prof.threads):
        champion = Detector(cfg, ref.features).fit(ref.train[ref.features])
    (tmp_path / "t.toml").write_text(TEST_RULES)
    outcome = run_gate("tiny", thresholds=tmp_path / "t.toml", champion=champion, champion_label="champion v7")
    assert outcome.passed and outcome.baseline_source == "champion v7"
    assert outcome.baseline["error_mean"] == outcome.metrics["error_mean"]
    assert "train_samples_per_second" not in outcome.baseline  # a registered model has no training run here


def test_a_recording_slice_is_exported_preprocessed_by_the_code_and_judged_as_real(settings, tmp_path):
    """``didact testbed export`` writes the raw slice of a recording's first segments; the gate
    preprocesses it with the code under test, trains on two thirds of its segments and reports
    the held-out third as ``real.*``."""
    import datetime as dt

    from didact_core.data import spine
    from didact_core.data.warehouse import Warehouse
    from didact_core.learn.ci_gate import PROFILES, load_fixture, reference_set
    from didact_core.schema import CPU_FRACTIONS
    from didact_core.testbed.export import export_fixture
    from didact_core.testbed.labels_csv import write_rows

    from .days import fixed_days

    day = fixed_days(1)[0]
    s = settings.replace(features=("cpu", "node"))
    spine.ingest_raw(s, dt.date.fromisoformat(day))
    labels = Warehouse(s.home_path).read(spine.RAW, day, "labels").sort_values("start")
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    write_rows(tmp_path / "rec.csv", [(r.node, iso(r.start), iso(r.end), r.label) for r in labels.itertuples()])
    summary = export_fixture(s, tmp_path / "rec.csv", tmp_path / "fixtures" / "rec", segments=12)
    assert summary["segments"] == 12 and summary["cpu_rows"] > 0 and summary["node_metrics_rows"] > 0
    cols = list(CPU_FRACTIONS)
    frame, digest = load_fixture(tmp_path / "fixtures", cols)
    assert len(frame) and set(frame["label"]) <= set(labels["label"].head(12)) and digest
    assert load_fixture(tmp_path / "fixtures", cols)[1] == digest  # same slice, same version
    ref = reference_set(PROFILES["tiny"], cols, fixture=tmp_path / "fixtures")
    assert len(ref.real_test) and ref.versions["fixture"] == digest
    # stratified by whole segments: every flavour with 2+ segments is judged, on segments it never trained on
    many = {f for f, n in labels.head(12).groupby("label").size().items() if n >= 2}
    assert many <= set(ref.real_test["label"]), (many, set(ref.real_test["label"]))
    with pytest.raises(DidactError, match="positive count"):
        export_fixture(s, tmp_path / "rec.csv", tmp_path / "x", segments=0)
    with pytest.raises(DidactError, match="is not a folder"):
        _run_cli(["ci", "gate", "--profile", "tiny", "--fixtures", str(tmp_path / "nowhere")], tmp_path)
