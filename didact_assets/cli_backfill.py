"""``didact backfill``'s options (the command itself: ``didact_assets.backfill``, imported only
when it runs — dagster takes seconds to import and every other command's parser must not wait).

Registered from ``cli.py`` with ``cli_backfill.add_parsers(sub)``.
"""

from __future__ import annotations

from didact_assets import cli_args as args_
from didact_core.config import Settings


def add_parsers(sub) -> None:
    b = sub.add_parser(
        "backfill", help="launch a backfill of days and follow it (or follow one launched from the UI)",
        description="Launch a backfill of the days --from … --to (every asset, or --asset ones) in the Dagster "
        "instance the UI uses, and show its progress per day. The Dagster daemon runs it (`didact ui` starts one). "
        "`didact backfill status [ID]` follows a running backfill (default: the newest), also one launched from "
        "the UI. Ctrl-C stops following, never the backfill; --cancel cancels it.",
    )  # fmt: skip
    b.add_argument("action", nargs="?", choices=["status"],
                   help="status: follow a backfill instead of launching one")  # fmt: skip
    b.add_argument("id", nargs="?", help="status: the backfill's id (default: the newest one still running, "
                   "else the newest)")  # fmt: skip
    b.add_argument("--from", dest="first", type=args_.day, help="first day to backfill, YYYY-MM-DD (UTC)")
    b.add_argument("--to", dest="last", type=args_.day, help="last day to backfill, YYYY-MM-DD (UTC, inclusive)")
    b.add_argument("--asset", action="append", metavar="NAME[,NAME]",
                   help="backfill only these assets (repeatable or comma-separated; default: every asset, "
                   "as the nightly job)")  # fmt: skip
    b.add_argument("--no-follow", action="store_true",
                   help="launch (or cancel, or show once) and return without following the progress")  # fmt: skip
    b.add_argument("--cancel", action="store_true",
                   help="with status ID: cancel that backfill (the daemon stops its runs); days already done stay done")  # fmt: skip
    b.set_defaults(func=cmd_backfill)


def cmd_backfill(args, settings: Settings) -> int:
    from didact_assets import backfill  # lazy: imports dagster and the Dagster instance (seconds)

    return backfill.cmd_backfill(args, settings)
