"""The options of serving: their defaults and the arguments of ``didact serve`` /
``python -m didact_core.serve.cli``.  Light (no torch, no pandas): ``didact``'s parser
imports it at every start, the service only when it runs."""

from __future__ import annotations

import argparse
import datetime as dt

from didact_core.config import LIVE_FEEDS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
#: seconds between checks of the champion alias
DEFAULT_RELOAD_S = 30.0
#: export per-CPU series only while nodes × CPUs stays at or below this
DEFAULT_CPU_LABEL_CAP = 4096
#: seconds between scoring intervals when nothing else says
DEFAULT_INTERVAL_S = 15.0


def instant(raw: str) -> float:
    """An ISO date or instant as epoch seconds (naive: UTC); an argparse ``type``."""
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an instant: give an ISO date or UTC time, e.g. 2026-02-11 or 2026-02-11T12:00"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``serve`` (for ``python -m didact_core.serve.cli`` and ``didact serve``)."""
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="metrics port (default %(default)s; 0: any free)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between scoring intervals (default: DIDACT_INTERVAL_S)",
    )
    p.add_argument(
        "--reload",
        type=float,
        default=DEFAULT_RELOAD_S,
        help="seconds between checks of the champion alias (default %(default)s)",
    )
    p.add_argument(
        "--feed",
        choices=LIVE_FEEDS,
        default=None,
        help="live feed (default: prometheus if DIDACT_SOURCE=prometheus, else simulator)",
    )
    p.add_argument(
        "--cpu-label-cap",
        type=int,
        default=DEFAULT_CPU_LABEL_CAP,
        help="export per-CPU series only while nodes x CPUs <= this (default %(default)s)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulator feed: simulated seconds per wall-clock second (default 1: real time)",
    )
    p.add_argument(
        "--start",
        type=instant,
        default=None,
        metavar="WHEN",
        help="simulator feed: simulated time starts at this UTC instant (ISO, e.g. 2026-02-11T12:00 or a "
        "day; default: now) — replays that stretch of the simulated cluster, the same every run",
    )
    p.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="NODE=KIND",
        help="simulator feed: make NODE behave as fault KIND (cpu_hog, io_stall, steal_storm, "
        "softirq_storm) or as MODE:FRACTION,… (e.g. system:0.95,idle:0.05) from the start; "
        "repeatable",
    )
    p.add_argument("--no-review", action="store_true", help="do not write OOD events to the review queue")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="CPU threads for the model (default 0: torch's choice, one per core; 1 is steadier on a "
        "node shared with other work)",
    )
    p.add_argument("--max-intervals", type=int, default=None, help="stop after this many intervals")
    return p
