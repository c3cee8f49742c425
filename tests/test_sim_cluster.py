"""The simulator's cluster-level truth: multi-node jobs share their timing, and filesystem
stalls, rack events, scheduler storms and stragglers show in the counters exactly where (nodes)
and when the truth says — and nowhere else; the same day whatever the block size; none of it
on a one-rack cluster or at zero rates (the data stay as they were)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.sim_cluster import (
    INCIDENT_KINDS,
    INCIDENT_SIGNATURES,
    INCIDENT_TAKE,
    TRUTH_COLUMNS,
    ClusterRates,
    splice,
)
from didact_core.ingest.simulator import DataFaultRates, SimulatedCluster
from didact_core.schema import CPU_MODES

from .days import LAST_DAY

RATES = ClusterRates(multinode_share=0.4, fs_stalls_per_day=3, rack_events_per_day=4, sched_storms_per_day=2,
                     straggler_rate=1.0)  # fmt: skip
#: the same jobs and stragglers, no incidents; and neither incidents nor stragglers
CALM = dataclasses.replace(RATES, fs_stalls_per_day=0, rack_events_per_day=0, sched_storms_per_day=0)
STEADY = dataclasses.replace(CALM, straggler_rate=0.0)


def sim(rates: ClusterRates = RATES, **kw) -> SimulatedCluster:
    """8 nodes in two racks of 4; no labelled or data faults, so that every change is the cluster's."""
    args = dict(nodes_count=8, cpus=2, interval_s=60.0, seed=3, fault_rate=0.0, data_faults=DataFaultRates.none(),
                cluster=rates, nodes_per_rack=4)  # fmt: skip
    return SimulatedCluster(**{**args, **kw})


def fractions(block) -> dict[str, pd.DataFrame]:
    """Per CPU mode: a (ts × node) frame of the fraction of each interval, averaged over the
    node's CPUs, from the counters' deltas (the row at ts covers the step that starts at ts)."""
    df = block.cpu.assign(node=block.cpu["node"].astype(str)).sort_values(["node", "cpu", "ts"])
    d = df.groupby(["node", "cpu"])[list(CPU_MODES)].diff()
    f = d.div(d.sum(axis=1), axis=0).assign(ts=df["ts"], node=df["node"]).dropna()
    mean = f.groupby(["ts", "node"])[list(CPU_MODES)].mean()
    return {m: mean[m].unstack("node") for m in CPU_MODES}


@pytest.fixture(scope="module")
def day() -> dt.date:
    """The first fixed day whose truth has every incident kind and a straggler (truth only: cheap)."""
    s = sim()
    for k in range(30):
        d = LAST_DAY - dt.timedelta(days=k)
        t = s.cluster_truth(d)
        if set(t["cluster_incidents"]["kind"]) == set(INCIDENT_KINDS) and len(t["stragglers"]):
            return d
    raise AssertionError("no day with every kind of incident in 30")


@pytest.fixture(scope="module")
def blocks(day):
    return {"full": sim().fetch_day(day), "calm": sim(CALM).fetch_day(day), "steady": sim(STEADY).fetch_day(day)}


def in_window(frame: pd.DataFrame, start, end) -> pd.DataFrame:
    return frame[(frame.index >= start) & (frame.index < end)]


def test_zero_rates_or_one_rack_leave_the_data_as_they_were(day):
    plain = SimulatedCluster(nodes_count=8, cpus=2, interval_s=60.0, seed=3).fetch_day(day)
    as_plain = dict(fault_rate=0.05, data_faults=DataFaultRates())  # the defaults, faults and all
    for other in (sim(ClusterRates.none(), **as_plain).fetch_day(day),
                  sim(RATES, nodes_per_rack=8, **as_plain).fetch_day(day)):  # fmt: skip
        for table in ("cpu", "power", "labels", "faults", "node_metrics"):
            pd.testing.assert_frame_equal(getattr(plain, table), getattr(other, table))
        assert other.meta == plain.meta  # no events drawn: no truth frames
    assert "cluster_rates" not in SimulatedCluster(nodes_count=8).describe()  # no rates: describe() as it was
    one_rack = sim(nodes_per_rack=8).cluster_truth(day)
    assert all(one_rack[k].empty for k in ("cluster_incidents", "incident_nodes", "job_members", "stragglers"))
    assert list(one_rack["topology"]["rack"].unique()) == ["rack-00"]
    # zero rates on two racks: no events either
    assert all(sim(ClusterRates.none()).cluster_truth(day)[k].empty for k in ("cluster_incidents", "job_members"))


