"""The cluster model path: cluster_model (train from its own champion + gate + promote, the
day's incidents into the review queue) → cluster_evaluation; and its rollback job.

The logic is :mod:`didact_core.cluster.nightly`; here only the Dagster wiring and metadata.
"""

import dagster as dg
from pydantic import Field

from ..partitions import daily_partitions
from ..ops import RollbackConfig
from ..resources import DidactResource
from .common import day_of
from .metadata import ui_metadata
from .models import champion_model
from .telemetry import ai_ready_metrics

CLUSTER_GATE = "cluster_gate"
#: bumped when the cluster training or its gate changes what a day produces
CLUSTER_CODE_VERSION = "cluster-1"

#: day D continues from the cluster champion that day D-1 left
_previous_day = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


class ClusterModelConfig(dg.Config):
    """Launchpad config of ``cluster_model`` (the nightly run needs none)."""

    rebase: bool = Field(
        default=False,
        description="Train a fresh cluster model with this didact's defaults instead of continuing the "
        "champion (a continued model keeps the config it was first trained with, so new scoring options "
        "reach an existing deployment only this way); gated against the champion as usual.",
    )


@dg.asset(
    partitions_def=daily_partitions,
    deps=[ai_ready_metrics, champion_model, dg.AssetDep("cluster_model", partition_mapping=_previous_day)],
    code_version=CLUSTER_CODE_VERSION,
    group_name="models",
    kinds={"mlflow"},
    pool="didact_model",
    check_specs=[
        dg.AssetCheckSpec(
            CLUSTER_GATE,
            asset="cluster_model",
            blocking=True,
            description="On the day's clean held-out intervals (every 4th hour, no incident open under the "
            "champion), the challenger's 99th-percentile incident score / threshold may be at most 0.25 above "
            "the champion's; pass → the cluster champion alias moves.",
        )
    ],
    description="The day's cluster-level model (racks, incidents, job peers), continued from its own champion "
    "on the node champion's scores of the day, registered in MLflow as <model>-cluster and gated; the day's "
    "incidents join the review queue.",
)
def cluster_model(context: dg.AssetExecutionContext, config: ClusterModelConfig,
                  didact: DidactResource) -> dg.MaterializeResult:  # fmt: skip
    # lazy: scoring the day loads the node detector with torch (2 s); every step process loads these definitions
    from didact_core.cluster import nightly

    settings = didact.settings()
    out = nightly.train_cluster_day(settings, day_of(context, settings).isoformat(), run_id=context.run_id,
                                    rebase=config.rebase)  # fmt: skip
    gate = dg.AssetCheckResult(
        check_name=CLUSTER_GATE, passed=out.gate.passed, severity=dg.AssetCheckSeverity.ERROR,
        description=out.gate.reason, metadata={"gate": dg.MetadataValue.json(ui_metadata(out.gate.metadata()))},
    )  # fmt: skip
    meta = ui_metadata({
        "model_version": out.version.version,
        "parent_version": out.parent_version if out.parent_version is not None else "none",
        "champion_version": out.champion_version, "promoted": out.promoted, "gate": out.gate.reason,
        "started": "fresh" if out.fresh else "continued",
        "mlflow_run_id": out.mlflow_run_id, "node_model_version": out.node_model_version,
        "train_steps": out.train_steps, "holdout_steps": out.holdout_steps, "nodes": out.nodes, "racks": out.racks,
        "job_members": out.job_members, "jobs_source": out.jobs_source, "threshold": out.threshold,
        "peer_threshold": out.peer_threshold, "incidents": len(out.incidents),
        "incidents_to_review": out.events_added, "seconds": out.seconds,
    })  # fmt: skip
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(f"c{out.version.version}"),
                                check_results=[gate])  # fmt: skip


@dg.asset(
    partitions_def=daily_partitions,
    deps=[cluster_model],
    code_version=CLUSTER_CODE_VERSION,
    group_name="models",
    kinds={"mlflow"},
    description="The cluster champion on the day beside the simple baselines (fraction of OOD nodes, mean "
    "error, per-rack max error): incident ROC-AUC, rack localisation and straggler precision/recall against "
    "the simulator's truth; for other sources incident counts only (there is no truth to compare with).",
)
def cluster_evaluation(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    from didact_core.cluster import nightly  # lazy: loads the node detector with torch (2 s)

    settings = didact.settings()
    figures = nightly.evaluate_cluster_day(settings, day_of(context, settings).isoformat())
    return dg.MaterializeResult(metadata=ui_metadata(figures))


@dg.op(description="Move the cluster model's champion alias back; recorded in lineage with who, when and why.")
def rollback_cluster_op(context: dg.OpExecutionContext, config: RollbackConfig, didact: DidactResource) -> dict:
    from didact_core.cluster import nightly  # lazy: the registry imports mlflow (seconds)

    res = nightly.rollback_cluster_champion(didact.settings(), to_version=config.to_version, actor=config.actor,
                                            reason=config.reason)  # fmt: skip
    context.log.info(f"cluster champion v{res['from']} → v{res['to']}")
    context.add_output_metadata({"from": res["from"], "to": res["to"]})
    return res


@dg.job(description="Roll the cluster model's champion back (config: to_version, reason).")
def rollback_cluster_champion():
    rollback_cluster_op()
