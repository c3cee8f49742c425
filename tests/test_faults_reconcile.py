"""Fault 6 of issue 15: the disk fills between didact's catalog commit and Dagster's event
write.  The run fails while the partition's head has moved; the next run of the partition
must not recompute: it records the published version (``reconciled_from_run``), so the
step's outcome and the catalog agree again."""

from __future__ import annotations

import errno

import dagster as dg
import pytest

from didact_assets.assets import telemetry
from didact_assets.assets.metadata import RECONCILED_FROM_RUN
from didact_assets.instance import ensure_instance
from didact_assets.resources import DidactResource
from didact_core.data import spine
from didact_core.data.warehouse import Warehouse

from .days import fixed_days

DAY = fixed_days(1)[0]
ASSETS = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics]
BUILD = {spine.RAW: "ingest_raw", spine.LABELS: "build_job_labels", spine.AI_READY: "build_ai_ready"}


def resource(s) -> DidactResource:
    return DidactResource(home=s.home, nodes=s.nodes, cpus=s.cpus, interval_s=s.interval_s, seed=s.seed,
                          workers=s.workers, source=s.source, fault_rate=s.fault_rate)  # fmt: skip


def materialize(settings, instance, selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, partition_key=DAY, instance=instance, resources={"didact": resource(settings)},
                          selection=selection, raise_on_error=False)  # fmt: skip


def disk_full_for(instance, monkeypatch, asset: str) -> None:
    """The instance's event store raises ENOSPC for the materialisation event of ``asset``
    only: every other event (step start, step failure, run failure) is written."""
    storage = instance.event_log_storage
    real = storage.store_event

    def store_event(event):
        ev = event.dagster_event
        if ev is not None and ev.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and ev.asset_key == dg.AssetKey(asset):
            raise OSError(errno.ENOSPC, "No space left on device", instance.root_directory)
        return real(event)

    monkeypatch.setattr(storage, "store_event", store_event)


def recorded(instance, asset: str) -> list:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[DAY]), limit=10
    ).records


def fail_on_disk_full(settings, instance, monkeypatch, asset: str) -> dg.ExecuteInProcessResult:
    """The day's data spine with the disk full at ``asset``'s event write: the run fails
    while the catalog's head moved (published by that run)."""
    with monkeypatch.context() as m:
        disk_full_for(instance, m, asset)
        first = materialize(settings, instance)
    assert not first.success
    assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE
    assert Warehouse(settings.home_path).require(asset, DAY).run_id == first.run_id
    assert not recorded(instance, asset)
    return first


@pytest.mark.parametrize("asset", [spine.RAW, spine.AI_READY])
def test_a_failed_event_write_after_the_commit_is_reconciled_by_the_next_run(settings, didact_env, monkeypatch, asset):
    instance = ensure_instance(settings)
    wh = Warehouse(settings.home_path)
    first = fail_on_disk_full(settings, instance, monkeypatch, asset)
    head = wh.require(asset, DAY)
    versions = [v.version for v in wh.versions(asset, DAY)]

    # the disk has room again; the re-run records the published version (a rebuild would fail here)
    def no_rebuild(*a, **k):
        raise AssertionError(f"{asset} was rebuilt instead of reconciled")

    with monkeypatch.context() as m:
        m.setattr(spine, BUILD[asset], no_rebuild)
        second = materialize(settings, instance, selection=[asset])
    assert second.success
    [mat] = second.asset_materializations_for_node(asset)
    assert mat.metadata[RECONCILED_FROM_RUN].value == first.run_id
    assert mat.metadata["version"].value == f"v{head.version}"
    assert mat.metadata["data_version"].value == head.data_version
    # head and data version unchanged, no new version
    after = wh.require(asset, DAY)
    assert (after.version, after.data_version) == (head.version, head.data_version)
    assert [v.version for v in wh.versions(asset, DAY)] == versions
    # Dagster now records the published version, and the run's log says why
    [rec] = recorded(instance, asset)
    assert rec.run_id == second.run_id
    assert rec.asset_materialization.tags.get("dagster/data_version") == head.data_version
    logs = [e.user_message for e in instance.all_logs(second.run_id)]
    assert any("reconciled" in m and f"v{head.version}" in m and first.run_id in m for m in logs), logs

    # once Dagster has recorded it, the next run builds as usual: a new version
    third = materialize(settings, instance, selection=[asset])
    assert third.success
    assert RECONCILED_FROM_RUN not in third.asset_materializations_for_node(asset)[0].metadata
    assert wh.require(asset, DAY).version == head.version + 1


def test_changed_inputs_are_rebuilt_not_reconciled(settings, didact_env, monkeypatch):
    """The head was published by a failed run, but its upstream moved since: the re-run
    builds a new version from the current inputs."""
    instance = ensure_instance(settings)
    wh = Warehouse(settings.home_path)
    fail_on_disk_full(settings, instance, monkeypatch, spine.AI_READY)
    head = wh.require(spine.AI_READY, DAY)

    spine.ingest_raw(settings, spine.parse_day(DAY))  # a new raw head: the published AI-ready inputs are stale
    second = materialize(settings, instance, selection=[spine.AI_READY])
    assert second.success
    [mat] = second.asset_materializations_for_node(spine.AI_READY)
    assert RECONCILED_FROM_RUN not in mat.metadata
    assert wh.require(spine.AI_READY, DAY).version == head.version + 1
    logs = [e.user_message for e in instance.all_logs(second.run_id)]
    assert any("inputs or code changed since" in m for m in logs), logs
