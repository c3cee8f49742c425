"""The model path: champion_model (train + gate + promote) → model_evaluation."""

import dagster as dg

from didact_core.learn.code_versions import EVAL_CODE_VERSION, TRAIN_CODE_VERSION

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of
from .review import ood_review
from .telemetry import ai_ready_metrics

PROMOTION_GATE = "promotion_gate"

#: day D trains from the champion that day D-1 left: a backfill runs the days in order
_previous_day = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)


@dg.asset(
    partitions_def=daily_partitions,
    deps=[ai_ready_metrics, ood_review, dg.AssetDep("champion_model", partition_mapping=_previous_day)],
    code_version=TRAIN_CODE_VERSION,
    group_name="models",
    kinds={"pytorch", "mlflow"},
    pool="didact_model",
    check_specs=[
        dg.AssetCheckSpec(
            PROMOTION_GATE,
            asset="champion_model",
            blocking=True,
            description="The day's challenger may be at most promotion_tolerance worse than the champion on "
            "the day's held-out split and the replay days'; pass → the champion alias moves.",
        )
    ],
    description="The day's challenger, trained from the registry's champion (continual learning), "
    "registered in MLflow, and promoted to champion when the gate passes.",
)
def champion_model(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    # lazy: training imports torch (2 s); every step process loads these definitions
    from didact_core.learn import continual

    settings = didact.settings()
    day = day_of(context, settings).isoformat()
    out = continual.train_day(settings, day, run_id=context.run_id, logger=context.log)
    gate = dg.AssetCheckResult(
        check_name=PROMOTION_GATE,
        passed=out.gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=out.gate.reason,
        metadata={"gate": dg.MetadataValue.json(out.gate.metadata())},
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": out.version.version,
            "parent_version": out.parent_version if out.parent_version is not None else "none",
            "champion_version": out.champion_version,
            "promoted": out.promoted,
            "gate": out.gate.reason,
            "mlflow_run_id": out.mlflow_run_id,
            "train_samples": out.n_train,
            "excluded_by_review": out.excluded_by_review,
            "added_from_review": out.added_from_review,
            "replay_samples": out.n_replay,
            "epochs": out.fit.get("epochs", 0),
            "best_val_loss": out.fit.get("best_val_loss", float("nan")),
            "data_versions": dg.MetadataValue.json(out.data_versions),
            "seconds": round(out.seconds, 1),
        },
        data_version=dg.DataVersion(f"m{out.version.version}"),
        check_results=[gate],
    )


@dg.asset(
    partitions_def=daily_partitions,
    deps=[champion_model],
    code_version=EVAL_CODE_VERSION,
    group_name="models",
    kinds={"mlflow"},
    description="The day's challenger vs the champion it started from: reconstruction error overall and per "
    "job flavour (held-out, replay, first days), latent kNN accuracy, PCA agreement, fault ROC-AUC.",
)
def model_evaluation(context: dg.AssetExecutionContext, didact: DidactResource) -> dg.MaterializeResult:
    # lazy: evaluation imports torch (2 s); every step process loads these definitions
    from didact_core.learn import evaluate_day

    settings = didact.settings()
    out = evaluate_day.evaluate_day(settings, day_of(context, settings).isoformat(), run_id=context.run_id)
    meta = {
        "champion_version": out.champion_version,
        "challenger_version": out.challenger_version,
        "parent_version": out.parent_version if out.parent_version is not None else "none",
        "mlflow_run_id": out.mlflow_run_id,
        "side_by_side": dg.MetadataValue.json(out.metrics),
    }
    for who, sets in out.metrics.items():
        for name, m in sets.items():
            for k in ("mean_error", "latent_knn_accuracy", "pca2_knn_accuracy", "raw_knn_accuracy", "fault_roc_auc"):
                if m.get(k) is not None:
                    meta[f"{who}/{name}/{k}"] = float(m[k])
            if name == "openset" and m.get("openset_auc") is not None:
                meta[f"{who}/openset_auc"] = float(m["openset_auc"])
    return dg.MaterializeResult(metadata=meta)
