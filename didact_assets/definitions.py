"""didact's Dagster ``Definitions`` (the code location of workspace.yaml)."""

import warnings

import dagster as dg

from .assets import cluster, models, power, review, telemetry
from .instance import didact_executor
from .jobs import data_spine_job, model_job, nightly_job, retrain_job
from .schedules import nightly_schedule
from .sensors import drift_sensor, new_raw_data_sensor
from .sensors_act import act_sensor
from .ops import rollback_champion
from .resources import DidactResource

#: a table whose columns change between materialisations (a feature added, a type changed)
#: shows as a warning on the asset: models trained on the old columns may not load it
with warnings.catch_warnings():  # "beta" is said at every load of the code location
    warnings.simplefilter("ignore", dg.BetaWarning)
    schema_checks = dg.build_column_schema_change_checks(
        assets=[telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics]
    )

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([telemetry, review, models, power, cluster]),
    asset_checks=schema_checks,
    jobs=[nightly_job, data_spine_job, retrain_job, model_job, rollback_champion, cluster.rollback_cluster_champion],
    schedules=[nightly_schedule],
    sensors=[new_raw_data_sensor, drift_sensor, act_sensor],
    resources={"didact": DidactResource()},
    executor=didact_executor,
)
