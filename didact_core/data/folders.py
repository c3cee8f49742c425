"""Version folders on disk: their manifests, each partition's head log, and cleanup.

Every version folder ``data/<asset>/<partition>/v0003-<id>/`` carries ``manifest.json``
(asset, partition, version, tables with their parts' names, rows, sizes and digests,
data/code version, upstream, run, metadata, created), written into the temporary
folder before it is renamed into place, so the manifest is exactly as atomic as the
parts.  Each partition folder keeps ``heads.jsonl``: one line per head move (publish,
rollback).  Together they let ``didact catalog rebuild`` recreate the catalog's
versions, heads and materialise/rollback lineage from ``data/`` alone.

Cleanup: temporary folders of writers that died, and *orphan* version folders (a
writer killed between the folder's rename and the catalog commit) that the catalog
does not know, once older than a grace period.  Both run under the catalog's
exclusive lock, where no writer can be between its rename and its commit; the grace
period is a second guard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from didact_core.data.parts import fsync, raise_if_full

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
HEADS = "heads.jsonl"
FORMAT = 1
TMP_GRACE_S = 3600.0  # a writer's temporary folder lives as long as its run
ORPHAN_GRACE_S = 600.0  # an orphan's rename happened under the lock, long before this

_VERSION_DIR = re.compile(r"^v(\d+)-[0-9a-f]+$")


def version_number(folder: Path) -> int | None:
    """``v0003-1a2b3c`` → 3; None for anything else."""
    m = _VERSION_DIR.match(folder.name)
    return int(m.group(1)) if m else None


def stored_versions(data_dir: Path) -> list[Path]:
    """Every version folder under ``data/`` (``<asset>/<partition>/vN-<id>``)."""
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.glob("*/*/v*") if p.is_dir() and version_number(p) is not None)


def relative(data_dir: Path, folder: Path) -> str:
    """How the catalog stores a version folder: relative to the home (``data/…``)."""
    return str(Path(data_dir.name) / folder.relative_to(data_dir))


def resolve(data_dir: Path, asset: str, partition: str, stored: str) -> Path:
    """A catalog path → the folder in *this* home.

    Relative paths are under the home; absolute ones (catalogs written before paths
    were relative, maybe in another folder the home was copied from) are mapped by
    their version folder's name under this home's ``data/<asset>/<partition>/``."""
    return data_dir / asset / partition / Path(stored).name


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest.json`` into ``folder`` atomically (temp file, fsync, rename)."""
    tmp = folder / f".{MANIFEST}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, **manifest}, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, folder / MANIFEST)
        fsync(folder)
    except OSError as e:
        raise_if_full(e, folder, "writing the version manifest")
        raise


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a version folder, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def append_head(partition_dir: Path, version: int, event: str, ts: str, **fields) -> None:
    """Record a head move in the partition's ``heads.jsonl`` (a torn last line is ignored on read)."""
    line = json.dumps({"ts": ts, "event": event, "version": version, **fields}, default=str)
    try:
        with open(partition_dir / HEADS, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise_if_full(e, partition_dir, "recording the head move")
        raise


def read_heads(partition_dir: Path) -> list[dict]:
    """The head moves of a partition, oldest first."""
    try:
        lines = (partition_dir / HEADS).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def remove_stale(partition_dir: Path, known: set[str], now: float | None = None) -> list[Path]:
    """Remove a partition's dead writers' temporary folders and orphan version folders.

    ``known``: the version folder names the catalog lists for this partition.  Call
    under the catalog's exclusive lock.  Returns what was removed (each logged)."""
    now = time.time() if now is None else now
    removed = []
    if not partition_dir.is_dir():
        return removed
    for p in partition_dir.iterdir():
        orphan = version_number(p) is not None and p.name not in known
        tmp = p.name.startswith(".tmp-")
        if not (orphan or tmp) or not p.is_dir():
            continue
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < (ORPHAN_GRACE_S if orphan else TMP_GRACE_S):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        what = (
            "orphan version folder (not in the catalog: its writer died before committing)"
            if orphan
            else "temporary folder of a dead writer"
        )
        log.warning("removed %s %s, %.0f min old", what, p, age / 60)
    return removed
