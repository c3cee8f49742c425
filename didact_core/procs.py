"""Child processes of didact's services, and how a service stops them all.

A service (``didact ui`` running ``dagster dev``, ``didact testbed serve`` running
Prometheus, the recorder's node exporter) starts its child in a process group of its
own, so one signal reaches the child *and everything the child started* (``dagster
dev``'s webserver, daemon and code servers share its group).  A stop sends SIGTERM to
the group and to every descendant seen in ``/proc`` (also those that moved to a group of
their own), waits a grace period, then SIGKILLs what is left.  The child also gets
SIGTERM from Linux when didact dies (``PR_SET_PDEATHSIG``), even by SIGKILL.

Ground floor: standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

#: a service's child gets this long after SIGTERM before SIGKILL
GRACE_S = 15.0
#: signals a service turns into a clean stop (systemd sends SIGTERM, a terminal SIGINT)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1


def _load_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


#: looked up once in the parent: the child between fork and exec only calls it
_PRCTL = _load_prctl()


#: the signals a service's child must obey (its stop, a forwarded Ctrl-C, its parent's death)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def default_signals() -> None:  # runs in the child before exec
    """The stop signals unblocked and at their default action in the child: an ignored or
    blocked SIGINT/SIGTERM inherited from whoever started didact (a shell's ``cmd &`` ignores
    SIGINT; a library may block signals in the thread that forks) would make the child
    deaf to didact's stop."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def pdeathsig() -> None:  # runs in the child before exec
    """Ask Linux to SIGTERM the child when its parent dies (so nothing is left over), with
    the stop signals at their defaults (:func:`default_signals`).

    Linux sends it when the *thread* that forked the child ends: start children from the
    main thread (or a thread that lives as long as they should)."""
    default_signals()
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


# -- the process tree ---------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, process group, state) of every live process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat")) as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        with contextlib.suppress(ValueError, IndexError):
            out[int(entry.name)] = (int(rest[1]), int(rest[2]), rest[0])
    return out


def descendants(pid: int, table: dict[int, tuple[int, int, str]] | None = None) -> set[int]:
    """Every live process below ``pid`` (children, their children, …)."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for p, (ppid, _pgid, _state) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def tree(pid: int) -> set[int]:
    """``pid``, its descendants and the members of its process group (if it leads one)."""
    table = _proc_table()
    return {pid} | descendants(pid, table) | {p for p, (_pp, pgid, _s) in table.items() if pgid == pid}


def alive(pids: Iterable[int]) -> set[int]:
    """The ones of ``pids`` still running (a zombie counts as gone)."""
    out = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X"):
            out.add(pid)
    return out


def _signal(group: int, pids: Iterable[int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate_tree(proc: subprocess.Popen, grace_s: float = GRACE_S, sig: int = signal.SIGTERM) -> float:
    """Stop ``proc`` (started with ``process_group=0``) and everything below it: ``sig``
    to its group and every descendant, SIGKILL to what is left after ``grace_s``; reap
    ``proc``.  Returns the seconds it took."""
    t0 = time.monotonic()
    pids = alive(tree(proc.pid)) if proc.poll() is None else alive(tree(proc.pid) - {proc.pid})
    if pids:
        _signal(proc.pid, pids, sig)
    deadline = t0 + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie is gone
        pids = alive(pids | tree(proc.pid))  # children started while stopping count too
        if not pids:
            break
        time.sleep(0.05)
    if pids:
        _signal(proc.pid, pids, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    end = time.monotonic() + 5
    while alive(pids) and time.monotonic() < end:  # SIGKILL is not instant
        time.sleep(0.05)
    return time.monotonic() - t0


# -- a service's own stop -----------------------------------------------------------------


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) arrived: stop cleanly.  A KeyboardInterrupt,
    so code that already cleans up on Ctrl-C does the same for systemd's SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(
    on_signal: Callable[[int], None] | None = None, signals: Sequence[int] = STOP_SIGNALS
) -> Iterator[None]:
    """While inside, a stop signal raises :class:`StopRequested` in the main thread (or,
    with ``on_signal``, calls it with the signal number instead).  Outside the main
    thread it does nothing (Python delivers signals only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if on_signal is None:
            raise StopRequested(signum)
        on_signal(signum)

    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def supervise(argv: Sequence[str], grace_s: float = GRACE_S, **popen_kw) -> tuple[int, int | None]:
    """Run ``argv`` as a service's child until it ends or a stop signal arrives; then
    forward that signal to its whole tree and SIGKILL what is left after ``grace_s``.

    Returns (exit code, the stop signal or None).  The child runs in a process group of
    its own (a terminal's Ctrl-C reaches only didact, which forwards it) and gets SIGTERM
    if didact dies."""
    got: list[int] = []
    proc = subprocess.Popen(list(argv), process_group=0, preexec_fn=pdeathsig, **popen_kw)
    try:
        with stop_on_signals(on_signal=got.append):
            while not got and proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
    finally:  # also on an error of our own: never leave the tree behind
        # Ctrl-C goes on as SIGINT (what a terminal would send the group), the rest as SIGTERM
        terminate_tree(proc, grace_s, signal.SIGINT if got[:1] == [signal.SIGINT] else signal.SIGTERM)
    return proc.returncode, (got[0] if got else None)
