"""The nightly schedule: yesterday's partition of everything, at a configurable UTC time.

Dagster needs the cron time and the default status when the code location loads, so they
come from a lenient read of ``DIDACT_NIGHTLY_AT`` / ``DIDACT_SCHEDULE_ENABLED``: a bad value
falls back to its default (02:30, running) with a logged warning, and every evaluation reads
the settings strictly, so the tick fails with the clear error naming the variable until it is
fixed — no nightly run is launched on a half-read configuration.
"""

import datetime as dt

import dagster as dg

from didact_core.config import Settings

from .jobs import nightly_job
from .partitions import daily_partitions
from .resources import ENV_DEFAULTS

_hour, _minute = ENV_DEFAULTS.nightly_hour_minute


@dg.schedule(
    cron_schedule=f"{_minute} {_hour} * * *",
    job=nightly_job,
    execution_timezone="UTC",
    name="nightly_schedule",
    default_status=dg.DefaultScheduleStatus.RUNNING
    if ENV_DEFAULTS.schedule_enabled
    else dg.DefaultScheduleStatus.STOPPED,
    description=f"Every day at {_hour:02d}:{_minute:02d} UTC: yesterday's raw data → AI-ready → model → "
    "evaluation (DIDACT_NIGHTLY_AT).",
)
def nightly_schedule(context: dg.ScheduleEvaluationContext):
    Settings.from_env()  # SettingsError names a bad DIDACT_* value (e.g. DIDACT_NIGHTLY_AT)
    when = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    # the last complete UTC day, as build_schedule_from_partitioned_job picks it
    day = when.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)
    if day < daily_partitions.start.date():
        return dg.SkipReason(f"{day} is before the first partition ({daily_partitions.start.date()})")
    return nightly_job.run_request_for_partition(partition_key=day.isoformat(), run_key=day.isoformat())