def test_truth_frames_have_the_documented_columns(day, blocks):
    truth = sim().cluster_truth(day)
    for name, columns in TRUTH_COLUMNS.items():
        assert tuple(truth[name].columns) == columns
        assert tuple(blocks["full"].meta[name].columns) == columns
        for col in ("start", "end"):
            if col in columns:
                assert str(truth[name][col].dtype) == "datetime64[ms, UTC]"
    inc = truth["cluster_incidents"]
    assert inc["incident_id"].is_unique and (inc["end"] > inc["start"]).all()
    assert (inc["start"].iloc[1:].to_numpy() >= inc["end"].iloc[:-1].to_numpy()).all()  # in time order, apart


def test_multi_node_jobs_share_their_timing_and_are_the_nodes_labels(day, blocks):
    m = sim().cluster_truth(day)["job_members"]
    jobs = m.groupby("job_id").agg(start=("start", "nunique"), end=("end", "nunique"), n=("node", "nunique"),
                                   n_nodes=("n_nodes", "first"), flavour=("flavour", "first"), ranks=("rank", "max"))  # fmt: skip
    assert (jobs[["start", "end"]] == 1).all().all() and (jobs["n"] == jobs["n_nodes"]).all()
    assert (jobs["ranks"] == jobs["n"] - 1).all()
    # MPI-16 spans 16 nodes where it can: this cluster has 8
    assert set(jobs.loc[jobs.flavour == "mpi_16", "n"]) == {8} and set(jobs.loc[jobs.flavour == "mpi_2", "n"]) == {2}
    share = ((m["end"] - m["start"]).dt.total_seconds().sum()) / (8 * 86400)
    assert 0.3 < share < 0.5  # multinode_share 0.4
    labels = blocks["full"].labels.assign(node=lambda d: d["node"].astype(str))
    for node, rows in labels.groupby("node"):  # back to back, no overlap: one job per node at a time
        assert (rows["start"].iloc[1:].to_numpy() == rows["end"].iloc[:-1].to_numpy()).all()
    got = m.merge(labels, on=["node", "start", "end"])
    assert len(got) == len(m) and (got["label"] == got["flavour"]).all()
    # peers look alike: every member of a job spends about the same share of its time in user mode
    user = fractions(blocks["steady"])["user"]
    for job_id, rows in m[m.flavour == "mpi_16"].groupby("job_id"):
        u = in_window(user, rows["start"].iloc[0], rows["end"].iloc[0])[list(rows["node"])].mean()
        assert u.max() - u.min() < 0.12, (job_id, u.to_dict())


