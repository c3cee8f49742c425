"""didact's Dagster ``Definitions`` (the code location of workspace.yaml)."""

import dagster as dg

from .assets import models, telemetry
from .jobs import data_spine_job, nightly_job
from .ops import rollback_champion
from .resources import DidactResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([telemetry, models]),
    asset_checks=[],
    jobs=[nightly_job, data_spine_job, rollback_champion],
    resources={"didact": DidactResource()},
)
