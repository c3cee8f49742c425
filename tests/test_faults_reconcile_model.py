"""Fault 6 of issue 15 for ``champion_model``: the disk fills between the day's training
(version registered in MLflow, its lineage rows, the promotion) and Dagster's event write.
The run fails while the registry has moved; the next run of the day must not train a
second version from the same inputs: it records the stored outcome (same version, its
metrics, ``reconciled_from_run``), so the step's outcome and the registry agree again.
When the day's data changed since, it trains as usual."""

from __future__ import annotations

import dagster as dg
import pytest

from didact_assets.assets import models, telemetry
from didact_assets.assets.metadata import RECONCILED_FROM_RUN
from didact_assets.instance import ensure_instance
from didact_core.data import spine
from didact_core.data.warehouse import Warehouse
from didact_core.learn import continual, stored
from didact_core.learn.registry import CHAMPION, ModelRegistry

from .test_continual import resource
from .test_faults_reconcile import DAY, disk_full_for, recorded

MODEL = "champion_model"
ASSETS = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics, models.champion_model]


@pytest.fixture
def tsettings(settings):
    """Tiny, quick training: 2,000 samples, 2 epochs."""
    return settings.replace(max_train_samples=2000, model_max_epochs=2, model_batch_size=512)


def materialize(settings, instance, selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, partition_key=DAY, instance=instance, resources={"didact": resource(settings)},
                          selection=selection, raise_on_error=False)  # fmt: skip


def day_versions(settings) -> list[int]:
    return [v.version for v in ModelRegistry(settings).versions() if v.tags.get("day") == DAY]


def registrations(settings) -> list[str]:
    lin = Warehouse(settings.home_path).lineage(MODEL, partition=DAY, event="register")
    return lin["model_version"].tolist()


def logs_of(instance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


def fail_on_disk_full(settings, instance, monkeypatch) -> dg.ExecuteInProcessResult:
    """The day's data and training with the disk full at champion_model's event write: the
    run fails while the day's version is registered, promoted and in lineage."""
    with monkeypatch.context() as m:
        disk_full_for(instance, m, MODEL)
        first = materialize(settings, instance)
    assert not first.success
    assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE
    assert day_versions(settings) == [1] and registrations(settings) == ["1"]
    lin = Warehouse(settings.home_path).lineage(MODEL, partition=DAY, event="register")
    assert lin["run_id"].tolist() == [first.run_id]
    assert ModelRegistry(settings).alias(CHAMPION) == 1
    assert not recorded(instance, MODEL)
    return first


def test_a_failed_event_write_after_training_is_reconciled_not_trained_again(tsettings, didact_env, monkeypatch):
    instance = ensure_instance(tsettings)
    first = fail_on_disk_full(tsettings, instance, monkeypatch)
    registry = ModelRegistry(tsettings)
    runs_before = {r.info.run_id for r in registry.runs()}
    v1 = registry.version(1)

    # the disk has room again; the re-run records the trained version (a training would fail here)
    def no_training(*a, **k):
        raise AssertionError("champion_model trained again instead of reconciling")

    with monkeypatch.context() as m:
        m.setattr(continual, "train_day", no_training)
        second = materialize(tsettings, instance, selection=[MODEL])
    assert second.success
    [mat] = second.asset_materializations_for_node(MODEL)
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta[RECONCILED_FROM_RUN] == first.run_id
    assert (meta["model_version"], meta["mlflow_run_id"], meta["promoted"]) == (1, v1.run_id, True)
    assert meta["champion_version"] == 1 and meta["parent_version"] == "none"
    # the stored metrics and plots, as the training showed them
    assert meta["epochs"] >= 1 and isinstance(meta["best_val_loss"], float) and meta["train_samples"] > 0
    assert {"plot/latent", "plot/losses", "plot/error_hist"} <= set(meta)
    [gate] = [c for c in second.get_asset_check_evaluations() if c.check_name == models.PROMOTION_GATE]
    assert gate.passed and "first model" in gate.description

    # one version, one registration, one training run: nothing trained, logged or registered again
    assert day_versions(tsettings) == [1] and registrations(tsettings) == ["1"]
    assert {r.info.run_id for r in registry.runs()} == runs_before
    assert [r.data.tags.get("didact.kind") for r in registry.runs()] == ["train"]
    # Dagster now records the registered version, and the run's log says why
    [rec] = recorded(instance, MODEL)
    assert rec.run_id == second.run_id
    assert rec.asset_materialization.tags.get("dagster/data_version") == "m1"
    assert any("reconciled" in m and "v1" in m and first.run_id in m for m in logs_of(instance, second.run_id))
    # a changed setting would make a training differ: named, not reconciled
    reg = stored.last_registration(tsettings, DAY)
    assert stored.changed_since(tsettings, reg) is None
    assert "model_max_epochs" in stored.changed_since(tsettings.replace(model_max_epochs=3), reg)


def test_changed_data_trains_again_not_reconciled(tsettings, didact_env, monkeypatch):
    """The day's version was registered by a failed run, but the day's data moved since:
    the re-run trains a new version from the current data."""
    instance = ensure_instance(tsettings)
    fail_on_disk_full(tsettings, instance, monkeypatch)

    spine.build_ai_ready(tsettings, spine.parse_day(DAY))  # a new AI-ready head: version 1 trained on stale data
    second = materialize(tsettings, instance, selection=[MODEL])
    [mat] = second.asset_materializations_for_node(MODEL)
    assert RECONCILED_FROM_RUN not in mat.metadata
    assert mat.metadata["model_version"].value == 2
    assert day_versions(tsettings) == [1, 2] and registrations(tsettings) == ["1", "2"]
    logs = logs_of(instance, second.run_id)
    assert any("its data changed" in m and "training anew" in m for m in logs), logs
