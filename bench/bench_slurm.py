"""Benchmark: the same work through local processes and through Slurm, same machine, same run,
and what a farm day needs from Slurm.

    didact bench slurm                                  # 30 days; starts a throwaway single-node Slurm (root)
    didact bench slurm --days 4 --nodes 128             # what bench/README_slurm.md reports
    didact bench slurm --slurm-conf /etc/slurm/slurm.conf --partition cpu   # a real cluster

1. **One partition**: a day of ``--nodes`` × ``--cpus`` × ``--interval`` s in blocks of
   ``--nodes-per-block`` nodes, raw and AI-ready, once with ``DIDACT_EXECUTOR=local`` (the
   worker pool) and once with ``slurm`` (one job array per stage, one task per block), each
   into a fresh home.  Printed per stage: wall time, Slurm tasks, the longest task's run time
   (Slurm's RunTime), the largest task's peak memory, and the overhead (Slurm − local wall).
2. **A backfill of ``--days`` days**, in order, the nightly chain per day: raw → labels →
   AI-ready → ``champion_model`` (trained from the previous day's champion, registered,
   gated; with Slurm the fit is one job) → ``model_evaluation``.  Printed: wall time per
   day and stage, local vs Slurm, and the training job's run time and peak memory.
3. **Per task**, from the Slurm runs of 1 and 2: samples, run time, start-up (a bare Python
   importing what the task imports), samples per second of work, peak memory, bytes per sample.
4. **Farm extrapolation** from 3 (the farm day does not fit this machine): the reference day
   (1,000 nodes × 8 threads × 15 s) and the farm day (1,000 × 64 × 15 s = 368,640,000
   samples): Slurm tasks (blocks) a day makes, task-seconds, peak memory per task, and the
   concurrent task slots that finish a day within 10 minutes and a year's backfill within an
   hour — training one epoch over the whole day (the issue's figure) or as configured, in
   day order either way.

Per-task peak memory: Slurm's ``sacct`` MaxRSS when the cluster keeps accounting (slurmdbd);
otherwise each task process's own high-water mark (``VmHWM`` in ``/proc/PID/status``),
sampled every 50 ms while it runs — possible only when the tasks run on this host (the
throwaway Slurm does; a real farm's tasks without accounting show "-").

Without ``--slurm-conf`` it starts the tests' single-node Slurm (``tests/slurm_cluster.py``:
Debian's slurmctld/slurmd/munge, as root) in a temporary folder and stops it afterwards.
Both executors run on the same cores, so parts 1 and 2 are the price of going through
Slurm (sbatch, scheduling, task start-up, polling), not the speed-up of a farm.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from didact_core.config import Settings  # noqa: E402
from didact_core.data import spine  # noqa: E402

START_DAY, LAST_DAY = dt.date(2026, 1, 1), dt.date(2026, 2, 10)
MAX_DAYS = (LAST_DAY - START_DAY).days + 1
#: (nodes, threads, scrape interval s) of the issue's two days
TARGETS = {"reference day": (1000, 8, 15.0), "farm day": (1000, 64, 15.0)}
DAY_BUDGET_S, YEAR_BUDGET_S, YEAR_DAYS = 600.0, 3600.0, 365
BLOCK_CHOICES = (64, 32, 16, 8, 4, 2, 1)
#: what each kind of task imports before it works (the start-up probe)
TASK_IMPORTS = {"blocks": "didact_core.data.blocks", "train": "didact_core.learn.job, torch"}


# -- peak memory of the tasks --------------------------------------------------------------


class TaskPeaks:
    """Peak RSS (``VmHWM``, KiB) of every task process of this run on this host, by kind.

    A task is a process whose command line runs ``didact_core.data.blocks`` or
    ``didact_core.learn.job`` on a manifest under ``root`` (so other users' jobs never count).
    """

    def __init__(self, root: Path, every: float = 0.05):
        self.root, self.every = str(root), every
        self.peaks: dict[int, tuple[str, int]] = {}  # running tasks, by pid
        self.ended: list[tuple[str, int]] = []  # pids are reused (pid_max may be 32768)
        self._ignored: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _kind(self, pid: int) -> str | None:
        """The task kind of ``pid``; None (and ignored from now on) for anything else, except a
        process that may still ``exec`` a task under the same pid — a batch script's shell, or
        slurmstepd's child before it execs the script (it carries slurmstepd's command line; one
        seen in that window was ignored for good, and its task never measured): asked again later."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        text = " ".join(a.decode(errors="replace") for a in argv)
        if "slurm_script" in text or "slurmstepd" in text:
            return None
        asset = re.search(r"/staging/([a-z_]+)/", text)  # the manifest: <home>/staging/<asset>/<day>/<key>/
        if self.root in text and "didact_core.learn.job" in text:
            return "train"
        if self.root in text and "didact_core.data.blocks" in text and asset:
            return f"blocks:{asset.group(1)}"
        self._ignored.add(pid)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()}
            self._ignored &= pids  # a pid that ended may come back as a task
            with self._lock:
                for pid in set(self.peaks) - pids:
                    self.ended.append(self.peaks.pop(pid))
            for pid in pids - self._ignored:
                kind = self.peaks[pid][0] if pid in self.peaks else self._kind(pid)
                if kind is None:
                    continue
                with contextlib.suppress(OSError, ValueError, IndexError), self._lock:
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm = int(status.split("VmHWM:")[1].split()[0])
                    self.peaks[pid] = (kind, max(hwm, self.peaks.get(pid, (kind, 0))[1]))
            self._stop.wait(self.every)

    def max_kib(self, kind: str) -> int | None:
        with self._lock:
            found = [kib for k, kib in (*self.ended, *self.peaks.values()) if k == kind]
        return max(found) if found else None

    def __enter__(self) -> TaskPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sacct_max_rss_kib(job_id: str | None, env: dict) -> int | None:
    """The largest MaxRSS of a job's steps from Slurm accounting, or None without slurmdbd."""
    if not job_id or not shutil.which("sacct"):
        return None
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-j", str(job_id), "--format=MaxRSS"], env=env,
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return None
    scale = {"K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}
    values = [float(v[:-1]) * scale[v[-1]] if v[-1] in scale else float(v) / 1024
              for v in out.stdout.split() if re.fullmatch(r"[0-9.]+[KMGT]?", v)]  # fmt: skip
    return int(max(values)) if out.returncode == 0 and values else None


def startup_probe(imports: str, repeats: int = 2) -> tuple[float, int]:
    """(seconds, peak KiB) of a fresh Python that only imports what a task imports (best of
    ``repeats``): the part of a task's time and memory that does not grow with its samples."""
    code = f"import resource, {imports}; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    best_s, best_kib = math.inf, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
        best_s = min(best_s, time.perf_counter() - t0)
        best_kib = int(out.stdout.split()[-1])
    return best_s, best_kib


# -- the measured runs ---------------------------------------------------------------------


def _task_max_s(meta: dict) -> float | None:
    job = meta.get("executor") or {}
    return (job.get("elapsed_s") or {}).get("max")


def one_partition(settings: Settings, day: dt.date, nodes_per_block: int) -> dict:
    """Raw and AI-ready of ``day``: wall seconds per stage, tasks and the longest task's run time."""
    t0 = time.perf_counter()
    raw = spine.ingest_raw(settings, day, nodes_per_block=nodes_per_block)
    t1 = time.perf_counter()
    ai = spine.build_ai_ready(settings, day)
    t2 = time.perf_counter()
    jobs = {"raw": raw.meta.get("executor") or {}, "ai": ai.version.metadata.get("executor") or {}}
    return {"raw_s": t1 - t0, "ai_s": t2 - t1, "rows": raw.rows, "nodes": raw.nodes,
            "raw_task_s": _task_max_s(raw.meta), "ai_task_s": _task_max_s(ai.version.metadata),
            "raw_tasks": jobs["raw"].get("tasks_total"), "ai_tasks": jobs["ai"].get("tasks_total"),
            "raw_job": jobs["raw"].get("job_id"), "ai_job": jobs["ai"].get("job_id"),
            "data_version": [raw.version.data_version, ai.version.data_version]}  # fmt: skip


def chain_day(settings: Settings, day: dt.date, nodes_per_block: int) -> dict:
    """The nightly chain for one day; wall seconds per stage and the fit's figures."""
    from didact_core.learn import continual, evaluate_day, job  # lazy: torch and mlflow

    times, t = {}, time.perf_counter()
    for stage, step in (("raw", lambda: spine.ingest_raw(settings, day, nodes_per_block=nodes_per_block)),
                        ("labels", lambda: spine.build_job_labels(settings, day)),
                        ("ai", lambda: spine.build_ai_ready(settings, day))):  # fmt: skip
        step()
        times[stage], t = time.perf_counter() - t, time.perf_counter()
    meta: dict = {}
    if settings.executor == "slurm":
        out, meta = job.train_day_as_job(settings, day.isoformat())
    else:
        out = continual.train_day(settings, day.isoformat())
    times["train"], t = time.perf_counter() - t, time.perf_counter()
    evaluate_day.evaluate_day(settings, day.isoformat())
    times["eval"] = time.perf_counter() - t
    fit = out.fit or {}
    return {"day": day.isoformat(), "stages": times, "total": sum(times.values()),
            "fit_samples": fit.get("samples_seen", 0), "fit_s": fit.get("seconds", 0.0),
            "fit_rows": fit.get("n_train", 0) + fit.get("n_val", 0), "epochs": fit.get("epochs"),
            "train_job": meta.get("job_id"),
            "train_job_s": (meta.get("elapsed_s") or {}).get("max")}  # fmt: skip


# -- the farm extrapolation ----------------------------------------------------------------


def samples_per_day(nodes: int, threads: int, interval_s: float) -> int:
    return nodes * threads * round(86400 / interval_s)


def stage_profile(samples: int, task_s: float | None, peak_kib: int | None, t0: float, m0_kib: int) -> dict:
    """A task's cost as start-up + samples / rate, its memory as base + bytes × samples."""
    work = max((task_s or 0.0) - t0, 1.0)  # RunTime counts whole seconds
    bps = max((peak_kib - m0_kib) * 1024 / samples, 0.0) if peak_kib else None
    return {"samples": samples, "task_s": task_s, "startup_s": t0, "rate": samples / work,
            "peak_kib": peak_kib, "base_kib": m0_kib, "bytes_per_sample": bps,
            "separable": (task_s or 0.0) >= 3 * t0}  # fmt: skip


def task_s(stage: dict, samples: int) -> float:
    return stage["startup_s"] + samples / stage["rate"]


def task_gib(stage: dict, samples: int) -> float | None:
    if stage["bytes_per_sample"] is None:
        return None
    return (stage["base_kib"] * 1024 + stage["bytes_per_sample"] * samples) / 2**30


def day_slots(prof: dict, nodes: int, per_node: int, fixed_s: float) -> dict | None:
    """The fewest concurrent block slots (over the block sizes) that finish the data stages of a
    day within 10 minutes less ``fixed_s`` (training, evaluation, Slurm overhead); None if none."""
    best = None
    for npb in (b for b in BLOCK_CHOICES if b <= nodes):
        blocks = math.ceil(nodes / npb)
        one = task_s(prof["raw"], npb * per_node) + task_s(prof["ai"], npb * per_node)
        waves = int((DAY_BUDGET_S - fixed_s) // one) if DAY_BUDGET_S > fixed_s else 0
        if waves >= 1 and (best is None or math.ceil(blocks / waves) < best["slots"]):
            slots = math.ceil(blocks / waves)
            best = {"slots": slots, "nodes_per_block": npb, "blocks": blocks,
                    "wall_s": math.ceil(blocks / slots) * one + fixed_s}  # fmt: skip
    return best


def plan(prof: dict, nodes: int, threads: int, interval_s: float) -> dict:
    """What a day of ``nodes`` × ``threads`` × ``interval_s`` takes and needs (module doc, 3).

    Two trainings: the issue's (one epoch over the whole day, at the fit loop's measured
    rate) and didact's as configured (at most ``max_train_samples`` a day: the measured
    training step, whatever the day's size).  Evaluation scores a capped sample: measured."""
    per_node = threads * round(86400 / interval_s)
    total = samples_per_day(nodes, threads, interval_s)
    raw, ai, tr = prof["raw"], prof["ai"], prof["train"]
    train_s = tr["startup_s"] + total / tr["rate"]  # one epoch over the whole day, one job
    overhead = 2 * prof["overhead_s"]
    block64 = min(64, nodes) * per_node
    out = {"samples": total, "train_s": train_s, "eval_s": prof["eval_s"], "train_gib": task_gib(tr, total),
           "blocks": math.ceil(nodes / 64), "task_s": task_s(raw, block64) + task_s(ai, block64),
           "task_gib": max(filter(None, (task_gib(raw, block64), task_gib(ai, block64))),
                           default=None)}  # fmt: skip
    out["day_task_s"] = out["blocks"] * out["task_s"]
    out["day_plan"] = day_slots(prof, nodes, per_node, train_s + prof["eval_s"] + overhead)
    out["day_plan_configured"] = day_slots(prof, nodes, per_node,
                                           prof["train_step_s"] + prof["eval_s"] + overhead)
    # a year in an hour: the data of all days at once, the training in day order behind it
    out["year_slots"] = math.ceil(YEAR_DAYS * out["day_task_s"] / YEAR_BUDGET_S)
    out["year_train_s"] = YEAR_DAYS * (train_s + prof["eval_s"])
    out["year_train_configured_s"] = YEAR_DAYS * (prof["train_step_s"] + prof["eval_s"])
    per_day = YEAR_BUDGET_S / YEAR_DAYS - prof["eval_s"] - tr["startup_s"]
    out["year_train_rate_needed"] = total / per_day if per_day > 0 else None
    out["day_train_rate_needed"] = total / max(DAY_BUDGET_S - prof["eval_s"] - tr["startup_s"], 1e-9)
    return out


def profile(part: dict, fills: list[dict], peaks: TaskPeaks, env: dict, blocks_probe, train_probe) -> dict:
    """Per-task figures of the Slurm runs (part 1 for the blocks, part 2 for the training job)."""
    per_block = part["rows"] / max(part["raw_tasks"] or 1, 1)

    def peak(kind: str, job_ids) -> tuple[int | None, str]:
        acct = [v for j in job_ids if (v := sacct_max_rss_kib(j, env)) is not None]
        if acct:
            return max(acct), "sacct MaxRSS"
        local = peaks.max_kib(kind)
        return local, "/proc VmHWM" if local else "-"

    raw_kib, src = peak(f"blocks:{spine.RAW}", [part["raw_job"]])
    ai_kib, _ = peak(f"blocks:{spine.AI_READY}", [part["ai_job"]])
    train_kib, _ = peak("train", [d["train_job"] for d in fills])
    biggest = max(fills, key=lambda d: d["fit_rows"])  # replay grows the rows: the largest job's peak
    train = stage_profile(max(biggest["fit_rows"], 1), biggest["train_job_s"], train_kib, *train_probe)
    rates = [d["fit_samples"] / d["fit_s"] for d in fills if d["fit_s"]]
    if rates:
        train["rate"] = statistics.median(rates)  # the fit loop's own clock: samples (all epochs) per second
    return {
        "raw": stage_profile(int(per_block), part["raw_task_s"], raw_kib, *blocks_probe),
        "ai": stage_profile(int(per_block), part["ai_task_s"], ai_kib, *blocks_probe),
        "train": train, "peak_source": src,
        "eval_s": statistics.median(d["stages"]["eval"] for d in fills),
        "train_step_s": statistics.median(d["stages"]["train"] for d in fills),
        "overhead_s": statistics.mean(max(part[f"{s}_s"] - (part[f"{s}_task_s"] or 0.0), 0.0)
                                      for s in ("raw", "ai")),
    }  # fmt: skip


# -- printing ------------------------------------------------------------------------------


def _f(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f}"


def print_partition(loc: dict, slu: dict) -> None:
    print(f"\n1. one partition ({loc['rows']:,} raw samples, {loc['nodes']} nodes), local vs Slurm")
    print(f"{'stage':<10}{'local s':>9}{'slurm s':>9}{'overhead s':>12}{'tasks':>7}{'task s (max)':>14}")
    for stage in ("raw", "ai"):
        print(f"{stage:<10}{loc[stage + '_s']:>9.1f}{slu[stage + '_s']:>9.1f}"
              f"{slu[stage + '_s'] - loc[stage + '_s']:>12.1f}"
              f"{_f(slu[stage + '_tasks'], 'd'):>7}{_f(slu[stage + '_task_s']):>14}")  # fmt: skip
    same = "same" if loc["data_version"] == slu["data_version"] else "DIFFERENT"
    print(f"data versions local vs slurm: {same}")


def print_backfill(fills: dict, args) -> None:
    print(f"\n2. backfill of {args.days} days in order: raw → labels → AI-ready → training "
          f"({args.epochs} epochs, ≤ {args.train_samples:,} samples) → evaluation")  # fmt: skip
    print(f"{'day':<12}{'local s':>9}{'slurm s':>9}{'slurm train job s':>19}")
    for loc, slu in zip(fills["local"], fills["slurm"]):
        print(f"{loc['day']:<12}{loc['total']:>9.1f}{slu['total']:>9.1f}{_f(slu['train_job_s']):>19}")
    tl, ts = (sum(d["total"] for d in fills[k]) for k in ("local", "slurm"))
    print(f"{'total':<12}{tl:>9.1f}{ts:>9.1f}   slurm/local {ts / tl:.2f}×")
    print(f"{'median s':<12}" + "".join(f"{s:>9}" for s in ("raw", "labels", "ai", "train", "eval")))
    for kind in ("local", "slurm"):
        meds = [statistics.median(d["stages"][s] for d in fills[kind])
                for s in ("raw", "labels", "ai", "train", "eval")]
        print(f"{kind:<12}" + "".join(f"{m:>9.1f}" for m in meds))


def print_profile(prof: dict) -> None:
    print("\n3. per task (Slurm runs above; start-up = a bare Python importing what the task imports)")
    print(f"{'task':<14}{'samples':>12}{'run s':>8}{'start-up s':>12}{'samples/s':>12}{'peak MiB':>10}"
          f"{'base MiB':>10}{'B/sample':>10}")  # fmt: skip
    for key, name in (("raw", "raw block"), ("ai", "AI-ready block"), ("train", "training job")):
        p = prof[key]
        print(f"{name:<14}{p['samples']:>12,}{_f(p['task_s']):>8}{p['startup_s']:>12.1f}{p['rate']:>12,.0f}"
              f"{_mib(p['peak_kib']):>10}{_mib(p['base_kib']):>10}"
              f"{_f(p['bytes_per_sample'], ',.0f'):>10}")  # fmt: skip
    print("samples/s: blocks = samples / (run − start-up); training = the fit loop's samples (all epochs) "
          f"per second. Peak memory from: {prof['peak_source']}")  # fmt: skip
    if not (prof["raw"]["separable"] and prof["ai"]["separable"]):
        print("note: the block tasks ran under 3× their start-up: too small to separate start-up from work; "
              "the rates below are rough")  # fmt: skip
    print(f"evaluation step (median) {prof['eval_s']:.1f} s a day; "
          f"Slurm overhead per stage {prof['overhead_s']:.1f} s")


def _rate(v: float | None) -> str:
    return "none fits" if v is None else f"{v:,.0f}"


def _slots(day_plan: dict | None) -> str:
    return "no" if day_plan is None else f"{day_plan['slots']:,}"


def print_plans(plans: dict) -> None:
    names = list(plans)
    print("\n4. farm extrapolation (per-task figures of 3; blocks of 64 nodes unless said)")
    print(f"{'':<52}" + "".join(f"{n:>16}" for n in names))
    rows = [
        ("samples a day", lambda p: f"{p['samples']:,}"),
        ("Slurm tasks a day (2 arrays of blocks + 1 job)", lambda p: f"{2 * p['blocks'] + 1:,}"),
        ("task-seconds a day, raw + AI-ready", lambda p: f"{p['day_task_s']:,.0f}"),
        ("one block's raw + AI-ready s", lambda p: f"{p['task_s']:,.0f}"),
        ("peak memory per block task, GiB", lambda p: _f(p["task_gib"])),
        ("training, 1 epoch over the day, s (1 job)", lambda p: f"{p['train_s']:,.0f}"),
        ("training job peak memory, GiB", lambda p: _f(p["train_gib"])),
        ("day in 10 min: block slots (+1 training job)", lambda p: _slots(p["day_plan"])),
        ("  … at blocks of (nodes)",
         lambda p: f"{p['day_plan']['nodes_per_block']}" if p["day_plan"] else "-"),
        ("  … day's wall, s", lambda p: f"{p['day_plan']['wall_s']:,.0f}" if p["day_plan"] else "-"),
        ("  training rate for 10 min alone, samples/s", lambda p: f"{p['day_train_rate_needed']:,.0f}"),
        ("  … training as configured: block slots", lambda p: _slots(p["day_plan_configured"])),
        ("year in 1 h: concurrent block slots (data)", lambda p: f"{p['year_slots']:,}"),
        ("  training + evaluation in day order, s (≤ 3,600)", lambda p: f"{p['year_train_s']:,.0f}"),
        ("  … training as configured, s", lambda p: f"{p['year_train_configured_s']:,.0f}"),
        ("  training rate it needs, samples/s", lambda p: _rate(p["year_train_rate_needed"])),
    ]
    for label, fmt in rows:
        print(f"{label:<52}" + "".join(f"{fmt(plans[n]):>16}" for n in names))
    if any(p["day_plan"] is None or p["day_plan_configured"] is None for p in plans.values()):
        print("'no': the training (and evaluation) alone take more than 10 minutes at the measured rate.")
    if any(p["year_train_rate_needed"] is None for p in plans.values()):
        print("'none fits': evaluation and the job's start-up alone exceed the 9.9 s a day that a year "
              "in an hour leaves.")  # fmt: skip
    print("Training runs in day order (each day starts from the previous champion): "
          "more slots do not shorten it.")


# -- entry point ---------------------------------------------------------------------------


@contextlib.contextmanager
def slurm_conf(args, work: Path):
    if args.slurm_conf:
        yield Path(args.slurm_conf)
        return
    from tests.slurm_cluster import start_slurm  # the tests' throwaway single-node Slurm

    with start_slurm(work / "slurm") as cluster:
        yield cluster.conf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="didact bench slurm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--nodes", type=int, default=128,
                    help="simulated nodes of the measured day (default 128)")
    ap.add_argument("--cpus", type=int, default=8, help="CPU threads per node (default 8)")
    ap.add_argument("--interval", type=float, default=15.0, help="scrape interval, seconds (default 15)")
    ap.add_argument("--nodes-per-block", type=int, default=64,
                    help="nodes per block = per Slurm array task (default 64, as the assets)")
    ap.add_argument("--days", type=int, default=30,
                    help=f"days of the backfill (default 30, at most {MAX_DAYS}; ≈2 min a day on 2 cores); "
                    "0 skips it and the farm extrapolation, which needs its training figures")
    ap.add_argument("--train-samples", type=int, default=200_000,
                    help="training samples per day (default 200000)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs per day (default 2)")
    ap.add_argument("--slurm-conf",
                    help="an existing cluster's slurm.conf (default: start a throwaway one, as root)")
    ap.add_argument("--partition", default="", help="Slurm partition (default: the cluster's default)")
    ap.add_argument("--work-dir", metavar="DIR",
                    help="where the homes go, a folder the compute nodes share "
                    "(default: a temporary folder); removed afterwards")  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    args = ap.parse_args(argv)
    for name in ("nodes", "cpus", "nodes_per_block", "train_samples", "epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if not 0 <= args.days <= MAX_DAYS:
        ap.error(f"--days {args.days}: must be 0 to {MAX_DAYS} (the fixed days {START_DAY} to {LAST_DAY})")
    if args.interval <= 0:
        ap.error(f"--interval {args.interval}: must be more than 0 seconds")
    if args.slurm_conf and not Path(args.slurm_conf).is_file():
        ap.error(f"--slurm-conf {args.slurm_conf}: not a file; give the cluster's slurm.conf or leave it out")
    if args.work_dir and not Path(args.work_dir).is_dir():
        ap.error(f"--work-dir {args.work_dir}: not a folder; create it (shared with the compute nodes)")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        ap.error(f"--json {args.json}: its folder does not exist; create it or choose another path")
    if not args.slurm_conf and os.geteuid() != 0:
        ap.error("without --slurm-conf the benchmark starts a throwaway Slurm, which runs as root: "
                 "run it as root, or give --slurm-conf (and --work-dir on a shared folder)")  # fmt: skip
    return args


def run(args, work: Path) -> dict:
    base = dict(nodes=args.nodes, cpus=args.cpus, interval_s=args.interval, start_date=START_DAY.isoformat(),
                max_train_samples=args.train_samples, model_max_epochs=args.epochs)  # fmt: skip
    probes = {k: startup_probe(v) for k, v in TASK_IMPORTS.items()}
    with slurm_conf(args, work) as conf, TaskPeaks(work) as peaks:
        farm = dict(executor="slurm", slurm_conf=str(conf), slurm_partition=args.partition,
                    slurm_time_limit="2:00:00", slurm_wait_timeout_s=7200.0)  # fmt: skip
        part = {kind: one_partition(Settings(home=str(work / f"part-{kind}"), **base, **extra), LAST_DAY,
                                    args.nodes_per_block)
                for kind, extra in (("local", {}), ("slurm", farm))}  # fmt: skip
        print_partition(part["local"], part["slurm"])
        days = [LAST_DAY - dt.timedelta(days=i) for i in reversed(range(args.days))]
        fills = {kind: [] for kind in ("local", "slurm")}
        for kind, extra in (("local", {}), ("slurm", farm)):
            s = Settings(home=str(work / f"fill-{kind}"), **base, **extra)
            fills[kind] = [chain_day(s, day, args.nodes_per_block) for day in days]
        if days:
            print_backfill(fills, args)
        if not days:
            print("\n3-4. skipped: the farm extrapolation needs the training figures of a backfill "
                  "(--days ≥ 1)")
            return {"args": vars(args), "partition": part, "backfill": fills, "profile": None, "plans": None}
        env = {**os.environ, "SLURM_CONF": str(conf)}
        prof = profile(part["slurm"], fills["slurm"], peaks, env, probes["blocks"], probes["train"])
    print_profile(prof)
    plans = {name: plan(prof, *shape) for name, shape in TARGETS.items()}
    print_plans(plans)
    return {"args": vars(args), "partition": part, "backfill": fills, "profile": prof, "plans": plans}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="didact-bench-slurm-", dir=args.work_dir)).resolve()
    load0 = os.getloadavg()
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    print(f"machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB; load average {load0[0]:.1f} at the start; "
          f"day: {args.nodes} nodes × {args.cpus} threads × {args.interval:g} s, "
          f"blocks of {args.nodes_per_block} nodes")
    try:
        figures = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"load average {load1[0]:.1f} at the end (1-min; {os.cpu_count()} cores)")
    if args.json:
        figures["machine"] = {"cores": os.cpu_count(), "mem_gib": mem_gib,
                              "load_start": load0[0], "load_end": load1[0]}
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
