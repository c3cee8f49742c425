"""The data spine: raw node metrics → (job labels) → AI-ready samples.

Each body first asks :func:`.metadata.reconciled` whether the partition's head was published
by a run that failed before Dagster recorded it, from the inputs a build would use now: then
it re-emits that version (``reconciled_from_run``) instead of recomputing it."""


import dagster as dg

from didact_core.data import spine as pipeline
from didact_core.data.warehouse import Warehouse

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of, version_metadata
from .metadata import reconcile_metadata, reconciled, table_metadata, ui_metadata

#: the table whose rows and columns the UI shows (and the schema-change check compares)
MAIN_TABLE = {"raw_node_metrics": "cpu", "job_labels": "labels", "ai_ready_metrics": "samples"}


def _table(settings, version) -> dict:
    return table_metadata(Warehouse(settings.home_path), version, MAIN_TABLE[version.asset])


def _executor(version) -> dict:
    """Where the node blocks ran when not in local processes (DIDACT_EXECUTOR=slurm): job id,
    task states, nodes, elapsed, per-task exit codes and logs, the log folder."""
    job = version.metadata.get("executor")
    if not job:
        return {}
    out = ui_metadata({f"{job['executor']}/{k}": job.get(k) for k in
                       ("job_id", "states", "nodes", "elapsed_s", "blocks", "blocks_reused", "tasks")})  # fmt: skip
    out[f"{job['executor']}/log_dir"] = dg.MetadataValue.path(job["log_dir"])
    return out


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
    again = reconciled(context, settings, pipeline.RAW, day.isoformat())
    res = again or pipeline.ingest_raw(settings, day, run_id=context.run_id, logger=context.log)
    meta = {"source": res.meta.get("source"), "nodes": res.nodes, "rows": res.rows,
            "missing_nodes": res.missing_nodes, "seconds": res.seconds}  # fmt: skip
    if "injected_data_faults" in res.meta:
        meta["injected_data_faults"] = res.meta["injected_data_faults"]
    return dg.MaterializeResult(
        metadata={**version_metadata(res.version), **_table(settings, res.version), **ui_metadata(meta),
                  **_executor(res.version), **reconcile_metadata(res.version, again is not None)},  # fmt: skip
        data_version=dg.DataVersion(res.version.data_version),
    )


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
    day = day_of(context, settings)
    again = reconciled(context, settings, pipeline.LABELS, day.isoformat())
    res = again or pipeline.build_job_labels(settings, day, run_id=context.run_id)
    return dg.MaterializeResult(
        metadata={**version_metadata(res.version), **_table(settings, res.version),
                  **ui_metadata({"origin": res.origin, **res.counts}),
                  **reconcile_metadata(res.version, again is not None)},  # fmt: skip
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
    day = day_of(context, settings)
    again = reconciled(context, settings, pipeline.AI_READY, day.isoformat())
    res = again or pipeline.build_ai_ready(settings, day, run_id=context.run_id, logger=context.log)
    cleaning = res.report.as_dict()
    check = dg.AssetCheckResult(
        check_name=QUALITY_CHECK,
        passed=res.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{cleaning['unusable']} of {cleaning['unusable'] + cleaning['rows_out']} samples unusable "
            f"({100 * res.report.unusable_fraction:.3f}%, bar {100 * res.max_unusable_fraction:.1f}%)"
        ),
        metadata=ui_metadata({"unusable_fraction": res.report.unusable_fraction, "bar": res.max_unusable_fraction}),
    )
    return dg.MaterializeResult(
        metadata={
            **version_metadata(res.version),
            **_table(settings, res.version),
            **ui_metadata({"upstream": res.upstream.ref, "labelled": res.labelled,
                           **{f"cleaning/{k}": v for k, v in cleaning.items()},
                           "cleaning/excluded_samples": res.excluded_samples}),  # fmt: skip
            **_executor(res.version),
            **reconcile_metadata(res.version, again is not None),
        },
        data_version=dg.DataVersion(res.version.data_version),
        check_results=[check],
    )
