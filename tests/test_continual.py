"""Continual learning as an operator sees it: days train in order from the champion,
the gate promotes or refuses, rollbacks work from the CLI and the UI's job, and no
MLflow run is ever left RUNNING."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
import torch

from didact_assets.assets import models, telemetry
from didact_assets.cli import main as didact_cli
from didact_assets.ops import rollback_champion
from didact_assets.resources import DidactResource
from didact_core.learn import continual
from didact_core.errors import DidactError, RegistryError
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.data.warehouse import Warehouse

from .days import fixed_days

ALL = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics,
       models.champion_model, models.model_evaluation]  # fmt: skip


@pytest.fixture
def msettings(settings):
    """Small, quick training: 8 nodes × 2 threads at 60 s, 6,000 samples, 6 epochs."""
    return settings.replace(nodes=8, max_train_samples=6000, model_max_epochs=6, model_batch_size=512)


def resource(s) -> DidactResource:
    fields = {k: getattr(s, k) for k in DidactResource.model_fields}
    fields["features"] = list(s.features)
    return DidactResource(**fields)


def run_day(s, day, assets=ALL, **kw) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, partition_key=day, resources={"didact": resource(s)}, **kw)


def weights(det) -> dict:
    return {k: v.clone() for k, v in det.model_.state_dict().items()}


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_three_days_train_in_order_from_the_champion(msettings):
    days = fixed_days(3)
    for day in days:
        res = run_day(msettings, day)
        assert res.success
        [gate] = [c for c in res.get_asset_check_evaluations() if c.check_name == "promotion_gate"]
        assert gate.passed, gate.description

    reg = ModelRegistry(msettings)
    assert [v.version for v in reg.versions()] == [1, 2, 3]
    assert reg.alias(CHAMPION) == 3
    assert [v.aliases for v in reg.versions()] == [(), ("previous_champion",), ("challenger", "champion")]
    assert [v.tags["day"] for v in reg.versions()] == days

    # lineage: each version's parent is the previous champion: none → 1 → 2
    lin = Warehouse(msettings.home_path).lineage("champion_model", event="register")
    parents = [json.loads(u)["parent_model_version"] for u in lin["upstream"]]
    assert lin["model_version"].tolist() == ["1", "2", "3"]
    assert parents == [None, 1, 2]
    assert all(f"ai_ready_metrics/{d}" in u for d, u in zip(days, lin["upstream"]))

    # the MLflow run of each version has its params, losses per epoch, data versions, plots
    run = reg.client.get_run(reg.version(3).run_id)
    assert run.data.params["parent_version"] == "2"
    assert run.data.params["data.replay_days"] == ",".join(days[:2])
    losses = reg.client.get_metric_history(run.info.run_id, "train_loss")
    assert len(losses) >= 2 and [m.step for m in losses] == sorted(m.step for m in losses)
    artifacts = {a.path for a in reg.client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/latent.png", "plots/losses.png", "plots/error_hist.png"} <= artifacts
    assert json.loads(Path(reg.client.download_artifacts(run.info.run_id, "data_versions.json")).read_text())

    # the latent of version 3 still separates the simulator's job flavours
    ev = continual.evaluate_day(msettings, days[-1])
    acc = ev.metrics["challenger"]["holdout"]["latent_knn_accuracy"]
    assert acc > 0.4, acc  # 12 flavours: chance is 0.08
    assert ev.metrics["challenger"]["holdout"]["fault_roc_auc"] > 0.6
    assert not reg.runs(status="RUNNING")


def test_a_bad_challenger_is_rejected(msettings):
    days = fixed_days(2)
    assert run_day(msettings, days[0]).success
    reg = ModelRegistry(msettings)
    champion_before, v_before = reg.load_alias(CHAMPION)

    # trained from scratch on 256 samples for one epoch: worse than the champion
    bad = msettings.replace(model_warm_start=False, max_train_samples=256, model_max_epochs=1)
    res = run_day(bad, days[1], assets=ALL[:4], raise_on_error=False)
    [gate] = [c for c in res.get_asset_check_evaluations() if c.check_name == "promotion_gate"]
    assert not gate.passed
    assert "challenger worse than champion" in gate.description
    assert reg.alias(CHAMPION) == v_before == 1
    assert reg.alias("challenger") == 2
    assert same_weights(reg.load_alias(CHAMPION)[0], champion_before)
    lin = Warehouse(msettings.home_path).lineage("champion_model")
    assert lin["event"].tolist() == ["register", "promote", "register"]  # no promote for v2


def test_a_diverging_run_registers_nothing_and_ends_failed(msettings):
    day = fixed_days(1)[0]
    res = run_day(msettings.replace(model_lr=1e9, model_warm_start=False), day, assets=ALL[:4], raise_on_error=False)
    assert not res.success
    reg = ModelRegistry(msettings)
    assert reg.versions() == []
    assert reg.alias(CHAMPION) is None
    statuses = [r.info.status for r in reg.runs()]
    assert statuses == ["FAILED"]


def test_rollback_from_cli_and_from_the_dagster_job(msettings, monkeypatch, capsys):
    days = fixed_days(3)
    for day in days:
        assert run_day(msettings, day, assets=ALL[:4]).success
    reg = ModelRegistry(msettings)
    assert reg.alias(CHAMPION) == 3

    # CLI: back to the previous champion
    for k, v in {"DIDACT_HOME": msettings.home, "DIDACT_NODES": "8"}.items():
        monkeypatch.setenv(k, v)
    assert didact_cli(["rollback", "--reason", "bad night"]) == 0
    assert "v3 → v2" in capsys.readouterr().out
    assert reg.alias(CHAMPION) == 2
    assert same_weights(reg.load_alias(CHAMPION)[0], reg.load(2))

    # the UI's job, with a version in its config
    result = rollback_champion.execute_in_process(
        run_config={"ops": {"rollback_champion_op": {"config": {"to_version": 1, "reason": "back to day one"}}}},
        resources={"didact": resource(msettings)},
    )
    assert result.success
    assert reg.alias(CHAMPION) == 1
    assert same_weights(reg.load_alias(CHAMPION)[0], reg.load(1))

    lin = Warehouse(msettings.home_path).lineage("champion_model", event="rollback")
    assert lin["model_version"].tolist() == ["2", "1"]
    assert lin["reason"].tolist() == ["bad night", "back to day one"]
    assert lin["actor"].tolist()[1] == "dagster-ui" and lin["actor"].tolist()[0]
    assert [json.loads(u)["from"] for u in lin["upstream"]] == [3, 2]

    # a bad version is a clear error, champion unchanged
    assert didact_cli(["rollback", "--to", "42"]) == 2
    assert "v42: does not exist" in capsys.readouterr().out
    assert reg.alias(CHAMPION) == 1


def test_no_mlflow_run_left_running(msettings):
    days = fixed_days(2)
    from didact_assets.definitions import defs

    # through dagster.materialize, through the job, and a failed run
    assert run_day(msettings, days[0]).success
    job = defs.resolve_job_def("nightly")
    assert job.execute_in_process(partition_key=days[1], resources={"didact": resource(msettings)}).success
    run_day(msettings.replace(model_lr=1e9), days[1], assets=ALL[3:4], raise_on_error=False)
    runs = ModelRegistry(msettings).runs()
    statuses = sorted(r.info.status for r in runs)
    assert "RUNNING" not in statuses
    assert statuses.count("FAILED") == 1 and statuses.count("FINISHED") == len(runs) - 1


# -- bad input ------------------------------------------------------------------------------------------


def test_empty_partition_and_missing_features(msettings):
    day = fixed_days(1)[0]
    assert run_day(msettings, day, assets=ALL[:3]).success
    wh = Warehouse(msettings.home_path)
    samples = wh.read("ai_ready_metrics", day, "samples")

    with pytest.raises(DidactError, match=r"lacks the model's feature\(s\) \['steal'\]"):
        continual.train_day(msettings.replace(features=("idle", "iowait", "system", "user", "steal")), day)

    wh.write("ai_ready_metrics", day, {"samples": samples.iloc[:0]},
             metadata={"features": list(msettings.features)})  # fmt: skip
    with pytest.raises(DidactError, match="is empty"):
        continual.train_day(msettings, day)
    reg = ModelRegistry(msettings)
    assert reg.versions() == [] and reg.alias(CHAMPION) is None


def test_registry_pointing_at_a_missing_artifact(msettings):
    days = fixed_days(2)
    for day in days:
        assert run_day(msettings, day, assets=ALL[:4]).success
    reg = ModelRegistry(msettings)
    assert reg.alias(CHAMPION) == 2
    # the artifacts of version 1 vanish from the store
    source = reg.client.get_model_version_download_uri(msettings.model_name, "1")
    shutil.rmtree(source.removeprefix("file://"))
    with pytest.raises(RegistryError, match="v1 .*cannot be downloaded"):
        continual.rollback_champion(msettings, to_version=1)
    assert reg.alias(CHAMPION) == 2
    assert continual.rollback_champion(msettings, to_version=2)["to"] == 2
