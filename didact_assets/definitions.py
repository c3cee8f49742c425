"""didact's Dagster ``Definitions`` (the code location of workspace.yaml)."""

import dagster as dg

from .assets import models, power, review, telemetry
from .jobs import data_spine_job, model_job, nightly_job, retrain_job
from .schedules import nightly_schedule
from .sensors import drift_sensor, new_raw_data_sensor
from .ops import rollback_champion
from .resources import DidactResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([telemetry, review, models, power]),
    jobs=[nightly_job, data_spine_job, retrain_job, model_job, rollback_champion],
    schedules=[nightly_schedule],
    sensors=[new_raw_data_sensor, drift_sensor],
    resources={"didact": DidactResource()},
)
