"""What the Dagster UI shows of a materialisation: Dagster's standard metadata, built here
so the asset bodies stay a few lines.

* numbers rounded to 4 significant digits (:func:`rounded`), NaN shown as "n/a";
* ``dagster/row_count`` and ``dagster/column_schema`` (a :class:`dagster.TableSchema` read
  from the stored Parquet footer, no data read) of the data assets' main table, which
  Dagster's column-schema-change checks compare between materialisations;
* inline PNG plots (markdown with a base64 data URI), shrunk to at most
  :data:`MAX_IMAGE_BYTES` so the event log stays small;
* a head re-emitted instead of rebuilt (:func:`reconciled`): published by a run that failed
  before Dagster recorded its materialisation (a full disk between didact's commit and
  Dagster's event write), marked ``reconciled_from_run``; ``champion_model``'s registered
  version likewise (``models.reconciled_training``, ``learn.stored``).
"""

from __future__ import annotations

import base64
import io
import math

import dagster as dg
import pyarrow.parquet as pq

from didact_core.config import Settings
from didact_core.data import spine
from didact_core.data.warehouse import VersionInfo, Warehouse

#: metadata key naming the failed run whose published version a materialisation re-emits
RECONCILED_FROM_RUN = "reconciled_from_run"
#: a run in these states ended; if it published a version Dagster never recorded, the next run re-emits it
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)

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
    """What ``model_evaluation`` shows (``out``: ``learn.evaluate_day.EvaluationOutcome``); the
    cross-recording latent kNN by segment (``DIDACT_EVAL_RECORDINGS``) first: the headline."""
    head = "cross_latent_knn_by_segment"
    meta = {f"{who}/recordings/{head}": sets["recordings"].get(head)
            for who, sets in out.metrics.items() if "recordings" in sets}  # fmt: skip
    meta |= {
        "champion_version": out.champion_version,
        "challenger_version": out.challenger_version,
        "parent_version": out.parent_version if out.parent_version is not None else "none",
        "mlflow_run_id": out.mlflow_run_id,
        "side_by_side": out.metrics,
    }
    for who, sets in out.metrics.items():
        for name, m in sets.items():
            if name == "recordings":  # each recording within itself, each pair across (why: side_by_side)
                meta[f"{who}/recordings/within_latent_knn_by_segment"] = m.get("within_latent_knn_by_segment")
                meta.update({f"{who}/recordings/{k}/latent_knn_by_segment": v.get("latent_knn_by_segment")
                             for k, v in m.items() if isinstance(v, dict)})  # fmt: skip
                continue
            meta.update({f"{who}/{name}/{k}": float(m[k]) for k in _EVAL_KEYS if m.get(k) is not None})
            if name == "openset" and m.get("openset_auc") is not None:
                meta[f"{who}/openset_auc"] = float(m["openset_auc"])
    return {**ui_metadata(meta), **images(out.plots)}


# -- reconciling the catalog with Dagster -----------------------------------------------------


def unrecorded_publish(context, asset: str, partition: str, publisher_run_id: str | None,
                       shown_as: tuple[str, object]) -> bool:  # fmt: skip
    """Whether run ``publisher_run_id`` published a version of ``asset/partition`` (to the
    catalog, or for ``champion_model`` to the registry) that Dagster never recorded: the
    run FAILED or was CANCELED (or is this run, retrying the step), its event log holds no
    materialisation of the partition, and the partition's latest materialisation does not
    show that version either (metadata ``shown_as`` = (key, value), e.g. ("version", "v3"):
    a reconciling run records it so).  Then re-emitting the version reconciles the step's
    outcome with the published data."""
    if not publisher_run_id:
        return False
    instance = context.instance
    if publisher_run_id != context.run_id:
        run = instance.get_run_by_id(publisher_run_id)
        if run is None or run.status not in _ENDED_BADLY:  # unknown (another instance), running, or fine
            return False
    key = dg.AssetKey(asset)
    events = instance.get_records_for_run(publisher_run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    if any(e.event_log_entry.dagster_event.asset_key == key and e.event_log_entry.dagster_event.partition == partition
           for e in events if e.event_log_entry.dagster_event is not None):  # fmt: skip
        return False
    latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1)
    if latest.records:
        meta = latest.records[0].asset_materialization.metadata
        name, value = shown_as
        if name in meta and getattr(meta[name], "value", meta[name]) == value:
            return False
    return True


def reconciled(context, settings: Settings, asset: str, partition: str):
    """The stored result of ``asset/partition``'s head when the run that published it failed
    before Dagster recorded the materialisation (:func:`unrecorded_publish`) and a rebuild
    now would start from the same inputs and code (``spine.rebuild_would_repeat``): the
    step re-emits that version rather than recompute it.  None: build as usual."""
    head = Warehouse(settings.home_path).head(asset, partition)
    if head is None or not unrecorded_publish(context, asset, partition, head.run_id, ("version", f"v{head.version}")):
        return None
    if not spine.rebuild_would_repeat(settings, head):
        context.log.info(f"{asset} {partition}: v{head.version} was published by run {head.run_id}, which failed "
                         "before Dagster recorded it, but its inputs or code changed since: building anew")  # fmt: skip
        return None
    context.log.warning(
        f"{asset} {partition}: reconciled — v{head.version} (data version {head.data_version}) was published by run "
        f"{head.run_id}, which failed before Dagster recorded the materialisation (e.g. a full disk); its inputs and "
        "code version are the current ones, so this run records that version instead of recomputing it"
    )
    return spine.stored_result(settings, head)


def reconcile_metadata(version: VersionInfo, result_was_reconciled: bool) -> dict:
    """``reconciled_from_run`` for a re-emitted version (nothing for a fresh build)."""
    return {RECONCILED_FROM_RUN: version.run_id or "n/a"} if result_was_reconciled else {}
