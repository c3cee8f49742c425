"""The act audit log: every proposal, approval, refusal, action and Slurm answer, one JSON line each.

``$DIDACT_HOME/act/audit.jsonl``, append-only.  Each record is written with one
``write`` on a file opened ``O_APPEND`` under an exclusive ``flock`` and fsynced, so
concurrent writers never interleave and a crash leaves whole lines (a torn last line
is skipped on reading).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path

#: not_applied: a power cap didact could not write (the command to run is in the record);
#: restore: a cap's previous limit written back
KINDS = ("proposal", "approval", "refused", "action", "failed", "notify", "not_applied", "restore")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def under(cls, home: str | Path) -> AuditLog:
        return cls(Path(home) / "act" / "audit.jsonl")

    def append(self, kind: str, **fields) -> dict:
        if kind not in KINDS:
            raise ValueError(f"audit kind {kind!r} is not one of {KINDS}")
        rec = {"ts": fields.pop("ts", None) or now_utc().isoformat(timespec="seconds"), "kind": kind, **fields}
        line = (json.dumps(rec, default=str, sort_keys=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return rec

    def records(self, kind: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a torn last line after a crash
                    continue
                if kind is None or rec.get("kind") == kind:
                    out.append(rec)
        return out

    def proposal(self, pid: str) -> dict | None:
        """The newest proposal with this id."""
        found = [r for r in self.records("proposal") if r.get("id") == pid]
        return found[-1] if found else None

    def actions_since(self, action: str, since: dt.datetime) -> int:
        """Actions of this kind (``drain``, ``shed``) didact made (Slurm accepted) since ``since``."""
        return sum(
            1 for r in self.records("action")
            if r.get("action") == action and dt.datetime.fromisoformat(r["ts"]) >= since
        )  # fmt: skip

    def drains_since(self, since: dt.datetime) -> int:
        """Drains didact made (Slurm accepted) since ``since``."""
        return self.actions_since("drain", since)
