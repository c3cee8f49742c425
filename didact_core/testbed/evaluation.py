"""How well a detector separates labelled job flavours and flags one it never saw —
judged on whole segments it never trained on.

For labelled telemetry (a testbed recording, or the simulator): **separability** and
**open-set detection** (``learn.separability`` defines both), split by whole labelled
segments (``testbed.segments``) so that no segment — no two neighbouring seconds — lies on
both sides of any split:

* **within one recording** (``days``): per flavour with 3+ usable segments a seeded third of
  its segments is held out; the detector trains on the rest (all flavours: it never sees a
  label); kNN (k = 5) is fit on the training segments' latents and judges the held-out
  segments; open set: per flavour F a detector trained on the training segments without F,
  ROC-AUC of its reconstruction error for *all* of F's segments (it never saw one) against
  the held-out segments of the others;
* **across recordings** (``days`` → ``test_days``, and back with ``cross``): the detector and
  kNN fit on every usable segment of the training days, judged on the test days; open set
  trained on the training days without F, scored on the test days.

Each seed of ``seeds`` redraws the split, the samples and the model's initialisation; the
result holds every seed's figures and their mean ± std.  Flavours and segments too thin
to judge are named with the reason and left out of the means (``testbed.eval_report``
words it); :func:`evaluate` logs one MLflow run and returns the numbers and a latent plot.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError, DidactError
from didact_core.learn.detector import Detector
from didact_core.learn.evaluation import plot_latent
from didact_core.learn.models.config import model_config
from didact_core.learn.registry import ModelRegistry, log_png
from didact_core.learn.separability import KNN_K, knn_transfer, openset_auc, separability
from didact_core.learn.split import load_split, model_features
from didact_core.schema import has_label
from didact_core.testbed.eval_report import summarise
from didact_core.testbed.segments import MIN_SAMPLES, Segments, load_segments, split_segments

__all__ = ["HOLDOUT", "MIN_OPENSET_SEGMENTS", "evaluate", "labelled_frame"]

log = logging.getLogger(__name__)

#: share of a flavour's segments held out within one recording
HOLDOUT = 1 / 3
#: segments an open-set AUC's positive side needs to count in the mean
MIN_OPENSET_SEGMENTS = 2


def labelled_frame(settings: Settings, days: list[str], split: str, n_max: int) -> pd.DataFrame:
    """Labelled AI-ready samples of ``days`` (one row-level split), at most ``n_max`` in all."""
    wh = Warehouse(settings.home_path)
    per_day = max(1, n_max // max(1, len(days)))
    frames = [load_split(wh, d, split, per_day, settings) for d in days]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty or "label" not in df:
        raise DataQualityError(
            f"AI-ready samples of {', '.join(days)}",
            "have no job labels",
            "set DIDACT_LABELS_CSV to the recording's labels and re-materialise job_labels and ai_ready_metrics",
        )
    df = df[has_label(df["label"])].reset_index(drop=True)
    if df["label"].nunique() < 2:
        raise DataQualityError(f"labelled samples of {', '.join(days)}", "hold fewer than two flavours")
    return df


def evaluate(
    settings: Settings,
    days: list[str],
    max_train: int = 60_000,
    max_test: int = 10_000,
    epochs: int | None = None,
    openset_epochs: int = 5,
    log_to_mlflow: bool = True,
    seeds: list[int] | None = None,
    test_days: list[str] | None = None,
    cross: bool = False,
    holdout: float = HOLDOUT,
    train_labels: pd.DataFrame | None = None,
    test_labels: pd.DataFrame | None = None,
    names: tuple[str, str] | None = None,
) -> dict:
    """Segment-honest evaluation of ``days`` (or ``days`` → ``test_days``; both ways with
    ``cross``) over ``seeds`` (default: ``settings.seed``); see the module doc.

    ``train_labels`` / ``test_labels``: one recording's labels each (its CSV): only the
    samples inside their intervals count on that side, so two recordings of one UTC day
    (one partition) can be told apart; ``names`` name the two sides (default: their days)."""
    t0 = time.perf_counter()
    if cross and not test_days:
        raise DidactError("--cross", "needs test days", "give --train-days A and --test-days B")
    if not 0 < holdout < 1:
        raise DidactError(f"holdout {holdout}", "is not a fraction", "use e.g. 0.33")
    features = list(model_features(settings))
    seeds = list(seeds) if seeds else [settings.seed]
    names = names or (",".join(days), ",".join(test_days or []))
    a, b = (list(days), train_labels, names[0]), ((list(test_days), test_labels, names[1]) if test_days else None)
    pairs = [(a, b)] + ([(b, a)] if cross else [])
    runs = [_direction(settings, tr, te, features, seeds, max_train, max_test, epochs, openset_epochs, holdout)
            for tr, te in pairs]  # fmt: skip
    png = runs[0].pop("plot_png")
    for r in runs[1:]:
        r.pop("plot_png")
    result = {"days": list(days), "test_days": list(test_days) if test_days else None, "features": features,
              "window": settings.window, "seeds": seeds, "runs": runs, **_headline(runs)}  # fmt: skip
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["plot_png"] = png
    if log_to_mlflow:
        result["mlflow_run_id"] = _log_mlflow(settings, result, png)
    return result


def _direction(settings, train, test, features, seeds, max_train, max_test, epochs, openset_epochs, holdout):
    """One train → judge direction over every seed; its per-seed figures and summary.
    ``train``/``test``: (days, labels that alone count or None, name); ``test`` None = held-out segments."""
    (train_days, train_only, train_name), (test_days, test_only, test_name) = train, test or (None, None, None)
    seg_a = load_segments(settings, train_days, features, only=train_only)
    seg_b = load_segments(settings, test_days, features, only=test_only) if test_days else None
    per_seed, plot = [], None
    for seed in seeds:
        s = settings.replace(seed=seed)
        train, test, positives, why = _sets(seg_a, seg_b, seed, holdout)
        train = _cap(train, max_train, seed)
        test = _cap(test, max_test, seed)
        one, det = _once(s, train, test, positives, why, features, epochs, openset_epochs)
        per_seed.append(one)
        if plot is None:
            plot = plot_latent(det.embed(test[features]), test["label"].to_numpy(), title="testbed latent")
    name = train_name + (f" → {test_name}" if test_days else " (held-out segments)")
    run = summarise(per_seed, seg_a, seg_b)
    run.update(name=name, train_days=train_days, test_days=test_days, interval_s=seg_a.interval_s, plot_png=plot,
               notes=seg_a.notes + (seg_b.notes if seg_b else []))  # fmt: skip
    return run


def _sets(seg_a: Segments, seg_b: Segments | None, seed: int, holdout: float):
    """(train, test, open-set positives per flavour, {flavour: why not scored})."""
    usable = seg_a.usable()
    if seg_b is None:
        train_ids, test_ids, why = split_segments(seg_a.table, seed, holdout)
        train = usable[usable["segment"].isin(train_ids)]
        test = usable[usable["segment"].isin(test_ids)]
        pool = usable  # the open-set model never saw F: all of F's segments are fair positives
    else:
        train, test, why = usable, seg_b.usable(), {}
        for f in sorted(set(test["label"]) - set(train["label"])):
            why[f] = "not in the training days (kNN cannot name a flavour it was never shown)"
        for f in sorted(set(train["label"]) - set(test["label"])):
            why[f] = "no usable segment in the test days"
        pool = test
    n = test.groupby("label").size()
    for f, k in n.items():
        if k < MIN_SAMPLES and f not in why:
            why[f] = f"{k} held-out samples (< {MIN_SAMPLES})"
    scored = sorted(set(test["label"]) - set(why))
    if len(scored) < 2:
        raise DataQualityError(
            "labelled segments", f"leave fewer than two flavours to judge ({why})",
            "record more segments per flavour (3+ each within one recording), or mark fewer as exclude",
        )  # fmt: skip
    test = test[test["label"].isin(scored)]
    positives = {f: pool[pool["label"] == f] for f in scored}
    return train.reset_index(drop=True), test.reset_index(drop=True), positives, why


def _cap(frame: pd.DataFrame, n_max: int, seed: int) -> pd.DataFrame:
    """At most ``n_max`` rows, a seeded sample (rows of whole segments stay on their side)."""
    return frame.sample(n=n_max, random_state=seed).reset_index(drop=True) if n_max and len(frame) > n_max else frame


def _once(s: Settings, train, test, positives, why, features, epochs, openset_epochs):
    """One seed: fit the detector on ``train``, judge ``test``; (figures, detector)."""
    cfg = model_config(s, len(features))
    if epochs:
        cfg = cfg.replace(max_epochs=epochs)
    det = Detector(cfg, features).fit(train[features])
    y_tr, y_te = train["label"].to_numpy(), test["label"].to_numpy()
    t_tr, t_te = det.transform_.transform(train[features]), det.transform_.transform(test[features])
    out = {"seed": s.seed, "n_params": det.n_params, "train_samples": len(train), "test_samples": len(test),
           "train_segments": int(train["segment"].nunique()), "test_segments": int(test["segment"].nunique()),
           "not_scored": dict(why)}  # fmt: skip
    for name, (a, b) in _spaces(det, train, test, t_tr, t_te, features, s.seed).items():
        acc, per = knn_transfer(a, y_tr, b, y_te)
        out[f"{name}_knn_accuracy_by_segment"] = acc
        if name == "latent":
            out["latent_knn_by_segment_by_flavour"] = per
    try:  # per sample within the held-out samples, for comparison with earlier figures (flatters)
        per_sample = separability(det, test.drop(columns=["ts"]), features, s.seed)
        out.update({k: per_sample[k] for k in ("latent_knn_accuracy", "pca2_knn_accuracy", "raw_knn_accuracy",
                                               "latent_knn_by_flavour")})  # fmt: skip
    except DataQualityError as e:
        log.warning("no per-sample kNN: %s", e)
    out["openset"] = _openset(s, train, test, positives, features, openset_epochs)
    counted = [v["auc"] for v in out["openset"].values() if v["counted"] and v["auc"] is not None]
    out["openset_auc"] = float(np.mean(counted)) if counted else None
    out["openset_auc_by_flavour"] = {f: v["auc"] for f, v in out["openset"].items()}
    out["test_by_flavour"] = {f: {"segments": int(g["segment"].nunique()), "samples": len(g)}
                              for f, g in test.groupby("label")}  # fmt: skip
    return out, det


def _spaces(det, train, test, t_tr, t_te, features, seed) -> dict:
    """(train, test) coordinates in the latent, in PCA-2 (fit on train) and in the raw features."""
    from sklearn.decomposition import PCA  # lazy: sklearn takes a second to import

    pca = PCA(2, random_state=seed).fit(t_tr)
    return {"latent": (det.embed(train[features]), det.embed(test[features])),
            "pca2": (pca.transform(t_tr), pca.transform(t_te)), "raw": (t_tr, t_te)}  # fmt: skip


def _openset(s: Settings, train, test, positives, features, epochs) -> dict:
    """Per judged flavour F: AUC of F's positives against the held-out others, with its counts."""
    out = {}
    for f, pos in positives.items():
        judged = pd.concat([test[test["label"] != f], pos], ignore_index=True)
        n_seg = int(pos["segment"].nunique())
        counted = len(pos) >= MIN_SAMPLES and n_seg >= MIN_OPENSET_SEGMENTS
        out[f] = {"auc": openset_auc(s, train, judged, features, f, epochs), "samples": len(pos), "segments": n_seg,
                  "counted": counted}  # fmt: skip
        if not counted:
            out[f]["why"] = (f"rests on {len(pos)} samples in {n_seg} segment(s) (needs {MIN_SAMPLES}+ in "
                             f"{MIN_OPENSET_SEGMENTS}+): reported, not in the mean")  # fmt: skip
    return out


