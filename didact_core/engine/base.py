"""What every execution backend shares: a job request in, one result per task out.

A *job* runs one command as one or more *tasks* (a Slurm job array, or local processes);
each task learns its index from ``DIDACT_TASK_INDEX`` and picks its own share of the work
(a partition's block of nodes).  Task indices need not be contiguous: a retry submits
only the indices that did not finish.  States use Slurm's words on every backend, so
metadata and errors read the same whether a step ran locally or on the farm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from didact_core.errors import DidactError

log = logging.getLogger(__name__)

#: the environment variable that tells a task which one it is
TASK_INDEX_ENV = "DIDACT_TASK_INDEX"

PENDING, RUNNING, COMPLETED = "PENDING", "RUNNING", "COMPLETED"
FAILED, CANCELLED, TIMEOUT = "FAILED", "CANCELLED", "TIMEOUT"
#: a task Slurm no longer knows (purged after MinJobAge) and no completion record names
UNKNOWN = "UNKNOWN"
#: states after which a task never runs again (Slurm's terminal job states, and UNKNOWN)
FINAL_STATES = frozenset(
    {COMPLETED, FAILED, CANCELLED, TIMEOUT, "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
     "DEADLINE", UNKNOWN}
)  # fmt: skip

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def duration_s(text: str | None) -> float | None:
    """Slurm's time forms in seconds: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``; ``None`` for no limit (empty, ``UNLIMITED``, ``INFINITE``, ``0``)."""
    text = (text or "").strip()
    if text.upper() in ("", "UNLIMITED", "INFINITE", "NONE", "0"):
        return None
    m = _DURATION.match(text)
    if not m:
        raise DidactError(f"time {text!r}", "is not a Slurm time", "use MM, MM:SS, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return float(days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0))
    if c is not None:
        return float(a * 3600 + b * 60 + c)
    return float(a * 60 + (b or 0))


@dataclass(frozen=True)
class Resources:
    """What a job asks for.  Local execution honours ``time_limit`` only; Slurm all of it."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None  # Slurm form, e.g. "30" (minutes), "2:00:00", "1-00:00:00"
    mem: str | None = None  # per node, Slurm form: "4G", "500M"
    gpus: int = 0  # asks for --gres=gpu:N when > 0
    cpus_per_task: int = 1


@dataclass(frozen=True)
class JobRequest:
    """One command to run as a single job (``tasks=None``) or one task per index."""

    name: str
    command: tuple[str, ...]
    log_dir: Path
    tasks: tuple[int, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    resources: Resources = Resources()
    max_parallel: int | None = None  # at most this many tasks at once

    def __post_init__(self):
        if not self.command:
            raise DidactError(f"job {self.name!r}", "has no command", "pass the argv to run")
        if self.tasks is not None and (not self.tasks or min(self.tasks) < 0):
            raise DidactError(f"job {self.name!r}", f"task indices {self.tasks} are empty or negative",
                              "pass indices >= 0, or tasks=None for a single job")  # fmt: skip

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.tasks))) if self.tasks is not None else (0,)

    @property
    def safe_name(self) -> str:
        """The name as it may appear in a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name) or "job"

    def log_path(self, job_id: str, index: int) -> Path:
        """Where task ``index`` writes stdout and stderr (Slurm's ``%x-%A_%a`` / ``%x-%j``)."""
        if self.tasks is None:
            return Path(self.log_dir) / f"{self.safe_name}-{job_id}.log"
        return Path(self.log_dir) / f"{self.safe_name}-{job_id}_{index}.log"


