"""``model_evaluation`` as a plain function: the day's challenger beside its champion.

:func:`evaluate_day` scores the challenger trained on day D and the champion it was
trained from on D's held-out split, the replay days' held-out splits and the first
days' (forgetting): reconstruction error (overall, per flavour), OOD rate, fault
ROC-AUC, latent separability, PCA agreement, open-set AUC and the rejected OOD events'
ROC-AUC; with ``DIDACT_EVAL_RECORDINGS``, on real labelled recordings too (``recordings``:
each within itself and every ordered pair across, by whole segments; the headline is
``recordings.cross_latent_knn_by_segment``, see ``learn.recordings_eval``); logged as one
MLflow run with the latent and error plots.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.data.spine import AI_READY
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError, DidactError
from didact_core.learn.champion import MODEL_ASSET
from didact_core.learn.code_versions import EVAL_CODE_VERSION
from didact_core.learn.evaluation import pca_structure_agreement, plot_error_hist, plot_latent, roc_auc
from didact_core.learn.recordings_eval import flat_metrics, recording_folders, recordings_metrics
from didact_core.learn.registry import CHAMPION, ModelRegistry, log_png
from didact_core.learn.separability import openset, separability
from didact_core.learn.split import (
    EVAL_SAMPLES, check_day_features, earlier_days, extra_columns, load_days, load_split, model_features,
)
from didact_core.schema import has_label

log = logging.getLogger(__name__)

EVAL_ASSET = "model_evaluation"
__all__ = ["EVAL_ASSET", "EVAL_CODE_VERSION", "EvaluationOutcome", "evaluate_day"]
#: evaluation results that are dicts (per flavour, per component) logged as one metric per key
PER_KEY_METRICS = ("pca_agreement", "latent_knn_by_flavour", "latent_knn_by_segment_by_flavour", "openset_auc_by_flavour")
#: samples of the held-out split that the latent metrics and plots use
LATENT_SAMPLES = 5000


@dataclass
class EvaluationOutcome:
    day: str
    #: the champion after the day's gate
    champion_version: int | None
    #: the version trained on the day, and the champion it was trained from
    challenger_version: int
    parent_version: int | None
    #: {"challenger"|"champion": {set: {metric: value}}}
    metrics: dict
    mlflow_run_id: str
    #: PNG bytes by name (``<who>_latent``, ``<who>_error_hist``), as logged to MLflow
    plots: dict = field(default_factory=dict)


def evaluate_day(settings: Settings, day: str, run_id: str | None = None,
                 logger: logging.Logger | None = None) -> EvaluationOutcome:  # fmt: skip
    """The day's challenger vs the champion it was trained from, side by side, on the
    day's held-out split, the replay days' held-out splits and the first days'
    (forgetting), and on the recordings of ``settings.eval_recordings``; logged as an
    MLflow run.  ``logger``: where progress goes (the module's log by default)."""
    # lazy: mlflow takes seconds to import
    import mlflow

    recordings = recording_folders(settings)  # a bad folder fails before any work
    wh = Warehouse(settings.home_path, settings.retention_versions)
    features = list(model_features(settings))
    check_day_features(wh, day, tuple(features))
    cols = [*features, *extra_columns(wh, day)]
    registry = ModelRegistry(settings)
    champion_v = registry.alias(CHAMPION)
    if champion_v is None:
        raise DidactError(f"model {settings.model_name}", "has no champion yet", "materialise champion_model first")
    challenger_v, baseline_v, models = _models_of_day(registry, day)
    sets = _evaluation_sets(wh, day, settings, cols)
    rejected_events = _event_features(ReviewQueue(settings).decided(), "rejected", features)
    metrics: dict = {}
    plots: dict[str, bytes] = {}
    for who, (det, version) in models.items():
        for name, df in sets.items():
            m = _set_metrics(det, df, name, features)
            if name == "holdout":
                m.update(_latent_metrics(det, df.head(LATENT_SAMPLES), features, settings.seed, day))
            metrics.setdefault(who, {})[name] = m
        holdout = sets["holdout"]
        plots.update(_plots(det, holdout, features, who, version))
        if settings.openset_eval and "label" in holdout:
            train = load_split(wh, day, "train", settings.max_train_samples, settings, cols)
            known = has_label(train["label"])
            metrics[who]["openset"] = openset(settings, train[known], holdout.head(EVAL_SAMPLES), features)
        if len(rejected_events):
            metrics[who]["review"] = _review_metrics(det, holdout, rejected_events, features)
    if recordings:
        for who, section in recordings_metrics(settings, recordings, models, logger).items():
            metrics[who]["recordings"] = section

    tags = {"didact.day": day, "didact.kind": "evaluate", "didact.dagster_run_id": run_id or "",
            "didact.champion_version": str(champion_v), "didact.challenger_version": str(challenger_v),
            "didact.parent_version": str(baseline_v or "")}  # fmt: skip
    with registry.run(f"evaluate {day}", tags=tags) as run:
        mlflow.log_metrics(_flat_metrics(metrics))
        mlflow.log_dict(metrics, "evaluation.json")
        for name, png in plots.items():
            log_png(png, f"{name}.png")
        mlflow_run_id = run.info.run_id
    wh.record("evaluate", EVAL_ASSET, partition=day, model_version=str(challenger_v), run_id=run_id,
              mlflow_run_id=mlflow_run_id, upstream={"parent_model_version": baseline_v, "champion": champion_v})  # fmt: skip
    return EvaluationOutcome(day, champion_v, challenger_v, baseline_v, metrics, mlflow_run_id, plots)


def _models_of_day(registry: ModelRegistry, day: str) -> tuple[int, int | None, dict]:
    """The day's challenger and the champion it was trained from: (challenger version,
    parent version, {"challenger"|"champion": (detector, version)})."""
    day_versions = [v for v in registry.versions() if v.tags.get("day") == day]
    if not day_versions:
        raise DidactError(f"{MODEL_ASSET}/{day}", "has no trained version", f"materialise {MODEL_ASSET} for {day} first")
    challenger_info = day_versions[-1]
    parent = challenger_info.tags.get("parent_version") or None
    # side by side: the day's challenger against the champion it was trained from
    models = {"challenger": (registry.load(challenger_info.version), challenger_info.version)}
    if parent:
        models["champion"] = (registry.load(int(parent)), int(parent))
    return challenger_info.version, int(parent) if parent else None, models


def _evaluation_sets(wh: Warehouse, day: str, settings: Settings, cols: list[str]) -> dict[str, pd.DataFrame]:
    """The day's held-out split, the replay days' and the first two days' (forgetting)."""
    sets = {"holdout": load_split(wh, day, "holdout", EVAL_SAMPLES, settings, cols)}
    replay_days = earlier_days(wh, day, settings.replay_days)
    if replay_days:
        sets["replay"] = load_days(wh, replay_days, "holdout", EVAL_SAMPLES, settings, cols)
    first = [p for p in wh.partitions(AI_READY) if p < day][:2]
    if first:
        sets["first_days"] = load_days(wh, first, "holdout", EVAL_SAMPLES, settings, cols)
    return sets


def _set_metrics(det, df: pd.DataFrame, name: str, features: list[str]) -> dict:
    """Error, OOD rate and per-flavour error of one set (and fault ROC-AUC on the held-out split)."""
    s = det.score_samples(df[features])
    m = {"mean_error": float(np.nanmean(s)), "ood_rate": float(np.mean(s > det.threshold_))}
    if "label" in df:
        per = pd.Series(s).groupby(df["label"].to_numpy()).mean()
        m["error_by_flavour"] = {k: round(float(v), 6) for k, v in per.items()}
    if "fault" in df and name == "holdout":
        m["fault_roc_auc"] = roc_auc(s, (df["fault"] != "").to_numpy())
    return m


def _latent_metrics(det, sub: pd.DataFrame, features: list[str], seed: int, day: str) -> dict:
    """Flavour separability (latent vs PCA-2 vs raw) and PCA agreement of a held-out sample."""
    m: dict = {}
    if "label" in sub:
        labelled = sub[has_label(sub["label"])]
        try:  # latent vs PCA-2 vs raw features, per flavour too
            m.update(separability(det, labelled, features, seed))
        except DataQualityError as e:
            log.warning("no flavour separability for %s: %s", day, e)
    m["pca_agreement"] = pca_structure_agreement(det.transform_.transform(sub[features]), det.embed(sub[features]))
    return m


def _plots(det, holdout: pd.DataFrame, features: list[str], who: str, version: int) -> dict[str, bytes]:
    """The latent scatter of a held-out sample and the error histogram of the held-out split."""
    sub = holdout.head(LATENT_SAMPLES)
    z = det.embed(sub[features])
    labels = sub["label"].to_numpy() if "label" in sub else None
    return {
        f"{who}_latent": plot_latent(z, labels, title=f"{who} v{version}"),
        f"{who}_error_hist": plot_error_hist(det.score_samples(holdout[features]), det.threshold_),
    }


def _review_metrics(det, holdout: pd.DataFrame, rejected_events: pd.DataFrame, features: list[str]) -> dict:
    """How well the score tells the vetted OOD events (rejected: truly anomalous) from normal rows."""
    normal = det.score_samples(holdout[features])
    anomal = det.score_samples(rejected_events[features])
    return {
        "rejected_events": len(rejected_events),
        "rejected_roc_auc": roc_auc(np.r_[normal, anomal], np.r_[np.zeros(len(normal)), np.ones(len(anomal))]),
    }


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """``who.set.metric`` numbers for MLflow (dicts of :data:`PER_KEY_METRICS` one per key;
    every number of ``recordings``, at any depth)."""
    flat = {}
    for who, per_set in metrics.items():
        for name, m in per_set.items():
            if name == "recordings":
                flat.update(flat_metrics(f"{who}.{name}", m))
                continue
            for k, v in m.items():
                if isinstance(v, (int, float)) and v is not None:
                    flat[f"{who}.{name}.{k}"] = v
                elif isinstance(v, dict) and k in PER_KEY_METRICS:
                    flat.update({f"{who}.{name}.{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
    return flat


def _event_features(decided: pd.DataFrame, status: str, features: list[str]) -> pd.DataFrame:
    rows = [json.loads(f or "{}") for f in decided.loc[decided["status"] == status, "features"]]
    rows = [r for r in rows if all(k in r for k in features)]
    return pd.DataFrame(rows, columns=features)
