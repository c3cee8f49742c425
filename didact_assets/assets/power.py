"""power_profiles: per node and job flavour, what the cluster draws and what to cap first."""

import dagster as dg

from didact_core.power import partition as power_partition

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of, version_metadata
from .metadata import image, ui_metadata
from .telemetry import ai_ready_metrics, job_labels, raw_node_metrics


@dg.asset(
    partitions_def=daily_partitions,
    deps=[raw_node_metrics, ai_ready_metrics, job_labels],
    code_version=power_partition.POWER_CODE_VERSION,
    group_name="power",
    kinds={"parquet"},
    description="Mean/peak watts, energy, idle baseline and watts-vs-utilisation fit per node and job flavour, "
    "energy per job, and the nodes a peak-hour load-shedding policy caps first.",
)
def power_profiles(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    settings = didact.settings()
    res = power_partition.build_power_profiles(settings, day_of(context, settings), run_id=context.run_id)
    numbers = {f"summary/{k}": v for k, v in res.summary.items() if isinstance(v, (int, float))}
    return dg.MaterializeResult(
        metadata={
            **version_metadata(res.version),
            **ui_metadata({"sources": res.sources, **numbers, "summary": res.summary}),
            "plot": image(res.plot_png, "power profile"),
            "plot_file": dg.MetadataValue.path(str(res.version.path / "profile.png")),
        },
        data_version=dg.DataVersion(res.version.data_version),
    )