def test_incidents_show_on_their_nodes_in_their_window_and_nowhere_else(day, blocks):
    truth = sim().cluster_truth(day)
    full, calm = fractions(blocks["full"]), fractions(blocks["calm"])
    changed = pd.DataFrame(False, index=full["user"].index, columns=full["user"].columns)
    for _, inc in truth["cluster_incidents"].iterrows():
        nodes = truth["incident_nodes"].query("incident_id == @inc.incident_id").set_index("node")["intensity"]
        assert set(nodes.index) == set(inc["nodes"]) and len(inc["racks"]) == (1 if inc.kind.startswith("rack") else 2)
        assert (nodes > 0).all() and (nodes <= inc.severity).all()
        before = {m: in_window(calm[m], inc.start, inc.end) for m in CPU_MODES}
        delta = {m: in_window(full[m], inc.start, inc.end) - before[m] for m in CPU_MODES}
        gains = {"fs_stall": "iowait", "rack_network": "softirq", "rack_power": "idle", "sched_storm": "system"}
        gain = CPU_MODES.index(gains[inc.kind])
        for node, a in nodes.items():
            # the time taken: the kind's share of each mode's time (busy time mostly), × intensity
            taken = a * sum(INCIDENT_TAKE[inc.kind][k] * float(before[m][node].mean()) for k, m in enumerate(CPU_MODES))
            expect = INCIDENT_SIGNATURES[inc.kind][gain] * taken
            if inc.kind == "fs_stall":
                expect *= 0.8  # the onset ramp
            assert float(delta[gains[inc.kind]][node].mean()) > 0.5 * expect > 0, (inc.incident_id, node, a, expect)
            user = float(before["user"][node].mean())
            assert float(delta["user"][node].mean()) < -0.4 * a * user, (inc.incident_id, node, a)  # user time lost
        if inc.kind == "rack_power":
            ratio = _watts(blocks["full"], inc) / _watts(blocks["calm"], inc)
            assert (ratio[list(nodes.index)] < 1 - 0.1 * nodes).all() and len(ratio) == 8
            assert np.allclose(ratio.drop(list(nodes.index)), 1.0)
        if inc.kind == "sched_storm":  # context switches burst (×6 at full intensity)
            ctxt = _rate(blocks["full"], "ctxt", inc) / _rate(blocks["calm"], "ctxt", inc)
            assert (ctxt[list(nodes.index)] > 1 + 2 * nodes).all(), ctxt.to_dict()
        changed.loc[(changed.index >= inc.start) & (changed.index < inc.end), list(nodes.index)] = True
    # everything else is exactly as without incidents: other nodes, other times
    for m in CPU_MODES:
        assert np.allclose(full[m].where(~changed), calm[m].where(~changed), equal_nan=True), m
    assert changed.to_numpy().any()


def _watts(block, inc) -> pd.Series:
    p = block.power.assign(node=block.power["node"].astype(str))
    p = p[(p.ts >= inc.start) & (p.ts < inc.end)]
    return p.groupby("node")["watts"].mean()


def _rate(block, counter: str, inc) -> pd.Series:
    nm = block.node_metrics.assign(node=block.node_metrics["node"].astype(str)).sort_values(["node", "ts"])
    nm = nm.assign(d=nm.groupby("node")[counter].diff())
    nm = nm[(nm.ts > inc.start) & (nm.ts < inc.end)]
    return nm.groupby("node")["d"].mean()


def test_a_straggler_lags_its_peers(day, blocks):
    truth = sim().cluster_truth(day)
    assert len(truth["stragglers"]) and set(truth["stragglers"]["flavour"]) == {"mpi_16"}  # 2-node jobs: none
    calm, steady = fractions(blocks["calm"]), fractions(blocks["steady"])
    members = truth["job_members"]
    for _, s in truth["stragglers"].iterrows():
        peers = [n for n in members.query("job_id == @s.job_id")["node"] if n != s.node]
        assert len(peers) == 7 and s.start >= members.query("job_id == @s.job_id")["start"].iloc[0]
        win = {m: in_window(calm[m], s.start, s.end) for m in ("user", "iowait")}
        assert win["user"][s.node].mean() < win["user"][peers].mean().median() - 0.1, s.job_id
        assert win["iowait"][s.node].mean() > win["iowait"][peers].mean().median() + 0.1, s.job_id
        # against the same day without stragglers, only the straggler changed
        base = in_window(steady["user"], s.start, s.end)
        assert np.allclose(win["user"][peers], base[peers]) and not np.allclose(win["user"][s.node], base[s.node])


