"""What the CLI prints: its console, tables, and the progress of long work: rich progress bars on a terminal, plain log lines
(no control codes) when stdout is a pipe, a file, CI or systemd's journal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: the CLI's one console: colours and bars on a terminal, plain text in pipes and logs
console = Console(width=None if sys.stdout.isatty() else 160)
#: a plain (non-terminal) progress line repeats a task's state at most this often
PLAIN_EVERY_S = 30.0


def table(title: str, rows: list[dict]) -> Table:
    t = Table(title=title, title_justify="left")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in cols])
    return t


class Reporter:
    """Tasks with a total and a count.  On a terminal each is a live bar; otherwise each
    change worth a line (a step done, a note, or ``PLAIN_EVERY_S`` passed) prints one:
    ``<task>: <done>/<total> <note>``."""

    def __init__(self, console: Console, bars: Progress | None):
        self.console = console
        self.bars = bars
        self._tasks: dict[int, dict] = {}

    def add(self, description: str, total: float | None) -> int:
        if self.bars is not None:
            tid = self.bars.add_task(description, total=total, note="")
        else:
            tid = len(self._tasks)
        self._tasks[tid] = {"description": description, "total": total, "done": 0.0, "printed": time.monotonic()}
        return tid

    def update(self, tid: int, *, advance: float = 0.0, completed: float | None = None, note: str | None = None,
               total: float | None = None, description: str | None = None, line: bool = True) -> None:  # fmt: skip
        """Move a task on.  ``line=False``: a tick, not a step — off a terminal it prints
        only if the task printed nothing for ``PLAIN_EVERY_S``."""
        t = self._tasks[tid]
        t["done"] = completed if completed is not None else t["done"] + advance
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        if self.bars is not None:
            kw = {"note": note} if note is not None else {}
            self.bars.update(tid, completed=t["done"], total=t["total"], description=t["description"], **kw)
            return
        now = time.monotonic()
        if line or now - t["printed"] >= PLAIN_EVERY_S:
            t["printed"] = now
            of = f"/{t['total']:g}" if t["total"] is not None else ""
            self.console.print(f"{t['description']}: {t['done']:g}{of} {note or ''}".rstrip(),
                               highlight=False, markup=False)  # fmt: skip

    def log(self, message: str) -> None:
        """A line above the bars (or just a line)."""
        (self.bars.console if self.bars is not None else self.console).print(message, highlight=False)


@contextlib.contextmanager
def reporter(console: Console, *, transient: bool = False) -> Iterator[Reporter]:
    """A :class:`Reporter`: live bars when ``console`` is a terminal, plain lines if not."""
    if not console.is_terminal:
        yield Reporter(console, None)
        return
    bars = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"), console=console, transient=transient,
    )  # fmt: skip
    with bars:
        yield Reporter(console, bars)
