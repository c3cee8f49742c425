"""What the Dagster UI shows of a materialisation: Dagster's standard metadata, built here
so the asset bodies stay a few lines.

* numbers rounded to 4 significant digits (:func:`rounded`), NaN shown as "n/a";
* ``dagster/row_count`` and ``dagster/column_schema`` (a :class:`dagster.TableSchema` read
  from the stored Parquet footer, no data read) of the data assets' main table, which
  Dagster's column-schema-change checks compare between materialisations;
* inline PNG plots (markdown with a base64 data URI), shrunk to at most
  :data:`MAX_IMAGE_BYTES` so the event log stays small.
"""

from __future__ import annotations

import base64
import io
import math

import dagster as dg
import pyarrow.parquet as pq

from didact_core.data.warehouse import VersionInfo, Warehouse

#: significant digits of the numbers the UI shows
DIGITS = 4
#: an inline image's PNG at most this big (the event log stores it in every event)
MAX_IMAGE_BYTES = 100_000
#: the widths an image is tried at until it fits
_WIDTHS = (720, 560, 420, 320)


def rounded(value, digits: int = DIGITS):
    """``value`` with every float (also inside dicts and lists) at ``digits`` significant
    digits; NaN/inf become None, which the UI shows, where a NaN float shows blank."""
    if isinstance(value, bool) or not isinstance(value, (float, dict, list, tuple)):
        return value
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    return [rounded(v, digits) for v in value]


def ui_metadata(meta: dict) -> dict:
    """Metadata with floats rounded, dicts as JSON, and None as the text "n/a"."""
    out = {}
    for k, v in meta.items():
        v = rounded(v)
        if v is None:
            v = "n/a"
        elif isinstance(v, (dict, list)):
            v = dg.MetadataValue.json(v)
        out[k] = v
    return out


def table_schema(paths) -> dg.TableSchema | None:
    """The column names and types of a stored table, from its first part's footer."""
    paths = list(paths)
    if not paths:
        return None
    schema = pq.read_schema(paths[0])
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


def table_metadata(wh: Warehouse, v: VersionInfo, table: str) -> dict:
    """``dagster/row_count`` and ``dagster/column_schema`` of one table of a stored version."""
    meta: dict = {"dagster/row_count": int(v.tables.get(table, 0))}
    schema = table_schema(wh.part_paths(v.asset, v.partition, table, v.version))
    if schema is not None:
        meta["dagster/column_schema"] = schema
    return meta


def image(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG as inline markdown, shrunk (and palette-quantised) to fit :data:`MAX_IMAGE_BYTES`."""
    data = png if len(png) <= MAX_IMAGE_BYTES else _shrink(png)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(data).decode()})")


def images(plots: dict[str, bytes], prefix: str = "plot/") -> dict:
    return {f"{prefix}{name}": image(png, name) for name, png in plots.items()}


def _shrink(png: bytes) -> bytes:
    from PIL import Image  # lazy: only a big plot needs it

    with Image.open(io.BytesIO(png)) as img:
        img = img.convert("RGB")
        out = png
        for width in _WIDTHS:
            small = img.copy()
            small.thumbnail((width, width * 4))
            small = small.quantize(colors=64)
            buf = io.BytesIO()
            small.save(buf, format="PNG", optimize=True)
            out = buf.getvalue()
            if len(out) <= MAX_IMAGE_BYTES:
                break
        return out


# -- per asset ------------------------------------------------------------------------------------


def champion_metadata(out) -> dict:
    """What ``champion_model`` shows: the version, the gate, the fit, the plots
    (``out``: a ``didact_core.learn.continual.TrainOutcome``)."""
    fit = out.fit
    # the fit records the monitored loss as best_loss: the validation loss when there was a
    # validation split (this key was read as "best_val_loss", which the fit never had: blank)
    best_val = fit.get("best_loss") if fit.get("monitored") == "val_loss" else None
    return {
        **ui_metadata({
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
            "epochs": fit.get("epochs", 0),
            "best_val_loss": best_val,
            "initial_val_loss": fit.get("initial_val_loss"),
            "threshold": fit.get("threshold"),
            "data_versions": out.data_versions,
            "seconds": out.seconds,
        }),
        **images(out.plots),
    }  # fmt: skip


#: per set, the numbers of ``model_evaluation`` shown one by one
_EVAL_KEYS = ("mean_error", "latent_knn_accuracy", "pca2_knn_accuracy", "raw_knn_accuracy", "fault_roc_auc")


def evaluation_metadata(out) -> dict:
    """What ``model_evaluation`` shows (``out``: ``learn.evaluate_day.EvaluationOutcome``)."""
    meta = {
        "champion_version": out.champion_version,
        "challenger_version": out.challenger_version,
        "parent_version": out.parent_version if out.parent_version is not None else "none",
        "mlflow_run_id": out.mlflow_run_id,
        "side_by_side": out.metrics,
    }
    for who, sets in out.metrics.items():
        for name, m in sets.items():
            meta.update({f"{who}/{name}/{k}": float(m[k]) for k in _EVAL_KEYS if m.get(k) is not None})
            if name == "openset" and m.get("openset_auc") is not None:
                meta[f"{who}/openset_auc"] = float(m["openset_auc"])
    return {**ui_metadata(meta), **images(out.plots)}
