"""The data spine as a user meets it: materialise days, re-run, roll back, break things."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from didact_assets.assets import telemetry
from didact_assets.resources import DidactResource
from didact_core.data import spine as pipeline
from didact_core.errors import DidactError
from didact_core.data.preprocess import DEFAULT_FEATURES
from didact_core.ingest.simulator import DataFaultRates, SimulatedCluster, expected_cleaning
from didact_core.ingest.base import RawBlock, TelemetrySource
from didact_core.data.parts import content_hash
from didact_core.data.warehouse import Warehouse

from .days import fixed_days

ASSETS = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics]


def resource(settings, **changes) -> DidactResource:
    s = settings.replace(**changes) if changes else settings
    return DidactResource(
        home=s.home, nodes=s.nodes, cpus=s.cpus, interval_s=s.interval_s, seed=s.seed, workers=s.workers,
        source=s.source, fault_rate=s.fault_rate, max_unusable_fraction=s.max_unusable_fraction,
    )  # fmt: skip


def materialize_day(settings, day: str, **changes) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, partition_key=day, resources={"didact": resource(settings, **changes)})


def test_two_days_match_the_simulator(settings):
    wh = Warehouse(settings.home_path)
    sim = SimulatedCluster.from_settings(settings)
    for day in fixed_days(2):
        result = materialize_day(settings, day)
        assert result.success
        truth = sim.fetch_day(dt.date.fromisoformat(day))

        raw = wh.require("raw_node_metrics", day)
        assert raw.tables["cpu"] == len(truth.cpu)
        ai = wh.read("ai_ready_metrics", day, "samples")
        # every interval of every (node, cpu) series, minus what the injected faults cost
        faults = truth.meta["data_faults"]
        T = sim.steps_per_day
        expected_rows = (
            settings.nodes * settings.cpus * (T - 1)
            - faults["missed"] * settings.cpus
            - faults["nan"]
            - faults["reboot"] * settings.cpus
        )
        assert len(ai) == expected_rows
        sums = ai[list(DEFAULT_FEATURES)].sum(axis=1)
        assert np.allclose(sums, 1.0, atol=1e-5)
        assert (ai[list(DEFAULT_FEATURES)] >= 0).all().all()

        # the cleaning counts are the faults the simulator injected
        cleaning = wh.require("ai_ready_metrics", day).metadata["cleaning"]
        for key, want in expected_cleaning(faults, settings.cpus).items():
            assert cleaning[key] == want, key
        assert sum(faults.values()) > 0, "the test day should carry injected faults"

        # and the same counts reach Dagster as materialisation metadata
        mats = result.asset_materializations_for_node("ai_ready_metrics")
        assert mats[0].metadata["cleaning/duplicates"].value == cleaning["duplicates"]
        checks = result.get_asset_check_evaluations()
        assert [c.passed for c in checks] == [True]

        # labels joined from the simulator's truth
        assert set(ai["label"].unique()) <= set(sim.flavours) | {"unknown"}
        assert (ai["label"] != "unknown").mean() > 0.99


def test_rematerialise_and_roll_back(settings):
    day = fixed_days(1)[0]
    wh = Warehouse(settings.home_path)
    assert materialize_day(settings, day).success
    first = wh.require("ai_ready_metrics", day)
    first_rows = wh.read("ai_ready_metrics", day, "samples")

    # a re-run adds a version, never rows; a different seed changes the data
    assert materialize_day(settings, day, seed=99).success
    second = wh.require("ai_ready_metrics", day)
    assert second.version == first.version + 1
    assert second.data_version != first.data_version
    assert wh.sql(
        "select count(*) as n from ai_ready_metrics__samples"
    )["n"][0] == second.tables["samples"]

    wh.rollback("ai_ready_metrics", day, first.version, reason="test")
    assert wh.require("ai_ready_metrics", day).version == first.version
    restored = wh.read("ai_ready_metrics", day, "samples")
    assert content_hash({"s": restored}) == content_hash({"s": first_rows})
    assert wh.verify("ai_ready_metrics", day) == first.data_version
    events = wh.lineage("ai_ready_metrics", day)["event"].tolist()
    assert events == ["materialize", "materialize", "rollback"]


def test_same_seed_same_data_whatever_the_block_size(settings):
    day = dt.date.fromisoformat(fixed_days(1)[0])
    sim = SimulatedCluster.from_settings(settings)
    whole = sim.fetch_day(day).cpu
    blocks = pd.concat([b.cpu for b in sim.iter_blocks(day, nodes_per_block=1)], ignore_index=True)
    blocks["node"] = blocks["node"].astype(str)
    whole["node"] = whole["node"].astype(str)
    pd.testing.assert_frame_equal(whole, blocks)


def test_lineage_links_ai_ready_to_its_raw_version(settings):
    day = fixed_days(1)[0]
    assert materialize_day(settings, day).success
    wh = Warehouse(settings.home_path)
    raw = wh.require("raw_node_metrics", day)
    row = wh.lineage("ai_ready_metrics", day).iloc[-1]
    assert raw.ref in row["upstream"]
    assert row["code_version"] == pipeline.AI_READY_CODE_VERSION
    assert row["run_id"]


# -- bad input ---------------------------------------------------------------------------


def test_unknown_source_is_a_clear_error(settings):
    with pytest.raises(DidactError, match="source 'nope'.*is not a known telemetry source"):
        settings.replace(source="nope")
    result = dg.materialize(
        ASSETS, partition_key=fixed_days(1)[0], resources={"didact": DidactResource(home=settings.home, source="nope")},
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    assert "is not a known telemetry source" in str(result.get_step_failure_events()[0].event_specific_data.error)
    assert Warehouse(settings.home_path).partitions("raw_node_metrics") == []


def test_partition_outside_the_range(settings):
    with pytest.raises(DidactError, match="outside the partition range"):
        pipeline.check_partition(settings, "2019-12-31")
    # "today" is an argument: the range ends the day before it, whatever the date of the run
    today = dt.date(2026, 3, 11)
    assert pipeline.check_partition(settings, "2026-03-10", today=today) == dt.date(2026, 3, 10)
    with pytest.raises(DidactError, match="outside the partition range"):
        pipeline.check_partition(settings, "2026-03-11", today=today)
    with pytest.raises(DidactError, match="is not a day"):
        pipeline.check_partition(settings, "yesterday")
    # Dagster itself refuses the key before any asset body runs
    with pytest.raises(Exception, match="Could not find a partition with key `2019-12-31`"):
        materialize_day(settings, "2019-12-31")
    assert Warehouse(settings.home_path).partitions("raw_node_metrics") == []


class CorruptSource(TelemetrySource):
    """The simulator's day with one counter column turned into text."""

    name = "corrupt"

    def __init__(self, settings):
        self.sim = SimulatedCluster.from_settings(settings)

    def nodes(self, day):
        return self.sim.nodes(day)

    def iter_blocks(self, day, nodes_per_block=64):
        for b in self.sim.iter_blocks(day, nodes_per_block):
            cpu = b.cpu.copy()
            cpu["iowait"] = cpu["iowait"].astype(str)
            cpu.loc[3, "iowait"] = "garbage"
            yield RawBlock(cpu=cpu)


