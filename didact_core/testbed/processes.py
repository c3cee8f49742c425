"""Processes the testbed starts: die with the recorder, find a workload's processes by
their tag, stop them, and count the CPU time they and the node used."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from didact_core.procs import pdeathsig, terminate_tree

#: a stopped workload gets this long after SIGTERM before SIGKILL
STOP_GRACE_S = 5.0


#: the recorder's node exporter and Prometheus run at this nice value when allowed (root):
#: a flavour that loads every CPU must not starve the scrapes.  Negative nice values
#: are still accounted as user/system time, so the telemetry itself is unchanged.
SERVICE_NICE = -5


def service_preexec() -> None:  # runs in the child before exec
    pdeathsig()
    with contextlib.suppress(OSError):
        os.nice(SERVICE_NICE)


#: every process a flavour starts inherits this variable (value: the segment's tag), so
#: the recorder finds them all when it stops the segment, also ranks that mpirun put
#: into process groups of their own and processes that lost their parent
TAG_VAR = "DIDACT_TESTBED_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds ``DIDACT_TESTBED_TAG=<tag>``."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    out = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours
            continue
        if (env.startswith(needle) or b"\0" + needle in env) and not _is_zombie(entry.path):
            out.append(int(entry.name))
    return out


def _is_zombie(proc_dir: str) -> bool:
    try:
        stat = Path(proc_dir, "stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("Z", "X")


def stop_tagged(proc: subprocess.Popen, tag: str, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a flavour (its process group, and every process carrying its tag), SIGKILL
    what is left after ``grace_s``; reap it.

    Flavours run in a process group of their own (a terminal's Ctrl-C reaches only the
    recorder, which stops them) but in the recorder's session: a new session is a new
    scheduler autogroup on Linux, and a context-switch storm in one starved the
    recorder and the scrapes for the whole segment."""

    def left() -> list[int]:
        return tagged_pids(tag) if proc.poll() is not None else [proc.pid, *tagged_pids(tag)]

    def signal_all(sig: int, pids: list[int]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    pids = left()
    if pids:
        signal_all(signal.SIGTERM, pids)
    deadline = time.monotonic() + grace_s
    while (pids := left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pids:
        signal_all(signal.SIGKILL, pids)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_service(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM a service (its process group and every descendant), SIGKILL what is left
    after ``grace_s``; reap it."""
    terminate_tree(proc, grace_s)


def node_busy_s() -> float:
    """CPU seconds all threads of the node have been busy since boot (not idle, not iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids: Sequence[int]) -> int:
    """user + system ticks of processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            f = stat[stat.rfind(")") + 2 :].split()
            total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            continue
    return total


def reaped_children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children that have ended and been waited
    for, with the descendants each of them waited for (``getrusage(RUSAGE_CHILDREN)``): what a
    flavour's process tree used once the recorder reaps its leader, short-lived children
    (a compile's cc1, a shell loop's commands) included — sampling once a second misses them."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sample_cpu(tag: str, acc: dict) -> None:
    """Add the CPU ticks (user + system) of every process carrying ``tag`` to ``acc``
    (pid → the most seen; a process's own time only, so parents and children don't count twice)."""
    for pid in tagged_pids(tag):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            f = stat[stat.rfind(")") + 2 :].split()
            acc[pid] = max(acc.get(pid, 0), int(f[11]) + int(f[12]))
        except (OSError, ValueError, IndexError):
            continue

