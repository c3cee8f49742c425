"""Continual learning, day by day: train the challenger from the champion, gate it, evaluate.

For day D, :func:`train_day`

1. loads ``models:/<name>@champion`` (a fresh detector on the very first day, or when
   ``model_warm_start`` is off),
2. trains it on a seeded sample of D's AI-ready data plus a replay sample of the
   previous ``replay_days`` days (against forgetting), with early stopping,
3. logs the run to MLflow (params, per-epoch losses, data versions, parent version,
   code version, plots) and registers the result as a new version with alias
   ``challenger``,
4. applies the promotion gate — the challenger's reconstruction error on D's held-out
   split and on the replay days' held-out splits may be at most ``promotion_tolerance``
   (relative) above the champion's — and moves ``champion`` when it passes.

Every day's rows are split once, deterministically (``seed``, day, part), into a
training pool and a held-out set, so the held-out set of an old day stays the same
whenever it is replayed or evaluated.  A NaN/inf loss raises before anything is
registered; the MLflow run then ends FAILED.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError, DidactError
from didact_core.data.spine import AI_READY
from didact_core.data.preprocess import check_features, feature_columns
from didact_core.schema import NODE_FEATURES
from didact_core.learn.registry import CHAMPION, PREVIOUS, ModelRegistry, ModelVersionInfo
from didact_core.data.review import ReviewQueue, accepted_samples, rejected_mask
from didact_core.versioning import code_version
from didact_core.data.warehouse import Warehouse, read_part

log = logging.getLogger(__name__)

MODEL_ASSET = "champion_model"
EVAL_ASSET = "model_evaluation"
TRAIN_CODE_VERSION = code_version("learn/continual", "learn/models", "learn/detector", "learn/training", "learn/batching", "data/features", "learn/registry")
EVAL_CODE_VERSION = code_version("learn/continual", "learn/evaluation", "learn/registry")

#: rows evaluated per set (a seeded sample; metrics are cheap and reproducible)
EVAL_SAMPLES = 20_000


# -- data -----------------------------------------------------------------------------------


def load_split(
    wh: Warehouse,
    day: str,
    split: str,
    n_max: int | None,
    settings: Settings,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """A seeded sample (at most ``n_max`` rows) of one split ("train" or "holdout") of
    the day's AI-ready head.  The split of a row depends only on (seed, day, part, row)."""
    info = wh.require(AI_READY, day)
    total = info.tables.get("samples", 0)
    frac = settings.holdout_fraction if split == "holdout" else 1 - settings.holdout_fraction
    keep_p = 1.0 if not n_max else min(1.0, n_max / max(1.0, total * frac))
    ordinal = dt.date.fromisoformat(day).toordinal()
    out = []
    for i, path in enumerate(wh.part_paths(AI_READY, day, "samples")):
        part = read_part(path)
        rng = np.random.default_rng([settings.seed, ordinal, i])
        u_split, u_keep = rng.random(len(part)), rng.random(len(part))
        in_split = u_split < settings.holdout_fraction if split == "holdout" else u_split >= settings.holdout_fraction
        sel = in_split & (u_keep < keep_p)
        part = part[sel]
        out.append(part[columns] if columns else part)
    df = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    if n_max and len(df) > n_max:
        df = df.sample(n=n_max, random_state=settings.seed).reset_index(drop=True)
    for col in ("label", "fault", "node"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    return df


def earlier_days(wh: Warehouse, day: str, n: int) -> list[str]:
    """Up to ``n`` AI-ready partitions before ``day`` (newest last)."""
    return [p for p in wh.partitions(AI_READY) if p < day][-n:] if n > 0 else []


def _check_features(wh: Warehouse, day: str, features: tuple) -> None:
    info = wh.require(AI_READY, day)
    have = info.metadata.get("features", [])
    missing = [f for f in features if f not in have]
    if missing:
        raise DidactError(
            f"{AI_READY}/{day} v{info.version}",
            f"lacks the model's feature(s) {missing} (it has {have})",
            "re-materialise ai_ready_metrics with DIDACT_FEATURES including them, or change the model's features",
        )
    if not info.tables.get("samples"):
        raise DataQualityError(f"{AI_READY}/{day} v{info.version}", "is empty", "check the raw partition of that day")


# -- evaluation ---------------------------------------------------------------------------------


def error_summary(detector, frame: pd.DataFrame) -> dict:
    """Mean and tail reconstruction error of ``frame`` (and per label when present)."""
    if detector is None or frame.empty:
        return {}
    s = detector.score_samples(frame[list(detector.feature_names)])
    out = {"mean_error": float(np.nanmean(s)), "p99_error": float(np.nanquantile(s, 0.99)), "n": int(len(s))}
    out["ood_rate"] = float(np.mean(s > detector.threshold_))
    return out


@dataclass
class GateResult:
    passed: bool
    reason: str
    challenger: dict
    champion: dict
    tolerance: float

    def metadata(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "tolerance": self.tolerance,
                "challenger": self.challenger, "champion": self.champion}  # fmt: skip


def promotion_gate(challenger, champion, sets: dict[str, pd.DataFrame], tolerance: float) -> GateResult:
    """Challenger not worse than champion beyond ``tolerance`` on every evaluation set."""
    ch = {name: error_summary(challenger, df) for name, df in sets.items() if not df.empty}
    if champion is None:
        return GateResult(True, "first model: no champion to compare with", ch, {}, tolerance)
    cp = {name: error_summary(champion, df) for name, df in sets.items() if not df.empty}
    worse = []
    for name in ch:
        a, b = ch[name]["mean_error"], cp[name]["mean_error"]
        if not np.isfinite(a) or a > b * (1 + tolerance):
            worse.append(f"{name}: challenger {a:.4g} > champion {b:.4g} × {1 + tolerance:g}")
    if worse:
        return GateResult(False, "challenger worse than champion — " + "; ".join(worse), ch, cp, tolerance)
    summary = ", ".join(f"{n} {ch[n]['mean_error']:.4g} vs {cp[n]['mean_error']:.4g}" for n in ch)
    return GateResult(True, f"challenger not worse ({summary})", ch, cp, tolerance)


# -- training -------------------------------------------------------------------------------------


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


def model_features(settings: Settings) -> tuple[str, ...]:
    """The detector's input columns for the configured features and window."""
    return feature_columns(settings.features, settings.window)


def model_config(settings: Settings, n_features: int):
    from didact_core.learn.models import ModelConfig

    from didact_core.learn.models import hidden_for

    node_level = any(f in NODE_FEATURES for f in check_features(settings.features))
    hidden = tuple(int(h) for h in settings.model_hidden) or hidden_for(n_features, family=settings.model_family)
    return ModelConfig(
        hidden=hidden,
        # rates and byte counts span decades: log1p, then standardise (frozen after day one)
        log1p=node_level,
        standardize=node_level,
        family=settings.model_family,
        n_features=n_features,
        lr=settings.model_lr,
        max_epochs=settings.model_max_epochs,
        batch_size=settings.model_batch_size,
        seed=settings.seed,
    )


def train_day(
    settings: Settings,
    day: str,
    run_id: str | None = None,
    logger: logging.Logger | None = None,
) -> TrainOutcome:
    """Train day ``day``'s challenger from the champion, register it, gate it (see module doc).

    The OOD review's verdicts apply: samples covered by rejected events are left out
    (today's and the replay days'), accepted events not trained on yet are added.
    """
    import mlflow

    from didact_core.learn.evaluation import plot_error_hist, plot_latent, plot_losses
    from didact_core.learn.detector import Detector

    logger = logger or log
    t0 = time.perf_counter()
    features = model_features(settings)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    _check_features(wh, day, features)
    cols = [*features, *_extra_columns(wh, day)]
    today = load_split(wh, day, "train", settings.max_train_samples, settings, cols)
    queue = ReviewQueue(settings)
    decided = queue.decided()
    rejected = decided[decided["status"] == "rejected"]
    accepted = decided[(decided["status"] == "accepted") & decided["trained_in_version"].isna()]
    excluded = 0
    if len(rejected) and len(today):
        mask = rejected_mask(today, rejected, settings.interval_s / 2)
        excluded = int(mask.sum())
        today = today[~mask].reset_index(drop=True)
    if today.empty:
        raise DataQualityError(f"{AI_READY}/{day}", "has no training samples", "check the day's raw data")
    replay_days = earlier_days(wh, day, settings.replay_days)
    n_replay = int(settings.replay_fraction * len(today))
    replay = [
        load_split(wh, d, "train", max(1, n_replay // len(replay_days)), settings, cols)
        for d in replay_days if n_replay
    ]  # fmt: skip
    replay_df = pd.concat(replay, ignore_index=True) if replay else today.iloc[:0]
    if len(rejected) and len(replay_df):
        mask = rejected_mask(replay_df, rejected, settings.interval_s / 2)
        excluded += int(mask.sum())
        replay_df = replay_df[~mask].reset_index(drop=True)
    added = accepted_samples(accepted, list(features))
    holdout = load_split(wh, day, "holdout", EVAL_SAMPLES, settings, cols)
    replay_holdout = pd.concat(
        [load_split(wh, d, "holdout", max(1, EVAL_SAMPLES // len(replay_days)), settings, cols) for d in replay_days],
        ignore_index=True,
    ) if replay_days else today.iloc[:0]  # fmt: skip

    registry = ModelRegistry(settings)
    champion, parent = registry.load_alias(CHAMPION)
    if champion is not None and settings.model_warm_start:
        if tuple(champion.feature_names) != features:
            raise DidactError(
                f"champion v{parent} of {settings.model_name}",
                f"was trained on features {list(champion.feature_names)}, not {list(features)}",
                "use a new DIDACT_MODEL_NAME for a new feature set, or restore the features",
            )
        challenger = _copy(champion)
        challenger.set_params(lr=settings.model_lr, max_epochs=settings.model_max_epochs,
                              batch_size=settings.model_batch_size, seed=settings.seed)  # fmt: skip
    else:
        challenger = Detector(model_config(settings, len(features)), features)

    data_versions = {f"{AI_READY}/{day}": wh.require(AI_READY, day).ref}
    for d in replay_days:
        data_versions[f"{AI_READY}/{d}"] = wh.require(AI_READY, d).ref
    parts = [today, replay_df, added.drop(columns=["review_id"])]
    train_df = pd.concat([p for p in parts if len(p)], ignore_index=True)
    tags = {"didact.day": day, "didact.kind": "train", "didact.dagster_run_id": run_id or "",
            "didact.parent_version": str(parent or ""), "didact.code_version": TRAIN_CODE_VERSION}  # fmt: skip
    with registry.run(f"train {day}", tags=tags) as run:
        mlflow.log_params({f"model.{k}": v for k, v in challenger.config.to_dict().items()})
        mlflow.log_params({
            "data.day": day, "data.features": ",".join(features), "data.n_today": len(today),
            "data.n_replay": len(replay_df), "data.replay_days": ",".join(replay_days) or "-",
            "data.excluded_by_review": excluded, "data.added_from_review": len(added),
            "data.accepted_events": len(accepted), "parent_version": parent or "none",
            "warm_start": champion is not None and settings.model_warm_start,
            "code_version": TRAIN_CODE_VERSION,
        })  # fmt: skip
        mlflow.log_dict(data_versions, "data_versions.json")

        def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
            m = {"train_loss": train_loss}
            if val_loss is not None:
                m["val_loss"] = val_loss
            mlflow.log_metrics(m, step=epoch)
            logger.info("train %s epoch %d: loss %.5g val %s", day, epoch, train_loss, val_loss)

        labels = train_df["label"].to_numpy() if "label" in train_df else None
        challenger.fit(train_df[list(features)], on_epoch=on_epoch, labels=labels)
        fit = challenger.fits_[-1]
        mlflow.log_metrics({"threshold": challenger.threshold_, "samples_seen": fit.get("samples_seen", 0),
                            "epochs": fit.get("epochs", 0)})  # fmt: skip
        for k, v in challenger.fit_metrics_.items():
            if v is not None:
                mlflow.log_metric(f"train_{k}", v)
        ev = holdout.head(5000)
        z = challenger.embed(ev[list(features)])
        _log_png(plot_latent(z, ev["label"].to_numpy() if "label" in ev else None), "latent.png")
        _log_png(plot_losses(challenger.fit_result_.history), "losses.png")
        _log_png(plot_error_hist(challenger.score_samples(holdout[list(features)]), challenger.threshold_),
                 "error_hist.png")
        centroids = {}
        if "label" in ev:
            centroids = {str(k): [round(float(c), 5) for c in g.mean(axis=0)]
                         for k, g in pd.DataFrame(z).groupby(ev["label"].to_numpy())}  # fmt: skip
        mv = registry.log_and_register(
            challenger, today[list(features)].head(64),
            tags={"day": day, "parent_version": parent or "", "data_version": data_versions[f"{AI_READY}/{day}"],
                  "centroids": json.dumps(centroids)},
        )  # fmt: skip
        gate = promotion_gate(challenger, champion, {"holdout": holdout, "replay": replay_holdout},
                              settings.promotion_tolerance)  # fmt: skip
        mlflow.log_dict(gate.metadata(), "promotion_gate.json")
        mlflow.set_tags({"didact.model_version": str(mv.version), "didact.gate": "pass" if gate.passed else "fail"})
        mlflow_run_id = run.info.run_id

    queue.mark_trained(accepted["id"].tolist(), mv.version)
    wh.record(
        "register", MODEL_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
        code_version=TRAIN_CODE_VERSION, upstream={**data_versions, "parent_model_version": parent},
        run_id=run_id, mlflow_run_id=mlflow_run_id, reason=gate.reason,
    )  # fmt: skip
    promoted = False
    if gate.passed:
        old = registry.promote(mv.version)
        promoted = True
        wh.record(
            "promote", MODEL_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
            upstream={"from": old}, run_id=run_id, mlflow_run_id=mlflow_run_id, actor="promotion_gate",
            reason=gate.reason,
        )  # fmt: skip
    logger.info("day %s: v%d (parent v%s) %s", day, mv.version, parent, "promoted" if promoted else "rejected")
    return TrainOutcome(
        day=day, version=mv, parent_version=parent, mlflow_run_id=mlflow_run_id, gate=gate, promoted=promoted,
        champion_version=registry.alias(CHAMPION), n_train=len(today), n_replay=len(replay_df),
        seconds=time.perf_counter() - t0, data_versions=data_versions, fit=fit,
        excluded_by_review=excluded, added_from_review=len(added),
    )  # fmt: skip


def _copy(detector):
    """An independent copy of a fitted detector (save + load through a temp folder)."""
    import tempfile

    from didact_core.learn.detector import Detector

    with tempfile.TemporaryDirectory() as tmp:
        detector.save(tmp)
        return Detector.load(tmp)


def _extra_columns(wh: Warehouse, day: str) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(wh.part_paths(AI_READY, day, "samples")[0]).names
    return [c for c in ("label", "fault", "node", "cpu", "ts") if c in names]


def _log_png(png: bytes, name: str) -> None:
    """Log PNG bytes as ``plots/<name>`` in the active MLflow run."""
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(png)
        mlflow.log_artifact(str(path), artifact_path="plots")


# -- evaluation asset ---------------------------------------------------------------------------------


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


def evaluate_day(settings: Settings, day: str, run_id: str | None = None) -> EvaluationOutcome:
    """The day's challenger vs the champion it was trained from, side by side, on the
    day's held-out split, the replay days' held-out splits and the first days'
    (forgetting); logged as an MLflow run."""
    import mlflow

    from didact_core.learn.evaluation import pca_structure_agreement, plot_error_hist, plot_latent, roc_auc
    from didact_core.testbed.evaluation import openset, separability

    wh = Warehouse(settings.home_path, settings.retention_versions)
    features = list(model_features(settings))
    _check_features(wh, day, tuple(features))
    cols = [*features, *_extra_columns(wh, day)]
    registry = ModelRegistry(settings)
    champion_v = registry.alias(CHAMPION)
    if champion_v is None:
        raise DidactError(f"model {settings.model_name}", "has no champion yet", "materialise champion_model first")
    day_versions = [v for v in registry.versions() if v.tags.get("day") == day]
    if not day_versions:
        raise DidactError(f"{MODEL_ASSET}/{day}", "has no trained version", f"materialise {MODEL_ASSET} for {day} first")
    challenger_info = day_versions[-1]
    parent = challenger_info.tags.get("parent_version") or None
    # side by side: the day's challenger against the champion it was trained from
    models = {"challenger": (registry.load(challenger_info.version), challenger_info.version)}
    if parent:
        models["champion"] = (registry.load(int(parent)), int(parent))

    sets = {"holdout": load_split(wh, day, "holdout", EVAL_SAMPLES, settings, cols)}
    replay_days = earlier_days(wh, day, settings.replay_days)
    if replay_days:
        sets["replay"] = pd.concat(
            [load_split(wh, d, "holdout", EVAL_SAMPLES // len(replay_days), settings, cols) for d in replay_days],
            ignore_index=True,
        )
    first = [p for p in wh.partitions(AI_READY) if p < day][:2]
    if first:
        sets["first_days"] = pd.concat(
            [load_split(wh, d, "holdout", EVAL_SAMPLES // len(first), settings, cols) for d in first], ignore_index=True
        )

    rejected_events = _event_features(ReviewQueue(settings).decided(), "rejected", features)
    metrics: dict = {}
    plots = {}
    for who, (det, version) in models.items():
        for name, df in sets.items():
            s = det.score_samples(df[features])
            m = {"mean_error": float(np.nanmean(s)), "ood_rate": float(np.mean(s > det.threshold_))}
            if "label" in df:
                per = pd.Series(s).groupby(df["label"].to_numpy()).mean()
                m["error_by_flavour"] = {k: round(float(v), 6) for k, v in per.items()}
            if "fault" in df and name == "holdout":
                m["fault_roc_auc"] = roc_auc(s, (df["fault"] != "").to_numpy())
            if name == "holdout":
                sub = df.head(5000)
                z = det.embed(sub[features])
                if "label" in sub:
                    labelled = sub[sub["label"].astype(str) != "unknown"]
                    try:  # latent vs PCA-2 vs raw features, per flavour too
                        m.update(separability(det, labelled, features, settings.seed))
                    except DataQualityError as e:
                        log.warning("no flavour separability for %s: %s", day, e)
                m["pca_agreement"] = pca_structure_agreement(det.transform_.transform(sub[features]), z)
                plots[f"{who}_latent"] = plot_latent(z, sub["label"].to_numpy() if "label" in sub else None,
                                                     title=f"{who} v{version}")  # fmt: skip
                plots[f"{who}_error_hist"] = plot_error_hist(s, det.threshold_)
            metrics.setdefault(who, {})[name] = m
        if settings.openset_eval and "label" in sets["holdout"]:
            train = load_split(wh, day, "train", settings.max_train_samples, settings, cols)
            known = ~train["label"].astype(str).isin(["unknown"])
            metrics[who]["openset"] = openset(settings, train[known], sets["holdout"].head(EVAL_SAMPLES), features)
        if len(rejected_events) and "holdout" in sets:
            normal = det.score_samples(sets["holdout"][features])
            anomal = det.score_samples(rejected_events[features])
            metrics[who]["review"] = {
                "rejected_events": len(rejected_events),
                "rejected_roc_auc": roc_auc(np.r_[normal, anomal], np.r_[np.zeros(len(normal)), np.ones(len(anomal))]),
            }

    challenger_v = challenger_info.version
    baseline_v = int(parent) if parent else None
    tags = {"didact.day": day, "didact.kind": "evaluate", "didact.dagster_run_id": run_id or "",
            "didact.champion_version": str(champion_v), "didact.challenger_version": str(challenger_v),
            "didact.parent_version": str(baseline_v or "")}  # fmt: skip
    with registry.run(f"evaluate {day}", tags=tags) as run:
        flat = {}
        for who, per_set in metrics.items():
            for name, m in per_set.items():
                for k, v in m.items():
                    if isinstance(v, (int, float)) and v is not None:
                        flat[f"{who}.{name}.{k}"] = v
                    elif isinstance(v, dict) and k in PER_KEY_METRICS:
                        flat.update({f"{who}.{name}.{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
        mlflow.log_metrics(flat)
        mlflow.log_dict(metrics, "evaluation.json")
        for name, png in plots.items():
            _log_png(png, f"{name}.png")
        mlflow_run_id = run.info.run_id
    wh.record("evaluate", EVAL_ASSET, partition=day, model_version=str(challenger_v), run_id=run_id,
              mlflow_run_id=mlflow_run_id, upstream={"parent_model_version": baseline_v, "champion": champion_v})  # fmt: skip
    return EvaluationOutcome(day, champion_v, challenger_v, baseline_v, metrics, mlflow_run_id)


#: evaluation results that are dicts (per flavour, per component) logged as one metric per key
PER_KEY_METRICS = ("pca_agreement", "latent_knn_by_flavour", "latent_knn_by_segment_by_flavour", "openset_auc_by_flavour")


def _event_features(decided: pd.DataFrame, status: str, features: list[str]) -> pd.DataFrame:
    rows = [json.loads(f or "{}") for f in decided.loc[decided["status"] == status, "features"]]
    rows = [r for r in rows if all(k in r for k in features)]
    return pd.DataFrame(rows, columns=features)


# -- rollback and status ----------------------------------------------------------------------------------


def rollback_champion(settings: Settings, to_version=None, actor: str = "", reason: str = "") -> dict:
    """Move ``champion`` back (to ``previous_champion``, or to ``to_version``), after
    checking the target's files load.  Recorded in lineage with who, when and why."""
    import getpass

    registry = ModelRegistry(settings)
    current = registry.alias(CHAMPION)
    if to_version is None:
        target = registry.alias(PREVIOUS)
        if target is None:
            raise DidactError(f"model {settings.model_name}", "has no previous champion to roll back to",
                              "name a version with --to")  # fmt: skip
    else:
        try:
            target = int(str(to_version).lstrip("v"))
        except ValueError:
            raise DidactError(f"version {to_version!r}", "is not a model version number") from None
        known = [v.version for v in registry.versions()]
        if target not in known:
            raise DidactError(f"model {settings.model_name} v{target}", "does not exist",
                              f"registered versions: {known or 'none'}")  # fmt: skip
    registry.load(target)  # a version whose files are gone must not become champion
    registry.promote(target)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    wh.record("rollback", MODEL_ASSET, version=f"m{target}", model_version=str(target),
              upstream={"from": current}, actor=actor or getpass.getuser(), reason=reason)  # fmt: skip
    return {"from": current, "to": target}


def model_summary_rows(settings: Settings, days: list[str]) -> list[dict]:
    """Per day: the version trained, its parent, the gate's verdict, the champion after."""
    try:
        wh = Warehouse(settings.home_path)
        lin = wh.lineage(MODEL_ASSET)
    except DidactError:
        return []
    rows = []
    for day in days:
        reg = lin[(lin["partition"] == day) & (lin["event"] == "register")]
        if reg.empty:
            continue
        r = reg.iloc[-1]
        up = json.loads(r["upstream"] or "{}")
        promoted = not lin[(lin["partition"] == day) & (lin["event"] == "promote") & (lin["model_version"] == r["model_version"])].empty
        rows.append({"day": day, "version": f"v{r['model_version']}",
                     "parent": f"v{up['parent_model_version']}" if up.get("parent_model_version") else "–",
                     "promoted": "yes" if promoted else "no", "gate": (r["reason"] or "")[:70]})  # fmt: skip
    return rows


def registry_status(settings: Settings) -> list[dict]:
    try:
        reg = ModelRegistry(settings)
    except DidactError:
        return []
    return [{"version": v.version, "aliases": ",".join(v.aliases), "day": v.tags.get("day", ""),
             "parent": v.tags.get("parent_version", ""), "run": (v.run_id or "")[:8]} for v in reg.versions()]  # fmt: skip
