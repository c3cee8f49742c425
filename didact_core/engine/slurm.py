"""Tasks as Slurm jobs: a small ``sbatch`` client (submit, poll, wait, cancel).

A request becomes one batch script and one ``sbatch --parsable`` call: a job array
(``--array=0-3``, or only the indices a retry needs, ``--array=1,3``) or a single job,
with partition, account, QOS, time limit, memory, ``--gres=gpu:N`` when asked, and
``--output`` under the request's log folder (the same file names as the local executor).
The script exports ``DIDACT_TASK_INDEX=$SLURM_ARRAY_TASK_ID`` and the request's variables,
then ``exec``s the command, so a task does not know which executor ran it.

States come from ``scontrol show job -o <id>``: one call gives every array task's state,
exit code, node list, run time and reason, for pending, running and recently finished
tasks (``squeue`` has no exit codes; ``sacct`` needs slurmdbd and a database).  Tasks the
controller has purged (``MinJobAge``, 300 s by default) are read from the
``jobcomp/filetxt`` record when the controller writes one this host can read.

Every Slurm command runs under a watchdog (``command_timeout_s``): a controller that is
down or hung is a :class:`DidactError` within a bounded time, never a hang.

Why this client and not a library (issue 11 asks for arrays, accounting and cancel with
the least code):

* **dagster-slurm** runs one Slurm job per *asset* over SSH, packs environments with
  pixi-pack and reads its metrics from ``sacct`` (slurmdbd); it has no job arrays, so a
  partition's node blocks would need one asset run each, and it would put Dagster into
  the job side that didact keeps Dagster-free.
* **submitit** has arrays (``map_array``), cancel and a local fallback, but it pickles
  Python callables and their results (DESIGN: no pickles), runs each task through
  ``srun`` and polls states with ``sacct`` only, which fails without slurmdbd (the farms
  and the test cluster that run ``jobcomp/filetxt`` instead).
* Own client: ``sbatch``/``scontrol``/``scancel`` are stable text interfaces; this file
  and ``slurm_records.py`` are ~350 lines with arrays, partial resubmission, cancel,
  per-task accounting from the controller or the completion log, and no new dependency.
  The tasks run the same command line as local ones.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from didact_core.engine.base import (
    TASK_INDEX_ENV,
    UNKNOWN,
    JobHandle,
    JobRequest,
    JobResult,
    PollingExecutor,
    TaskResult,
)
from didact_core.engine.slurm_records import (
    array_spec,
    belongs_to,
    jobcomp_records,
    parse_record,
    parse_records,
    tasks_from_record,
)
from didact_core.errors import DidactError

_UNREACHABLE = ("Unable to contact slurm controller", "Connection refused", "Zero Bytes were transmitted")
_INSTALL = "install slurm-client (scripts/install_system_deps.sh), or run with DIDACT_EXECUTOR=local"


def batch_script(request: JobRequest) -> str:
    """The script ``sbatch`` runs for every task of ``request``."""
    lines = [
        "#!/bin/bash",
        f"# didact job {request.name}: written by didact_core.engine.slurm",
        f'export {TASK_INDEX_ENV}="${{SLURM_ARRAY_TASK_ID:-0}}"',
    ]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in request.env.items()]
    lines.append("exec " + " ".join(shlex.quote(str(a)) for a in request.command))
    return "\n".join(lines) + "\n"


def sbatch_argv(request: JobRequest, script: Path) -> list[str]:
    """``sbatch`` options for ``request`` (Slurm's own spelling, so they read as in a job script)."""
    r = request.resources
    out_pattern = "%x-%j.log" if request.tasks is None else "%x-%A_%a.log"
    argv = ["sbatch", "--parsable", f"--job-name={request.safe_name}",
            f"--output={Path(request.log_dir).resolve() / out_pattern}", "--no-requeue"]  # fmt: skip
    if request.tasks is not None:
        throttle = f"%{request.max_parallel}" if request.max_parallel else ""
        argv.append(f"--array={array_spec(request.tasks)}{throttle}")
    options = {"partition": r.partition, "account": r.account, "qos": r.qos, "time": r.time_limit}
    argv += [f"--{k}={v}" for k, v in {**options, "mem": r.mem}.items() if v]
    if r.cpus_per_task and r.cpus_per_task > 1:
        argv.append(f"--cpus-per-task={r.cpus_per_task}")
    if r.gpus:
        argv.append(f"--gres=gpu:{int(r.gpus)}")
    if request.workdir is not None:
        argv.append(f"--chdir={Path(request.workdir).resolve()}")
    argv.append(str(script))
    return argv


class SlurmExecutor(PollingExecutor):
    """Submit, poll, wait for and cancel Slurm jobs (``DIDACT_EXECUTOR=slurm``).

    ``conf`` is the ``slurm.conf`` to use (``SLURM_CONF`` for the commands; unset: Slurm's
    default).  ``jobcomp_log`` is the controller's ``JobCompLoc`` when this host can read it;
    unset, it is asked from ``scontrol show config`` the first time it is needed.
    """

    name = "slurm"

    def __init__(
        self,
        conf: str | Path | None = None,
        command_timeout_s: float = 30.0,
        poll_s: float = 2.0,
        jobcomp_log: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.conf = Path(conf) if conf else None
        self.command_timeout_s = command_timeout_s
        self.poll_s = poll_s
        self._jobcomp = Path(jobcomp_log) if jobcomp_log else None
        self._jobcomp_asked = jobcomp_log is not None
        self._env = dict(os.environ if env is None else env)
        if self.conf is not None:
            self._env["SLURM_CONF"] = str(self.conf)

    # -- the one way a Slurm command runs -------------------------------------------------

    def _where(self) -> str:
        return f"Slurm controller (SLURM_CONF={self._env.get('SLURM_CONF', 'default')})"

    def run(self, argv: list[str], fix: str = "") -> str:
        """Run a Slurm command under the watchdog; its stdout, or a :class:`DidactError`."""
        shown = " ".join(argv[:3]) + (" …" if len(argv) > 3 else "")
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=self._env, timeout=self.command_timeout_s
            )
        except FileNotFoundError:
            raise DidactError(f"Slurm command {argv[0]!r}", "is not installed here", _INSTALL) from None
        except subprocess.TimeoutExpired:
            raise DidactError(
                self._where(), f"`{shown}` did not answer within {self.command_timeout_s:.0f} s",
                "check that slurmctld runs and is reachable (`scontrol ping`), or raise command_timeout_s",
            ) from None  # fmt: skip
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip()
            if any(s in err for s in _UNREACHABLE):
                raise DidactError(
                    self._where(), f"unreachable: `{shown}` said {err!r}",
                    "start slurmctld, or point SLURM_CONF at the cluster's slurm.conf (`scontrol ping`)",
                )  # fmt: skip
            raise DidactError(f"`{shown}`", f"failed (exit {done.returncode}): {err}", fix or None)
        return done.stdout

    # -- the executor interface -------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobHandle:
        log_dir = Path(request.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)  # slurmd does not create it: the task would fail unseen
        script = log_dir / f"{request.safe_name}-{uuid.uuid4().hex[:8]}.sbatch"
        script.write_text(batch_script(request))
        out = self.run(
            sbatch_argv(request, script),
            fix="check the partition, account, QOS, time limit, memory and GPU request "
            "against the cluster (`sinfo`, `scontrol show partition`)",
        )
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise DidactError("sbatch", f"answered {out.strip()!r}, not a job id", "check the Slurm version")
        return JobHandle(job_id, self.name, request)

    def poll(self, handle: JobHandle) -> JobResult:
        request, job_id = handle.request, handle.job_id
        try:
            records = parse_records(self.run(["scontrol", "show", "job", "-o", job_id]))
        except DidactError as e:
            if "Invalid job id" not in str(e):
                raise
            records = []  # purged from the controller: only the completion record is left
        tasks = {t.index: t for rec in records if belongs_to(rec, job_id)
                 for t in tasks_from_record(rec, request, job_id)}  # fmt: skip
        missing = [i for i in request.indices if i not in tasks]
        if missing:
            tasks.update(self._finished(handle, missing, known_any=bool(tasks)))
        return JobResult(job_id, self.name, tuple(tasks[i] for i in request.indices))

    def _finished(self, handle: JobHandle, indices: list[int], known_any: bool) -> dict[int, TaskResult]:
        """Tasks the controller forgot, from the completion log (UNKNOWN where it has none)."""
        path = self.jobcomp_log()
        readable = path is not None and path.exists()
        if not readable and not known_any:
            raise DidactError(
                f"Slurm job {handle.job_id}",
                "is unknown to the controller and no completion log is readable",
                "set JobCompType=jobcomp/filetxt (JobCompLoc on a shared path), or poll within MinJobAge",
            )  # fmt: skip
        found: dict[int, TaskResult] = {}
        for rec in jobcomp_records(path, handle.job_id) if readable else []:
            for t in tasks_from_record(rec, handle.request, handle.job_id):
                found[t.index] = t
        return {
            i: found.get(i) or TaskResult(i, UNKNOWN, log_path=handle.request.log_path(handle.job_id, i),
                                          reason="no controller or completion record")  # fmt: skip
            for i in indices
        }

    def jobcomp_log(self) -> Path | None:
        """The ``jobcomp/filetxt`` log (``JobCompLoc``), when the controller writes one."""
        if not self._jobcomp_asked:
            self._jobcomp_asked = True
            conf = {}
            for line in self.run(["scontrol", "show", "config"]).splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    conf[key.strip()] = value.strip()
            if conf.get("JobCompType") == "jobcomp/filetxt" and conf.get("JobCompLoc"):
                self._jobcomp = Path(conf["JobCompLoc"])
        return self._jobcomp

    def cancel(self, handle: JobHandle) -> None:
        """``scancel`` the job (every task of an array); finished tasks keep their state."""
        self.run(["scancel", handle.job_id])

    def node_states(self) -> dict[str, str]:
        """Every node's state word (``IDLE``, ``MIXED``, ``DRAINED`` …), for health checks."""
        out = self.run(["scontrol", "show", "node", "-o"])
        recs = (parse_record(line) for line in out.splitlines() if "NodeName=" in line)
        return {r["NodeName"]: r.get("State", "") for r in recs}
