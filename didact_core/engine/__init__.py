"""Where a job's tasks run: local processes (the default) or a Slurm cluster.

Ground floor: imports only :mod:`didact_core.errors` and the standard library, so every
stage can hand work to an executor.  One interface (:class:`Executor`): ``submit`` a
:class:`JobRequest` (a command, run once or as tasks ``DIDACT_TASK_INDEX=i``), ``poll`` or
``wait`` for a :class:`JobResult` (state, exit code, node list, elapsed and log path per
task), ``cancel``.  :func:`submitted` cancels the job when the caller is interrupted.

Modules: ``base`` (the shapes, the wait loop), ``local`` (processes), ``slurm`` (the
``sbatch`` client; why no library: its docstring), ``slurm_records`` (Slurm's text forms),
``executors`` (choose one by name), ``staging`` (jobs' folders under the shared home, pruned by age).
"""

from didact_core.engine.base import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_STATES,
    PENDING,
    RUNNING,
    TASK_INDEX_ENV,
    TIMEOUT,
    UNKNOWN,
    Executor,
    JobHandle,
    JobRequest,
    JobResult,
    Resources,
    TaskResult,
    duration_s,
    submitted,
    wait_for,
)
from didact_core.engine.executors import EXECUTORS, make_executor
from didact_core.engine.local import LocalExecutor
from didact_core.engine.slurm import SlurmExecutor
from didact_core.engine.staging import prune_staging, staging_root, write_json

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "EXECUTORS",
    "FAILED",
    "FINAL_STATES",
    "PENDING",
    "RUNNING",
    "TASK_INDEX_ENV",
    "TIMEOUT",
    "UNKNOWN",
    "Executor",
    "JobHandle",
    "JobRequest",
    "JobResult",
    "LocalExecutor",
    "Resources",
    "SlurmExecutor",
    "TaskResult",
    "duration_s",
    "make_executor",
    "prune_staging",
    "staging_root",
    "write_json",
    "submitted",
    "wait_for",
]
