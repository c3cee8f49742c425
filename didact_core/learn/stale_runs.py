"""MLflow runs whose process died: found and ended FAILED by the next run.

A training killed by SIGKILL (or the OOM killer, or a reboot) never reaches its
``end_run``; neither does one whose tracking server was down when it finished.  Such a
run would stay RUNNING for ever.  Every run didact starts carries its process's identity
in tags (:func:`process_tags`: host, pid, and the process's start time, so a reused pid
is not mistaken for the old process), and before a new run starts,
:func:`end_stale_runs` ends the experiment's RUNNING runs that no process can end any
more, as FAILED with a ``didact.failure_reason`` tag:

* started on this host and their process is gone (or the machine rebooted since);
* started by this very process, whose end failed (the tracking server was unreachable);
* started on another host (or by something that did not tag it) and older than
  :data:`STALE_AGE_S` — "gone" cannot be decided from here, so only after a generous age.

Standard library only (mlflow is the caller's client): the Dagster layer uses
:func:`process_identity` / :func:`process_gone` for its own runs too.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: a RUNNING run from another host (undecidable) is ended after this age: far longer
#: than any day's training, so a live run on another machine is never ended by mistake
STALE_AGE_S = 3 * 24 * 3600
#: the tags a run's process identity is recorded in
HOST_TAG, PID_TAG, START_TAG = "didact.host", "didact.pid", "didact.process_start"
REASON_TAG = "didact.failure_reason"

#: runs this process started whose end could not be recorded (tracking server down)
_UNENDED: set[str] = set()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it does not exist;
    "" where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    if fields and fields[0] in ("Z", "X"):  # a zombie is dead, only not reaped yet
        return None
    return fields[19] if len(fields) > 19 else ""


def process_identity(pid: int | None = None) -> tuple[str, int, str]:
    """(host, pid, start) of a process on this host (default: this one); ``start`` is
    ``<boot id>/<start ticks>``, so a reboot or a reused pid reads as another process."""
    pid = os.getpid() if pid is None else pid
    return socket.gethostname(), pid, f"{_boot_id()}/{_start_ticks(pid) or ''}"


def process_tags() -> dict[str, str]:
    host, pid, start = process_identity()
    return {HOST_TAG: host, PID_TAG: str(pid), START_TAG: start}


def process_gone(host: str, pid: int | str, start: str = "") -> bool | None:
    """Whether the process that recorded (host, pid, start) has ended: True / False on this
    host, None (cannot tell) for another host."""
    if not host or host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return None
    boot, _, ticks = (start or "").partition("/")
    if boot and _boot_id() and boot != _boot_id():
        return True  # rebooted since: nothing of that process survives
    now = _start_ticks(pid)
    if now is None:
        return True
    if now == "":  # no /proc: existence is all there is to check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return bool(ticks) and now != ticks  # the pid now names another process


def remember_unended(run_id: str) -> None:
    """A run of this process whose end could not be recorded: the next run ends it."""
    _UNENDED.add(run_id)


def stale_reason(run, now_s: float | None = None, max_age_s: float = STALE_AGE_S) -> str | None:
    """Why an MLflow run (status RUNNING) is stale, or None when it may still be alive."""
    tags = run.data.tags
    host, pid = tags.get(HOST_TAG, ""), tags.get(PID_TAG, "")
    if run.info.run_id in _UNENDED:
        return "this process could not end it: the tracking server was unreachable when it finished"
    gone = process_gone(host, pid, tags.get(START_TAG, ""))
    if gone:
        return f"its process (pid {pid} on {host}) ended without ending the run (killed, or the host rebooted)"
    if gone is None:
        age = (now_s if now_s is not None else time.time()) - run.info.start_time / 1000
        if age > max_age_s:
            where = f"started on {host}" if host else "started by an untagged process"
            return f"still RUNNING after {age / 3600:.0f} h ({where}); no training runs that long"
    return None


def end_stale_runs(client, experiment_id: str, max_age_s: float = STALE_AGE_S) -> dict[str, str]:
    """End the experiment's stale RUNNING runs as FAILED with the reason; returns {run id: reason}."""
    ended = {}
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        reason = stale_reason(run, max_age_s=max_age_s)
        if reason is None:
            continue
        client.set_tag(run.info.run_id, REASON_TAG, reason)
        client.set_terminated(run.info.run_id, "FAILED")
        _UNENDED.discard(run.info.run_id)
        log.warning("MLflow run %s (%s) was left RUNNING: ended FAILED — %s", run.info.run_id,
                    run.info.run_name, reason)  # fmt: skip
        ended[run.info.run_id] = reason
    return ended
