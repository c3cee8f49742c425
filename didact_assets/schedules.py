"""The nightly schedule: yesterday's partition of everything, at a configurable UTC time."""

import os

import dagster as dg

from didact_core.errors import DidactError

from .jobs import nightly_job


def _at() -> tuple[int, int]:
    raw = os.environ.get("DIDACT_NIGHTLY_AT", "02:30")
    try:
        h, m = (int(x) for x in raw.split(":"))
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise DidactError(f"DIDACT_NIGHTLY_AT={raw!r}", "is not a time of day", "use HH:MM (UTC), e.g. 02:30") from None
    return h, m


_hour, _minute = _at()

nightly_schedule = dg.build_schedule_from_partitioned_job(
    nightly_job,
    hour_of_day=_hour,
    minute_of_hour=_minute,
    name="nightly_schedule",
    default_status=dg.DefaultScheduleStatus.RUNNING
    if os.environ.get("DIDACT_SCHEDULE_ENABLED", "1") not in ("0", "false", "no")
    else dg.DefaultScheduleStatus.STOPPED,
    description=f"Every day at {_hour:02d}:{_minute:02d} UTC: yesterday's raw data → AI-ready → model → evaluation "
    "(DIDACT_NIGHTLY_AT).",
)
