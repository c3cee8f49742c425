"""power_profiles as a Dagster asset, with power from the source and from the spool of
sampling readers (didact power record)."""

from __future__ import annotations

import threading

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from didact_assets.assets import power, telemetry
from didact_assets.resources import DidactResource
from didact_core.data import spine as pipeline
from didact_core.power import partition as power_partition
from didact_core.power.base import SamplingPowerReader
from didact_core.power.spool import flush, read_spool, record
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.data.warehouse import Warehouse

from .days import fixed_days

ASSETS = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics, power.power_profiles]


def test_power_profiles_asset_matches_the_simulators_power_model(settings):
    day = fixed_days(1)[0]
    res = dg.materialize(ASSETS, partition_key=day, resources={"didact": DidactResource(
        home=settings.home, nodes=settings.nodes, cpus=settings.cpus, interval_s=settings.interval_s,
        seed=settings.seed, workers=1)})  # fmt: skip
    assert res.success
    meta = res.asset_materializations_for_node("power_profiles")[0].metadata
    assert meta["plot"].value.startswith("![power profile](data:image/png;base64,")

    # energy of the day = the simulator's own watts integrated (trapezoid), within 1%
    raw = SimulatedCluster.from_settings(settings).fetch_day(pd.Timestamp(day).date()).power
    truth = 0.0
    for _, g in raw.groupby("node", observed=True):
        t = g["ts"].array.asi8 / 1e3  # epoch ms → s
        truth += np.trapezoid(g["watts"].to_numpy(), t) / 3.6e6
    assert meta["summary/energy_kwh"].value == pytest.approx(truth, rel=0.01)

    wh = Warehouse(settings.home_path)
    nodes = wh.read("power_profiles", day, "nodes")
    assert len(nodes) == settings.nodes
    flav = wh.read("power_profiles", day, "flavours")
    assert set(flav["label"]) <= set(SimulatedCluster().flavours)
    assert (wh.require("power_profiles", day).path / "profile.png").exists()


class ConstantBmc(SamplingPowerReader):
    """Stands in for a BMC (none exists here): always 321 W for one node."""

    source = "redfish"

    def __init__(self, node):
        super().__init__()
        self.node = node

    def available(self):
        return True, "test BMC"

    def sample(self) -> float:
        return 321.0


def test_spooled_bmc_power_joins_the_day(settings):
    day = fixed_days(1)[0]
    d = pd.Timestamp(day).date()
    pipeline.ingest_raw(settings, d)
    pipeline.build_ai_ready(settings, d)

    # the recorder writes whole files into the spool (samples of the day they are taken on;
    # a run across midnight UTC spreads them over two days)
    stop = threading.Event()
    before = pd.Timestamp.now(tz="UTC").date()
    n = record(settings.home_path, [ConstantBmc("node0000")], interval_s=0.01, flush_every_s=0.05, stop=stop,
               max_seconds=0.3)  # fmt: skip
    taken_on = {before.isoformat(), pd.Timestamp.now(tz="UTC").date().isoformat()}
    assert n > 0 and sum(len(read_spool(settings.home_path, d)) for d in taken_on) == n

    # a day of BMC samples for node0000 → the profile prefers the whole-node meter
    ts = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=24 * 60, freq="1min")
    flush(settings.home_path, pd.DataFrame({"ts": ts, "node": "node0000", "source": "redfish", "watts": 321.0}))
    res = power_partition.build_power_profiles(settings, d)
    assert res.sources == ["redfish", "simulator"]
    assert res.summary["source"] == "redfish"
    assert res.summary["mean_w"] == pytest.approx(321.0)
