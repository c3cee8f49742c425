"""The pipeline with ``DIDACT_EXECUTOR=slurm``: a partition's node blocks as one job array,
``champion_model``'s fit as one job, and Terminate in Dagster cancelling the Slurm job.

The Slurm cases run against a real single-node Slurm (:mod:`tests.slurm_cluster`) and are
marked slow.  The day is tiny (4 nodes × 2 CPUs, one sample a minute) so each case takes
seconds: what they check is the plumbing (same data as local processes, one publisher,
retries of only the missing blocks, clear errors), not throughput.  The Terminate case
starts the Dagster webserver and daemon on a throwaway PostgreSQL (:mod:`tests.postgres_cluster`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from didact_assets.assets import models, telemetry
from didact_assets.resources import DidactResource
from didact_core.config import Settings, SettingsError
from didact_core.data import blocks
from didact_core.data import spine
from didact_core.data.warehouse import Warehouse
from didact_core.engine import LocalExecutor
from didact_core.engine.slurm_records import jobcomp_records
from didact_core.errors import DidactError
from didact_core.learn import job as training_job
from didact_core.learn.champion import MODEL_ASSET
from didact_core.learn.registry import ModelRegistry
from tests.postgres_cluster import INSTALL_HINT as PG_INSTALL_HINT
from tests.postgres_cluster import pg_bin, start_postgres

from .conftest import REPO
from .dagster_web import dagster_dev, graphql, run_status, wait_backfill
from .days import fixed_days
from .services import dagster_site

DAY = fixed_days(1)[0]
TINY = dict(nodes=4, cpus=2, interval_s=60.0, seed=3, workers=2, start_date="2026-01-01")


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


# -- champion_model: the fit as one job ------------------------------------------------------

DAYS = fixed_days(2)
TRAIN = dict(max_train_samples=2000, model_max_epochs=2, model_batch_size=512)


def prepared(home, days=DAYS, **changes) -> Settings:
    """AI-ready data of ``days`` (local processes) in ``home``; the settings with ``changes``."""
    s = tiny(home, **TRAIN)
    for day in days:
        d = dt.date.fromisoformat(day)
        spine.ingest_raw(s, d)
        spine.build_job_labels(s, d)
        spine.build_ai_ready(s, d)
    return s.replace(**changes)


def test_training_as_a_job_registers_and_continues_from_the_champion(tmp_path, monkeypatch):
    """The manifest, `python -m didact_core.learn.job`, the staged result and the registration,
    without a Slurm: the job runs as a local process (what the Slurm executor would run)."""
    farm = prepared(tmp_path / "farm", executor="slurm")
    monkeypatch.setattr(training_job, "executor_for", lambda s: LocalExecutor(max_workers=1, poll_s=0.1))

    out, job = training_job.train_day_as_job(farm, DAYS[0], run_id="run-1")
    assert (out.version.version, out.parent_version, out.promoted) == (1, None, True)
    wh = Warehouse(farm.home_path)
    assert out.data_versions == {f"{spine.AI_READY}/{DAYS[0]}": wh.require(spine.AI_READY, DAYS[0]).ref}
    assert out.n_train > 0 and 1 <= out.fit["epochs"] <= 2 and not out.fit["warm_start"]  # a fresh model
    assert set(out.plots) == {"latent", "losses", "error_hist"}
    assert (job["executor"], job["states"], job["tasks_total"]) == ("local", {"COMPLETED": 1}, 1)
    assert Path(job["tasks"][0]["log"]).is_file() and job["trained_on"]["device"] == "cpu"

    reg = ModelRegistry(farm)
    history = reg.client.get_metric_history(out.mlflow_run_id, "train_loss")
    assert len(history) == out.fit["epochs"]  # the job's epochs, replayed into the MLflow run
    assert reg.client.get_run(out.mlflow_run_id).info.status == "FINISHED"
    row = Warehouse(farm.home_path).lineage(MODEL_ASSET, DAYS[0], event="executed").iloc[-1]
    assert json.loads(row["reason"])["job_id"] == job["job_id"] and row["model_version"] == "1"
    assert not any((farm.home_path / "staging").rglob("manifest.json"))  # staging removed once read

    out2, _ = training_job.train_day_as_job(farm, DAYS[1], run_id="run-2")  # continues from the champion
    assert (out2.version.version, out2.parent_version) == (2, 1) and out2.fit["warm_start"]


TRAIN_FIELDS = ("nodes", "cpus", "interval_s", "seed", "workers", "start_date", "executor", "slurm_conf",
                "slurm_time_limit", "slurm_wait_timeout_s", "slurm_gpus", *TRAIN)  # fmt: skip


def materialize_model(settings: Settings, day: str) -> dg.ExecuteInProcessResult:
    res = DidactResource(home=str(settings.home_path), **{f: getattr(settings, f) for f in TRAIN_FIELDS})
    return dg.materialize([models.champion_model], partition_key=day, resources={"didact": res})


@pytest.mark.slow
def test_champion_model_trains_as_one_slurm_job_and_fails_clearly(slurm_cluster, tmp_path, monkeypatch):
    farm = prepared(tmp_path / "farm", executor="slurm", slurm_conf=str(slurm_cluster.conf),
                    slurm_time_limit="5", slurm_wait_timeout_s=300)  # fmt: skip
    result = materialize_model(farm, DAYS[0])
    assert result.success
    meta = result.asset_materializations_for_node("champion_model")[0].metadata
    assert meta["model_version"].value == 1 and meta["slurm/job_id"].value.isdigit()
    assert meta["slurm/states"].data == {"COMPLETED": 1} and meta["slurm/nodes"].data == [slurm_cluster.node]
    assert meta["slurm/gpus"].value == 0  # the CPU path: no --gres
    log_dir = farm.home_path / "logs" / "slurm" / MODEL_ASSET / DAYS[0]
    assert meta["slurm/log_dir"].path == str(log_dir)
    assert f"train {DAYS[0]} epoch 0" in next(log_dir.glob("*.log")).read_text()  # the job trained
    row = Warehouse(farm.home_path).lineage(MODEL_ASSET, DAYS[0], event="executed").iloc[-1]
    assert json.loads(row["reason"])["job_id"] == meta["slurm/job_id"].value

    # a training job that fails: the step fails with the Slurm state and the log, nothing registered
    failing_tasks(tmp_path, monkeypatch)
    monkeypatch.setenv("FAIL_TASK_INDEX", "0")
    with pytest.raises(DidactError, match=r"1 of 1 tasks did not complete: task 0 FAILED \(exit code 1\)") as e:
        training_job.train_day_as_job(farm, DAYS[1])
    assert f"didact-champion_model-{DAYS[1]}-" in str(e.value) and ".log" in str(e.value)
    reg = ModelRegistry(farm)
    assert [int(v.version) for v in reg.client.search_model_versions(f"name='{farm.model_name}'")] == [1]
    assert {r.info.status for r in reg.runs()} == {"FINISHED", "FAILED"}  # the failed fit's run ended FAILED
    assert Warehouse(farm.home_path).lineage(MODEL_ASSET, DAYS[1]).empty

    # a GPU request this cluster cannot meet (it has no GRES): sbatch's refusal, named
    monkeypatch.setenv("FAIL_TASK_INDEX", "")
    with pytest.raises(DidactError, match=r"(?i)gres|generic resource"):
        training_job.train_day_as_job(farm.replace(slurm_gpus=1), DAYS[1])
    assert len(reg.client.search_model_versions(f"name='{farm.model_name}'")) == 1


# -- Terminate in Dagster: the webserver + daemon on a Postgres instance -----------------------

PG_SCHEME = "postgresql+psycopg2"


def slurm_jobs(cluster, name: str) -> list[str]:
    """``squeue``'s (job id, state) lines of the jobs called ``name`` (pending, running, completing)."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%A %T"], env=cluster.env, capture_output=True,
                         text=True, timeout=30, check=True)  # fmt: skip
    return out.stdout.split("\n")[:-1]


