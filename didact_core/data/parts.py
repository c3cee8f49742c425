"""Partition files: Parquet parts, their content hashes, and the writer of a new version.

A table of a partition version is a folder of parts (``part-00000.parquet`` …), one per
block of whole nodes, so worker processes can write parts in parallel
(:func:`write_part` touches only its own path).  A part's digest hashes its column
names, kinds and values (:func:`frame_digest`); a version's data version combines its
tables' ordered part digests (:func:`combine_digests`).  :class:`PartitionWriter`
collects the parts of a new version in a private temporary folder until the catalog
(``data.warehouse``) publishes it.

Reads are checked: the catalog keeps, per part, its name, rows, size and a hash of the
file's bytes (:func:`part_record`); :func:`check_parts` compares a version folder with
those records (count and size from ``stat``; the hash when ``deep``).  A full disk
while writing is a :class:`StorageError` naming the folder and the free space.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from didact_core.errors import DataQualityError, DidactError

#: string columns read back as categoricals (few distinct values, many rows)
DICTIONARY_COLUMNS = ("node", "source", "label", "fault")

_CHUNK = 8 << 20  # hash files in 8 MiB chunks: no copy of a whole part in memory
_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Picklable:
    # errors raised in worker processes cross back to the parent by pickle; the
    # default Exception pickling would call __init__ with the joined message only
    def __reduce__(self):
        return (type(self), (self.what, self.problem, self.fix))


class StorageError(_Picklable, DidactError):
    """The disk holding the home is full (or another storage failure while writing)."""


class DamagedPartError(_Picklable, DataQualityError):
    """A stored part is missing, truncated or changed since it was written."""


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes (what :func:`check_parts` compares on a deep check)."""
    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def part_record(path: Path, rows: int, digest: str) -> dict:
    """What the catalog keeps of one part: name, rows, bytes, content digest, file hash."""
    return {"name": path.name, "rows": int(rows), "bytes": path.stat().st_size, "digest": digest,
            "xxh3": file_digest(path)}  # fmt: skip


def check_parts(folder: Path, records: list[dict], deep: bool = True, hashed: set | None = None) -> list[str]:
    """Problems of a table folder against its catalog records (empty when intact).

    Count and sizes come from ``stat`` (cheap); ``deep`` also re-hashes each file,
    except files in ``hashed`` (keys of files this process already found intact,
    unchanged since: path, inode, size, mtime), which it extends."""
    problems = []
    found = {p.name for p in folder.glob("part-*.parquet")} if folder.is_dir() else set()
    for r in records:
        path = folder / r["name"]
        if r["name"] not in found:
            problems.append(f"{path}: missing (the catalog lists {len(records)} parts, {len(found)} found)")
            continue
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if st.st_size != r["bytes"]:
            problems.append(f"{path}: {st.st_size} bytes, the catalog says {r['bytes']} (truncated or overwritten)")
        elif deep and (hashed is None or key not in hashed):
            if file_digest(path) != r["xxh3"]:
                problems.append(f"{path}: content hash differs from the catalog's (bytes changed since written)")
            elif hashed is not None:
                hashed.add(key)
    extra = sorted(found - {r["name"] for r in records})
    if extra:
        problems.append(f"{folder}: unexpected part(s) {extra} not in the catalog")
    return problems


