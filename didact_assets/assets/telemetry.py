"""The data spine: raw node metrics → (job labels) → AI-ready samples."""


import dagster as dg

from didact_core.data import spine as pipeline

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of, version_metadata


@dg.asset(
    partitions_def=daily_partitions,
    code_version=pipeline.RAW_CODE_VERSION,
    group_name="telemetry",
    kinds={"parquet", "duckdb"},
    description="One UTC day of per-node, per-CPU-thread cumulative counters (node_cpu_seconds_total), "
    "plus power, job labels and labelled faults when the source has them.",
)
def raw_node_metrics(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    settings = didact.settings()
    day = day_of(context, settings)
    res = pipeline.ingest_raw(settings, day, run_id=context.run_id, logger=context.log)
    meta = {
        **version_metadata(res.version),
        "source": res.meta.get("source"),
        "nodes": res.nodes,
        "rows": res.rows,
        "missing_nodes": dg.MetadataValue.json(res.missing_nodes),
        "seconds": round(res.seconds, 2),
    }
    if "injected_data_faults" in res.meta:
        meta["injected_data_faults"] = dg.MetadataValue.json(res.meta["injected_data_faults"])
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(res.version.data_version))


@dg.asset(
    partitions_def=daily_partitions,
    deps=[raw_node_metrics],
    code_version=pipeline.LABELS_CODE_VERSION,
    group_name="telemetry",
    kinds={"parquet"},
    description="Which job flavour ran on which node when, and labelled faults: from the source "
    "(the simulator knows them) or a CSV / scheduler export (DIDACT_LABELS_CSV).",
)
def job_labels(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    settings = didact.settings()
    res = pipeline.build_job_labels(settings, day_of(context, settings), run_id=context.run_id)
    return dg.MaterializeResult(
        metadata={**version_metadata(res.version), "origin": res.origin, **res.counts},
        data_version=dg.DataVersion(res.version.data_version),
    )


QUALITY_CHECK = "quality"


@dg.asset(
    partitions_def=daily_partitions,
    deps=[raw_node_metrics, job_labels],
    code_version=pipeline.AI_READY_CODE_VERSION,
    group_name="telemetry",
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset="ai_ready_metrics",
            blocking=True,
            description="Fails the partition when more than max_unusable_fraction of samples were unusable.",
        )
    ],
    description="Per (ts, node, cpu): the fractions of each interval spent in the configured CPU modes, "
    "with the cleaning report (resets, gaps, duplicates, skew, NaN) as metadata.",
)
def ai_ready_metrics(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    settings = didact.settings()
    res = pipeline.build_ai_ready(settings, day_of(context, settings), run_id=context.run_id, logger=context.log)
    cleaning = res.report.as_dict()
    check = dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        passed=res.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{cleaning['unusable']} of {cleaning['unusable'] + cleaning['rows_out']} samples unusable "
            f"({100 * res.report.unusable_fraction:.3f}%, bar {100 * res.max_unusable_fraction:.1f}%)"
        ),
        metadata={"unusable_fraction": res.report.unusable_fraction, "bar": res.max_unusable_fraction},
    )
    return dg.MaterializeResult(
        metadata={
            **version_metadata(res.version),
            "upstream": res.upstream.ref,
            "labelled": res.labelled,
            **{f"cleaning/{k}": v for k, v in cleaning.items()},
        },
        data_version=dg.DataVersion(res.version.data_version),
        check_results=[check],
    )
