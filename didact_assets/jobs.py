"""Jobs: the nightly graph for one day, and its data-spine part."""

import dagster as dg

from .partitions import daily_partitions

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.all(),
    partitions_def=daily_partitions,
    description="Everything for one UTC day: raw → AI-ready → model → evaluation (and power).",
)

data_spine_job = dg.define_asset_job(
    "data_spine",
    selection=dg.AssetSelection.groups("telemetry"),
    partitions_def=daily_partitions,
    description="Raw node metrics, job labels and AI-ready samples for one day.",
)
