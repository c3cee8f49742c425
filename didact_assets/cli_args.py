"""Argument types of the ``didact`` command: bad input is a usage error (exit 2) that
names the option, the problem and the fix, never a traceback from deep inside."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable


def int_at_least(lo: int, example: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number ≥ {lo}: give e.g. {example}")
        return value

    return parse


def positive_float(example: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{raw!r} is not a positive number: give e.g. {example}")
        return value

    return parse


def port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a TCP port: give a number from 1 to 65535, e.g. 9090")
    return value


def day(raw: str) -> str:
    try:
        return dt.date.fromisoformat(raw).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a day: give it as YYYY-MM-DD, e.g. 2026-11-20") from None


def days(raw: str) -> list[str]:
    return [day(d.strip()) for d in raw.split(",") if d.strip()] or [day(raw)]


def version_number(raw: str) -> int:
    try:
        value = int(raw.removeprefix("v"))
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a version: give vN or N (N ≥ 1), e.g. v2 or 2")
    return value


def last_days(n: int) -> list[str]:
    """The last ``n`` complete UTC days, oldest first (the defaults of ``--days``)."""
    y = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    return [(y - dt.timedelta(days=i)).isoformat() for i in reversed(range(n))]