@dataclass(frozen=True)
class TaskResult:
    """Where one task stands."""

    index: int
    state: str
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    elapsed_s: float | None = None
    log_path: Path | None = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state == COMPLETED


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: enough to poll or cancel it."""

    job_id: str
    backend: str
    request: JobRequest


@dataclass(frozen=True)
class JobResult:
    """Every task of a job, as last seen."""

    job_id: str
    backend: str
    tasks: tuple[TaskResult, ...]

    @property
    def done(self) -> bool:
        return all(t.done for t in self.tasks)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tasks)

    @property
    def failed(self) -> tuple[TaskResult, ...]:
        return tuple(t for t in self.tasks if t.done and not t.ok)

    def states(self) -> dict[str, int]:
        return dict(Counter(t.state for t in self.tasks))

    def task(self, index: int) -> TaskResult:
        return next(t for t in self.tasks if t.index == index)

    def metadata(self, max_tasks: int = 50) -> dict:
        """Plain JSON for materialisation metadata and the lineage row.

        Aggregates (states, nodes, elapsed min/median/max) cover every task; the per-task
        list holds every task that did not complete, then others up to ``max_tasks``, so a
        1,000-task array stays a small event-log row.
        """
        elapsed = sorted(t.elapsed_s for t in self.tasks if t.elapsed_s is not None)
        shown = sorted(self.tasks, key=lambda t: (t.ok, t.index))[: max(max_tasks, len(self.failed))]
        return {
            "executor": self.backend,
            "job_id": self.job_id,
            "tasks_total": len(self.tasks),
            "states": self.states(),
            "nodes": sorted({t.nodes for t in self.tasks if t.nodes}),
            "elapsed_s": {"min": elapsed[0], "median": elapsed[len(elapsed) // 2], "max": elapsed[-1]}
            if elapsed else None,
            "tasks": [
                {"index": t.index, "state": t.state, "exit_code": t.exit_code, "nodes": t.nodes,
                 "elapsed_s": t.elapsed_s, "log": str(t.log_path) if t.log_path else None}
                for t in sorted(shown, key=lambda t: t.index)
            ],
        }  # fmt: skip

    def raise_for_failure(self, what: str) -> None:
        """A :class:`DidactError` naming each task that did not complete, its state and log."""
        if self.ok:
            return
        bad = [t for t in self.tasks if not t.ok]
        lines = [
            f"task {t.index} {t.state}"
            + (f" (exit code {t.exit_code})" if t.exit_code else "")
            + (f" (signal {t.signal})" if t.signal else "")
            + (f" [{t.reason}]" if t.reason and t.reason != "None" else "")
            + (f", log {t.log_path}" if t.log_path else "")
            for t in bad[:10]
        ]
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DidactError(
            f"{what} ({self.backend} job {self.job_id})",
            f"{len(bad)} of {len(self.tasks)} tasks did not complete: " + "; ".join(lines) + more,
            "read the task logs; a retry runs only the tasks that did not finish",
        )


class Executor(Protocol):
    """An execution backend: local processes or a Slurm cluster."""

    name: str

    def submit(self, request: JobRequest) -> JobHandle: ...

    def poll(self, handle: JobHandle) -> JobResult: ...

    def cancel(self, handle: JobHandle) -> None: ...

    def wait(
        self,
        handle: JobHandle,
        timeout_s: float | None = None,
        on_change: Callable[[JobResult], None] | None = None,
    ) -> JobResult: ...


def wait_for(
    executor: Executor,
    handle: JobHandle,
    timeout_s: float | None,
    poll_s: float,
    on_change: Callable[[JobResult], None] | None = None,
) -> JobResult:
    """Poll until every task is final; ``on_change`` hears each new set of states.

    Past ``timeout_s`` it raises a :class:`DidactError` with the states seen last and leaves
    the job alone (the caller decides; :func:`submitted` cancels it).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = None
    while True:
        result = executor.poll(handle)
        states = [(t.index, t.state) for t in result.tasks]
        if states != seen:
            seen = states
            log.debug("%s job %s: %s", executor.name, handle.job_id, result.states())
            if on_change is not None:
                on_change(result)
        if result.done:
            return result
        if deadline is not None and time.monotonic() > deadline:
            raise DidactError(
                f"{handle.request.name} ({executor.name} job {handle.job_id})",
                f"not finished after {timeout_s:.0f} s (tasks: {result.states()})",
                "raise the wait timeout, or see why the tasks are pending (`squeue -j`, partition, limits)",
            )
        time.sleep(poll_s)



class PollingExecutor:
    """``wait`` for backends that answer ``poll``: polls every ``poll_s`` seconds."""

    poll_s: float = 1.0

    def wait(
        self,
        handle: JobHandle,
        timeout_s: float | None = None,
        on_change: Callable[[JobResult], None] | None = None,
    ) -> JobResult:
        return wait_for(self, handle, timeout_s, self.poll_s, on_change)

class Terminated(BaseException):
    """SIGTERM arrived while a job was out (raised by :func:`submitted`'s handler)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` instead of ending the process
    at once: only in the main thread, and only where nobody else handles SIGTERM (Dagster's
    own processes map it to SIGINT, which raises already)."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def _raise(signo, frame):
        raise Terminated(f"signal {signo}")

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def submitted(executor: Executor, request: JobRequest) -> Iterator[JobHandle]:
    """Submit ``request``; cancel the job if the block exits by any exception.

    This is how Dagster's *Terminate* reaches the tasks: the step sees an interrupt inside
    the block (SIGINT, or Dagster's ``DagsterExecutionInterruptedError``), the job is
    cancelled (``scancel`` on Slurm), and the interrupt goes on.  A SIGTERM that would
    otherwise end the process on the spot (a plain process, a service stop) cancels the job
    first, then ends the process by SIGTERM as before.
    """
    with _sigterm_raises():
        handle = executor.submit(request)
        try:
            yield handle
        except BaseException as e:
            with contextlib.suppress(DidactError):
                executor.cancel(handle)
            if isinstance(e, Terminated):
                log.warning("%s job %s cancelled: this process got SIGTERM", executor.name, handle.job_id)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)  # end as the signal meant
            raise
