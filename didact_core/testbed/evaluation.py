"""How well a detector separates labelled job flavours and flags one it never saw.

For labelled telemetry (a testbed recording, or the simulator): **separability** and
**open-set detection** (``learn.separability`` defines both).  :func:`evaluate` trains
a detector on labelled AI-ready partitions, runs both, logs them to MLflow as one run,
and returns the numbers (per flavour too) and a latent scatter plot.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError
from didact_core.learn.detector import Detector
from didact_core.learn.evaluation import plot_latent
from didact_core.learn.models.config import model_config
from didact_core.learn.registry import ModelRegistry, log_png
from didact_core.learn.separability import openset, separability
from didact_core.learn.split import load_split, model_features
from didact_core.schema import has_label

__all__ = ["evaluate", "labelled_frame"]

log = logging.getLogger(__name__)


def labelled_frame(settings: Settings, days: list[str], split: str, n_max: int) -> pd.DataFrame:
    """Labelled AI-ready samples of ``days`` (one split), at most ``n_max`` in all."""
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
) -> dict:
    """Train a detector on the labelled days, then separability and open-set detection."""
    t0 = time.perf_counter()
    features = list(model_features(settings))
    train = labelled_frame(settings, days, "train", max_train)
    test = labelled_frame(settings, days, "holdout", max_test)
    cfg = model_config(settings, len(features))
    if epochs:
        cfg = cfg.replace(max_epochs=epochs)
    det = Detector(cfg, features).fit(train[features])
    result = {
        "days": days,
        "features": features,
        "window": settings.window,
        "n_params": det.n_params,
        "train_samples": len(train),
        "test_samples": len(test),
        "flavours": sorted(test["label"].astype(str).unique()),
        "samples_by_flavour": test["label"].astype(str).value_counts().sort_index().to_dict(),
        **separability(det, test, features, settings.seed),
        **openset(settings, train, test, features, openset_epochs),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    png = plot_latent(det.embed(test[features]), test["label"].astype(str).to_numpy(), title="testbed latent")
    result["plot_png"] = png
    if log_to_mlflow:
        # lazy: mlflow takes seconds to import
        import mlflow

        reg = ModelRegistry(settings)
        with reg.run(f"testbed evaluation {','.join(days)}", tags={"didact.kind": "testbed_eval"}) as run:
            mlflow.log_params({"days": ",".join(days), "features": ",".join(features)[:500], "window": settings.window,
                               "train_samples": len(train), "n_params": det.n_params})  # fmt: skip
            mlflow.log_metrics({k: v for k, v in result.items() if isinstance(v, float)})
            for k in ("latent_knn_by_flavour", "latent_knn_by_segment_by_flavour", "openset_auc_by_flavour"):
                mlflow.log_metrics({f"{k}.{f}": v for f, v in result.get(k, {}).items() if v is not None})
            mlflow.log_dict({k: v for k, v in result.items() if k != "plot_png"}, "testbed_evaluation.json")
            log_png(png, "testbed_latent.png")
            result["mlflow_run_id"] = run.info.run_id
    return result
