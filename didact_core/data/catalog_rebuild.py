"""``didact catalog rebuild``: recreate a lost or damaged catalog from ``data/``.

From each version folder's ``manifest.json`` (``data.folders``) it restores the
version (tables, parts with sizes and hashes, data/code version, upstream, run,
metadata, created) and a ``materialize`` lineage row; from each partition's
``heads.jsonl`` the head (the version of the last recorded head move whose folder
still exists; else the newest version) and the ``rollback`` lineage rows.

Lost in a rebuild: lineage rows other than materialisations and rollbacks (model
registrations, alias moves, prunes, reviews), the OOD review queue and scoring
statistics, and the record of pruned versions.  Versions written before manifests
existed (commit 88aa664 and earlier) are rebuilt from their Parquet files: tables and
rows from the files, digests recomputed from the data (so their data version is
recomputed too), no metadata, no upstream, the newest is the head.

A damaged catalog is kept beside the new one as ``warehouse.duckdb.before-rebuild-<time>``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from didact_core.config import ensure_home
from didact_core.data import folders
from didact_core.data.catalog import Catalog
from didact_core.data.parts import combine_digests, frame_digest, part_record, read_part
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    versions: int = 0
    partitions: int = 0
    without_manifest: list[str] = field(default_factory=list)
    kept_damaged: Path | None = None


def rebuild_catalog(home, force: bool = False) -> RebuildReport:
    """Rebuild ``home``'s catalog from its version folders (see module docstring).

    A catalog that opens fine is replaced only with ``force`` (its extra lineage would be lost)."""
    home = ensure_home(Path(home))
    db = home / "warehouse.duckdb"
    report = RebuildReport()
    if db.exists():
        if not force and _healthy(home):
            raise DidactError(
                f"catalog {db}", "opens fine; rebuilding it would drop its lineage beyond materialisations",
                "pass --force to rebuild anyway",
            )  # fmt: skip
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        report.kept_damaged = db.with_name(f"warehouse.duckdb.before-rebuild-{stamp}")
        os.rename(db, report.kept_damaged)
        wal = db.with_name("warehouse.duckdb.wal")
        if wal.exists():
            os.rename(wal, report.kept_damaged.with_name(report.kept_damaged.name + ".wal"))
    wh = Warehouse(home, allow_existing_data=True)
    by_partition: dict[Path, list[dict]] = {}
    for folder in folders.stored_versions(wh.data_dir):
        entry = _from_manifest(folder) or _from_files(folder)
        if entry.pop("_no_manifest", False):
            report.without_manifest.append(str(folder.relative_to(home)))
        by_partition.setdefault(folder.parent, []).append(entry)
    with wh.catalog(write=True) as con:
        con.execute("BEGIN")
        lineage = []
        for part_dir, entries in by_partition.items():
            lineage += _insert_partition(con, wh.data_dir, part_dir, sorted(entries, key=lambda e: e["version"]))
        for row in sorted(lineage, key=lambda r: str(r["ts"])):
            wh.lineage_row(con, **row)
        wh.lineage_row(con, event="catalog_rebuild", asset="*", reason=f"{len(lineage)} lineage rows from data/")
        wh.refresh_all_views(con)
        con.execute("COMMIT")
    report.partitions = len(by_partition)
    report.versions = sum(len(e) for e in by_partition.values())
    log.info("catalog %s rebuilt: %d versions of %d partitions", db, report.versions, report.partitions)
    return report


def _healthy(home: Path) -> bool:
    try:
        Catalog(home)
    except DidactError:
        return False
    return True


def _from_manifest(folder: Path) -> dict | None:
    m = folders.read_manifest(folder)
    if not m or "tables" not in m:
        return None
    return {
        "version": folders.version_number(folder), "folder": folder, "data_version": m.get("data_version", ""),
        "code_version": m.get("code_version"), "created": m.get("created"), "run_id": m.get("run_id"),
        "rows": m.get("rows", {}), "parts": m.get("tables") or None, "metadata": m.get("metadata", {}),
        "upstream": m.get("upstream", {}),
    }  # fmt: skip


def _from_files(folder: Path) -> dict:
    """A version without a manifest: tables, rows and digests from its Parquet files."""
    parts: dict[str, list[dict]] = {}
    for table_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(table_dir.glob("part-*.parquet"))
        if files:
            parts[table_dir.name] = [part_record(f, *_rows_digest(f)) for f in files]
    created = dt.datetime.fromtimestamp(folder.stat().st_mtime, dt.timezone.utc).isoformat()
    return {
        "version": folders.version_number(folder), "folder": folder, "created": created, "code_version": None,
        "data_version": combine_digests({t: [r["digest"] for r in recs] for t, recs in parts.items()}),
        "run_id": None, "rows": {t: sum(r["rows"] for r in recs) for t, recs in parts.items()}, "parts": parts,
        "metadata": {"rebuilt": "from the Parquet files (no manifest): metadata and upstream were lost"},
        "upstream": {}, "_no_manifest": True,
    }  # fmt: skip


def _rows_digest(path: Path) -> tuple[int, str]:
    df = read_part(path)
    return len(df), frame_digest(df)


def _insert_partition(con, data_dir: Path, part_dir: Path, entries: list[dict]) -> list[dict]:
    """Insert a partition's versions and head; returns its lineage rows."""
    asset, partition = part_dir.parent.name, part_dir.name
    lineage = []
    for e in entries:
        con.execute(
            "insert into partition_versions (asset, partition, version, data_version, code_version, created_at,"
            " run_id, path, tables, metadata, pruned, parts) values (?,?,?,?,?,?,?,?,?,?,false,?)",
            [asset, partition, e["version"], e["data_version"], e["code_version"], e["created"], e["run_id"],
             folders.relative(data_dir, e["folder"]), json.dumps(e["rows"]), json.dumps(e["metadata"], default=str),
             json.dumps(e["parts"]) if e["parts"] else None],
        )  # fmt: skip
        lineage.append(dict(event="materialize", asset=asset, partition=partition, version=f"v{e['version']}",
                            data_version=e["data_version"], code_version=e["code_version"], upstream=e["upstream"],
                            run_id=e["run_id"], ts=e["created"]))  # fmt: skip
    present = {e["version"]: e for e in entries}
    head, when = entries[-1]["version"], entries[-1]["created"]
    for move in folders.read_heads(part_dir):
        if move.get("version") not in present:
            continue
        head, when = move["version"], move.get("ts") or when
        if move.get("event") == "rollback":
            lineage.append(dict(event="rollback", asset=asset, partition=partition, version=f"v{head}",
                                data_version=present[head]["data_version"], ts=when,
                                upstream={"from": f"v{move.get('from_version')}"}, actor=move.get("actor"),
                                reason=move.get("reason")))  # fmt: skip
    con.execute("insert or replace into partition_heads values (?,?,?,?)", [asset, partition, head, when])
    return lineage
