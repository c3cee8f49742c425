"""``didact verify`` and ``didact catalog rebuild``: the stored data's health.

Registered from ``cli.py`` with ``cli_storage.add_parsers(sub)``; ``didact status``
adds :func:`damaged_heads_note` (a cheap count-and-size check of every head).
"""

from __future__ import annotations

from didact_assets import cli_args as args_
from didact_assets.cli_output import console, table
from didact_core.config import Settings


def add_parsers(sub) -> None:
    """``didact verify`` and ``didact catalog rebuild``."""
    v = sub.add_parser("verify", help="check stored partitions against the catalog (parts, sizes, hashes)",
                       description="Check stored partition versions against the catalog: every part present, "
                       "of its recorded size and content hash. Exit 1 when any version is damaged.")  # fmt: skip
    v.add_argument("--asset", help="check only this asset (default: every asset)")
    v.add_argument("--partition", type=args_.day, help="check only this day, YYYY-MM-DD")
    v.add_argument("--all-versions", action="store_true", help="check every stored version, not only the heads")
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser("catalog", help="the catalog (warehouse.duckdb): rebuild it from the stored parts")
    csub = c.add_subparsers(dest="action", required=True, metavar="{rebuild}")
    rb = csub.add_parser("rebuild", help="recreate a lost or damaged catalog from data/ (manifests and head logs)",
                         description="Recreate warehouse.duckdb from the version folders under data/: versions, "
                         "heads, materialise and rollback lineage. Lost: other lineage rows, the review queue. "
                         "The old catalog file is kept as warehouse.duckdb.before-rebuild-<time>.")  # fmt: skip
    rb.add_argument("--force", action="store_true", help="rebuild even when the catalog opens fine")
    rb.set_defaults(func=cmd_catalog_rebuild)


def cmd_verify(args, settings: Settings) -> int:
    from didact_core.data.verify import verify_home
    from didact_core.data.warehouse import Warehouse

    rows = verify_home(Warehouse(settings.home_path), args.asset, args.partition, all_versions=args.all_versions)
    damaged = [r for r in rows if not r["ok"]]
    scope = "versions" if args.all_versions else "heads"
    console.print(f"checked {len(rows)} stored {scope}: {len(damaged)} damaged")
    if damaged:
        out = [{"asset": r["asset"], "partition": r["partition"], "version": r["version"],
                "head": "yes" if r["head"] else "", "problem": r["problems"][0][-160:],
                "more": len(r["problems"]) - 1 or ""} for r in damaged]  # fmt: skip
        console.print(table("damaged versions", out))
        console.print("fix: `didact rollback --asset A --partition D --to vN` to an intact version "
                      "(`didact verify --all-versions` lists them), or re-materialise the partition")  # fmt: skip
    return 1 if damaged else 0


def cmd_catalog_rebuild(args, settings: Settings) -> int:
    from didact_core.data.catalog_rebuild import rebuild_catalog

    rep = rebuild_catalog(settings.home_path, force=args.force)
    if rep.kept_damaged:
        console.print(f"kept the old catalog as {rep.kept_damaged}")
    console.print(f"catalog rebuilt: {rep.versions} version(s) of {rep.partitions} partition(s)")
    if rep.without_manifest:
        console.print(f"{len(rep.without_manifest)} version(s) had no manifest (written before manifests): rebuilt "
                      "from their Parquet files, digests recomputed, metadata and upstream lost")  # fmt: skip
    return 0


def damaged_heads_note(wh) -> str | None:
    """For ``didact status``: a line naming damaged heads (count and sizes only: cheap), or None."""
    from didact_core.data.verify import verify_home

    bad = [r for r in verify_home(wh, deep=False) if not r["ok"]]
    if not bad:
        return None
    names = ", ".join(f"{r['asset']}/{r['partition']} {r['version']}" for r in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"[red]damaged heads:[/] {names}{more} — run `didact verify` for the details and the fix"
