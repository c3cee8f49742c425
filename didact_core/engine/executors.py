"""Choose an executor by name: ``local`` (the default) or ``slurm``.

The settings that choose and size it (:mod:`didact_core.config`; the pipeline builds one
with ``didact_core.data.blocks.executor_for(settings)``): ``executor`` (``local``/``slurm``), ``slurm_conf``,
``slurm_partition``, ``slurm_account``, ``slurm_qos``, ``slurm_time_limit``, ``slurm_mem``,
``slurm_gpus`` (training only), ``slurm_cpus_per_task``, ``slurm_max_parallel``,
``slurm_wait_timeout_s`` and ``slurm_command_timeout_s``; ``workers`` sizes the local one.
"""

from __future__ import annotations

from pathlib import Path

from didact_core.engine.base import Executor
from didact_core.engine.local import LocalExecutor
from didact_core.engine.slurm import SlurmExecutor
from didact_core.errors import DidactError

EXECUTORS = ("local", "slurm")


def make_executor(
    kind: str = "local",
    *,
    workers: int | None = None,
    slurm_conf: str | Path | None = None,
    command_timeout_s: float = 30.0,
    poll_s: float | None = None,
) -> Executor:
    """The executor called ``kind``; ``workers`` bounds local parallelism."""
    kind = (kind or "local").strip().lower()
    if kind == "local":
        return LocalExecutor(max_workers=workers, poll_s=poll_s or 0.2)
    if kind == "slurm":
        return SlurmExecutor(conf=slurm_conf, command_timeout_s=command_timeout_s, poll_s=poll_s or 2.0)
    raise DidactError(f"executor {kind!r}", "is not a known executor", f"use one of: {', '.join(EXECUTORS)}")
