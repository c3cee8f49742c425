"""Executors: the same job requests through local processes and through a real Slurm.

The Slurm cases run against the session's single-node Slurm (``slurm_cluster`` in
conftest.py, :mod:`tests.slurm_cluster`); they are marked slow.  Slurm's shortest time limit is one
minute and the controller checks limits every 30 s, so the Slurm time-limit case takes
60–90 s (the local one a second).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from didact_core.engine import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    TIMEOUT,
    JobHandle,
    JobRequest,
    LocalExecutor,
    Resources,
    SlurmExecutor,
    duration_s,
    make_executor,
    prune_staging,
    submitted,
)
from didact_core.engine.slurm import sbatch_argv
from didact_core.engine.slurm_records import (
    array_spec,
    expand_indices,
    exit_status,
    jobcomp_records,
    parse_record,
    tasks_from_record,
)
from didact_core.errors import DidactError
from didact_core.procs import default_signals

from .conftest import REPO

WAIT_S = 120


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slow)])
def executor(request):
    if request.param == "local":
        return LocalExecutor(max_workers=2, poll_s=0.1)
    cluster = request.getfixturevalue("slurm_cluster")
    return SlurmExecutor(conf=cluster.conf, poll_s=0.5)


def bash(script: str) -> tuple[str, ...]:
    return ("bash", "-c", script)


def wait_running(ex, handle, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t.state == RUNNING for t in ex.poll(handle).tasks):
            return
        time.sleep(0.2)
    raise AssertionError(f"no task of {handle.job_id} started: {ex.poll(handle).states()}")


# -- both executors ----------------------------------------------------------------------


def test_an_array_of_four_tasks_writes_four_files(executor, tmp_path):
    out = tmp_path / "parts"
    out.mkdir()
    req = JobRequest(
        "blocks", bash(f'echo "block $DIDACT_TASK_INDEX of $DAY" > {out}/part-$DIDACT_TASK_INDEX'),
        log_dir=tmp_path / "logs", tasks=(0, 1, 2, 3), env={"DAY": "2026-01-02"},
    )  # fmt: skip
    result = executor.wait(executor.submit(req), timeout_s=WAIT_S)

    assert result.ok and result.states() == {COMPLETED: 4}
    assert sorted(p.read_text() for p in out.iterdir()) == [f"block {i} of 2026-01-02\n" for i in range(4)]
    for t in result.tasks:
        assert t.exit_code == 0 and t.nodes == socket.gethostname().split(".")[0]
        assert t.elapsed_s is not None and t.elapsed_s >= 0
        assert t.log_path == tmp_path / "logs" / f"blocks-{result.job_id}_{t.index}.log"
        assert t.log_path.exists()
    meta = result.metadata(max_tasks=2)
    assert (meta["executor"], meta["job_id"], meta["tasks_total"]) == (executor.name, result.job_id, 4)
    assert meta["states"] == {COMPLETED: 4} and meta["nodes"] == [result.tasks[0].nodes]
    assert [t["index"] for t in meta["tasks"]] == [0, 1]
    assert meta["elapsed_s"]["max"] >= meta["elapsed_s"]["min"]


def test_a_failing_task_reports_its_exit_code_and_log(executor, tmp_path):
    req = JobRequest(
        "fails", bash('echo "task $DIDACT_TASK_INDEX"; [ "$DIDACT_TASK_INDEX" = 1 ] && exit 3; exit 0'),
        log_dir=tmp_path / "logs", tasks=(0, 1),
    )  # fmt: skip
    result = executor.wait(executor.submit(req), timeout_s=WAIT_S)

    assert result.task(0).state == COMPLETED
    bad = result.task(1)
    assert (bad.state, bad.exit_code) == (FAILED, 3)
    assert bad.log_path.read_text().strip() == "task 1"
    assert result.failed == (bad,)
    assert [t["index"] for t in result.metadata(max_tasks=0)["tasks"]] == [1]  # failures always listed
    expected = r"1 of 2 tasks did not complete: task 1 FAILED \(exit code 3\)"
    with pytest.raises(DidactError, match=expected) as e:
        result.raise_for_failure("raw_node_metrics 2026-01-02")
    assert str(bad.log_path) in str(e.value)


def test_a_single_job_retries_only_the_missing_indices(executor, tmp_path):
    single = JobRequest("train", bash("exit 0"), tmp_path / "logs")
    one = executor.wait(executor.submit(single), timeout_s=WAIT_S)
    assert [t.index for t in one.tasks] == [0] and one.ok
    assert one.task(0).log_path.name == f"train-{one.job_id}.log"

    retry = JobRequest("blocks", bash("echo $DIDACT_TASK_INDEX"), tmp_path / "logs", tasks=(1, 3))
    result = executor.wait(executor.submit(retry), timeout_s=WAIT_S)
    assert [t.index for t in result.tasks] == [1, 3] and result.ok
    assert result.task(3).log_path.read_text() == "3\n"


def test_local_a_time_limit_exceeded_is_timeout(tmp_path):
    # Slurm's shortest limit is one minute: its real TIMEOUT is tested once, through the
    # pipeline (test_slurm_pipeline.py), not twice
    executor = LocalExecutor(max_workers=2, poll_s=0.1)
    req = JobRequest("slow", bash("sleep 300"), tmp_path / "logs", resources=Resources(time_limit="0:01"))
    started = time.monotonic()
    result = executor.wait(executor.submit(req), timeout_s=150)

    assert result.task(0).state == TIMEOUT
    assert time.monotonic() - started < 10
    with pytest.raises(DidactError, match="task 0 TIMEOUT"):
        result.raise_for_failure("champion_model")


def test_an_interrupted_caller_cancels_its_tasks(executor, tmp_path):
    req = JobRequest("long", bash("sleep 300"), tmp_path / "logs", tasks=(0, 1, 2, 3))
    with pytest.raises(KeyboardInterrupt), submitted(executor, req) as handle:
        wait_running(executor, handle)
        raise KeyboardInterrupt  # what Dagster's Terminate does to a step
    started = time.monotonic()
    result = executor.wait(handle, timeout_s=60)
    assert result.states() == {CANCELLED: 4}
    assert time.monotonic() - started < 30


#: a plain process that waits on a job: prints the job id, then waits (no signal handler of its own)
WAITER = """
import sys
from pathlib import Path
from didact_core.engine import JobRequest, make_executor, submitted
kind, conf, logs = sys.argv[1:4]
ex = make_executor(kind, slurm_conf=conf or None, poll_s=0.2)
req = JobRequest("waiter", ("bash", "-c", "echo $$ > " + logs + "/pid; exec sleep 300"), Path(logs))
with submitted(ex, req) as handle:
    print(handle.job_id, flush=True)
    ex.wait(handle)
