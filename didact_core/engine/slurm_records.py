"""Reading and writing Slurm's text forms: job records, array specs, completion records.

Pure functions over strings, so they are tested without a cluster.  A *record* is one line
of ``scontrol show job -o`` or of the ``jobcomp/filetxt`` log: ``Key=value`` pairs joined by
spaces (values may hold spaces, e.g. a work directory; keys never do).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from didact_core.engine.base import PENDING, JobRequest, TaskResult, duration_s

# a key starts a token: start of line or a space, then Key= (keys are words, some with / or :)
_KEY = re.compile(r"(?:^|(?<= ))([A-Za-z][A-Za-z0-9_/:]*)=")
_NULL = ("", "(null)", "None", "N/A", "Unknown")


def parse_record(line: str) -> dict[str, str]:
    """``"JobId=12 JobState=RUNNING WorkDir=/a b"`` → ``{"JobId": "12", …, "WorkDir": "/a b"}``."""
    keys = list(_KEY.finditer(line.strip()))
    text = line.strip()
    out = {}
    for k, nxt in zip(keys, keys[1:] + [None]):
        end = nxt.start() if nxt is not None else len(text)
        out[k.group(1)] = text[k.end() : end].strip()
    return out


def parse_records(text: str) -> list[dict[str, str]]:
    return [parse_record(line) for line in text.splitlines() if "JobId=" in line]


def array_spec(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2,5,7-8"`` (the form ``sbatch --array`` takes)."""
    idx = sorted(set(indices))
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def expand_indices(spec: str) -> list[int]:
    """``"0-3"``, ``"1,3-5%2"``, ``"0-6:2"`` → the task indices they name."""
    spec = spec.split("%", 1)[0].strip("[] ")
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return out


def exit_status(text: str | None) -> tuple[int | None, int | None]:
    """Slurm's ``ExitCode=3:0`` (code:signal) → ``(3, None)``; ``0:15`` → ``(0, 15)``."""
    if not text or ":" not in text:
        return None, None
    code, _, sig = text.partition(":")
    try:
        return int(code), (int(sig) or None)
    except ValueError:
        return None, None


def _elapsed(rec: dict[str, str]) -> float | None:
    if rec.get("RunTime"):
        return duration_s(rec["RunTime"]) or 0.0
    try:  # jobcomp: StartTime/EndTime in the controller's local time, same zone for both
        start = dt.datetime.fromisoformat(rec["StartTime"])
        return max(0.0, (dt.datetime.fromisoformat(rec["EndTime"]) - start).total_seconds())
    except (KeyError, ValueError):
        return None


def tasks_from_record(rec: dict[str, str], request: JobRequest, job_id: str) -> Iterator[TaskResult]:
    """The task(s) one record describes (a pending array record covers several indices)."""
    spec = rec.get("ArrayTaskId", "")
    indices = expand_indices(spec) if request.tasks is not None and spec not in _NULL else [0]
    state = rec.get("JobState", PENDING).split()[0]
    code, sig = exit_status(rec.get("ExitCode"))
    nodes = rec.get("NodeList", "")
    reason = rec.get("Reason", "")
    for index in indices:
        yield TaskResult(
            index=index,
            state=state,
            exit_code=code,
            signal=sig,
            nodes="" if nodes in _NULL else nodes,
            elapsed_s=_elapsed(rec) if state != PENDING else None,
            log_path=request.log_path(job_id, index),
            reason="" if reason in _NULL else reason,
        )


def belongs_to(rec: dict[str, str], job_id: str) -> bool:
    """True for the job ``job_id`` itself or one of its array tasks."""
    return rec.get("ArrayJobId") == job_id or (rec.get("JobId") == job_id and "ArrayJobId" not in rec)


def jobcomp_records(path: Path, job_id: str) -> list[dict[str, str]]:
    """The ``jobcomp/filetxt`` records of ``job_id`` and its array tasks (later lines win)."""
    needles = (f"JobId={job_id} ", f"ArrayJobId={job_id} ")
    found: dict[str, dict[str, str]] = {}
    with open(path, errors="replace") as f:
        for line in f:
            if any(n in line for n in needles):
                rec = parse_record(line)
                if belongs_to(rec, job_id):
                    found[rec.get("JobId", "")] = rec  # a requeued task is recorded again: keep the last
    return list(found.values())
