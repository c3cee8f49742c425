"""A moved or restored home: point MLflow's stored artifact locations at it.

MLflow's sqlite store keeps absolute artifact locations (``experiments.artifact_location``,
``runs.artifact_uri``, ``model_versions.source``/``storage_location``,
``logged_models.artifact_location``).  After ``cp -a home moved`` they still point into
the old folder: a copied home would read — and write its new models into — the
original, or fail once it is gone.  When the home is the default one (sqlite under
``DIDACT_HOME``) and those locations point into *another* folder's
``mlflow/artifacts`` while this home's ``mlflow/artifacts`` holds files, they are
rewritten to this home in one sqlite transaction, logged once.  A tracking server
(``DIDACT_MLFLOW_TRACKING_URI``) is never touched.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from didact_core.config import Settings

log = logging.getLogger(__name__)

#: (table, key column, location column) of every absolute artifact location MLflow stores
LOCATIONS = (
    ("experiments", "experiment_id", "artifact_location"),
    ("runs", "run_uuid", "artifact_uri"),
    ("model_versions", "rowid", "source"),
    ("model_versions", "rowid", "storage_location"),
    ("logged_models", "model_id", "artifact_location"),
)
_ROOT = "/mlflow/artifacts"


def relocate_artifacts(settings: Settings) -> int:
    """Rewrite artifact locations that point into another home; the number rewritten."""
    db = settings.mlflow_dir / "mlflow.db"
    here = settings.mlflow_dir / "artifacts"
    if settings.mlflow_tracking_uri or not db.is_file() or not here.is_dir() or not any(here.iterdir()):
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        updates, old_roots = _plan(con, here)
        if updates:
            with con:  # one transaction: all locations move, or none
                for table, key, col, k, new in updates:
                    con.execute(f"update {table} set {col}=? where {key}=?", (new, k))
            log.warning(
                "MLflow home moved: %d artifact location(s) rewritten from %s to %s",
                len(updates), ", ".join(sorted(old_roots)), here,
            )  # fmt: skip
        return len(updates)
    finally:
        con.close()


def _plan(con: sqlite3.Connection, here: Path) -> tuple[list[tuple], set[str]]:
    have = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    updates, old_roots = [], set()
    for table, key, col in LOCATIONS:
        if table not in have or col not in {r[1] for r in con.execute(f"pragma table_info({table})")}:
            continue
        for k, value in con.execute(f"select {key}, {col} from {table}").fetchall():
            moved = _moved(value, here)
            if moved is not None:
                updates.append((table, key, col, k, moved[0]))
                old_roots.add(moved[1])
    return updates, old_roots


def _moved(value, here: Path) -> tuple[str, str] | None:
    """(new location, old root) when ``value`` points into another home's artifacts."""
    if not isinstance(value, str):
        return None
    if value.startswith("file://"):
        path, uri = unquote(urlparse(value).path), True
    elif value.startswith("/"):
        path, uri = value, False
    else:
        return None  # models:/…, runs:/…, a remote store: not a path in a home
    i = path.rfind(_ROOT + "/") if _ROOT + "/" in path else (len(path) - len(_ROOT) if path.endswith(_ROOT) else -1)
    if i < 0:
        return None
    old_root, rest = path[: i + len(_ROOT)], path[i + len(_ROOT):]
    if old_root == str(here):
        return None
    new = str(here) + rest
    return (Path(new).as_uri() if uri else new), old_root