def _headline(runs: list[dict]) -> dict:
    """The top-level figures: the mean over directions of each summary mean (one direction: its own)."""
    keys = [k for k, v in runs[0]["summary"].items() if isinstance(v, dict) and "mean" in v]
    out = {}
    for k in keys:
        vals = [r["summary"][k]["mean"] for r in runs if r["summary"].get(k, {}).get("mean") is not None]
        out[k] = float(np.mean(vals)) if vals else None
    first = runs[0]
    out.update(n_params=first["n_params"], flavours=first["flavours"], samples_by_flavour=first["samples_by_flavour"],
               segments=first["segments"], knn_scheme=first["knn_scheme"],
               latent_knn_by_segment_by_flavour=first["by_flavour"]["knn"],
               openset_auc_by_flavour=first["by_flavour"]["openset"])  # fmt: skip
    out["latent_knn_by_flavour"] = first["by_flavour"].get("knn_per_sample", {})
    return out


def _log_mlflow(settings: Settings, result: dict, png: bytes) -> str:
    # lazy: mlflow takes seconds to import
    import mlflow

    days = result["days"] + (result["test_days"] or [])
    reg = ModelRegistry(settings)
    with reg.run(f"testbed evaluation {','.join(days)}", tags={"didact.kind": "testbed_eval"}) as run:
        mlflow.log_params({"days": ",".join(result["days"]), "test_days": ",".join(result["test_days"] or []),
                           "features": ",".join(result["features"])[:500], "window": result["window"],
                           "seeds": ",".join(map(str, result["seeds"])), "n_params": result["n_params"],
                           "knn": f"k={KNN_K}, whole segments"})  # fmt: skip
        mlflow.log_metrics({k: v for k, v in result.items() if isinstance(v, float)})
        for i, r in enumerate(result["runs"]):
            prefix = "" if len(result["runs"]) == 1 else ("a_to_b." if i == 0 else "b_to_a.")
            for k, v in r["summary"].items():
                if isinstance(v, dict) and v.get("mean") is not None:
                    mlflow.log_metrics({f"{prefix}{k}": v["mean"], f"{prefix}{k}_std": v["std"]})
            for k in ("knn", "openset"):
                mlflow.log_metrics({f"{prefix}{k}_by_flavour.{f}": v for f, v in r["by_flavour"][k].items()
                                    if v is not None})  # fmt: skip
        mlflow.log_dict({k: v for k, v in result.items() if k != "plot_png"}, "testbed_evaluation.json")
        log_png(png, "testbed_latent.png")
        return run.info.run_id
