"""Continual learning, day by day: train the challenger from the champion and gate it.

For day D, :func:`train_day`

1. loads ``models:/<name>@champion`` (a fresh detector on the very first day, or when
   ``model_warm_start`` is off),
2. trains it on a seeded sample of D's AI-ready data plus a replay sample of the
   previous ``replay_days`` days (against forgetting), with early stopping,
3. logs the run to MLflow (params, per-epoch losses, data versions, parent version,
   code version, plots) and registers the result as a new version with alias
   ``challenger``,
4. applies the promotion gate (``learn.gate``) — the challenger's reconstruction error on
   D's held-out split and on the replay days' held-out splits may be at most
   ``promotion_tolerance`` (relative) above the champion's — and moves ``champion`` when
   it passes.

Every day's rows are split once, deterministically (``learn.split``), into a training
pool and a held-out set.  A NaN/inf loss raises before anything is registered; the
MLflow run then ends FAILED.  The day's evaluation is ``learn.evaluate_day``; rollback
and status rows are ``learn.champion`` (both re-exported here for callers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from didact_core.config import Settings
from didact_core.data.review import ReviewQueue, accepted_samples, rejected_mask
from didact_core.data.spine import AI_READY
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError, DidactError
from didact_core.learn.code_versions import TRAIN_CODE_VERSION
from didact_core.learn.detector import Detector
from didact_core.learn.champion import MODEL_ASSET, model_summary_rows, registry_status, rollback_champion
from didact_core.learn.evaluate_day import EvaluationOutcome, evaluate_day
from didact_core.learn.evaluation import plot_error_hist, plot_latent, plot_losses
from didact_core.learn.gate import GateResult, promotion_gate
from didact_core.learn.models.config import FAMILIES, model_config
from didact_core.learn.registry import CHAMPION, ModelRegistry, ModelVersionInfo, log_png
from didact_core.learn.split import (
    EVAL_SAMPLES, check_day_features, earlier_days, extra_columns, load_days, load_split, model_features,
)

__all__ = [
    "INPUTS_TAG", "MODEL_ASSET", "TRAIN_CODE_VERSION", "EvaluationOutcome", "TrainOutcome", "evaluate_day",
    "load_split", "model_summary_rows", "registry_status", "rollback_champion", "train_day", "training_inputs",
]  # fmt: skip

log = logging.getLogger(__name__)

#: samples of the held-out split the latent plot of a training run shows
PLOT_SAMPLES = 5000
#: the training run's MLflow tag with what it started from besides data and code (:func:`training_inputs`)
INPUTS_TAG = "didact.training_inputs"
#: the settings that shape a day's training and its gate
TRAINING_SETTINGS = (
    "model_name", "model_family", "model_lr", "model_max_epochs", "model_batch_size", "model_hidden",
    "model_warm_start", "max_train_samples", "replay_fraction", "replay_days", "holdout_fraction",
    "promotion_tolerance", "seed", "interval_s",
)  # fmt: skip


@dataclass
class TrainOutcome:
    day: str
    version: ModelVersionInfo
    parent_version: int | None
    mlflow_run_id: str
    gate: GateResult
    promoted: bool
    champion_version: int | None
    n_train: int
    n_replay: int
    seconds: float
    data_versions: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    #: training rows left out because a rejected OOD event covers them
    excluded_by_review: int = 0
    #: training rows from accepted OOD events (each repeated ACCEPTED_WEIGHT times)
    added_from_review: int = 0
    #: the run's plots as PNG bytes: latent, losses, error_hist (also logged to MLflow)
    plots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class DayData:
    """What a day's training reads: today's and the replay days' rows, the review's
    verdicts applied, and the held-out sets of the gate."""

    today: pd.DataFrame
    replay: pd.DataFrame
    #: rows from accepted OOD events (with their ``review_id``)
    added: pd.DataFrame
    #: accepted events not trained on yet (marked trained once the version is registered)
    accepted: pd.DataFrame
    excluded: int
    holdout: pd.DataFrame
    replay_holdout: pd.DataFrame
    replay_days: list[str]
    data_versions: dict
    #: ids of the rejected OOD events (whose samples are left out)
    rejected_ids: list = field(default_factory=list)

    def train_frame(self) -> pd.DataFrame:
        parts = [self.today, self.replay, self.added.drop(columns=["review_id"])]
        return pd.concat([p for p in parts if len(p)], ignore_index=True)


def load_day_data(settings: Settings, wh: Warehouse, day: str, features: tuple[str, ...], queue: ReviewQueue) -> DayData:
    """The day's training rows plus replay, minus rows that rejected OOD events cover, plus
    accepted events not trained on yet; and the held-out sets."""
    check_day_features(wh, day, features)
    cols = [*features, *extra_columns(wh, day)]
    today = load_split(wh, day, "train", settings.max_train_samples, settings, cols)
    decided = queue.decided()
    rejected = decided[decided["status"] == "rejected"]
    accepted = decided[(decided["status"] == "accepted") & decided["trained_in_version"].isna()]
    today, excluded = _drop_rejected(today, rejected, settings)
    if today.empty:
        raise DataQualityError(f"{AI_READY}/{day}", "has no training samples", "check the day's raw data")
    replay_days = earlier_days(wh, day, settings.replay_days)
    n_replay = int(settings.replay_fraction * len(today))
    if n_replay and replay_days:
        replay = load_days(wh, replay_days, "train", n_replay, settings, cols)
    else:
        replay = today.iloc[:0]
    replay, excluded_replay = _drop_rejected(replay, rejected, settings)
    holdout = load_split(wh, day, "holdout", EVAL_SAMPLES, settings, cols)
    replay_holdout = (
        load_days(wh, replay_days, "holdout", EVAL_SAMPLES, settings, cols) if replay_days else today.iloc[:0]
    )
    data_versions = {f"{AI_READY}/{d}": wh.require(AI_READY, d).ref for d in [day, *replay_days]}
    return DayData(today, replay, accepted_samples(accepted, list(features)), accepted, excluded + excluded_replay,
                   holdout, replay_holdout, replay_days, data_versions, rejected["id"].tolist())  # fmt: skip


def training_inputs(settings: Settings, rejected_ids, accepted_ids) -> dict:
    """What a day's training starts from besides its data and code versions: the settings
    that shape it, the model's features, and the review's verdicts (digests of the rejected
    events' and of the accepted-not-yet-trained events' ids).  Recorded as the run's
    :data:`INPUTS_TAG`; ``learn.stored`` compares it with now's before re-emitting a version."""

    def digest(ids) -> str:
        return hashlib.sha256(json.dumps(sorted(int(i) for i in ids)).encode()).hexdigest()[:16]

    values = {k: getattr(settings, k) for k in TRAINING_SETTINGS}
    out = {**values, "features": list(model_features(settings)),
           "rejected_reviews": digest(rejected_ids), "accepted_reviews": digest(accepted_ids)}  # fmt: skip
    return json.loads(json.dumps(out, default=str))  # as stored: tuples become lists


