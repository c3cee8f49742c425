"""The command line of serving: ``python -m didact_core.serve.cli`` (and the options of
``didact serve``, which calls :func:`serve_from_args`)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.live import FEEDS, make_feed
from didact_core.serve.collector import DEFAULT_CPU_LABEL_CAP
from didact_core.serve.http import DEFAULT_HOST, DEFAULT_PORT
from didact_core.serve.service import serve
from didact_core.serve.watcher import DEFAULT_RELOAD_S

log = logging.getLogger("didact_core.serve.cli")  # the same name when run as __main__


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
        choices=FEEDS,
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


def _parse_signature(item: str, text: str) -> dict[str, float]:
    """``system:0.95,idle:0.05`` → {"system": 0.95, "idle": 0.05}."""
    out = {}
    for part in text.split(","):
        mode, _, frac = part.partition(":")
        try:
            out[mode.strip()] = float(frac)
        except ValueError:
            raise DidactError(
                f"--inject-fault {item!r}", f"{part!r} is not MODE:FRACTION", "e.g. system:0.95,idle:0.05"
            ) from None
    return out


def serve_from_args(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run :func:`serve` with the options of :func:`add_serve_arguments`; returns the exit code.

    Raises :class:`DidactError` for bad options or settings (the caller prints it)."""
    settings = settings or Settings.from_env()
    kind = args.feed or ("prometheus" if settings.source == "prometheus" else "simulator")
    kw: dict = {}
    if kind == "simulator":
        faults = {}
        for item in args.inject_fault:
            node, sep, fault = item.partition("=")
            if not sep or not fault:
                raise DidactError(
                    f"--inject-fault {item!r}",
                    "is not NODE=KIND or NODE=MODE:FRACTION,…",
                    "e.g. node0003=io_stall or node0003=system:0.95,idle:0.05",
                )
            faults[node] = _parse_signature(item, fault) if ":" in fault else fault
        kw = {"speed": args.speed, "faults": faults, "start": args.start}
    elif args.inject_fault or args.speed != 1.0 or args.start is not None:
        raise DidactError(
            "--inject-fault / --speed / --start", f"apply to the simulator feed only, not {kind}"
        )
    if args.torch_threads:
        import torch  # lazy: heavy, and only this option needs it here

        torch.set_num_threads(args.torch_threads)
    feed = make_feed(kind, settings, **kw)
    return serve(
        settings,
        args.host,
        args.port,
        args.interval or settings.interval_s,
        args.reload,
        feed,
        cpu_label_cap=args.cpu_label_cap,
        review=not args.no_review,
        max_intervals=args.max_intervals,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m didact_core.serve.cli",
        description="Score every node with the registry's champion and export the results on /metrics. "
        "Settings (DIDACT_HOME, DIDACT_NODES, …) come from the environment.",
    )
    add_serve_arguments(p)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return serve_from_args(args)
    except DidactError as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
