"""Checking stored versions against the catalog, on every read and on request.

Every read of a table through the warehouse (``read``, ``iter_parts``, ``part_paths``:
what the spine, training, evaluation and power profiles use) first checks the
version's parts against the catalog's records: the count and sizes (``stat``) and a
hash of each file's bytes (xxh3-128; measured at about 3 GB/s here, 11–18 % of the
time pyarrow takes to read the same part; a ``Warehouse`` object hashes each file once
while it stays unchanged).  A damaged part fails the read with a
:class:`~didact_core.data.parts.DamagedPartError` naming the part, the problem and the
fix: a rollback to the newest intact earlier version, or re-materialising.

Versions written before parts were recorded have only their table row counts: those
are checked against the Parquet footers (a missing or truncated part is caught, a
changed value inside a part is not).
"""

from __future__ import annotations

from didact_core.data.parts import DamagedPartError, check_parts, check_rows


def version_problems(info, tables=None, deep: bool = True, hashed: set | None = None) -> list[str]:
    """What is wrong with a stored version's files (empty when intact)."""
    problems = []
    for t in tables if tables is not None else sorted(info.tables):
        records = (info.parts or {}).get(t)
        if records is not None:
            problems += check_parts(info.path / t, records, deep=deep, hashed=hashed)
        else:
            problems += check_rows(info.path / t, int(info.tables.get(t) or 0))
    return problems


def damaged_error(info, problems: list[str], earlier: list) -> DamagedPartError:
    """The error for a damaged version: its first problem, and a rollback to the newest
    intact earlier version (count and sizes checked) when one is stored."""
    intact = next(
        (v for v in sorted(earlier, key=lambda v: -v.version)
         if v.version < info.version and not v.pruned and not version_problems(v, deep=False)),
        None,
    )  # fmt: skip
    a, p = info.asset, info.partition
    if intact is not None:
        fix = (f"roll back to the intact v{intact.version}: `didact rollback --asset {a} --partition {p} "
               f"--to v{intact.version}`, or re-materialise {a} for {p}")  # fmt: skip
    else:
        fix = f"re-materialise {a} for {p} (no intact earlier version is stored), or restore the files from a backup"
    more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return DamagedPartError(f"{a}/{p} v{info.version}: part {problems[0]}{more}", "the stored data is damaged", fix)


def verify_home(wh, asset: str | None = None, partition: str | None = None, all_versions: bool = False,
                deep: bool = True) -> list[dict]:  # fmt: skip
    """One row per checked version: asset, partition, version, head, ok, problems.

    Heads only unless ``all_versions``; pruned versions are skipped."""
    rows = []
    for info, is_head in wh.stored(asset=asset, partition=partition, heads_only=not all_versions):
        problems = version_problems(info, deep=deep)
        rows.append({"asset": info.asset, "partition": info.partition, "version": f"v{info.version}",
                     "head": is_head, "ok": not problems, "problems": problems})  # fmt: skip
    return rows