def _drop_rejected(frame: pd.DataFrame, rejected: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, int]:
    if not (len(rejected) and len(frame)):
        return frame, 0
    mask = rejected_mask(frame, rejected, settings.interval_s / 2)
    return frame[~mask].reset_index(drop=True), int(mask.sum())


def challenger_from(settings: Settings, champion, parent: int | None, features: tuple[str, ...]):
    """A copy of the champion with the configured training settings (continual learning),
    or a fresh detector on the first day or with ``model_warm_start`` off.

    The family is never switched silently: a champion of another family than
    ``model_family`` continues only when the setting names the champion's family."""
    family = settings.model_family
    if family not in FAMILIES:
        raise DidactError(f"DIDACT_MODEL_FAMILY={family}", "is not a known model family",
                          f"use one of: {', '.join(FAMILIES)}")  # fmt: skip
    if champion is not None and settings.model_warm_start and champion.config.family != family:
        raise DidactError(
            f"DIDACT_MODEL_FAMILY={family}",
            f"differs from the family of champion v{parent} of {settings.model_name} ({champion.config.family}); "
            "continual training cannot change the family",
            f"set DIDACT_MODEL_WARM_START=0 to start a new {family} lineage (gated against the champion), use a "
            f"new DIDACT_MODEL_NAME for a separate {family} model, or set DIDACT_MODEL_FAMILY={champion.config.family}",
        )
    if champion is None or not settings.model_warm_start:
        return Detector(model_config(settings, len(features)), features)
    if tuple(champion.feature_names) != features:
        raise DidactError(
            f"champion v{parent} of {settings.model_name}",
            f"was trained on features {list(champion.feature_names)}, not {list(features)}",
            "use a new DIDACT_MODEL_NAME for a new feature set, or restore the features",
        )
    with tempfile.TemporaryDirectory() as tmp:  # an independent copy: save + load
        champion.save(tmp)
        challenger = Detector.load(tmp)
    challenger.set_params(lr=settings.model_lr, max_epochs=settings.model_max_epochs,
                          batch_size=settings.model_batch_size, seed=settings.seed)  # fmt: skip
    return challenger


