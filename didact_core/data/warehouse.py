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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import getpass
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from didact_core.config import ensure_home
from didact_core.data.parts import PartitionWriter, combine_digests, dict_columns, frame_digest, fsync, read_part
from didact_core.errors import DidactError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partition_versions (
    asset VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    data_version VARCHAR NOT NULL,
    code_version VARCHAR,
    created_at TIMESTAMPTZ NOT NULL,
    run_id VARCHAR,
    path VARCHAR NOT NULL,
    tables JSON,
    metadata JSON,
    pruned BOOLEAN DEFAULT false,
    PRIMARY KEY (asset, partition, version)
);
CREATE TABLE IF NOT EXISTS partition_heads (
    asset VARCHAR NOT NULL,
    partition VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (asset, partition)
);
CREATE SEQUENCE IF NOT EXISTS lineage_id;
CREATE TABLE IF NOT EXISTS lineage (
    id BIGINT DEFAULT nextval('lineage_id') PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    event VARCHAR NOT NULL,
    asset VARCHAR NOT NULL,
    partition VARCHAR,
    version VARCHAR,
    data_version VARCHAR,
    code_version VARCHAR,
    upstream JSON,
    run_id VARCHAR,
    mlflow_run_id VARCHAR,
    model_version VARCHAR,
    actor VARCHAR,
    reason VARCHAR
);
"""

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

    @property
    def ref(self) -> str:
        """``asset/partition@vN:data_version`` — how lineage names an upstream."""
        return f"{self.asset}/{self.partition}@v{self.version}:{self.data_version}"


class Warehouse:
    """Versioned partitions + lineage under one home folder (see module docstring)."""

    def __init__(self, home, retention_versions: int = 0):
        self.home = ensure_home(Path(home))
        self.path = self.home / "warehouse.duckdb"
        self.lock_path = self.home / "warehouse.lock"
        self.data_dir = self.home / "data"
        self.retention_versions = retention_versions
        self.data_dir.mkdir(exist_ok=True)
        if not self.path.exists():
            with self._db(write=True) as con:
                con.execute(_SCHEMA)
        else:
            with self._db(write=False) as con:
                have = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
            if "lineage" not in have:
                with self._db(write=True) as con:
                    con.execute(_SCHEMA)

    # -- catalog access ---------------------------------------------------------
    @contextlib.contextmanager
    def _db(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        with open(self.lock_path, "a+") as lock:
            self._flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH, deadline)
            try:
                con = self._connect(write, deadline)
                try:
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _flock(self, lock, mode: int, deadline: float) -> None:
        wait = 0.01
        while True:
            try:
                fcntl.flock(lock, mode | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise DidactError(
                    f"warehouse lock {self.lock_path}",
                    f"still held by another process after {LOCK_TIMEOUT_S:.0f} s",
                    "wait for the running materialisation to finish, or stop the process holding it",
                )
            time.sleep(wait)
            wait = min(wait * 2, 0.5)

    def _connect(self, write: bool, deadline: float) -> duckdb.DuckDBPyConnection:
        wait = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=not write)
            except duckdb.IOException as e:
                # someone outside didact (a duckdb shell?) holds the file
                if time.monotonic() > deadline:
                    raise DidactError(
                        f"warehouse {self.path}",
                        f"cannot be opened ({e})",
                        "close other programs that have the DuckDB file open",
                    ) from None
                time.sleep(wait)
                wait = min(wait * 2, 1.0)

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

    def publish(self, asset, partition, tmp: Path, data_version, code_version, upstream, run_id, rows, metadata):
        """Make the files in ``tmp`` the partition's next version and its head, in one
        catalog transaction (``PartitionWriter.commit`` calls this)."""
        now = dt.datetime.now(dt.timezone.utc)
        with self._db(write=True) as con:
            con.execute("BEGIN")
            try:
                n = con.execute(
                    "select coalesce(max(version), 0) + 1 from partition_versions where asset=? and partition=?",
                    [asset, partition],
                ).fetchone()[0]
                final = tmp.parent / f"v{n:04d}-{uuid.uuid4().hex[:6]}"
                con.execute(
                    "insert into partition_versions values (?,?,?,?,?,?,?,?,?,?,false)",
                    [asset, partition, n, data_version, code_version, now, run_id, str(final),
                     json.dumps(rows), json.dumps(metadata, default=str)],
                )  # fmt: skip
                con.execute(
                    "insert or replace into partition_heads values (?,?,?,?)", [asset, partition, n, now]
                )
                self._lineage(
                    con, event="materialize", asset=asset, partition=partition, version=f"v{n}",
                    data_version=data_version, code_version=code_version, upstream=upstream, run_id=run_id,
                )  # fmt: skip
                os.rename(tmp, final)
                fsync(final.parent)
                try:
                    self._refresh_views(con, asset)
                    con.execute("COMMIT")
                except BaseException:
                    os.rename(final, tmp)  # put it back so the abort path removes it
                    raise
            except BaseException:
                con.execute("ROLLBACK")
                raise
        info = self.version(asset, partition, n)
        log.info("%s/%s: committed v%d (%s, %s rows)", asset, partition, n, data_version, rows)
        if self.retention_versions:
            self.prune(self.retention_versions, asset=asset, partition=partition)
        return info

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
        return [_info(r) for r in df.to_dict("records")]

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
        """Re-hash a stored version from its files; equals its data version when intact."""
        info = self.require(asset, partition) if version is None else self.version(asset, partition, version)
        return combine_digests(
            {t: [frame_digest(read_part(p)) for p in self._parts(asset, partition, t, info.version)] for t in info.tables}
        )

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
                        shutil.rmtree(r["path"], ignore_errors=True)
                        con.execute(
                            "update partition_versions set pruned=true where asset=? and partition=? and version=?",
                            [r["asset"], r["partition"], r["version"]],
                        )
                        self._lineage(con, event="prune", asset=r["asset"], partition=r["partition"],
                                      version=f"v{r['version']}", data_version=r["data_version"])  # fmt: skip
                        pruned.append(_info(r))
        self._gc_tmp(asset)
        return pruned

    def _gc_tmp(self, asset: str | None) -> None:
        """Remove temporary folders of writers that died more than an hour ago."""
        root = self.data_dir / asset if asset else self.data_dir
        cutoff = time.time() - 3600
        for tmp in root.glob("**/.tmp-*"):
            if tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)

    # -- lineage ------------------------------------------------------------------------
    def record(self, event: str, asset: str, **fields) -> None:
        """Add a lineage row (model registrations, alias moves, reviews, ...)."""
        with self._db(write=True) as con:
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
            for t in json.loads(tjson or "{}"):
                tables.setdefault(t, []).append(str(Path(path) / t / "*.parquet"))
        for t, paths in tables.items():
            listing = ", ".join("'" + p.replace("'", "''") + "'" for p in sorted(paths))
            con.execute(
                f'create or replace view "{asset}__{t}" as '
                f"select * from read_parquet([{listing}], union_by_name=true)"
            )


def _info(r: dict) -> VersionInfo:
    return VersionInfo(
        asset=r["asset"],
        partition=r["partition"],
        version=int(r["version"]),
        data_version=r["data_version"],
        code_version=r["code_version"],
        created_at=r["created_at"],
        run_id=r["run_id"],
        path=Path(r["path"]),
        tables=json.loads(r["tables"] or "{}"),
        metadata=json.loads(r["metadata"] or "{}"),
        pruned=bool(r["pruned"]),
    )


def _check_name(what: str, value: str) -> None:
    if not value or "/" in value or value.startswith(".") or "\\" in value:
        raise DidactError(f"{what} {value!r}", "is not a valid name", "use letters, digits, - and _")


def _whoami() -> str:
    try:
        return os.getlogin()
    except OSError:
        return getpass.getuser()