def test_the_same_day_whatever_the_block_size(day, blocks):
    whole = blocks["full"]
    parts = list(sim().iter_blocks(day, nodes_per_block=3))
    assert [b.meta["nodes"] for b in parts] == [3, 3, 2]
    as_str = lambda df: df.assign(node=df["node"].astype(str)).reset_index(drop=True)  # noqa: E731
    for table in ("cpu", "labels", "power", "node_metrics"):
        pd.testing.assert_frame_equal(as_str(getattr(whole, table)),
                                      as_str(pd.concat([getattr(b, table) for b in parts], ignore_index=True)))  # fmt: skip
    truth = sim().cluster_truth(day)
    for b in parts:  # the whole day's incidents in every block
        pd.testing.assert_frame_equal(b.meta["cluster_incidents"], truth["cluster_incidents"])
    for name in ("incident_nodes", "job_members", "stragglers", "topology"):
        key = list(TRUTH_COLUMNS[name][:4])
        got = pd.concat([b.meta[name] for b in parts], ignore_index=True).sort_values(key, ignore_index=True)
        pd.testing.assert_frame_equal(got, truth[name].sort_values(key, ignore_index=True))
    # and the same as a second run's
    pd.testing.assert_frame_equal(sim().fetch_day(day).cpu, whole.cpu)


def test_a_big_clusters_truth_without_its_counters():
    """The cluster model's bench reads many days of truth: no counters are generated."""
    s = SimulatedCluster(nodes_count=1000, cpus=8, interval_s=15.0, seed=1, cluster=ClusterRates(), nodes_per_rack=20)
    t = s.cluster_truth(LAST_DAY)
    m = t["job_members"]
    sizes = m.groupby("job_id").agg(n=("node", "size"), flavour=("flavour", "first"))
    assert set(sizes.loc[sizes.flavour == "mpi_16", "n"]) == {16} and set(sizes.loc[sizes.flavour == "mpi_2", "n"]) == {2}
    assert 0.2 < (m["end"] - m["start"]).dt.total_seconds().sum() / (1000 * 86400) < 0.3
    assert len(t["topology"]) == 1000 and t["topology"]["rack"].nunique() == 50
    for _, inc in t["cluster_incidents"].iterrows():
        if inc.kind in ("fs_stall", "sched_storm"):
            assert len(inc["racks"]) == 50  # across racks
        else:  # half of one rack's nodes or more
            rack = set(t["topology"].query("rack == @inc.racks[0]")["node"])
            assert len(inc["racks"]) == 1 and set(inc["nodes"]) <= rack and len(inc["nodes"]) >= len(rack) / 2
    assert set(t["stragglers"]["job_id"]) <= set(sizes.index[sizes.n >= 3])


def test_settings_switch_it_on_for_clusters_of_two_racks(tmp_path):
    s = Settings(home=str(tmp_path), cpus=1)  # 16 nodes, 8 a rack: two racks
    sim16 = SimulatedCluster.from_settings(s)
    assert sim16.cluster == ClusterRates() and sim16.describe()["racks"] == 2
    assert len(sim16.cluster_truth(LAST_DAY)["job_members"]) > 0
    sim8 = SimulatedCluster.from_settings(s.replace(nodes=8))  # one rack: nothing cluster-level
    assert sim8.cluster_truth(LAST_DAY)["job_members"].empty
    off = s.replace(sim_multinode_share=0.0, sim_fs_stalls_per_day=0.0, sim_rack_events_per_day=0.0,
                    sim_sched_storms_per_day=0.0, sim_straggler_rate=0.0)  # fmt: skip
    assert "cluster_rates" not in SimulatedCluster.from_settings(off).describe()
    with pytest.raises(DidactError, match="DIDACT_SIM_STRAGGLER_RATE"):
        sim(dataclasses.replace(RATES, straggler_rate=2.0))


def test_splice_cuts_a_nodes_own_jobs_around_a_multi_node_job():
    own = [(0, 10, "idle"), (10, 30, "reco_1t"), (30, 40, "io_good")]
    assert splice(own, [(5, 12, "mpi_2")]) == [(0, 5, "idle"), (5, 12, "mpi_2"), (12, 30, "reco_1t"),
                                              (30, 40, "io_good")]  # fmt: skip
    assert splice(own, [(12, 20, "mpi_16"), (35, 40, "mpi_2")]) == [
        (0, 10, "idle"), (10, 12, "reco_1t"), (12, 20, "mpi_16"), (20, 30, "reco_1t"), (30, 35, "io_good"),
        (35, 40, "mpi_2")]  # fmt: skip
