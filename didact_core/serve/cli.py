"""The command line of serving: ``python -m didact_core.serve.cli``, and
:func:`serve_from_args`, which ``didact serve`` calls (its options: :mod:`didact_core.serve.options`)."""

from __future__ import annotations

import argparse
import logging
import sys

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.live import make_feed
from didact_core.serve.options import add_serve_arguments
from didact_core.serve.service import serve

log = logging.getLogger("didact_core.serve.cli")  # the same name when run as __main__


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
