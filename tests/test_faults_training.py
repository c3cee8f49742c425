"""Faults around training (issue 15): a training killed mid-run, a dead tracking server,
a model family that does not match the champion's.

After a SIGKILL the next training must start at once (no pool slot held by the dead
run), the dead run's MLflow run must end FAILED with the reason, and its Dagster run must
be marked failed; a dead tracking server is a clear error within seconds, not minutes.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from didact_assets.instance import ensure_instance, with_forkserver
from didact_core.data import spine
from didact_core.errors import DidactError, RegistryError
from didact_core.learn import continual
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.learn.stale_runs import REASON_TAG, process_gone, process_identity

from .conftest import REPO
from .days import fixed_days

DAGSTER = Path(sys.executable).parent / "dagster"


@pytest.fixture
def tsettings(settings):
    """Tiny, quick training: 2,000 samples, 2 epochs."""
    return settings.replace(max_train_samples=2000, model_max_epochs=2, model_batch_size=512)


def prepare(settings, days) -> None:
    """The days' AI-ready data, without Dagster."""
    for day in days:
        d = dt.date.fromisoformat(day)
        spine.ingest_raw(settings, d)
        spine.build_job_labels(settings, d)
        spine.build_ai_ready(settings, d)


def read_until(proc: subprocess.Popen, needle: str, timeout_s: float) -> str:
    """The child's output up to the first line that holds ``needle``."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"no {needle!r} within {timeout_s} s:\n" + "".join(seen)[-4000:])


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# -- the process identity that decides "gone" ---------------------------------------------------


def test_a_process_is_gone_when_it_exits_or_its_pid_names_another_process():
    host, pid, start = process_identity()
    assert process_gone(host, pid, start) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    h, p, s = process_identity(child.pid)
    assert process_gone(h, p, s) is False
    child.kill()
    child.wait()
    assert process_gone(h, p, s) is True
    assert process_gone(host, pid, start.split("/")[0] + "/1") is True  # same pid, another start time
    assert process_gone("another-host", pid, start) is None  # cannot tell: left to the age rule


# -- a killed training -----------------------------------------------------------------------------

TRAIN_AND_HANG = """
import logging, sys, time
from didact_core.config import Settings
from didact_core.learn import continual

class Hang(logging.LoggerAdapter):
    def info(self, msg, *args, **kw):
        print(msg % args, flush=True)
        if "epoch 0" in msg % args:
            time.sleep(600)  # killed here, mid-run, with its MLflow run RUNNING

s = Settings(home=sys.argv[1], nodes=4, cpus=2, interval_s=60.0, seed=7, workers=1,
             max_train_samples=2000, model_max_epochs=5, model_batch_size=512)
continual.train_day(s, sys.argv[2], logger=Hang(logging.getLogger("hang"), {}))
"""


def test_a_killed_training_run_is_ended_failed_by_the_next(tsettings):
    day = fixed_days(1)[0]
    prepare(tsettings, [day])
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_AND_HANG, tsettings.home, day], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    read_until(proc, "epoch 0", 180)
    reg = ModelRegistry(tsettings)
    [dead] = reg.runs(status="RUNNING")
    assert dead.data.tags["didact.pid"] == str(proc.pid)
    kill_group(proc)

    out = continual.train_day(tsettings, day)
    assert out.version.version == 1 and reg.alias(CHAMPION) == 1
    old = reg.client.get_run(dead.info.run_id)
    assert old.info.status == "FAILED"
    assert f"pid {proc.pid}" in old.data.tags[REASON_TAG] and "ended without ending the run" in old.data.tags[REASON_TAG]
    assert not reg.runs(status="RUNNING")


SLOW_DEFS = """
# didact's code location, each epoch slowed down: the run is killed mid-training
import time
from didact_core.learn import training

_record = training._record_epoch


def _slow(*args, **kwargs):
    _record(*args, **kwargs)
    time.sleep(2)


