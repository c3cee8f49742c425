"""Daily UTC partitions, from DIDACT_START_DATE up to yesterday (the last complete day)."""

import dagster as dg

from didact_core.config import Settings

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=Settings.from_env_lenient().start_date, timezone="UTC", end_offset=0
)