"""


def test_sigterm_to_the_waiting_process_cancels_its_job(executor, tmp_path):
    """The run worker or step process gets SIGTERM (a service stop, a plain process): the job
    is cancelled before the process ends, and the process still ends by SIGTERM."""
    conf = str(executor.conf) if isinstance(executor, SlurmExecutor) else ""
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", WAITER, executor.name, conf, str(logs)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=default_signals)  # fmt: skip
    job_id = proc.stdout.readline().strip()
    deadline = time.monotonic() + 60
    while not (logs / "pid").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the task did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    if isinstance(executor, SlurmExecutor):
        req = JobRequest("waiter", ("true",), logs)
        assert executor.wait(JobHandle(job_id, "slurm", req), timeout_s=60).states() == {CANCELLED: 1}
    else:
        pid = int((logs / "pid").read_text())
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
            assert time.monotonic() < deadline, f"task process {pid} still runs"
            time.sleep(0.2)


# -- local only ----------------------------------------------------------------------------


def test_local_a_missing_program_fails_like_bash(tmp_path):
    ex = make_executor("local", workers=1)
    result = ex.wait(ex.submit(JobRequest("x", ("/no/such/program",), tmp_path)), timeout_s=10)
    assert (result.task(0).state, result.task(0).exit_code) == (FAILED, 127)
    assert "cannot start" in result.task(0).log_path.read_text()


def test_an_unknown_executor_is_a_clear_error():
    with pytest.raises(DidactError, match="'pbs': is not a known executor — use one of: local, slurm"):
        make_executor("pbs")


# -- Slurm's text forms (no cluster needed) --------------------------------------------------


def test_slurm_forms():
    assert [duration_s(t) for t in ("1", "0:01", "2:00:00", "1-00:00:00", "1-2", "UNLIMITED")] == [
        60.0, 1.0, 7200.0, 86400.0, 93600.0, None,
    ]  # fmt: skip
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert expand_indices("0-2,5,7-8%2") == [0, 1, 2, 5, 7, 8] and expand_indices("0-6:3") == [0, 3, 6]
    assert exit_status("3:0") == (3, None) and exit_status("0:15") == (0, 15)
    rec = parse_record("JobId=7 ArrayJobId=5 ArrayTaskId=2 JobState=FAILED WorkDir=/a b/c ExitCode=3:0 X=")
    assert rec["WorkDir"] == "/a b/c" and rec["ExitCode"] == "3:0" and rec["X"] == ""


def test_sbatch_options_follow_the_request(tmp_path):
    req = JobRequest(
        "champion model", ("python", "-m", "train"), tmp_path / "logs", tasks=(0, 2, 3), max_parallel=2,
        resources=Resources(partition="gpu", account="ops", qos="high", time_limit="2:00:00", mem="8G",
                            gpus=2, cpus_per_task=4),
    )  # fmt: skip
    argv = sbatch_argv(req, tmp_path / "job.sbatch")
    assert argv[:3] == ["sbatch", "--parsable", "--job-name=champion_model"]
    for opt in ("--array=0,2-3%2", "--partition=gpu", "--account=ops", "--qos=high", "--time=2:00:00",
                "--mem=8G", "--gres=gpu:2", "--cpus-per-task=4", "--no-requeue",
                f"--output={(tmp_path / 'logs').resolve()}/%x-%A_%a.log"):  # fmt: skip
        assert opt in argv
    assert "--gres" not in " ".join(sbatch_argv(JobRequest("cpu", ("true",), tmp_path), tmp_path / "j"))


# -- Slurm only -------------------------------------------------------------------------------


@pytest.mark.slow
def test_finished_tasks_are_also_read_from_the_completion_log(slurm_cluster, tmp_path):
    ex = SlurmExecutor(conf=slurm_cluster.conf, poll_s=0.5)
    req = JobRequest("comp", bash("exit $DIDACT_TASK_INDEX"), tmp_path / "logs", tasks=(0, 1))
    handle = ex.submit(req)
    live = ex.wait(handle, timeout_s=WAIT_S)
    assert ex.jobcomp_log() == slurm_cluster.jobcomp_log  # found through `scontrol show config`
    deadline = time.monotonic() + 10
    while len(recs := jobcomp_records(slurm_cluster.jobcomp_log, handle.job_id)) < 2:
        assert time.monotonic() < deadline, "the controller wrote no completion records"
        time.sleep(0.2)
    from_log = {t.index: t for rec in recs for t in tasks_from_record(rec, req, handle.job_id)}
    for t in live.tasks:
        got = from_log[t.index]
        seen = (got.state, got.exit_code, got.nodes, got.log_path)
        assert seen == (t.state, t.exit_code, t.nodes, t.log_path)


@pytest.mark.slow
def test_a_gpu_request_the_cluster_cannot_meet_is_a_clear_error(slurm_cluster, tmp_path):
    ex = SlurmExecutor(conf=slurm_cluster.conf)
    req = JobRequest("train", ("true",), tmp_path, resources=Resources(gpus=1))
    with pytest.raises(DidactError, match=r"(?s)gres.*GPU request"):
        ex.submit(req)


@pytest.mark.slow
def test_a_dead_or_silent_controller_is_a_clear_error_in_bounded_time(slurm_cluster, tmp_path):
    conf = slurm_cluster.conf.read_text()
    dead = tmp_path / "dead.conf"
    dead.write_text(conf.replace(f"SlurmctldPort={slurm_cluster.ctld_port}", "SlurmctldPort=1"))
    started = time.monotonic()
    with pytest.raises(DidactError, match="unreachable.*start slurmctld"):
        SlurmExecutor(conf=dead, command_timeout_s=30).submit(JobRequest("x", ("true",), tmp_path))
    assert time.monotonic() - started < 30

    # a port that accepts connections and never answers: the watchdog ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        hung = tmp_path / "hung.conf"
        hung.write_text(conf.replace(f"SlurmctldPort={slurm_cluster.ctld_port}", f"SlurmctldPort={port}"))
        started = time.monotonic()
        with pytest.raises(DidactError, match=r"did not answer within 2 s"):
            SlurmExecutor(conf=hung, command_timeout_s=2).submit(JobRequest("x", ("true",), tmp_path))
        assert time.monotonic() - started < 5


@pytest.mark.slow
def test_a_stopped_controller_is_a_clear_error_then_jobs_run_again(slurm_cluster, tmp_path):
    ex = SlurmExecutor(conf=slurm_cluster.conf, poll_s=0.5)
    handle = ex.submit(JobRequest("before", bash("exit 0"), tmp_path / "logs"))
    ex.wait(handle, timeout_s=WAIT_S)
    slurm_cluster.stop_controller()
    try:
        started = time.monotonic()
        with pytest.raises(DidactError, match=r"Slurm controller .*unreachable"):
            ex.poll(handle)
        with pytest.raises(DidactError, match=r"Slurm controller .*unreachable"):
            ex.submit(JobRequest("during", ("true",), tmp_path / "logs"))
        assert time.monotonic() - started < 60
    finally:
        slurm_cluster.start_controller()
    assert ex.wait(ex.submit(JobRequest("after", ("true",), tmp_path / "logs")), timeout_s=WAIT_S).ok
    assert ex.poll(handle).ok  # the saved state still knows the earlier job


# -- staging folders --------------------------------------------------------------------------


def test_prune_staging_removes_only_folders_untouched_for_days(tmp_path):
    home = tmp_path / "home"
    old, fresh, touched = (home / "staging" / "raw_node_metrics" / "2026-02-09" / k for k in ("old", "new", "mix"))
    for folder in (old, fresh, touched):
        (folder / "blocks").mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
        (folder / "blocks" / "part.parquet").write_bytes(b"x")
    ten_days_ago = time.time() - 10 * 86400
    for p in [*old.rglob("*"), old, *touched.rglob("*"), touched]:
        os.utime(p, (ten_days_ago, ten_days_ago))
    (touched / "blocks" / "part.parquet").touch()  # a job wrote here now: kept

    assert prune_staging(home, 7) == [old]
    assert sorted(p.name for p in old.parent.iterdir()) == ["mix", "new"]
    assert prune_staging(home, 7, now=time.time() + 30 * 86400) == [touched, fresh]
    assert not (home / "staging").exists() or not any((home / "staging").iterdir())  # empty parents too
    with pytest.raises(DidactError, match="more than 0"):
        prune_staging(home, 0)
    assert prune_staging(tmp_path / "no-home", 7) == []


def test_didact_prune_takes_the_staging_age():
    from didact_assets.cli import build_parser

    args = build_parser().parse_args(["prune", "--keep", "2", "--staging-days", "3"])
    assert (args.keep, args.staging_days) == (2, 3)
    assert build_parser().parse_args(["prune", "--keep", "2"]).staging_days == 7
