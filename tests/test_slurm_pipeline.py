"""The data spine with ``DIDACT_EXECUTOR=slurm``: a partition's node blocks as one job array.

The Slurm cases run against a real single-node Slurm (:mod:`tests.slurm_cluster`) and are
marked slow.  The day is tiny (4 nodes × 2 CPUs, one sample a minute) so each case takes
seconds: what they check is the plumbing (same data as local processes, one publisher,
retries of only the missing blocks, clear errors), not throughput.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg
import pytest

from didact_assets.assets import telemetry
from didact_assets.resources import DidactResource
from didact_core.config import Settings, SettingsError
from didact_core.data import blocks
from didact_core.data import spine
from didact_core.data.warehouse import Warehouse
from didact_core.engine import LocalExecutor
from didact_core.errors import DidactError
from tests.slurm_cluster import INSTALL_HINT, missing_binaries, start_slurm

from .days import fixed_days

DAY = fixed_days(1)[0]
TINY = dict(nodes=4, cpus=2, interval_s=60.0, seed=3, workers=2, start_date="2026-01-01")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {INSTALL_HINT}")
    with start_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def tiny(home, **changes) -> Settings:
    return Settings(home=str(home), **{**TINY, **changes})


def on_slurm(home, cluster, **changes) -> Settings:
    farm = dict(executor="slurm", slurm_conf=str(cluster.conf), slurm_time_limit="5", slurm_wait_timeout_s=120)
    return tiny(home, **{**farm, **changes})


def heads(settings: Settings) -> dict:
    wh = Warehouse(settings.home_path)
    return {a: (h.version, h.data_version) if (h := wh.head(a, DAY)) else None for a in (spine.RAW, spine.AI_READY)}


# -- settings (quick) ------------------------------------------------------------------------


def test_executor_settings_are_validated_and_reach_the_launchpad():
    s = Settings.from_env({"DIDACT_EXECUTOR": "slurm", "DIDACT_SLURM_PARTITION": "cpu", "DIDACT_SLURM_GPUS": "2",
                           "DIDACT_SLURM_TIME_LIMIT": "1-00:00:00"})  # fmt: skip
    assert (s.executor, s.slurm_partition, s.slurm_gpus) == ("slurm", "cpu", 2)
    r = blocks.resources_for(s)
    assert (r.partition, r.time_limit, r.gpus, r.account) == ("cpu", "1-00:00:00", 0, None)
    assert Settings().executor == "local"
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"DIDACT_EXECUTOR": "pbs", "DIDACT_SLURM_TIME_LIMIT": "soon", "DIDACT_SLURM_CPUS_PER_TASK": "0"})
    assert {i.var for i in e.value.issues} == {"DIDACT_EXECUTOR", "DIDACT_SLURM_TIME_LIMIT", "DIDACT_SLURM_CPUS_PER_TASK"}
    fields = DidactResource.model_fields
    assert {"executor", "slurm_conf", "slurm_partition", "slurm_gpus", "slurm_wait_timeout_s"} <= set(fields)


def test_the_task_settings_hold_no_secret(tmp_path):
    s = tiny(tmp_path, prometheus_password="hunter2", executor="slurm")
    values = blocks.task_settings(s)
    assert "prometheus_password" not in values and "hunter2" not in json.dumps(values)
    assert values["home"] == str(s.home_path) and values["executor"] == "local"


def test_a_missing_slurm_conf_is_named(tmp_path):
    s = tiny(tmp_path, executor="slurm", slurm_conf=str(tmp_path / "nope.conf"))
    with pytest.raises(DidactError, match="DIDACT_SLURM_CONF=.*is not a file"):
        spine.ingest_raw(s, dt.date.fromisoformat(DAY), nodes_per_block=2)


def test_the_array_path_through_local_processes_matches_the_pool(tmp_path, monkeypatch):
    """The manifest, task entry point, staged parts and publish, without a Slurm: the
    array's tasks run as local processes (what the Slurm executor would run)."""
    pool, array = tiny(tmp_path / "pool"), tiny(tmp_path / "array", executor="slurm")
    monkeypatch.setattr(blocks, "executor_for", lambda s: LocalExecutor(max_workers=2, poll_s=0.1))
    day = dt.date.fromisoformat(DAY)
    for s in (pool, array):
        spine.ingest_raw(s, day, nodes_per_block=2)
        spine.build_ai_ready(s, day)
    assert heads(array) == heads(pool)
    job = Warehouse(array.home_path).require(spine.AI_READY, DAY).metadata["executor"]
    assert (job["executor"], job["blocks"], job["states"]) == ("local", 2, {"COMPLETED": 2})  # the backend that ran


# -- through a real Slurm (slow) ------------------------------------------------------------


def materialize(settings: Settings) -> dg.ExecuteInProcessResult:
    fields = ("home", "nodes", "cpus", "interval_s", "seed", "workers", "start_date", "executor", "slurm_conf",
              "slurm_time_limit", "slurm_wait_timeout_s")  # fmt: skip
    res = DidactResource(**{f: getattr(settings, f) for f in fields})
    assets = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics]
    return dg.materialize(assets, partition_key=DAY, resources={"didact": res})


