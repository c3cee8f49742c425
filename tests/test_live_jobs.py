"""Live job membership for the cluster model's job-peer scores: from a real Slurm's ``squeue``
(``DIDACT_LIVE_JOBS=slurm``), read once a minute, a failing Slurm never stopping scoring."""

from __future__ import annotations

import subprocess
import time

import pandas as pd
import pytest

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.serve.slurm_jobs import SlurmJobs, parse_squeue
from didact_core.serve.cluster import LiveCluster


def test_squeue_output_is_parsed():
    text = "1201|node[01-03]\n1202_4|gpu7\n\n1203|\n"  # an MPI job, an array task, one between nodes
    df = parse_squeue(text)
    assert df.values.tolist() == [["1201", "node01"], ["1201", "node02"], ["1201", "node03"],
                                  ["1202_4", "gpu7"]]
    assert parse_squeue("").empty
    with pytest.raises(DidactError, match=r"line 2 'garbage': not JOBID\|NODELIST"):
        parse_squeue("7|n1\ngarbage\n")
    with pytest.raises(DidactError, match="line 1"):
        parse_squeue("8|n[3-1]\n")


def test_a_slurm_that_does_not_answer_keeps_the_last_answer(tmp_path):
    jobs = SlurmJobs(conf=tmp_path / "missing-slurm.conf", timeout_s=5, every_s=0)
    assert jobs() is None and jobs.errors == 1  # logged, not raised: node scoring goes on
    jobs._last = pd.DataFrame({"job_id": ["1"], "node": ["n1"]})
    assert jobs()["node"].tolist() == ["n1"] and jobs.errors == 2


def test_live_jobs_none_gives_no_membership(tmp_path):
    live = LiveCluster(Settings(home=str(tmp_path), live_jobs="none"), feed=None)
    assert live.running_jobs(pd.Timestamp("2026-03-02", tz="UTC"), frozenset({"n1"})) is None


@pytest.mark.slow
def test_running_jobs_come_from_a_real_slurm(slurm_cluster, tmp_path, caplog):
    argv = ["sbatch", "--parsable", "--wrap", "sleep 300", "--output", str(tmp_path / "out")]
    env = slurm_cluster.env
    job = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while "RUNNING" not in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env,
                                              capture_output=True, text=True).stdout:  # fmt: skip
            assert time.monotonic() < deadline, f"job {job} did not start"
            time.sleep(0.5)
        conf = str(slurm_cluster.conf)
        settings = Settings(home=str(tmp_path / "home"), live_jobs="slurm", slurm_conf=conf)
        live = LiveCluster(settings, feed=None)
        now = pd.Timestamp("2026-03-02 12:00", tz="UTC")  # any interval: Slurm answers for now
        scored = frozenset({slurm_cluster.node, "n2"})  # the nodes scored (what score() passes)
        got = live.running_jobs(now, scored)
        assert [job, slurm_cluster.node] in got.values.tolist()
        assert live.running_jobs(now, scored) is got  # asked at most once a minute, the same frame
        # Slurm's node is not a scored one: left out, said once, no error
        with caplog.at_level("WARNING", logger="didact_core.serve"):
            assert live.running_jobs(now, frozenset({"n2"})).empty
            assert live.running_jobs(now, frozenset({"n3"})).empty
        assert caplog.text.count("not scored here") == 1, caplog.text
    finally:
        subprocess.run(["scancel", job], env=env, check=False)