training._record_epoch = _slow
from didact_assets.definitions import defs  # noqa: E402
"""


@pytest.mark.slow
def test_a_killed_dagster_run_frees_its_pool_slot_and_fails(tsettings, didact_env, tmp_path):
    """kill -9 of `dagster asset materialize champion_model` once an epoch has logged; the
    next materialisation runs at once (no "blocked by limit for pool didact_model"), the
    dead run is marked failed, its slot freed, its MLflow run FAILED with the reason."""
    day = fixed_days(1)[0]
    prepare(tsettings, [day])
    instance = ensure_instance(tsettings)  # didact's dagster.yaml: pool didact_model has one slot
    (tmp_path / "slow_defs.py").write_text(SLOW_DEFS)
    env = {**didact_env, "PYTHONPATH": f"{tmp_path}:{REPO}", "DIDACT_MODEL_MAX_EPOCHS": "20"}
    cmd = [str(DAGSTER), "asset", "materialize", "--select", "champion_model", "--partition", day]
    proc = subprocess.Popen([*cmd, "-m", "slow_defs"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    read_until(proc, f"train {day} epoch 0", 300)
    kill_group(proc)

    [dead] = instance.get_runs()
    assert dead.status == dg.DagsterRunStatus.STARTED
    assert dead.run_id in instance.event_log_storage.get_concurrency_run_ids()
    reg = ModelRegistry(tsettings)
    [dead_mlflow] = reg.runs(status="RUNNING")

    t0 = time.monotonic()
    done = subprocess.run([*cmd, "-m", "didact_assets.definitions"], cwd=REPO, env=didact_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "blocked by limit" not in done.stderr
    assert time.monotonic() - t0 < 240

    instance = dg.DagsterInstance.from_config(didact_env["DAGSTER_HOME"])
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_run_ids()
    assert f"stale run {dead.run_id}: marked failed" in done.stderr
    old = reg.client.get_run(dead_mlflow.info.run_id)
    assert old.info.status == "FAILED" and "ended without ending the run" in old.data.tags[REASON_TAG]
    assert reg.alias(CHAMPION) == 1 and not reg.runs(status="RUNNING")


def test_steps_fork_from_a_preloaded_forkserver_unless_the_run_config_chooses():
    forked = {"start_method": {"forkserver": {}}}
    assert with_forkserver({"multiprocess": {}}) == {"multiprocess": forked}
    assert with_forkserver({"multiprocess": {"max_concurrent": 2}}) == {"multiprocess": {"max_concurrent": 2, **forked}}
    spawn = {"multiprocess": {"start_method": {"spawn": {}}}}
    assert with_forkserver(spawn) == spawn  # the run config's choice stands
    assert with_forkserver({"in_process": {}}) == {"in_process": {}}


# -- a dead tracking server ------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_tracking_server_is_a_clear_error_within_seconds(tsettings, monkeypatch):
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # training's own bounds
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as err:
        continual.train_day(tsettings.replace(mlflow_tracking_uri=uri), fixed_days(1)[0])
    assert time.monotonic() - t0 < 30
    assert uri in str(err.value) and "DIDACT_MLFLOW_TRACKING_URI" in str(err.value)


# -- the model family ----------------------------------------------------------------------------


def test_a_family_other_than_the_champions_must_be_explicit(tsettings):
    days = fixed_days(2)
    prepare(tsettings, days)
    with pytest.raises(DidactError, match="DIDACT_MODEL_FAMILY=transformer: is not a known model family"):
        continual.train_day(tsettings.replace(model_family="transformer"), days[0])
    assert continual.train_day(tsettings, days[0]).version.version == 1  # an autoencoder champion

    with pytest.raises(DidactError, match="champion v1 .*\\(autoencoder\\)") as err:
        continual.train_day(tsettings.replace(model_family="vae"), days[1])
    assert "DIDACT_MODEL_WARM_START=0" in str(err.value) and "DIDACT_MODEL_NAME" in str(err.value)
    reg = ModelRegistry(tsettings)
    assert [v.version for v in reg.versions()] == [1]

    # explicit: a new vae lineage, gated against the autoencoder champion
    out = continual.train_day(tsettings.replace(model_family="vae", model_warm_start=False), days[1])
    assert out.version.version == 2 and reg.load(2).config.family == "vae"
