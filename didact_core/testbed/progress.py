"""What a recording reports while it runs, and how it turns Ctrl-C / SIGTERM into one
clean stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ProgressEvent:
    """What :func:`record` reports to its ``progress`` callback.

    ``kind``: ``info`` (setup), ``skip`` (a flavour cannot run), ``start`` / ``tick``
    (about once a second) / ``done`` / ``failed`` (a segment), ``interrupted``, ``end``."""

    kind: str
    message: str = ""
    index: int = 0  #: 1-based segment number
    total: int = 0
    flavour: str = ""
    segment_left_s: float = 0.0
    total_left_s: float = 0.0


def format_event(ev: ProgressEvent) -> str:
    """One line for a terminal."""
    if ev.kind in ("start", "tick", "done", "failed"):
        left = f"{int(ev.total_left_s // 60):d}:{int(ev.total_left_s % 60):02d}"
        head = f"[{ev.index}/{ev.total}] {ev.flavour:<11}"
        if ev.kind == "tick":
            return f"{head} {ev.segment_left_s:4.0f} s left in segment, {left} in total"
        return f"{head} {ev.kind}{': ' + ev.message if ev.message else ''} ({left} left)"
    return f"{ev.kind}: {ev.message}" if ev.kind != "info" else ev.message


class Interrupts:
    """SIGINT/SIGTERM → one KeyboardInterrupt; later ones while stopping are reported, not
    raised.  Inside :meth:`shield` (stopping a flavour, writing the CSV) the interrupt
    waits until the shielded work is done."""

    def __init__(self, emit: Callable[[ProgressEvent], None]):
        self.emit = emit
        self.fired = False
        self.shielded = 0
        self.pending = False
        self.old: dict = {}

    def _handler(self, signum, frame):
        if self.fired or self.shielded:
            self.pending = self.pending or not self.fired
            self.emit(ProgressEvent("info", "stopping — please wait while processes stop and the labels are saved"))
            return
        self.fired = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self):
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if not self.shielded and self.pending and not self.fired:
            self.pending = False
            self.fired = True
            raise KeyboardInterrupt

    def stopping(self) -> None:
        """From now on signals are only reported (cleanup runs to its end)."""
        self.fired = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False