def test_corrupt_counter_column_leaves_the_warehouse_unchanged(settings):
    day = fixed_days(1)[0]
    assert materialize_day(settings, day).success
    wh = Warehouse(settings.home_path)
    before = wh.versions("raw_node_metrics", day)
    with pytest.raises(DidactError, match="counter column 'iowait' is not numeric.*'garbage'"):
        pipeline.ingest_raw(settings, dt.date.fromisoformat(day), source=CorruptSource(settings))
    assert wh.versions("raw_node_metrics", day) == before
    assert not list((settings.home_path / "data").glob("**/.tmp-*")), "temporary files left behind"


def test_unwritable_home(tmp_path, settings):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = settings.replace(home=str(blocker / "home"))
    with pytest.raises(DidactError, match="DIDACT_HOME .* is not writable"):
        pipeline.ingest_raw(bad, dt.date.fromisoformat(fixed_days(1)[0]))
    assert blocker.read_text() == "not a folder"


def test_quality_check_fails_the_partition_and_blocks_downstream(settings):
    """Raw data with 2% of its counters reset fails the blocking check at a 1% bar:
    the failure is visible, the reason is in the check, and downstream does not run."""
    day = fixed_days(1)[0]
    damaged = SimulatedCluster.from_settings(settings)
    damaged.data_faults = DataFaultRates(reboot_per_node_day=30)  # ~30 resets per CPU over 1,440 scrapes
    pipeline.ingest_raw(settings, dt.date.fromisoformat(day), source=damaged)

    ran = []

    @dg.asset(partitions_def=telemetry.ai_ready_metrics.partitions_def, deps=[telemetry.ai_ready_metrics])
    def downstream():
        ran.append(True)

    result = dg.materialize(
        [telemetry.ai_ready_metrics, downstream],
        partition_key=day,
        resources={"didact": resource(settings, max_unusable_fraction=0.01)},
        raise_on_error=False,
    )
    evals = result.get_asset_check_evaluations()
    assert len(evals) == 1 and not evals[0].passed
    assert "samples unusable" in evals[0].description and "bar 1.0%" in evals[0].description
    assert ran == []
    # the partition is stored (so an operator can look at it) and its report says why
    cleaning = Warehouse(settings.home_path).require("ai_ready_metrics", day).metadata["cleaning"]
    assert cleaning["counter_resets"] > 0.01 * cleaning["rows_out"]
