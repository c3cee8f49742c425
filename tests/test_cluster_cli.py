"""The cluster model from the command line (`didact rollback --model cluster`, `didact status`)
and in the retrain jobs the sensors launch."""

from __future__ import annotations

import dagster as dg
import pytest

from didact_assets.cli import main as didact_cli
from didact_assets.definitions import defs
from didact_assets.sensors import drift_sensor, new_raw_data_sensor
from didact_core.cluster import nightly
from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse
from didact_core.learn import continual
from didact_core.learn.registry import CHAMPION

from .days import fixed_days
from .test_cluster_assets import small_cluster_days

DAYS = fixed_days(2)


@pytest.fixture(scope="module")
def two_cluster_versions(tmp_path_factory) -> Settings:
    """6 nodes × 2 threads in 2 racks of 3; two days, each with a node and a cluster model."""
    s = small_cluster_days(tmp_path_factory.mktemp("cluster-cli") / "home", after_day=nightly.train_cluster_day)
    reg = nightly.ClusterRegistry(s)
    if reg.alias(CHAMPION) != 2:  # the gate kept v1: make v2 champion by hand
        reg.promote(2)
    return s


def test_rollback_model_cluster_moves_only_the_cluster_champion(two_cluster_versions, monkeypatch, capsys):
    s = two_cluster_versions
    monkeypatch.setenv("DIDACT_HOME", s.home)
    monkeypatch.setenv("COLUMNS", "200")
    node = continual.ModelRegistry(s)
    node_champion = node.alias(CHAMPION)
    assert didact_cli(["status"]) == 0
    out = capsys.readouterr().out
    assert f"registered model {s.model_name}-cluster" in out and f"registered model {s.model_name}" in out

    assert didact_cli(["rollback", "--model", "cluster", "--reason", "racks mis-scored", "--actor", "ana"]) == 0
    assert "champion of " + s.model_name + "-cluster: v2 → v1" in capsys.readouterr().out
    assert nightly.ClusterRegistry(s).alias(CHAMPION) == 1
    assert node.alias(CHAMPION) == node_champion  # the node model is untouched
    lin = Warehouse(s.home_path).lineage(nightly.CLUSTER_ASSET, event="rollback")
    assert lin["reason"].iloc[-1] == "racks mis-scored"

    assert didact_cli(["rollback", "--model", "cluster", "--to", "2"]) == 0
    assert nightly.ClusterRegistry(s).alias(CHAMPION) == 2
    capsys.readouterr()
    assert didact_cli(["rollback", "--model", "cluster", "--to", "9"]) == 2
    assert "does not exist" in capsys.readouterr().out
    # a data rollback names no model: saying one is an error, not silently ignored
    assert didact_cli(["rollback", "--model", "cluster", "--asset", "ai_ready_metrics", "--partition", DAYS[0],
                       "--to", "1"]) == 2  # fmt: skip
    assert "--model" in capsys.readouterr().out
    assert nightly.ClusterRegistry(s).alias(CHAMPION) == 2


def test_rollback_model_choices_and_default():
    from didact_assets.cli import build_parser

    assert build_parser().parse_args(["rollback"]).model == "node"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rollback", "--model", "rack"])


@pytest.mark.parametrize("sensor", [new_raw_data_sensor, drift_sensor], ids=["new-data", "drift"])
def test_sensor_retrain_jobs_redo_the_cluster_model_after_the_node_model(sensor):
    job = defs.resolve_job_def(sensor.job_name)
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"champion_model", "model_evaluation", "cluster_model", "cluster_evaluation"} <= keys
    graph = job.asset_layer.asset_graph
    assert dg.AssetKey("champion_model") in graph.get(dg.AssetKey("cluster_model")).parent_keys
    assert dg.AssetKey("cluster_model") in graph.get(dg.AssetKey("cluster_evaluation")).parent_keys