#: the tests' site for the Dagster services: task 0 of a Slurm job sleeps while the flag file exists
SLEEP_SITE = """\
import os
import time
flag = os.environ.get("SLURM_TEST_SLEEP_FLAG", "")
if flag and os.environ.get("DIDACT_TASK_INDEX") == "0" and os.path.exists(flag):
    time.sleep(600)
"""


def launch(url: str, query: str, variables: dict, field: str) -> dict:
    out = graphql(url, query, variables)[field]
    assert out["__typename"] in ("LaunchRunSuccess", "LaunchBackfillSuccess"), out
    return out


@pytest.mark.slow
def test_dagster_on_postgres_backfills_through_slurm_and_terminate_cancels(slurm_cluster, tmp_path):
    """The webserver and daemon of an instance on PostgreSQL, DIDACT_EXECUTOR=slurm: a 2-day
    backfill of the nightly chain trains the days in order, each fit a Slurm job; then a run
    launched as the launchpad does, whose block task hangs, is terminated (the UI's
    terminateRun): the step `scancel`s its array, squeue no longer lists it, nothing published."""
    if pg_bin() is None:
        pytest.skip(f"PostgreSQL not installed: {PG_INSTALL_HINT}")
    site = dagster_site(tmp_path / "site", extra=SLEEP_SITE)  # the daemon's backfill passes every few seconds
    flag = tmp_path / "sleep-flag"
    farm = on_slurm(tmp_path / "farm", slurm_cluster)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    day = fixed_days(3)[0]  # not one of the backfill's DAYS
    name = f"didact-raw_node_metrics-{day}"
    with start_postgres(databases=("dagster",)) as pg:
        env = {**os.environ, "DIDACT_HOME": str(farm.home_path), "DIDACT_NODES": "4", "DIDACT_CPUS": "2",
               "DIDACT_INTERVAL_S": "60", "DIDACT_SEED": "3", "DIDACT_WORKERS": "2",
               "DIDACT_START_DATE": "2026-01-01", "DIDACT_SCHEDULE_ENABLED": "0", "DIDACT_SENSORS_ENABLED": "0",
               "DIDACT_MAX_TRAIN_SAMPLES": "2000", "DIDACT_MODEL_MAX_EPOCHS": "2", "DIDACT_MODEL_BATCH_SIZE": "512",
               "DIDACT_EXECUTOR": "slurm", "DIDACT_SLURM_CONF": str(slurm_cluster.conf),
               "DIDACT_SLURM_TIME_LIMIT": "5", "DAGSTER_HOME": str(dagster_home),
               "SLURM_TEST_SLEEP_FLAG": str(flag), "DAGSTER_PG_URL": pg.url("dagster", PG_SCHEME, connect_timeout="10"),
               "PYTHONPATH": f"{site}:{REPO}"}  # fmt: skip
        with dagster_dev(env, tmp_path / "dagster-dev.log") as url:
            assets = ("raw_node_metrics", "job_labels", "ai_ready_metrics", "ood_review", "champion_model")
            backfill = launch(url, """mutation($params: LaunchBackfillParams!) {
                launchPartitionBackfill(backfillParams: $params) { __typename
                  ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                {"params": {"partitionNames": DAYS, "assetSelection": [{"path": [a]} for a in assets]}},
                "launchPartitionBackfill")  # fmt: skip
            assert wait_backfill(url, backfill["backfillId"]) in ("COMPLETED", "COMPLETED_SUCCESS")
            wh = Warehouse(farm.home_path)
            lin = wh.lineage(MODEL_ASSET, event="register")
            assert lin["partition"].tolist() == DAYS  # in order, each from the previous day's champion
            assert [json.loads(u)["parent_model_version"] for u in lin["upstream"]] == [None, 1]
            jobs = [json.loads(r)["executor"] for r in wh.lineage(MODEL_ASSET, event="executed")["reason"]]
            assert jobs == ["slurm", "slurm"]  # each day's fit was a Slurm job

            flag.touch()
            run = launch(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
                __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
                {"p": {"selector": {"repositoryLocationName": "didact", "repositoryName": "__repository__",
                                    "jobName": "data_spine"},
                       "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]}}},
                "launchRun")  # fmt: skip
            run_id = run["run"]["runId"]
            deadline = time.monotonic() + 300
            while not any(line.endswith("RUNNING") for line in slurm_jobs(slurm_cluster, name)):
                assert time.monotonic() < deadline, (run_status(url, run_id), slurm_jobs(slurm_cluster, name))
                time.sleep(1)
            [job_id] = {line.split()[0] for line in slurm_jobs(slurm_cluster, name)}

            done = graphql(url, """mutation($id: String!) { terminateRun(runId: $id) {
                                     __typename ... on PythonError { message } } }""", {"id": run_id})  # fmt: skip
            assert done["terminateRun"]["__typename"] == "TerminateRunSuccess", done
            deadline = time.monotonic() + 120
            while slurm_jobs(slurm_cluster, name) or run_status(url, run_id) not in ("CANCELED", "FAILURE"):
                assert time.monotonic() < deadline, (run_status(url, run_id), slurm_jobs(slurm_cluster, name))
                time.sleep(1)
            assert run_status(url, run_id) == "CANCELED"
        statuses = dict(pg.sql("SELECT status, count(*) FROM runs GROUP BY status", db="dagster"))
        assert set(statuses) == {"SUCCESS", "CANCELED"} and statuses["CANCELED"] == "1"  # the runs live in Postgres

    recs = jobcomp_records(slurm_cluster.jobcomp_log, job_id)
    assert "CANCELLED" in {r["JobState"].split()[0] for r in recs}  # scancel, not the time limit
    assert Warehouse(farm.home_path).head(spine.RAW, day) is None  # nothing published