def check_rows(folder: Path, rows: int) -> list[str]:
    """For versions written before parts were recorded: the Parquet footers' row count."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return [f"{folder}: has no data files"]
    total = 0
    for p in parts:
        try:
            total += pq.ParquetFile(p).metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            return [f"{p}: not a readable Parquet file ({str(e)[:120]})"]
    if total != rows:
        return [f"{folder}: {total} rows in its parts, the catalog says {rows} (a part is missing or damaged)"]
    return []


def raise_if_full(err: OSError, folder: Path, doing: str) -> None:
    """A full disk → :class:`StorageError` naming the folder and its free space."""
    if err.errno in _FULL or "No space left" in str(err) or "Disk quota" in str(err):
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
        raise StorageError(
            f"folder {folder}",
            f"the disk is full while {doing} ({free / 1e6:.1f} MB free); nothing was published, the head is unchanged",
            "free space on the disk holding DIDACT_HOME (`didact prune --keep N` removes old versions), then re-run",
        ) from None


def frame_digest(df: pd.DataFrame) -> str:
    """Content hash of one frame: column names, kinds and values (xxh3-128)."""
    h = xxhash.xxh3_128()
    for name in df.columns:
        kind, data = _column_bytes(df[name])
        h.update(f"{name}:{kind}:".encode())
        h.update(data)
    return h.hexdigest()


def _column_bytes(col: pd.Series) -> tuple[str, memoryview]:
    dtype = col.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        ms = col.dt.tz_convert("UTC").astype("datetime64[ms, UTC]").array.asi8
        return "ts_ms", memoryview(np.ascontiguousarray(ms))
    if pd.api.types.is_datetime64_dtype(dtype):
        return "ts_ms", memoryview(np.ascontiguousarray(col.astype("datetime64[ms]").to_numpy().view(np.int64)))
    if isinstance(dtype, pd.CategoricalDtype) or dtype == object or pd.api.types.is_string_dtype(dtype):
        values = col if isinstance(dtype, pd.CategoricalDtype) else col.astype(str)
        return "str", memoryview(pd.util.hash_pandas_object(values, index=False).to_numpy())
    arr = np.ascontiguousarray(col.to_numpy())
    return str(arr.dtype), memoryview(arr).cast("B")


def combine_digests(tables: dict[str, list[str]]) -> str:
    """A version's data version from its tables' ordered part digests."""
    h = xxhash.xxh3_64()
    for name in sorted(tables):
        h.update(name.encode() + b"=" + ",".join(tables[name]).encode() + b";")
    return h.hexdigest()


def content_hash(tables: dict[str, list[pd.DataFrame] | pd.DataFrame]) -> str:
    """The data version of tables given as their parts, as the warehouse computes it."""
    return combine_digests(
        {n: [frame_digest(p) for p in ([v] if isinstance(v, pd.DataFrame) else v)] for n, v in tables.items()}
    )


def write_part(path: Path, df: pd.DataFrame) -> tuple[int, str]:
    """Write one part file (atomically named by the caller's folder); return rows and digest.

    Safe to call from worker processes: it touches only ``path``.
    """
    digest = frame_digest(df)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, compression="lz4", row_group_size=1 << 20)
    except OSError as e:
        raise_if_full(e, path.parent, f"writing {path.name}")
        raise
    return len(df), digest


def read_part(path: Path) -> pd.DataFrame:
    """One part file as a frame (string key columns as categoricals)."""
    return pq.read_table(path, read_dictionary=dict_columns(path)).to_pandas()


def dict_columns(path: Path) -> list[str]:
    schema = pq.read_schema(path)
    return [n for n in DICTIONARY_COLUMNS if n in schema.names]


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartitionWriter:
    """Stream tables into a new partition version; nothing is visible until :meth:`commit`.

    Use as a context manager: an exception inside the block discards the temporary
    files and leaves the catalog untouched.
    """

    def __init__(self, wh, asset: str, partition: str):
        # wh: the catalog (data.warehouse.Warehouse) that publishes the version
        self.wh, self.asset, self.partition = wh, asset, partition
        self.parent = wh.data_dir / asset / partition
        self.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.parent / f".tmp-{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir()
        self._parts: dict[str, list[tuple[int, str]]] = {}
        self._done = False

    def write(self, table: str, df: pd.DataFrame) -> None:
        """Append ``df`` to ``table`` as its next part (a part holds whole nodes)."""
        rows, digest = write_part(self.part_path(table, len(self._parts.get(table, []))), df)
        self.add_part(table, rows, digest)

    def part_path(self, table: str, index: int) -> Path:
        """Where part ``index`` of ``table`` goes — for workers writing parts themselves."""
        if not table.isidentifier():
            raise DidactError(f"table name {table!r}", "must be a plain identifier")
        return self.tmp / table / f"part-{index:05d}.parquet"

    def add_part(self, table: str, rows: int, digest: str) -> None:
        """Register the next part of ``table``, written at ``part_path(table, n)``."""
        parts = self._parts.setdefault(table, [])
        if not self.part_path(table, len(parts)).exists():
            raise DidactError(f"{self.asset}/{self.partition} {table} part {len(parts)}", "was not written")
        parts.append((rows, digest))

    def data_version(self) -> str:
        return combine_digests({t: [d for _, d in parts] for t, parts in self._parts.items()})

    def commit(
        self,
        code_version: str | None = None,
        upstream: dict | None = None,
        run_id: str | None = None,
        metadata: dict | None = None,
    ):
        """Publish the files as the partition's next version and make it the head; returns
        the catalog's ``VersionInfo`` of it."""
        if self._done:
            raise DidactError(f"{self.asset}/{self.partition}", "this writer was already committed or aborted")
        if not self._parts:
            raise DidactError(f"{self.asset}/{self.partition}", "nothing was written", "write at least one table")
        try:
            for f in self.tmp.rglob("*.parquet"):
                fsync(f)
        except OSError as e:
            raise_if_full(e, self.tmp, "flushing the parts")
            raise
        rows = {t: sum(r for r, _ in parts) for t, parts in self._parts.items()}
        records = {
            t: [part_record(self.part_path(t, i), r, d) for i, (r, d) in enumerate(parts)]
            for t, parts in self._parts.items()
        }
        info = self.wh.publish(
            self.asset, self.partition, self.tmp, self.data_version(), code_version, upstream or {},
            run_id, rows, metadata or {}, parts=records,
        )  # fmt: skip
        self._done = True
        return info

    def abort(self) -> None:
        if self._done:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> "PartitionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()
