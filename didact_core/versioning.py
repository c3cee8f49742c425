"""Code versions: a short hash of the source files that produce an asset.

Dagster uses them to tell which partitions are stale after a code change; the lineage
table records them next to each data version.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parent


@functools.cache
def code_version(*modules: str) -> str:
    """Hash of ``didact_core`` modules (``"preprocess"``, ``"sources/prometheus"``, a package dir)."""
    h = hashlib.blake2b(digest_size=6)
    for name in sorted(modules):
        path = _ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        for f in (f for f in files if f.exists()):
            h.update(f.relative_to(_ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()