@pytest.mark.slow
def test_a_day_through_slurm_has_the_local_data_version(slurm_cluster, tmp_path):
    local, farm = tiny(tmp_path / "local"), on_slurm(tmp_path / "farm", slurm_cluster)
    assert materialize(local).success
    result = materialize(farm)
    assert result.success

    assert heads(farm) == heads(local)  # same versions, same data versions: raw and AI-ready
    raw_meta = [Warehouse(s.home_path).require(spine.RAW, DAY).metadata for s in (local, farm)]
    assert raw_meta[1]["injected_data_faults"] == raw_meta[0]["injected_data_faults"]
    for asset in (spine.RAW, spine.AI_READY):
        meta = result.asset_materializations_for_node(asset)[0].metadata
        assert meta["slurm/job_id"].value.isdigit()
        assert meta["slurm/states"].data == {"COMPLETED": 1}
        assert meta["slurm/nodes"].data == [slurm_cluster.node]
        log_dir = farm.home_path / "logs" / "slurm" / asset / DAY
        assert meta["slurm/log_dir"].path == str(log_dir)
        assert any(log_dir.glob("*.log"))
        row = Warehouse(farm.home_path).lineage(asset, DAY, event="executed").iloc[-1]
        assert json.loads(row["reason"])["job_id"] == meta["slurm/job_id"].value
        assert row["version"] == "v1"
    ai_meta = result.asset_materializations_for_node(spine.AI_READY)[0].metadata
    assert "cleaning/excluded_samples" in ai_meta
    assert not any((farm.home_path / "staging").rglob("*.parquet"))  # staging removed after the publish


#: put first on the tasks' PYTHONPATH: the task whose index is FAIL_TASK_INDEX exits 1 at start-up,
#: the one whose index is SLEEP_TASK_INDEX sleeps past any time limit
FAILING_SITE = """\
import os
import time
if os.environ.get("SLEEP_TASK_INDEX") not in (None, "") and os.environ.get("SLEEP_TASK_INDEX") == os.environ.get(
    "DIDACT_TASK_INDEX"
):
    time.sleep(600)
if os.environ.get("FAIL_TASK_INDEX") not in (None, "") and os.environ.get("FAIL_TASK_INDEX") == os.environ.get(
    "DIDACT_TASK_INDEX"
):
    raise SystemExit("test: task " + os.environ["FAIL_TASK_INDEX"] + " made to fail")
"""


def failing_tasks(tmp_path, monkeypatch) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_SITE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # the executor passes our environment on


@pytest.mark.slow
def test_a_failed_block_fails_the_step_and_a_retry_runs_only_it(slurm_cluster, tmp_path, monkeypatch):
    local, farm = tiny(tmp_path / "local"), on_slurm(tmp_path / "farm", slurm_cluster)
    day = dt.date.fromisoformat(DAY)
    spine.ingest_raw(local, day, nodes_per_block=2)
    spine.build_ai_ready(local, day)
    failing_tasks(tmp_path, monkeypatch)

    monkeypatch.setenv("FAIL_TASK_INDEX", "1")
    with pytest.raises(DidactError, match=r"1 of 2 tasks did not complete: task 1 FAILED \(exit code 1\)") as e:
        spine.ingest_raw(farm, day, nodes_per_block=2)
    assert "_1.log" in str(e.value)
    assert heads(farm) == {spine.RAW: None, spine.AI_READY: None}  # nothing published

    monkeypatch.setenv("FAIL_TASK_INDEX", "")
    res = spine.ingest_raw(farm, day, nodes_per_block=2)
    job = res.meta["executor"]
    assert (job["blocks"], job["blocks_reused"], job["states"]) == (2, 1, {"COMPLETED": 1})
    assert [t["index"] for t in job["tasks"]] == [1]  # only the block that had failed ran again

    monkeypatch.setenv("FAIL_TASK_INDEX", "0")
    with pytest.raises(DidactError, match="task 0 FAILED"):
        spine.build_ai_ready(farm, day)
    assert heads(farm)[spine.AI_READY] is None
    monkeypatch.setenv("FAIL_TASK_INDEX", "")
    ai = spine.build_ai_ready(farm, day)
    assert ai.version.metadata["executor"]["blocks_reused"] == 1

    assert heads(farm) == heads(local)


@pytest.mark.slow
def test_slurm_down_is_a_clear_error_within_bounded_time(slurm_cluster, tmp_path):
    # a copy of the cluster's config whose controller port nobody listens on
    conf = slurm_cluster.conf.read_text().replace(f"SlurmctldPort={slurm_cluster.ctld_port}", "SlurmctldPort=9")
    dead = tmp_path / "slurm.conf"
    dead.write_text(conf)
    farm = on_slurm(tmp_path / "farm", slurm_cluster, slurm_conf=str(dead), slurm_command_timeout_s=10)
    t0 = time.monotonic()
    with pytest.raises(DidactError, match="Slurm controller") as e:
        spine.ingest_raw(farm, dt.date.fromisoformat(DAY), nodes_per_block=2)
    assert time.monotonic() - t0 < 30
    assert "scontrol ping" in str(e.value) or "slurmctld" in str(e.value)
    assert heads(farm) == {spine.RAW: None, spine.AI_READY: None}


@pytest.mark.slow
def test_a_block_over_its_time_limit_fails_the_step_with_the_slurm_state(slurm_cluster, tmp_path, monkeypatch):
    """Slurm's shortest limit is a minute and slurmctld checks every 30 s: 60-90 s."""
    farm = on_slurm(tmp_path / "farm", slurm_cluster, slurm_time_limit="1")
    failing_tasks(tmp_path, monkeypatch)
    monkeypatch.setenv("SLEEP_TASK_INDEX", "0")
    with pytest.raises(DidactError, match=r"1 of 2 tasks did not complete: task 0 TIMEOUT") as e:
        spine.ingest_raw(farm, dt.date.fromisoformat(DAY), nodes_per_block=2)
    assert "_0.log" in str(e.value) and "a retry runs only the tasks that did not finish" in str(e.value)
    assert heads(farm) == {spine.RAW: None, spine.AI_READY: None}
