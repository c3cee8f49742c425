"""The model path: champion_model (train + gate + promote) → model_evaluation.

``champion_model`` first asks :func:`reconciled_training` whether the day's last version was
registered by a run that failed before Dagster recorded it, from the data, code, settings
and champion a training would use now: then it re-emits that version's outcome
(``reconciled_from_run``) instead of training a second one."""

import dagster as dg

from didact_core.learn.code_versions import EVAL_CODE_VERSION, TRAIN_CODE_VERSION

from ..partitions import daily_partitions
from ..resources import DidactResource
from .common import day_of
from .metadata import (
    RECONCILED_FROM_RUN, champion_metadata, evaluation_metadata, rounded, ui_metadata, unrecorded_publish,
)
from .review import ood_review
from .telemetry import ai_ready_metrics

PROMOTION_GATE = "promotion_gate"


def job_metadata(job: dict | None) -> dict:
    """Where the training ran when not in this process (DIDACT_EXECUTOR=slurm): job id, state,
    node, elapsed, exit code and log."""
    if not job:
        return {}
    out = ui_metadata({f"{job['executor']}/{k}": job.get(k) for k in
                       ("job_id", "states", "nodes", "elapsed_s", "tasks", "gpus", "trained_on")})  # fmt: skip
    out[f"{job['executor']}/log_dir"] = dg.MetadataValue.path(job["log_dir"])
    return out


def reconciled_training(context, settings, day: str):
    """(outcome, job metadata, publishing run) of the day's last training when its run failed
    before Dagster recorded the materialisation (``metadata.unrecorded_publish``) and a
    training now would repeat it (``learn.stored.changed_since``); None: train."""
    from didact_core.learn import stored  # lazy: imports torch, as continual does

    asset = stored.MODEL_ASSET
    reg = stored.last_registration(settings, day)
    if reg is None or not unrecorded_publish(context, asset, day, reg.run_id, ("model_version", reg.model_version)):
        return None
    changed = stored.changed_since(settings, reg)
    if changed:
        context.log.info(f"{asset} {day}: v{reg.model_version} was registered by run {reg.run_id}, which "
                         f"failed before Dagster recorded it, but {changed}: training anew")  # fmt: skip
        return None
    context.log.warning(
        f"{asset} {day}: reconciled — v{reg.model_version} was registered by run {reg.run_id}, which failed "
        "before Dagster recorded the materialisation (e.g. a full disk); its data, code, settings and champion are "
        "the current ones, so this run records that version instead of training another"
    )
    return stored.stored_outcome(settings, reg), reg.job, reg.run_id


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
    job, again = None, reconciled_training(context, settings, day)
    if again is not None:
        out, job, _ = again
    elif settings.executor == "slurm":  # the fit as one Slurm job; registration and the gate stay here
        from didact_core.learn import job as training_job  # lazy: imports torch, as continual does

        out, job = training_job.train_day_as_job(settings, day, run_id=context.run_id, logger=context.log)
    else:
        out = continual.train_day(settings, day, run_id=context.run_id, logger=context.log)
    gate = dg.AssetCheckResult(
        check_name=PROMOTION_GATE,
        passed=out.gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=out.gate.reason,
        metadata={"gate": dg.MetadataValue.json(rounded(out.gate.metadata()))},
    )
    return dg.MaterializeResult(
        metadata={**champion_metadata(out), **job_metadata(job),
                  **({RECONCILED_FROM_RUN: again[2] or "n/a"} if again else {})},
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
    out = evaluate_day.evaluate_day(settings, day_of(context, settings).isoformat(), run_id=context.run_id,
                                    logger=context.log)
    return dg.MaterializeResult(metadata=evaluation_metadata(out))
