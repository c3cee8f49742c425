"""Tasks as local processes: the default executor, with the Slurm executor's interface.

Each task is a child process in a session of its own (so a cancel or a time limit stops
everything it started), with at most ``max_workers`` running at once, stdout and stderr
in the same log file the Slurm executor would name.  A background thread starts tasks
and reaps them; :meth:`LocalExecutor.poll` reads what it recorded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from didact_core.engine.base import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    TASK_INDEX_ENV,
    TIMEOUT,
    JobHandle,
    JobRequest,
    JobResult,
    PollingExecutor,
    TaskResult,
    duration_s,
)
from didact_core.errors import DidactError

#: seconds between SIGTERM and SIGKILL when a task is cancelled or over its time limit
KILL_WAIT_S = 2.0


class _Task:
    def __init__(self, index: int, log_path: Path):
        self.index = index
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.result = TaskResult(index, PENDING, log_path=log_path)


class _LocalJob:
    """Runs the tasks of one request, ``parallel`` at a time."""

    def __init__(self, request: JobRequest, job_id: str, parallel: int, tick_s: float):
        self.request, self.job_id, self.parallel, self.tick_s = request, job_id, parallel, tick_s
        self.limit_s = duration_s(request.resources.time_limit)
        self.tasks = {i: _Task(i, request.log_path(job_id, i)) for i in request.indices}
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.node = socket.gethostname().split(".")[0]
        self.thread = threading.Thread(target=self.run, name=f"didact-local-{job_id}", daemon=True)

    def snapshot(self) -> JobResult:
        with self.lock:
            return JobResult(self.job_id, "local", tuple(t.result for t in self.tasks.values()))

    def run(self) -> None:
        try:
            self._schedule()
        except Exception as e:  # a bug here must end the job, not leave tasks RUNNING forever
            for task in self.tasks.values():
                if task.proc is not None and task.proc.poll() is None:
                    self._kill(task, FAILED)
                if not task.result.done:
                    self._set(task, FAILED, reason=f"local executor error: {e!r}")

    def _schedule(self) -> None:
        pending = deque(self.tasks.values())
        running: list[_Task] = []
        while pending or running:
            if self.cancelled.is_set():
                for task in running:
                    self._kill(task, CANCELLED)
                for task in pending:
                    self._set(task, CANCELLED)
                return
            while pending and len(running) < self.parallel:
                task = pending.popleft()
                if self._launch(task):
                    running.append(task)
            for task in list(running):
                if self._reap(task):
                    running.remove(task)
            time.sleep(self.tick_s)

    def _set(self, task: _Task, state: str, **fields) -> None:
        elapsed = time.monotonic() - task.started if task.started else None
        with self.lock:
            task.result = TaskResult(
                task.index, state, nodes=self.node if task.started else "", elapsed_s=elapsed,
                log_path=task.log_path, **fields,
            )  # fmt: skip

    def _launch(self, task: _Task) -> bool:
        env = {**os.environ, **self.request.env, TASK_INDEX_ENV: str(task.index)}
        task.started = time.monotonic()
        with open(task.log_path, "ab") as out:
            try:
                task.proc = subprocess.Popen(
                    list(self.request.command), stdout=out, stderr=subprocess.STDOUT, env=env,
                    cwd=self.request.workdir, start_new_session=True,
                )  # fmt: skip
            except OSError as e:  # no such program, not executable: what bash would call 127
                out.write(f"didact local executor: cannot start {self.request.command[0]!r}: {e}\n".encode())
                self._set(task, FAILED, exit_code=127, reason=str(e))
                return False
        self._set(task, RUNNING)
        return True

    def _reap(self, task: _Task) -> bool:
        """Record a task that ended, or stop one past its time limit; True when it is over."""
        rc = task.proc.poll()
        if rc is None:
            if self.limit_s is not None and time.monotonic() - task.started > self.limit_s:
                self._kill(task, TIMEOUT)
                return True
            return False
        if rc == 0:
            self._set(task, COMPLETED, exit_code=0)
        elif rc > 0:
            self._set(task, FAILED, exit_code=rc, reason="NonZeroExitCode")
        else:
            self._set(task, FAILED, exit_code=0, signal=-rc, reason=f"killed by signal {-rc}")
        return True

    def _kill(self, task: _Task, state: str) -> None:
        """SIGTERM the task's whole session, SIGKILL after a grace period, record ``state``."""
        for sig, grace in ((signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(task.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                task.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = task.proc.poll()
        self._set(task, state, exit_code=max(rc, 0) if rc is not None else None,
                  signal=-rc if rc is not None and rc < 0 else None)  # fmt: skip


class LocalExecutor(PollingExecutor):
    """Run a job's tasks as processes on this machine (``DIDACT_EXECUTOR=local``, the default)."""

    name = "local"

    def __init__(self, max_workers: int | None = None, poll_s: float = 0.2):
        self.max_workers = max(1, max_workers or os.cpu_count() or 1)
        self.poll_s = poll_s
        self._jobs: dict[str, _LocalJob] = {}

    def submit(self, request: JobRequest) -> JobHandle:
        Path(request.log_dir).mkdir(parents=True, exist_ok=True)
        job_id = f"local-{uuid.uuid4().hex[:10]}"
        parallel = min(self.max_workers, request.max_parallel or self.max_workers)
        job = _LocalJob(request, job_id, parallel, tick_s=min(self.poll_s, 0.05))
        self._jobs[job_id] = job
        job.thread.start()
        return JobHandle(job_id, self.name, request)

    def _job(self, handle: JobHandle) -> _LocalJob:
        try:
            return self._jobs[handle.job_id]
        except KeyError:
            raise DidactError(
                f"local job {handle.job_id}",
                "is not known to this executor (local jobs live in their process)",
                "poll a local job with the executor that submitted it",
            ) from None

    def poll(self, handle: JobHandle) -> JobResult:
        return self._job(handle).snapshot()

    def cancel(self, handle: JobHandle) -> None:
        job = self._job(handle)
        job.cancelled.set()
        job.thread.join(KILL_WAIT_S + 10)

