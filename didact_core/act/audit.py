"""The act audit: every proposal, approval, refusal, action and Slurm answer — a JSON-lines
file and the warehouse's lineage table.

``$DIDACT_HOME/act/audit.jsonl``, append-only.  Each record is written with one
``write`` on a file opened ``O_APPEND`` under an exclusive ``flock`` and fsynced, so
concurrent writers never interleave and a crash leaves whole lines (a torn last line
is skipped on reading).  The rate limits and the metrics count from this file: it needs
no catalog lock.

With a warehouse (``AuditLog.under(home, warehouse)``, as the CLI and the sensor open it),
each record is also a lineage row: ``asset = 'act'``, ``event = 'act_<kind>'``,
``partition`` the node, ``version`` the proposal id, ``actor`` who, ``reason`` one line for
people and ``upstream`` the whole record as JSON (its ``rid`` names it).  The file is
written first; a lineage row that cannot be written (the catalog locked past its wait,
damaged) is logged and written by the next :meth:`AuditLog.sync_lineage` (``didact act log``
runs it), so the two never disagree for long and an action is never undone by a catalog
error.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path

from didact_core.errors import DidactError

log = logging.getLogger(__name__)

#: not_applied: a power cap didact could not write (the command to run is in the record);
#: restore: a cap's previous limit written back
KINDS = ("proposal", "approval", "refused", "action", "failed", "notify", "not_applied", "restore")
ASSET = "act"  # the lineage rows' asset (``didact lineage act``)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def summary(r: dict) -> str:
    """One line for people: kind, id, action, node, who, and why / the error / Slurm's answer."""
    detail = r.get("why") or r.get("error") or r.get("slurm") or ""
    what = f"{r['kind']} {r.get('id', '')} {r.get('action', '')} {r.get('node', '')}".strip()
    if r.get("by"):
        what += f" by {r['by']}"
    if r.get("review"):
        what += f" (review item {r['review']})"
    if detail:
        what += f": {detail}"
    if r.get("command") and r["kind"] == "not_applied":
        what += f"; run: {r['command']}"
    return what


class AuditLog:
    """``warehouse``: a :class:`~didact_core.data.warehouse.Warehouse` whose lineage table
    gets every record too (None: the file only)."""

    def __init__(self, path: str | Path, warehouse=None):
        self.path = Path(path)
        self.warehouse = warehouse

    @classmethod
    def under(cls, home: str | Path, warehouse=None) -> AuditLog:
        return cls(Path(home) / "act" / "audit.jsonl", warehouse)

    def append(self, kind: str, **fields) -> dict:
        if kind not in KINDS:
            raise ValueError(f"audit kind {kind!r} is not one of {KINDS}")
        rec = {"ts": fields.pop("ts", None) or now_utc().isoformat(timespec="seconds"), "kind": kind, **fields}
        rec.setdefault("rid", uuid.uuid4().hex[:16])
        line = (json.dumps(rec, default=str, sort_keys=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.warehouse is not None:
            try:
                with self.warehouse.catalog(write=True) as con:
                    self._row(con, rec)
            except DidactError as e:  # the file has it; sync_lineage writes the row later
                log.warning("act audit record %s is in %s but not yet in lineage: %s", rec["rid"], self.path, e)
        return rec

    def _row(self, con, rec: dict) -> None:
        ts = dt.datetime.fromisoformat(rec["ts"])
        self.warehouse.lineage_row(
            con, f"act_{rec['kind']}", ASSET, ts=ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc),
            partition=rec.get("node") or None, version=rec.get("id") or None, actor=rec.get("by") or None,
            reason=summary(rec), upstream=json.dumps(rec, default=str),
        )  # fmt: skip

    def sync_lineage(self) -> int:
        """Write the file's records that lineage lacks (a failed mirror write); how many."""
        if self.warehouse is None:
            return 0
        have = set(self._lineage_frame()["rid"])
        missing = [r for r in self.records() if r.get("rid") and r["rid"] not in have]
        if missing:
            with self.warehouse.catalog(write=True) as con:
                for r in missing:
                    self._row(con, r)
        return len(missing)

    def _lineage_frame(self):
        with self.warehouse.catalog() as con:
            return con.execute(
                "select id, json_extract_string(upstream, '$.rid') as rid, upstream from lineage "
                "where asset = ? and starts_with(event, 'act_') order by ts, id", [ASSET]).df()  # fmt: skip

    def lineage_records(self, kind: str | None = None) -> list[dict]:
        """The records as the lineage table holds them (oldest first)."""
        if self.warehouse is None:
            return []
        out = [json.loads(u) for u in self._lineage_frame()["upstream"]]
        return [r for r in out if kind is None or r.get("kind") == kind]

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