def train_day(
    settings: Settings,
    day: str,
    run_id: str | None = None,
    logger: logging.Logger | None = None,
    wrap: Callable | None = None,
    on_registered: Callable | None = None,
) -> TrainOutcome:
    """Train day ``day``'s challenger from the champion, register it, gate it (see module doc).

    The OOD review's verdicts apply: samples covered by rejected events are left out
    (today's and the replay days'), accepted events not trained on yet are added.
    ``wrap(challenger)`` → the detector that fits instead (``learn.job``: the fit as an
    executor job); ``on_registered(wh, model_version, mlflow_run_id)`` runs once the version
    is registered, before the outcome is recorded.
    """
    logger = logger or log
    t0 = time.perf_counter()
    features = model_features(settings)
    registry = ModelRegistry(settings)  # first: an unreachable registry fails before the data are read
    wh = Warehouse(settings.home_path, settings.retention_versions)
    queue = ReviewQueue(settings)
    champion, parent = registry.load_alias(CHAMPION)
    challenger = challenger_from(settings, champion, parent, features)
    if wrap is not None:
        challenger = wrap(challenger)
    data = load_day_data(settings, wh, day, features, queue)
    warm = champion is not None and settings.model_warm_start
    mv, gate, mlflow_run_id, plots = _train_and_register(
        settings, registry, day, data, challenger, champion, parent, warm, run_id, logger,
    )
    fit = challenger.fits_[-1]
    queue.mark_trained(data.accepted["id"].tolist(), mv.version)
    if on_registered is not None:
        on_registered(wh, mv, mlflow_run_id)
    promoted = _record_outcome(wh, registry, day, mv, gate, parent, data.data_versions, run_id, mlflow_run_id)
    logger.info("day %s: v%d (parent v%s) %s", day, mv.version, parent, "promoted" if promoted else "rejected")
    return TrainOutcome(
        day=day, version=mv, parent_version=parent, mlflow_run_id=mlflow_run_id, gate=gate, promoted=promoted,
        champion_version=registry.alias(CHAMPION), n_train=len(data.today), n_replay=len(data.replay),
        seconds=time.perf_counter() - t0, data_versions=data.data_versions, fit=fit,
        excluded_by_review=data.excluded, added_from_review=len(data.added), plots=plots,
    )  # fmt: skip


