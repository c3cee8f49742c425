"""The catalog file: ``warehouse.duckdb`` opened for milliseconds under an advisory lock.

Every access opens a short DuckDB connection under ``warehouse.lock`` (shared for reads,
exclusive for writes), because DuckDB allows one writing process per file and, while
one holds it read-write, no other process can open it at all.

A damaged catalog is named at once with the fix, never waited on: a zero-byte file (an
interrupted copy, a full disk), a garbled one (DuckDB's checksum errors), and a missing
one beside ``data/`` that already holds versions — creating a new empty catalog there
would orphan them, so that is refused and ``didact catalog rebuild`` named instead.
Only a lock held by another program is waited for (up to ``LOCK_TIMEOUT_S``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from didact_core.data.folders import stored_versions
from didact_core.errors import DidactError

LOCK_TIMEOUT_S = 300.0

SCHEMA = """
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
    parts JSON,
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
CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""

# catalogs written before per-part records (commit 88aa664 and earlier) lack these
_MIGRATIONS = ("ALTER TABLE partition_versions ADD COLUMN IF NOT EXISTS parts JSON",)

_REBUILD = (
    "run `didact catalog rebuild` to rebuild it from the parts under data/, "
    "or restore warehouse.duckdb from a backup"
)


class Catalog:
    """Short, locked connections to one home's catalog file (see module docstring)."""

    def __init__(self, home: Path, allow_existing_data: bool = False):
        self.home = home
        self.path = home / "warehouse.duckdb"
        self.lock_path = home / "warehouse.lock"
        self.data_dir = home / "data"
        self.recorded_home: str | None = None
        self._may_create = allow_existing_data
        if self.path.exists():
            self._check_schema()
        else:
            with self.connect(write=True, create=True) as con:
                con.execute(SCHEMA)

    def _check_schema(self) -> None:
        with self.connect(write=False) as con:
            have = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
            cols = {r[0] for r in con.execute(
                "select column_name from duckdb_columns() where table_name='partition_versions'").fetchall()}  # fmt: skip
            if "catalog_meta" in have:
                row = con.execute("select value from catalog_meta where key='home'").fetchone()
                self.recorded_home = row[0] if row else None
        if not {"lineage", "catalog_meta"} <= have or "parts" not in cols:
            with self.connect(write=True) as con:
                con.execute(SCHEMA)
                for stmt in _MIGRATIONS:
                    con.execute(stmt)

    @contextlib.contextmanager
    def connect(self, write: bool, create: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection under the lock; ``create`` allows making a new catalog file."""
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        with open(self.lock_path, "a+") as lock:
            self._flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH, deadline)
            try:
                self._check_file(create)
                con = self._connect(write, deadline)
                try:
                    yield con
                except duckdb.Error as e:
                    if _is_damage(e):
                        raise self.damaged(e) from None
                    raise
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _check_file(self, create: bool) -> None:
        if not self.path.exists():
            n = 0 if self._may_create else len(stored_versions(self.data_dir))
            if not create or n:
                raise DidactError(
                    f"catalog {self.path}",
                    f"is missing, but {self.data_dir} holds {n} stored version(s); a new empty catalog would orphan them"
                    if n else "is missing (deleted while didact was using it)",
                    _REBUILD,
                )
        elif self.path.stat().st_size == 0:
            raise DidactError(
                f"catalog {self.path}",
                "is empty (0 bytes; an interrupted copy or a full disk?), not a DuckDB file",
                _REBUILD,
            )

    def damaged(self, e: Exception) -> DidactError:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return DidactError(f"catalog {self.path}", f"is damaged ({first})", _REBUILD)

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
            except duckdb.Error as e:
                if not _is_lock_conflict(e):
                    raise self.damaged(e) from None
                # someone outside didact (a duckdb shell?) holds the file
                if time.monotonic() > deadline:
                    raise DidactError(
                        f"warehouse {self.path}",
                        f"cannot be opened ({e})",
                        "close other programs that have the DuckDB file open",
                    ) from None
                time.sleep(wait)
                wait = min(wait * 2, 1.0)


def _is_lock_conflict(e: Exception) -> bool:
    return isinstance(e, duckdb.IOException) and "lock" in str(e).lower()


def _is_damage(e: Exception) -> bool:
    msg = str(e)
    return "Corrupt database file" in msg or "not a valid DuckDB database file" in msg
