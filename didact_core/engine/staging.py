"""The staging folders of executor jobs under the shared home, and their cleanup.

A job that runs outside the step's process (a Slurm array of node blocks, a training job)
reads its inputs from and writes its outputs to ``<home>/staging/<asset>/<partition>/<key>/``.
A step that publishes removes its folder; a failed or cancelled one leaves it, so that a
retry can reuse the blocks that finished.  :func:`prune_staging` (``didact prune``) removes
the folders nothing has written to for a number of days: jobs that ended long ago (a job
still running writes at the latest when it ends, within its time limit).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from didact_core.errors import DidactError

log = logging.getLogger(__name__)

STAGING = "staging"


def staging_root(home: Path) -> Path:
    return Path(home) / STAGING


def write_json(path: Path, data: dict) -> None:
    """Write a job's manifest or result whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=_plain))
    os.replace(tmp, path)


def _plain(value):
    # numpy scalars (counts in a block's metadata, a fit's figures) stay numbers, not strings
    return value.item() if hasattr(value, "item") else str(value)


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.rglob("*"):
        try:
            times.append(p.lstat().st_mtime)
        except FileNotFoundError:  # removed while we looked: a job is using the folder
            return time.time()
    return max(times)


def prune_staging(home: Path, older_than_days: float, now: float | None = None) -> list[Path]:
    """Remove the staging folders untouched for ``older_than_days``; the folders removed."""
    if older_than_days <= 0:
        raise DidactError(f"staging age {older_than_days} days", "must be more than 0",
                          "give a number of days longer than any job's time limit, e.g. 7")  # fmt: skip
    now = time.time() if now is None else now
    root = staging_root(home)
    removed = []
    for folder in sorted(root.glob("*/*/*")):
        if folder.is_dir() and now - _newest_mtime(folder) > older_than_days * 86400:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed staging folder %s", folder)
            removed.append(folder)
    for parent in sorted(root.glob("*/*"), reverse=True) + sorted(root.glob("*"), reverse=True):
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return removed
