"""ood_review: the day's snapshot of the operators' OOD verdicts, which feeds training."""

import dagster as dg

from didact_core.data import review

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of, version_metadata


@dg.asset(
    partitions_def=daily_partitions,
    group_name="models",
    kinds={"duckdb"},
    description="Verdicts on OOD events (didact review accept|reject): accepted events join the next "
    "training as normal data, rejected ones are excluded and kept as labelled anomalies.",
)
def ood_review(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    settings = didact.settings()
    info, counts = review.snapshot(settings, day_of(context, settings).isoformat(), run_id=context.run_id)
    return dg.MaterializeResult(
        metadata={**version_metadata(info), **{f"events/{k}": v for k, v in counts.items()}},
        data_version=dg.DataVersion(info.data_version),
    )
