"""The warehouse: immutable, versioned partition files with DuckDB as the catalog.

Layout under ``DIDACT_HOME``::

    warehouse.duckdb                      catalog: versions, heads, lineage (+ views)
    warehouse.lock                        advisory lock serialising catalog access
    data/<asset>/<partition>/v0003-<id>/<table>/part-00000.parquet

Why this shape: DuckDB allows one writing process per file, and while one process
holds a read-write connection no other process can open the file at all.  Dagster
runs steps in separate processes and backfills run in parallel, so the heavy data
lives in immutable Parquet files, written by any number of processes at once (a
table is a folder of parts, one per block of whole nodes, so worker processes can write
parts in parallel; ``data.parts`` writes, reads and hashes them), and the DuckDB file
only holds the small catalog.  Every catalog access opens a short
connection under an advisory file lock (shared for reads, exclusive for writes).

A materialisation writes its files into a private temporary folder, then, in one
catalog transaction, takes the next version number, renames the folder into place and
moves the partition's *head* to it.  So a partition write is atomic (readers see the
old head or the new one, never half a write), idempotent (re-materialising adds a new
version and moves the head; rows are never duplicated) and every earlier version stays
addressable — :meth:`Warehouse.rollback` moves the head back — until :meth:`prune`
removes versions beyond an explicit retention setting.

The catalog also keeps DuckDB views ``<asset>__<table>`` over every partition's head,
so ``duckdb warehouse.duckdb "select * from ai_ready_metrics__samples"`` works.

A home can be moved or restored elsewhere: the catalog stores version folders relative
to the home (older catalogs' absolute paths are mapped by folder name under this
home's ``data/``), and the views, which DuckDB needs absolute, are re-made when the
catalog finds itself in another folder than the one it last recorded.  Reads check the
parts against the catalog (``data.verify``); each version folder carries a manifest and
each partition a head log (``data.folders``), from which ``data.catalog_rebuild``
recreates a lost catalog.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from didact_core.config import ensure_home
from didact_core.data import folders
from didact_core.data.catalog import LOCK_TIMEOUT_S, SCHEMA, Catalog
from didact_core.data.parts import (
    PartitionWriter,
    combine_digests,
    dict_columns,
    frame_digest,
    fsync,
    raise_if_full,
    read_part,
)
from didact_core.data.verify import damaged_error, version_problems
from didact_core.errors import DidactError

log = logging.getLogger(__name__)

__all__ = ["LINEAGE_COLUMNS", "LOCK_TIMEOUT_S", "SCHEMA", "VersionInfo", "Warehouse"]

LINEAGE_COLUMNS = (
    "id", "ts", "event", "asset", "partition", "version", "data_version", "code_version",
    "upstream", "run_id", "mlflow_run_id", "model_version", "actor", "reason",
)  # fmt: skip


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of a partition."""

    asset: str
    partition: str
    version: int
    data_version: str
    code_version: str | None
    created_at: dt.datetime
    run_id: str | None
    path: Path
    tables: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    pruned: bool = False
    #: per table, its parts' records (name, rows, bytes, digest, xxh3); empty for old versions
    parts: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``asset/partition@vN:data_version`` — how lineage names an upstream."""
        return f"{self.asset}/{self.partition}@v{self.version}:{self.data_version}"


class Warehouse:
    """Versioned partitions + lineage under one home folder (see module docstring)."""

    def __init__(self, home, retention_versions: int = 0, allow_existing_data: bool = False):
        self.home = ensure_home(Path(home))
        self.path = self.home / "warehouse.duckdb"
        self.lock_path = self.home / "warehouse.lock"
        self.data_dir = self.home / "data"
        self.retention_versions = retention_versions
        self.data_dir.mkdir(exist_ok=True)
        # allow_existing_data: only for `didact catalog rebuild`, which fills the new catalog from data/
        self._cat = Catalog(self.home, allow_existing_data=allow_existing_data)
        self._hashed: set = set()  # parts this process found intact (see data.verify)
        if self._cat.recorded_home != str(self.home):
            self._moved_in()

    def _moved_in(self) -> None:
        """First open in this folder (a new, moved or restored home): re-make the views,
        whose paths DuckDB needs absolute, and record where the catalog now lives."""
        with self._db(write=True) as con:
            assets = self.refresh_all_views(con)
        if self._cat.recorded_home is not None or assets:
            log.info("catalog %s: home is now %s (was %s); views re-made", self.path, self.home, self._cat.recorded_home)

    def refresh_all_views(self, con) -> list[str]:
        """Re-make every asset's views and record this folder as the catalog's home."""
        assets = [r[0] for r in con.execute("select distinct asset from partition_heads").fetchall()]
        for asset in assets:
            self._refresh_views(con, asset)
        con.execute("insert or replace into catalog_meta values ('home', ?)", [str(self.home)])
        return assets

    def _db(self, write: bool):
        return self._cat.connect(write)

    def catalog(self, write: bool = False):
        """A short catalog connection under the warehouse lock (``with wh.catalog(True) as con``).

        For other didact tables that live in the same DuckDB file (the OOD review queue).
        Keep the block short: every Dagster step waits for the lock while it is held.
        """
        return self._db(write=write)

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run a read-only query against the catalog (and its views)."""
        with self._db(write=False) as con:
            return con.execute(query, params or []).df()

    # -- writing ------------------------------------------------------------------
    def writer(self, asset: str, partition: str) -> PartitionWriter:
        """A writer for the next version of ``asset/partition`` (use ``with``)."""
        _check_name("asset", asset)
        _check_name("partition", partition)
        return PartitionWriter(self, asset, partition)

    def write(
        self,
        asset: str,
        partition: str,
        tables: dict[str, pd.DataFrame | Iterable[pd.DataFrame]],
        **commit_kwargs,
    ) -> VersionInfo:
        """Write whole tables (frames or iterables of frames) as a new version."""
        with self.writer(asset, partition) as w:
            for name, frames in tables.items():
                for df in [frames] if isinstance(frames, pd.DataFrame) else frames:
                    w.write(name, df)
            return w.commit(**commit_kwargs)

    def publish(self, asset, partition, tmp: Path, data_version, code_version, upstream, run_id, rows, metadata,
                parts: dict | None = None):  # fmt: skip
        """Make the files in ``tmp`` the partition's next version and its head, in one
        catalog transaction (``PartitionWriter.commit`` calls this)."""
        now = dt.datetime.now(dt.timezone.utc)
        with self._db(write=True) as con:
            known = {Path(r[0]).name for r in con.execute(
                "select path from partition_versions where asset=? and partition=?", [asset, partition]).fetchall()}  # fmt: skip
            folders.remove_stale(tmp.parent, known)
            con.execute("BEGIN")
            try:
                n = con.execute(
                    "select coalesce(max(version), 0) + 1 from partition_versions where asset=? and partition=?",
                    [asset, partition],
                ).fetchone()[0]
                final = tmp.parent / f"v{n:04d}-{uuid.uuid4().hex[:6]}"
                folders.write_manifest(tmp, {
                    "asset": asset, "partition": partition, "version": n, "folder": final.name,
                    "data_version": data_version, "code_version": code_version, "upstream": upstream,
                    "run_id": run_id, "created": now.isoformat(), "rows": rows, "tables": parts or {},
                    "metadata": metadata,
                })  # fmt: skip
                con.execute(
                    "insert into partition_versions (asset, partition, version, data_version, code_version, created_at,"
                    " run_id, path, tables, metadata, pruned, parts) values (?,?,?,?,?,?,?,?,?,?,false,?)",
                    [asset, partition, n, data_version, code_version, now, run_id, folders.relative(self.data_dir, final),
                     json.dumps(rows), json.dumps(metadata, default=str), json.dumps(parts) if parts else None],
                )  # fmt: skip
                con.execute(
                    "insert or replace into partition_heads values (?,?,?,?)", [asset, partition, n, now]
                )
                self._lineage(
                    con, event="materialize", asset=asset, partition=partition, version=f"v{n}",
                    data_version=data_version, code_version=code_version, upstream=upstream, run_id=run_id,
                )  # fmt: skip
                self._rename_into_place(con, tmp, final, n, now)
            except BaseException:
                con.execute("ROLLBACK")
                raise
        info = self.version(asset, partition, n)
        log.info("%s/%s: committed v%d (%s, %s rows)", asset, partition, n, data_version, rows)
        if self.retention_versions:
            self.prune(self.retention_versions, asset=asset, partition=partition)
        return info

    def _rename_into_place(self, con, tmp: Path, final: Path, n: int, now: dt.datetime) -> None:
        try:
            os.rename(tmp, final)
        except OSError as e:
            raise_if_full(e, final.parent, f"publishing v{n}")
            raise
        try:
            fsync(final.parent)
            folders.append_head(final.parent, n, "materialize", now.isoformat())
            self._refresh_views(con, final.parent.parent.name)
            con.execute("COMMIT")
        except BaseException as e:
            os.rename(final, tmp)  # put it back so the abort path removes it
            if isinstance(e, OSError | duckdb.IOException):
                err = OSError(getattr(e, "errno", None), str(e))
                raise_if_full(err, final.parent, f"committing v{n}")
            raise

    # -- reading ------------------------------------------------------------------
    def head(self, asset: str, partition: str) -> VersionInfo | None:
        """The current version of a partition, or ``None`` if it was never written."""
        rows = self._versions(asset, partition, head_only=True)
        return rows[0] if rows else None

    def require(self, asset: str, partition: str) -> VersionInfo:
        """The head version; a clear error when the partition does not exist."""
        v = self.head(asset, partition)
        if v is None:
            raise DidactError(
                f"{asset} partition {partition}",
                "has not been materialised",
                f"materialise {asset} for {partition} first",
            )
        return v

    def version(self, asset: str, partition: str, version: int) -> VersionInfo:
        rows = [v for v in self._versions(asset, partition) if v.version == version]
        if not rows:
            known = [f"v{v.version}" for v in self._versions(asset, partition)]
            raise DidactError(
                f"{asset}/{partition} version v{version}",
                "does not exist",
                f"known versions: {', '.join(known) or 'none'}",
            )
        return rows[0]

    def versions(self, asset: str, partition: str) -> list[VersionInfo]:
        return self._versions(asset, partition)

    def _versions(self, asset, partition, head_only=False) -> list[VersionInfo]:
        q = "select v.* from partition_versions v"
        if head_only:
            q += " join partition_heads h using (asset, partition, version)"
        q += " where v.asset=? and v.partition=? order by v.version"
        with self._db(write=False) as con:
            df = con.execute(q, [asset, partition]).df()
        return [_info(r, self.data_dir) for r in df.to_dict("records")]

    def stored(self, asset: str | None = None, partition: str | None = None, heads_only: bool = False):
        """(version, is_head) of every stored (unpruned) version, optionally filtered."""
        q = """select v.*, h.version as head from partition_versions v
               left join partition_heads h using (asset, partition) where not v.pruned"""
        args = []
        for col, val in (("asset", asset), ("partition", partition)):
            if val:
                q += f" and v.{col}=?"
                args.append(val)
        if heads_only:
            q += " and v.version = h.version"
        with self._db(write=False) as con:
            df = con.execute(q + " order by v.asset, v.partition, v.version", args).df()
        return [(_info(r, self.data_dir), r["version"] == r["head"]) for r in df.to_dict("records")]

    def partitions(self, asset: str) -> list[str]:
        """Partitions of ``asset`` that have a head, sorted."""
        df = self.sql("select partition from partition_heads where asset=? order by partition", [asset])
        return df["partition"].tolist()

    def read(
        self,
        asset: str,
        partition: str,
        table: str,
        version: int | None = None,
        columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """A whole table of a partition version (head by default)."""
        parts = self._parts(asset, partition, table, version)
        tables = [pq.read_table(p, columns=columns, read_dictionary=dict_columns(p)) for p in parts]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def iter_parts(self, asset: str, partition: str, table: str, version: int | None = None) -> Iterator[pd.DataFrame]:
        """Stream a table part by part (each part holds whole nodes)."""
        for p in self._parts(asset, partition, table, version):
            yield read_part(p)

    def part_paths(self, asset: str, partition: str, table: str, version: int | None = None) -> list[Path]:
        """The part files of a table, in order — for workers reading parts themselves."""
        return self._parts(asset, partition, table, version)

    def verify(self, asset: str, partition: str, version: int | None = None) -> str:
        """Re-hash a stored version's decoded contents; equals its data version when intact
        (slower than the check every read makes: it decodes every part)."""
        info = self.require(asset, partition) if version is None else self.version(asset, partition, version)
        return combine_digests(
            {t: [frame_digest(read_part(p)) for p in self._parts(asset, partition, t, info.version)] for t in info.tables}
        )

    def check(self, info: VersionInfo, tables=None) -> None:
        """Raise a clear error when a version's parts differ from the catalog's records."""
        problems = version_problems(info, tables=tables, hashed=self._hashed)
        if problems:
            raise damaged_error(info, problems, self.versions(info.asset, info.partition))

    def _parts(self, asset, partition, table, version) -> list[Path]:
        info = self.require(asset, partition) if version is None else self.version(asset, partition, version)
        if info.pruned:
            raise DidactError(
                f"{asset}/{partition} v{info.version}", "was pruned by the retention setting", "pick a newer version"
            )
        if table not in info.tables:
            raise DidactError(
                f"{asset}/{partition} v{info.version}",
                f"has no table {table!r}",
                f"it has {sorted(info.tables) or 'no tables'}",
            )
        self.check(info, tables=[table])
        parts = sorted((info.path / table).glob("part-*.parquet"))
        if not parts:
            raise DidactError(
                f"warehouse folder {info.path / table}",
                "has no data files",
                "restore it from backup or re-materialise the partition",
            )
        return parts

    # -- versions: rollback and retention ---------------------------------------------
    def rollback(self, asset: str, partition: str, to_version: int, actor: str = "", reason: str = "") -> VersionInfo:
        """Make an earlier version the partition's head again (recorded in lineage)."""
        target = self.version(asset, partition, to_version)
        if target.pruned:
            raise DidactError(
                f"{asset}/{partition} v{to_version}",
                "was pruned by the retention setting and cannot be restored",
                "pick a version that is still stored (didact lineage shows them)",
            )
        current = self.require(asset, partition)
        now = dt.datetime.now(dt.timezone.utc)
        with self._db(write=True) as con:
            con.execute("BEGIN")
            con.execute("update partition_heads set version=?, updated_at=? where asset=? and partition=?",
                        [to_version, now, asset, partition])  # fmt: skip
            self._lineage(
                con, event="rollback", asset=asset, partition=partition, version=f"v{to_version}",
                data_version=target.data_version, code_version=target.code_version,
                upstream={"from": f"v{current.version}"}, actor=actor or _whoami(), reason=reason,
            )  # fmt: skip
            self._refresh_views(con, asset)
            con.execute("COMMIT")
        folders.append_head(target.path.parent, to_version, "rollback", now.isoformat(), actor=actor or _whoami(),
                            reason=reason, from_version=current.version)  # fmt: skip
        log.info("%s/%s: head moved v%d → v%d", asset, partition, current.version, to_version)
        return self.version(asset, partition, to_version)

    def prune(self, keep: int, asset: str | None = None, partition: str | None = None) -> list[VersionInfo]:
        """Delete stored versions beyond the newest ``keep`` per partition (never a head)."""
        if keep < 1:
            raise DidactError(f"retention keep={keep}", "must keep at least one version")
        q = """select v.*, h.version as head from partition_versions v
               join partition_heads h using (asset, partition)
               where not v.pruned"""
        args = []
        if asset:
            q += " and v.asset=?"
            args.append(asset)
        if partition:
            q += " and v.partition=?"
            args.append(partition)
        with self._db(write=True) as con:
            df = con.execute(q + " order by v.asset, v.partition, v.version desc", args).df()
            pruned = []
            for (_a, _p), g in df.groupby(["asset", "partition"], sort=False):
                for rank, r in enumerate(g.to_dict("records")):
                    if rank >= keep and r["version"] != r["head"]:
                        shutil.rmtree(folders.resolve(self.data_dir, r["asset"], r["partition"], r["path"]),
                                      ignore_errors=True)  # fmt: skip
                        con.execute(
                            "update partition_versions set pruned=true where asset=? and partition=? and version=?",
                            [r["asset"], r["partition"], r["version"]],
                        )
                        self._lineage(con, event="prune", asset=r["asset"], partition=r["partition"],
                                      version=f"v{r['version']}", data_version=r["data_version"])  # fmt: skip
                        pruned.append(_info(r, self.data_dir))
            self._remove_stale(con, asset, partition)
        return pruned

    def _remove_stale(self, con, asset: str | None, partition: str | None) -> None:
        """Dead writers' temporary folders and orphan version folders (``data.folders``)."""
        known: dict[tuple[str, str], set[str]] = {}
        for a, p, path in con.execute("select asset, partition, path from partition_versions").fetchall():
            known.setdefault((a, p), set()).add(Path(path).name)
        for part_dir in sorted(self.data_dir.glob(f"{asset or '*'}/{partition or '*'}")):
            if part_dir.is_dir():
                folders.remove_stale(part_dir, known.get((part_dir.parent.name, part_dir.name), set()))

    # -- lineage ------------------------------------------------------------------------
    def record(self, event: str, asset: str, **fields) -> None:
        """Add a lineage row (model registrations, alias moves, reviews, ...)."""
        with self._db(write=True) as con:
            self._lineage(con, event=event, asset=asset, **fields)

    def lineage_row(self, con, event: str, asset: str, **fields) -> None:
        """Add a lineage row inside the caller's catalog transaction (``ts`` may be given)."""
        self._lineage(con, event=event, asset=asset, **fields)

    def _lineage(self, con, event: str, asset: str, **fields) -> None:
        unknown = set(fields) - set(LINEAGE_COLUMNS)
        if unknown:
            raise DidactError("lineage record", f"unknown field(s) {sorted(unknown)}")
        row = {"ts": dt.datetime.now(dt.timezone.utc), "event": event, "asset": asset, **fields}
        if "upstream" in row and not isinstance(row["upstream"], str):
            row["upstream"] = json.dumps(row["upstream"], default=str)
        cols = list(row)
        con.execute(
            f"insert into lineage ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",
            [row[c] for c in cols],
        )

    def lineage(self, asset: str | None = None, partition: str | None = None, event: str | None = None) -> pd.DataFrame:
        """Lineage rows, oldest first, optionally filtered."""
        q, args = "select * from lineage where true", []
        for col, val in (("asset", asset), ("partition", partition), ("event", event)):
            if val is not None:
                q += f" and {col}=?"
                args.append(val)
        return self.sql(q + " order by id", args)

    # -- views ----------------------------------------------------------------------------
    def _refresh_views(self, con, asset: str) -> None:
        rows = con.execute(
            """select v.path, v.tables from partition_versions v
               join partition_heads h using (asset, partition, version) where v.asset=?""",
            [asset],
        ).fetchall()
        tables: dict[str, list[str]] = {}
        for path, tjson in rows:
            folder = folders.resolve(self.data_dir, asset, Path(path).parent.name, path)  # this home's, moved or not
            for t in json.loads(tjson or "{}"):
                tables.setdefault(t, []).append(str(folder / t / "*.parquet"))
        for t, paths in tables.items():
            listing = ", ".join("'" + p.replace("'", "''") + "'" for p in sorted(paths))
            con.execute(
                f'create or replace view "{asset}__{t}" as '
                f"select * from read_parquet([{listing}], union_by_name=true)"
            )


def _info(r: dict, data_dir: Path) -> VersionInfo:
    return VersionInfo(
        asset=r["asset"],
        partition=r["partition"],
        version=int(r["version"]),
        data_version=r["data_version"],
        code_version=r["code_version"],
        created_at=r["created_at"],
        run_id=r["run_id"],
        path=folders.resolve(data_dir, r["asset"], r["partition"], r["path"]),
        tables=json.loads(r["tables"] or "{}"),
        metadata=json.loads(r["metadata"] or "{}"),
        pruned=bool(r["pruned"]),
        parts=json.loads(r["parts"]) if isinstance(r.get("parts"), str) else {},
    )


def _check_name(what: str, value: str) -> None:
    if not value or "/" in value or value.startswith(".") or "\\" in value:
        raise DidactError(f"{what} {value!r}", "is not a valid name", "use letters, digits, - and _")


def _whoami() -> str:
    try:
        return os.getlogin()
    except OSError:
        return getpass.getuser()
