"""The labels CSV a recording writes (``node,start,end,label``, what the ``job_labels``
asset reads), rewritten atomically so that a crash never leaves half a file."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from didact_core.data.labels import read_labels


def _iso(t: float, up: bool = False) -> str:
    """Epoch seconds → ISO 8601 UTC with milliseconds, rounded down (``up``: up), so a
    label written for [start, end) never grows past what was recorded."""
    ms = math.ceil(round(t * 1000, 3)) if up else math.floor(round(t * 1000, 3))
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LabelsWriter:
    """Rewrites a labels CSV atomically: rows already in it, then this recording's."""

    HEADER = "node,start,end,label"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.kept: list[tuple] = []
        if self.path.exists() and self.path.stat().st_size:
            old = read_labels(self.path)  # validates; DidactError names the file and lines
            self.kept = [(r.node, _iso(r.start.timestamp(), up=True), _iso(r.end.timestamp()), r.label)
                         for r in old.itertuples()]  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, segments: Sequence) -> None:
        """Write the kept rows and the labelled ones of ``segments`` (recorder Segments)."""
        rows = self.kept + [
            (s.node, _iso(s.label_start, up=True), _iso(s.label_end), s.flavour) for s in segments if s.labelled
        ]
        write_rows(self.path, rows)


def write_rows(path: Path, rows: Sequence[tuple]) -> None:
    """``node,start,end,label`` rows into ``path`` atomically (fsync, then rename)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LabelsWriter.HEADER.split(","))
    w.writerows(rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def merge_labels(paths: Sequence[Path], out: Path) -> Path:
    """The rows of several labels CSVs (each validated; e.g. two recordings of one UTC day,
    which share the day's ``job_labels`` partition) in one CSV at ``out``; duplicates once."""
    rows: dict[tuple, None] = {}
    for p in paths:
        for r in read_labels(p).itertuples():
            rows[(r.node, _iso(r.start.timestamp(), up=True), _iso(r.end.timestamp()), r.label)] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, sorted(rows, key=lambda r: (r[1], r[0])))
    return out
