"""Jobs: the nightly graph for one day, and its data-spine part."""

import dagster as dg

from .partitions import daily_partitions

#: the cluster model scores the day with the node champion: a retrain of champion_model redoes them
CLUSTER_ASSETS = ("cluster_model", "cluster_evaluation")

nightly_job = dg.define_asset_job(
    "nightly",
    selection=dg.AssetSelection.all(),
    partitions_def=daily_partitions,
    description="Everything for one UTC day: raw → AI-ready → model → evaluation, cluster model (and power).",
)

data_spine_job = dg.define_asset_job(
    "data_spine",
    selection=dg.AssetSelection.groups("telemetry"),
    partitions_def=daily_partitions,
    description="Raw node metrics, job labels and AI-ready samples for one day.",
)

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("job_labels", "ai_ready_metrics", "ood_review", "champion_model", "model_evaluation",
                                       *CLUSTER_ASSETS),  # fmt: skip
    partitions_def=daily_partitions,
    description="Rebuild a day from its raw data and retrain on it, the cluster model after the node model "
    "(launched by the new-raw-data sensor).",
)

model_job = dg.define_asset_job(
    "retrain_model",
    selection=dg.AssetSelection.assets("ood_review", "champion_model", "model_evaluation", *CLUSTER_ASSETS),
    partitions_def=daily_partitions,
    description="Retrain and evaluate on a day's existing AI-ready data, the cluster model after the node model "
    "(launched by the drift sensor).",
)
