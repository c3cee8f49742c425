"""didact's Dagster ``Definitions`` (the code location of workspace.yaml)."""

import dagster as dg

from .assets import telemetry
from .jobs import data_spine_job, nightly_job
from .resources import DidactResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([telemetry]),
    asset_checks=[],
    jobs=[nightly_job, data_spine_job],
    resources={"didact": DidactResource()},
)