def _train_and_register(settings, registry, day, data: DayData, challenger, champion, parent, warm, run_id, logger):
    """In one MLflow run: fit the challenger, log it and its plots, register it, apply the
    gate.  Returns (model version, gate result, MLflow run id, plots)."""
    # lazy: mlflow takes seconds to import
    import mlflow

    features = list(challenger.feature_names)
    inputs = training_inputs(settings, data.rejected_ids, data.accepted["id"].tolist())
    tags = {"didact.day": day, "didact.kind": "train", "didact.dagster_run_id": run_id or "",
            "didact.parent_version": str(parent or ""), "didact.code_version": TRAIN_CODE_VERSION,
            INPUTS_TAG: json.dumps(inputs, sort_keys=True)}  # fmt: skip
    with registry.run(f"train {day}", tags=tags) as run:
        mlflow.log_params({f"model.{k}": v for k, v in challenger.config.to_dict().items()})
        mlflow.log_params({
            "data.day": day, "data.features": ",".join(features), "data.n_today": len(data.today),
            "data.n_replay": len(data.replay), "data.replay_days": ",".join(data.replay_days) or "-",
            "data.excluded_by_review": data.excluded, "data.added_from_review": len(data.added),
            "data.accepted_events": len(data.accepted), "parent_version": parent or "none",
            "warm_start": warm, "code_version": TRAIN_CODE_VERSION,
        })  # fmt: skip
        mlflow.log_dict(data.data_versions, "data_versions.json")

        def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
            m = {"train_loss": train_loss}
            if val_loss is not None:
                m["val_loss"] = val_loss
            mlflow.log_metrics(m, step=epoch)
            logger.info("train %s epoch %d: loss %.5g val %s", day, epoch, train_loss, val_loss)

        train_df = data.train_frame()
        labels = train_df["label"].to_numpy() if "label" in train_df else None
        challenger.fit(train_df[features], on_epoch=on_epoch, labels=labels)
        fit = challenger.fits_[-1]
        mlflow.log_metrics({"threshold": challenger.threshold_, "samples_seen": fit.get("samples_seen", 0),
                            "epochs": fit.get("epochs", 0)})  # fmt: skip
        for k, v in challenger.fit_metrics_.items():
            if v is not None:
                mlflow.log_metric(f"train_{k}", v)
        centroids, plots = _log_training_plots(challenger, data.holdout, features)
        mv = registry.log_and_register(
            challenger, data.today[features].head(64),
            tags={"day": day, "parent_version": parent or "", "data_version": data.data_versions[f"{AI_READY}/{day}"],
                  "centroids": json.dumps(centroids)},
        )  # fmt: skip
        gate = promotion_gate(challenger, champion, {"holdout": data.holdout, "replay": data.replay_holdout},
                              settings.promotion_tolerance)  # fmt: skip
        mlflow.log_dict(gate.metadata(), "promotion_gate.json")
        mlflow.set_tags({"didact.model_version": str(mv.version), "didact.gate": "pass" if gate.passed else "fail"})
        return mv, gate, run.info.run_id, plots


def _log_training_plots(challenger, holdout: pd.DataFrame, features: list[str]) -> tuple[dict, dict[str, bytes]]:
    """Latent scatter, loss curves and error histogram into the active run; returns the
    latent centroid of each label in the held-out sample (a version tag) and the plots."""
    ev = holdout.head(PLOT_SAMPLES)
    z = challenger.embed(ev[features])
    plots = {
        "latent": plot_latent(z, ev["label"].to_numpy() if "label" in ev else None),
        "losses": plot_losses(challenger.fit_result_.history),
        "error_hist": plot_error_hist(challenger.score_samples(holdout[features]), challenger.threshold_),
    }
    for name, png in plots.items():
        log_png(png, f"{name}.png")
    if "label" not in ev:
        return {}, plots
    return {str(k): [round(float(c), 5) for c in g.mean(axis=0)]
            for k, g in pd.DataFrame(z).groupby(ev["label"].to_numpy())}, plots  # fmt: skip


def _record_outcome(wh, registry, day, mv, gate, parent, data_versions, run_id, mlflow_run_id) -> bool:
    """Lineage of the registration, and the promotion when the gate passed; True if promoted."""
    wh.record(
        "register", MODEL_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
        code_version=TRAIN_CODE_VERSION, upstream={**data_versions, "parent_model_version": parent},
        run_id=run_id, mlflow_run_id=mlflow_run_id, reason=gate.reason,
    )  # fmt: skip
    if not gate.passed:
        return False
    old = registry.promote(mv.version)
    wh.record(
        "promote", MODEL_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
        upstream={"from": old}, run_id=run_id, mlflow_run_id=mlflow_run_id, actor="promotion_gate",
        reason=gate.reason,
    )  # fmt: skip
    return True
