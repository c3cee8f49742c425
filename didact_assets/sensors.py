"""Sensors that launch retrain runs, each tagged with why it fired.

* ``new_raw_data_sensor``: a raw partition landed (outside the nightly job, e.g. a late
  re-ingest or a backfill) and its model is older → retrain that day.
* ``drift_sensor``: the live OOD rate reported by ``didact serve`` passed a threshold →
  retrain on the latest day.

The decisions are plain functions in ``didact_core.learn.triggers``.  Nothing is parsed at
import: the default status comes from a lenient read of ``DIDACT_SENSORS_ENABLED`` (a bad
value falls back to running, with a warning), and the drift sensor reads its threshold,
window, minimum samples and cooldown from the settings at each evaluation — a bad
``DIDACT_DRIFT_*`` value fails that evaluation with the clear settings error while the code
location loads.
"""

import datetime as dt
import json

import dagster as dg

from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.learn import triggers

from .jobs import model_job, retrain_job
from .resources import ENV_DEFAULTS, DidactResource

RAW = dg.AssetKey("raw_node_metrics")
MODEL = dg.AssetKey("champion_model")
TRIGGER_TAG = "didact/trigger"
_DEFAULT_STATUS = (
    dg.DefaultSensorStatus.RUNNING if ENV_DEFAULTS.sensors_enabled else dg.DefaultSensorStatus.STOPPED
)
REASON_TAG = "didact/reason"


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, after: int | None = None) -> list:
    out, cursor = [], None
    while True:
        res = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=1000, cursor=cursor, ascending=True
        )
        out.extend(r for r in res.records if r.partition_key)
        if not res.has_more:
            return out
        cursor = res.cursor


def _latest(records) -> dict[str, int]:
    """partition → storage id of its latest materialisation."""
    out: dict[str, int] = {}
    for r in records:
        out[r.partition_key] = max(out.get(r.partition_key, -1), r.storage_id)
    return out


def _trains_itself(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run that wrote raw data also materialises the model (the nightly job)."""
    run = instance.get_run_by_id(run_id)
    return bool(run and run.asset_selection and MODEL in run.asset_selection)


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=60,
    default_status=_DEFAULT_STATUS,
    description="New raw data → retrain that day (AI-ready, review snapshot, model, evaluation, then the cluster "
    "model and its evaluation).",
)
def new_raw_data_sensor(context: dg.SensorEvaluationContext):
    Settings.from_env()  # a bad DIDACT_* value fails this tick, not the retrain runs it would launch
    seen = int(context.cursor) if context.cursor else None
    records = _records(context.instance, RAW, after=seen)
    if not records:
        return dg.SkipReason("no new raw_node_metrics materialisation")
    context.update_cursor(str(max(r.storage_id for r in records)))
    new_raw = _latest([r for r in records if not _trains_itself(context.instance, r.run_id)])
    if not new_raw:
        return dg.SkipReason("new raw data came with its own training (nightly job)")
    decision = triggers.new_data_decision(new_raw, _latest(_records(context.instance, MODEL)))
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    return [
        dg.RunRequest(
            run_key=f"new-raw-{p}-{new_raw[p]}",
            partition_key=p,
            tags={TRIGGER_TAG: "new_raw_data", REASON_TAG: f"raw_node_metrics {p} landed (event {new_raw[p]})"},
        )
        for p in decision.partitions
    ]


@dg.sensor(
    job=model_job,
    minimum_interval_seconds=300,
    default_status=_DEFAULT_STATUS,
    description="Live OOD rate from `didact serve` above DIDACT_DRIFT_THRESHOLD over the last "
    "DIDACT_DRIFT_WINDOW_MINUTES → retrain on the latest day (at most once per cooldown).",
)
def drift_sensor(context: dg.SensorEvaluationContext, didact: DidactResource):
    settings = didact.settings()  # SettingsError names a bad DIDACT_DRIFT_* (the tick fails with it)
    now = dt.datetime.now(dt.timezone.utc)
    state = json.loads(context.cursor) if context.cursor else {}
    last = state.get("last_fired")
    if last and now - dt.datetime.fromisoformat(last) < dt.timedelta(hours=settings.drift_cooldown_hours):
        return dg.SkipReason(f"cooling down: last drift retrain at {last[:19]}")
    rate, n = ReviewQueue(settings).ood_rate(since=now - dt.timedelta(minutes=settings.drift_window_minutes))
    decision = triggers.drift_decision(rate, n, settings.drift_threshold, settings.drift_min_samples)
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    day = (now.date() - dt.timedelta(days=1)).isoformat()
    context.update_cursor(json.dumps({"last_fired": now.isoformat()}))
    return dg.RunRequest(
        run_key=f"drift-{now:%Y%m%dT%H%M}",
        partition_key=day,
        tags={TRIGGER_TAG: "drift", REASON_TAG: decision.reason},
    )
