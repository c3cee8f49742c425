"""Code versions: a short hash of the source files that produce an asset.

Dagster uses them to tell which partitions are stale after a code change; the lineage
table records them next to each data version.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from didact_core.errors import DidactError

_ROOT = Path(__file__).resolve().parent


@functools.cache
def code_version(*modules: str) -> str:
    """Hash of ``didact_core`` modules (``"data/preprocess"``, a package dir such as ``"ingest"``).

    A name that is neither a module nor a package is a :class:`DidactError`: a moved or
    renamed module must not silently drop out of the hash (the version would then miss
    its changes)."""
    h = hashlib.blake2b(digest_size=6)
    for name in sorted(modules):
        path = _ROOT / name
        if path.is_dir():
            files = sorted(path.rglob("*.py"))
        elif path.with_suffix(".py").is_file():
            files = [path.with_suffix(".py")]
        else:
            raise DidactError(
                f"code_version module {name!r}",
                f"is neither {path.with_suffix('.py')} nor a package folder",
                "name the module by its path under didact_core/ (it may have moved)",
            )
        for f in files:
            h.update(f.relative_to(_ROOT).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()
