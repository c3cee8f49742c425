"""``didact bench slurm``: its flags, its farm arithmetic, and one smallest run against a real Slurm.

The quick tests load ``bench/bench_slurm.py`` as a module: bad flags are clear errors, and
the farm extrapolation (pure arithmetic over per-task figures) gives the issue's sample
counts and slots that do what they claim.  The slow test runs the benchmark through the
CLI, smallest form (4 nodes × 2 threads, 2 blocks, one backfill day), on the tests'
single-node Slurm (:mod:`tests.slurm_cluster`, started by the benchmark itself), and checks
the shape and sanity of what it prints and writes, never its speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from tests.slurm_cluster import INSTALL_HINT, missing_binaries

from .conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_slurm", REPO / "bench" / "bench_slurm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


def stage(startup_s=2.0, rate=1e6, base_kib=100_000, bytes_per_sample=100.0) -> dict:
    return {"startup_s": startup_s, "rate": rate, "base_kib": base_kib, "bytes_per_sample": bytes_per_sample}


PROFILE = {"raw": stage(), "ai": stage(rate=2e6), "train": stage(startup_s=5.0, rate=4e6), "eval_s": 2.0,
           "overhead_s": 4.0, "train_step_s": 20.0}  # fmt: skip


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--days", str(bench.MAX_DAYS + 1)], "--days"),
        (["--nodes", "0"], "--nodes 0"),
        (["--nodes-per-block", "0"], "--nodes-per-block 0"),
        (["--interval", "0"], "--interval"),
        (["--slurm-conf", "/nonexistent/slurm.conf"], "not a file"),
        (["--json", "/nonexistent/dir/out.json"], "does not exist"),
        (["--work-dir", "/nonexistent/dir"], "not a folder"),
    ],
)
def test_bad_flags_are_clear_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_flags_reach_the_run(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    a = bench.parse_args(["--nodes", "7", "--nodes-per-block", "3", "--days", "2", "--partition", "cpu",
                          "--slurm-conf", str(conf), "--work-dir", str(tmp_path)])  # fmt: skip
    assert (a.nodes, a.nodes_per_block, a.days, a.partition) == (7, 3, 2, "cpu")
    assert (a.slurm_conf, a.work_dir) == (str(conf), str(tmp_path))
    assert bench.parse_args(["--slurm-conf", str(conf)]).days == 30  # the backfill


def test_farm_day_arithmetic():
    ref, farm = (bench.plan(PROFILE, *bench.TARGETS[k]) for k in ("reference day", "farm day"))
    assert (ref["samples"], farm["samples"]) == (46_080_000, 368_640_000)
    assert ref["blocks"] == farm["blocks"] == 16  # 1,000 nodes in blocks of 64
    block = 64 * 64 * 5760
    assert farm["task_s"] == pytest.approx(2 + block / 1e6 + 2 + block / 2e6)
    assert farm["task_gib"] == pytest.approx((100_000 * 1024 + 100 * block) / 2**30)
    assert farm["train_s"] == pytest.approx(5 + 368_640_000 / 4e6)
    # the plan keeps its promise: the day's wall fits 10 minutes with that many slots
    p = farm["day_plan"]
    one = bench.task_s(PROFILE["raw"], p["nodes_per_block"] * 64 * 5760) + bench.task_s(
        PROFILE["ai"], p["nodes_per_block"] * 64 * 5760)  # fmt: skip
    fixed = farm["train_s"] + 2 + 2 * 4
    assert math.ceil(p["blocks"] / p["slots"]) * one + fixed == pytest.approx(p["wall_s"])
    assert p["wall_s"] <= bench.DAY_BUDGET_S
    assert farm["year_slots"] == math.ceil(365 * farm["day_task_s"] / 3600)
    # training capped: the day's size does not matter
    assert farm["year_train_configured_s"] == pytest.approx(365 * (20 + 2))
    assert farm["day_plan_configured"]["slots"] <= p["slots"]
    assert farm["year_train_rate_needed"] == pytest.approx(368_640_000 / (3600 / 365 - 2 - 5))
    assert ref["year_train_rate_needed"] < farm["year_train_rate_needed"]


def test_a_day_whose_training_alone_overruns_has_no_plan():
    slow = {**PROFILE, "train": stage(rate=1e5)}  # 368M samples at 100K/s: an hour of training
    assert bench.plan(slow, *bench.TARGETS["farm day"])["day_plan"] is None


def test_a_task_seen_before_it_execs_is_still_measured(tmp_path):
    """slurmstepd forks, then its child execs the batch script under the same pid: a sampler that
    saw the child in between (slurmstepd's command line) ignored the pid for good and never measured
    the training job (its peak came out None under load).  Here a process named like that child
    execs a "training task" 0.3 s later: its peak is found.  (The forking process is named like
    slurmstepd; the child carries that name until it execs.)"""
    task = f"import time; time.sleep(1.5)  # didact_core.learn.job {tmp_path}/staging/champion_model/x/"
    (tmp_path / "child.sh").write_text(f"sleep 0.3\nexec {sys.executable} -c '{task}'\n")
    stepd = f'exec -a "slurmstepd: [7.batch]" bash -c "(. {tmp_path}/child.sh); true"'
    with bench.TaskPeaks(tmp_path, every=0.02) as peaks:
        subprocess.run(["bash", "-c", stepd], check=True, timeout=30)
    assert peaks.max_kib("train") is not None and peaks.max_kib("train") > 1024


@pytest.mark.slow
def test_smallest_bench_on_a_real_slurm(tmp_path):
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the benchmark's throwaway Slurm runs as root (SlurmUser=root)")
    out = tmp_path / "bench.json"
    argv = ["--nodes", "4", "--cpus", "2", "--interval", "60", "--nodes-per-block", "2", "--days", "1",
            "--train-samples", "500", "--epochs", "1", "--json", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "didact_assets.cli", "bench", "slurm", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in ("1. one partition", "2. backfill of 1 days", "3. per task", "4. farm extrapolation",
                    "data versions local vs slurm: same", "reference day", "farm day"):  # fmt: skip
        assert heading in done.stdout
    fig = json.loads(out.read_text())
    loc, slu = fig["partition"]["local"], fig["partition"]["slurm"]
    assert 0 < loc["rows"] == slu["rows"] <= 4 * 2 * 1440  # the simulator drops a few samples (data faults)
    assert loc["data_version"] == slu["data_version"]
    assert slu["raw_tasks"] == slu["ai_tasks"] == 2 and slu["raw_job"] and slu["ai_job"]
    assert loc["raw_tasks"] is None  # local: the worker pool, no job
    assert slu["raw_task_s"] is not None and slu["ai_task_s"] is not None
    (lday,), (sday,) = fig["backfill"]["local"], fig["backfill"]["slurm"]
    assert set(lday["stages"]) == set(sday["stages"]) == {"raw", "labels", "ai", "train", "eval"}
    assert sday["train_job"] and lday["train_job"] is None and sday["fit_samples"] > 0
    prof = fig["profile"]
    assert prof["peak_source"] in ("/proc VmHWM", "sacct MaxRSS")
    # every task process was seen: a Python with pandas is 50 MiB to 16 GiB
    for key in ("raw", "ai", "train"):
        assert 50 * 1024 < prof[key]["peak_kib"] < 16 * 2**20, (key, prof[key])
        assert prof[key]["rate"] > 0 and prof[key]["startup_s"] > 0
    plans = fig["plans"]
    assert plans["farm day"]["samples"] == 368_640_000 and plans["reference day"]["samples"] == 46_080_000
    assert plans["farm day"]["train_s"] > plans["reference day"]["train_s"] > 0
    assert plans["farm day"]["year_slots"] >= plans["reference day"]["year_slots"] >= 1
