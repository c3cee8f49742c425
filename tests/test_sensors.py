"""Schedule and sensors evaluated against a real Dagster instance."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from didact_assets.assets import models, review, telemetry
from didact_assets.definitions import defs
from didact_assets.resources import DidactResource
from didact_assets.schedules import nightly_schedule
from didact_assets.sensors import drift_sensor, new_raw_data_sensor
from didact_core.learn import triggers
from didact_core.data.review import ReviewQueue

from .conftest import last_days


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


def resource(s) -> DidactResource:
    return DidactResource(home=s.home, nodes=s.nodes, cpus=s.cpus, interval_s=s.interval_s, seed=s.seed, workers=1)


def evaluate(sensor, instance, cursor, **resources):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources or None)
    result = sensor.evaluate_tick(ctx)
    return result, ctx.cursor


def test_new_data_sensor_fires_once_per_new_partition(settings, instance):
    days = last_days(2)
    raw_only = [telemetry.raw_node_metrics]
    r = dg.materialize(raw_only, partition_key=days[0], instance=instance, resources={"didact": resource(settings)})
    assert r.success

    result, cursor = evaluate(new_raw_data_sensor, instance, None)
    assert [rr.partition_key for rr in result.run_requests] == [days[0]]
    req = result.run_requests[0]
    assert req.tags["didact/trigger"] == "new_raw_data" and days[0] in req.tags["didact/reason"]

    # nothing new: no second run for the same partition
    result, cursor = evaluate(new_raw_data_sensor, instance, cursor)
    assert result.run_requests == [] and "no new" in result.skip_message

    # the next day lands: exactly one run, for that day
    dg.materialize(raw_only, partition_key=days[1], instance=instance, resources={"didact": resource(settings)})
    result, cursor = evaluate(new_raw_data_sensor, instance, cursor)
    assert [rr.partition_key for rr in result.run_requests] == [days[1]]


def test_new_data_sensor_skips_days_the_nightly_job_trains(settings, instance):
    """Raw data written by a run that also trains the model needs no second training."""
    day = last_days(1)[0]
    assets = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics,
              review.ood_review, models.champion_model]  # fmt: skip
    s = settings.replace(max_train_samples=2000, model_max_epochs=2)
    res = resource(s).model_copy(update={"max_train_samples": 2000, "model_max_epochs": 2})
    assert dg.materialize(assets, partition_key=day, instance=instance, resources={"didact": res}).success
    result, _ = evaluate(new_raw_data_sensor, instance, None)
    assert result.run_requests == []
    assert "own training" in result.skip_message or "already trained" in result.skip_message


def test_drift_sensor_fires_above_not_below_the_threshold(settings, instance, monkeypatch):
    queue = ReviewQueue(settings)
    now = dt.datetime.now(dt.timezone.utc)
    # 2% OOD over 5,000 samples: below the 5% default
    queue.record_scoring(now - dt.timedelta(minutes=5), samples=5000, ood=100, model_version=1)
    result, cursor = evaluate(drift_sensor, instance, None, didact=resource(settings))
    assert result.run_requests == [] and "≤ threshold" in result.skip_message

    # now 12% over the window
    queue.record_scoring(now - dt.timedelta(minutes=1), samples=5000, ood=1100, model_version=1)
    result, cursor = evaluate(drift_sensor, instance, cursor, didact=resource(settings))
    after = dt.datetime.now(dt.timezone.utc)
    [req] = result.run_requests
    assert req.tags["didact/trigger"] == "drift"
    assert "OOD rate 12.00% > threshold 5.00%" in req.tags["didact/reason"]
    # the drift sensor retrains on the real yesterday (the newest complete day), not a fixed test day
    # (either side of a midnight that fell while the sensor ran)
    assert req.partition_key in {(t.date() - dt.timedelta(days=1)).isoformat() for t in (now, after)}

    # cooling down: no storm of retrains
    result, _ = evaluate(drift_sensor, instance, cursor, didact=resource(settings))
    assert result.run_requests == [] and "cooling down" in result.skip_message


def test_drift_sensor_reads_its_threshold_from_the_settings(settings, instance, monkeypatch):
    """Threshold and minimum samples are settings: the environment's, or the launchpad's."""
    ReviewQueue(settings).record_scoring(
        dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5), samples=500, ood=10, model_version=1
    )  # 2% of 500 samples
    result, _ = evaluate(drift_sensor, instance, None, didact=resource(settings))
    assert result.run_requests == [] and "only 500 samples" in result.skip_message
    monkeypatch.setenv("DIDACT_DRIFT_MIN_SAMPLES", "100")
    res = DidactResource(home=settings.home, drift_threshold=0.01)
    result, _ = evaluate(drift_sensor, instance, None, didact=res)
    [req] = result.run_requests
    assert "threshold 1.00%" in req.tags["didact/reason"]


def test_too_few_samples_is_not_drift():
    d = triggers.drift_decision(0.5, samples=10, threshold=0.05, min_samples=1000)
    assert not d.retrain and "only 10 samples" in d.reason


def test_nightly_schedule_targets_yesterday(instance):
    when = dt.datetime(2026, 11, 20, 2, 30, tzinfo=dt.timezone.utc)
    ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    [req] = nightly_schedule.evaluate_tick(ctx).run_requests
    assert req.partition_key == "2026-11-19"
    assert nightly_schedule.cron_schedule == "30 2 * * *"
