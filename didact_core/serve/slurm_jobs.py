"""The running jobs' membership from Slurm (``squeue``), for live job-peer scores.

``didact serve`` with ``DIDACT_LIVE_JOBS=slurm`` asks ``squeue`` for the running jobs and their
nodes (at most once every ``every_s``; Slurm's compressed host lists expanded) and hands the
cluster model one row per (job, node): the nodes of a multi-node job are compared with each other.
A ``squeue`` that fails or does not answer keeps the last answer and is logged: job-peer scores
must not stop node scoring.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from didact_core.data.hostlist import expand_hostlist
from didact_core.engine.slurm import SlurmExecutor
from didact_core.errors import DidactError

log = logging.getLogger(__name__)

#: job id and node list of every running job, one line each, ``|``-separated
SQUEUE = ["squeue", "--noheader", "--states=RUNNING", "--format=%i|%N"]


def parse_squeue(text: str) -> pd.DataFrame:
    """``job_id, node`` rows of :data:`SQUEUE`'s output (a job on ``n[01-03]`` gives three rows)."""
    rows, problems = [], []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        job, sep, nodes = line.strip().partition("|")
        if not sep or not job:
            problems.append(f"line {k} {line.strip()!r}: not JOBID|NODELIST")
            continue
        try:
            rows += [(job, n) for n in expand_hostlist(nodes.strip())] if nodes.strip() else []
        except ValueError as e:
            problems.append(f"line {k}: {e}")
    if problems:
        raise DidactError("squeue output", "; ".join(problems[:5]),
                          f"check that `{' '.join(SQUEUE)}` prints JOBID|NODELIST")  # fmt: skip
    return pd.DataFrame(rows, columns=["job_id", "node"], dtype=str)


class SlurmJobs:
    """Callable: the running jobs' membership (``job_id, node``), asked of ``squeue`` at most
    every ``every_s`` seconds."""

    def __init__(self, conf: str | Path | None = None, timeout_s: float = 30.0, every_s: float = 60.0,
                 env=None):  # fmt: skip
        self.slurm = SlurmExecutor(conf=conf or None, command_timeout_s=timeout_s, env=env)
        self.every_s = float(every_s)
        self.errors = 0
        self._last: pd.DataFrame | None = None
        self._asked = -float("inf")

    def __call__(self) -> pd.DataFrame | None:
        now = time.monotonic()
        if now - self._asked >= self.every_s:
            self._asked = now
            try:
                self._last = parse_squeue(self.slurm.run(SQUEUE))
            except DidactError as e:
                self.errors += 1
                log.warning("running jobs from Slurm: %s (keeping the last answer)", e)
        return self._last
