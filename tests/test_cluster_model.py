"""The cluster model, as an operator would check it: planted incidents and stragglers are
found, clean days stay quiet, training continues day by day, the model survives a save, and
bad topology is a clear error."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from didact_core.cluster import (
    INCIDENT_COLUMNS,
    ClusterConfig,
    ClusterModel,
    RackMap,
    evaluate,
    find_incidents,
    incident_events,
    rack_aggregate,
    score_tensor,
    synthetic_day,
    to_tensor,
    validate_jobs,
    validate_node_scores,
)
from didact_core.errors import DidactError, RegistryError
from didact_core.ingest.topology import Topology

from .days import LAST_DAY

KW = dict(nodes=40, per_rack=8, steps=480, n_incidents=6)


@pytest.fixture(scope="module")
def days():
    return {
        "train": synthetic_day(seed=1, incidents=False, stragglers=False, **KW),
        "events": synthetic_day(seed=2, **KW),
        "clean": synthetic_day(seed=3, incidents=False, stragglers=False, **KW),
    }


@pytest.fixture(scope="module")
def model(days):
    d = days["train"]
    return ClusterModel().fit(d["scores"], d["topology"], d["job_members"], day="train")


def _score(model, d):
    return model.score(d["scores"], d["topology"], d["job_members"])


@pytest.fixture(scope="module")
def scored(model, days):
    return {k: _score(model, days[k]) for k in ("events", "clean")}


def test_planted_incidents_are_found_and_located(scored, days):
    d = days["events"]
    scores = scored["events"]
    r = evaluate(scores, d["cluster_incidents"], d["stragglers"], d["job_members"])
    assert r["auc"] > 0.95
    assert r["auc"] > r["auc_rack_max_error"]  # (this synthetic day's OOD fraction is already perfect)
    assert r["incident_recall"] >= 0.75 and r["false_incidents"] <= 1
    assert r["rack_incidents"] >= 2 and r["rack_accuracy"] == 1.0
    found = find_incidents(scores, d["job_members"])
    assert list(found.columns) == INCIDENT_COLUMNS
    rack_inc = d["cluster_incidents"][d["cluster_incidents"]["kind"].str.startswith("rack")].iloc[0]
    hit = found[(found["start"] < rack_inc["end"]) & (found["end"] > rack_inc["start"])].iloc[0]
    assert hit["top_rack"] == rack_inc["racks"][0] and hit["racks"][0] == rack_inc["racks"][0]
    assert hit["n_nodes"] >= 4 and set(hit["nodes"]) & set(rack_inc["nodes"])


def test_a_clean_day_raises_no_incident(scored):
    scores = scored["clean"]
    assert find_incidents(scores).empty
    assert (scores.timesteps["incident_score"] < scores.threshold).all()


def test_faint_incidents_lift_their_scope_together(model, days):
    """Incidents too faint for any one node (every touched node inside its own normal range)
    still move many nodes at once: the co-movement and level scores find them, the excess alone does not."""
    d = synthetic_day(seed=2, effect=0.3, **KW)
    t = days["train"]
    excess_only = ClusterModel(ClusterConfig(co_weight=0.0, level_weight=0.0))
    excess_only.fit(t["scores"], t["topology"], t["job_members"])
    r = evaluate(_score(model, d), d["cluster_incidents"])
    r0 = evaluate(_score(excess_only, d), d["cluster_incidents"])
    assert r["auc"] > 0.9 and r["auc"] > r0["auc"] + 0.03, (r["auc"], r0["auc"])
    assert r["auc"] > max(r["auc_mean_error"], r["auc_frac_ood"], r["auc_rack_max_error"])
    assert r["false_incidents"] <= 1  # (too faint to cross the threshold: found by rank, not by alarm)


def _broad_day(seed: int, event: bool = False, racks: int = 4, per_rack: int = 8, steps: int = 480):
    """Node scores of one cluster (the same nodes every day) whose levels are as broad as a real
    cluster's (idle nodes' errors ~1e-6, busy ones' ~1e-3); with ``event``, rack r2 (alike nodes at
    the cluster's median level) has 2 nodes' errors x8 while 2 others finish their jobs (/8)."""
    rng = np.random.default_rng(seed)
    nodes = [f"n{i:03d}" for i in range(racks * per_rack)]
    topo = pd.DataFrame({"node": nodes, "rack": [f"r{i // per_rack}" for i in range(len(nodes))]})
    level = np.random.default_rng(0).normal(-9.0, 2.3, len(nodes))
    level[2 * per_rack:3 * per_rack] = -9.0
    le = level + rng.normal(0, 0.3, (steps, len(nodes)))
    ts = pd.date_range("2026-03-02", periods=steps, freq="60s", tz="UTC")
    truth = None
    if event:
        r2 = 2 * per_rack
        le[200:230, r2:r2 + 2] += np.log(8.0)
        le[200:230, r2 + 2:r2 + 4] -= np.log(8.0)
        truth = pd.DataFrame({"kind": ["rack_network"], "start": [ts[200]], "end": [ts[230]],
                              "racks": [["r2"]]})
    n = steps * len(nodes)
    scores = pd.DataFrame({"ts": np.repeat(ts, len(nodes)), "node": np.tile(nodes, steps),
                           "error": np.exp(le).ravel(), "ood": False,
                           "latent_0": rng.normal(0, 1, n), "latent_1": rng.normal(0, 1, n)})
    return scores, topo, truth


def test_a_rack_whose_mean_error_rises_is_found_though_no_node_stands_out():
    """The level score: two nodes of a rack x8 (inside their normal range: no excess) while two
    others fall as much (the rack's signed drifts cancel: no co-movement) still lift the rack's
    mean error against its own clean level; without the level score the rack is not found."""
    train, topo, _ = _broad_day(1)
    day, _, truth = _broad_day(2, event=True)
    with_level = ClusterModel().fit(train, topo)
    without = ClusterModel(ClusterConfig(level_weight=0.0)).fit(train, topo)
    r, r0 = evaluate(with_level.score(day, topo), truth), evaluate(without.score(day, topo), truth)
    assert r["auc"] > 0.95 and r["rack_accuracy"] == 1.0, r
    assert r0["auc"] < 0.8 and r0["rack_accuracy"] == 0.0, r0
    assert r["auc"] > r["auc_mean_error"] and r["auc"] > r["auc_rack_max_error"]
    clean, _, _ = _broad_day(3)
    assert find_incidents(with_level.score(clean, topo)).empty


def test_one_wild_node_opens_no_rack_incident():
    """A node far off its normal (a straggler, a node fault) does not lift its rack: scope means
    leave out their highest node (and the level counts a node at most up to its normal range, and
    leaves out the highest only when it is beyond it: in rack r2 of alike nodes, always leaving it
    out lifted the rack's score by the bias of dropping its highest normal node instead)."""
    train, topo, _ = _broad_day(1)
    quiet = _broad_day(4)[0]
    day = quiet.copy()
    late = day["ts"] >= day["ts"].iloc[0] + pd.Timedelta(minutes=100)
    day.loc[(day["node"] == "n017") & late, "error"] *= 1e4
    model = ClusterModel().fit(train, topo)
    assert (model.score(day, topo).rack_scores["r2"] < model.threshold_).all()
    for cfg, lift in ((ClusterConfig(), (0.0, 0.5)), (ClusterConfig(level_trim_beyond=False), (0.5, 9.0))):
        m = ClusterModel(cfg).fit(train, topo)  # measured lifts: 0.22 and 0.87 units
        rise = m.score(day, topo).rack_scores["r2"].max() - m.score(quiet, topo).rack_scores["r2"].max()
        assert lift[0] < rise < lift[1]
    untrimmed = ClusterModel(ClusterConfig(trim_top=False, level_weight=0.0)).fit(train, topo)
    assert (untrimmed.score(day, topo).rack_scores["r2"] > untrimmed.threshold_).any()  # what the trim is for


def test_two_nodes_changing_jobs_together_are_not_a_rack_event():
    """The rack co-movement leaves out a quarter of its lowest and highest drifts (``co_trim``):
    two nodes of eight whose errors rise together (a two-node job starting) lift the rack's
    co-movement score well under one clean-day unit on average (the untrimmed mean: over two); five
    of eight rising as much (a rack event) lift it as much as the untrimmed mean does."""
    from didact_core.cluster.core import rack_members, trimmed_rack_means

    # the trimmed mean itself: rack 0 of 8 without its 2 lowest and 2 highest, rack 1 of 3 without
    # its highest (trim_top), rack 2 of 1 as is, rack 3 empty
    members = rack_members(np.array([0] * 8 + [1] * 3 + [2]), 4)
    x = np.array([9, 0, 1, 2, 3, 4, 5, -9, 1, 2, 30, 7], dtype=float)
    np.testing.assert_allclose(trimmed_rack_means(x, members, 0.25, True), [2.5, 1.5, 7.0, np.nan])
    x[[1, 2]] = np.nan  # unscored nodes: rack 0 keeps 6, trims 1 each side
    np.testing.assert_allclose(trimmed_rack_means(x, members, 0.25, True)[0], 3.5)

    train, topo, _ = _broad_day(1)
    racks = RackMap.from_any(topo)
    r2 = racks.racks.index("r2")

    def co_r2(model, rising: int) -> np.ndarray:
        day, _, _ = _broad_day(2)
        late = day["ts"] >= day["ts"].iloc[0] + pd.Timedelta(minutes=200)
        rise = day["node"].isin([f"n{16 + i:03d}" for i in range(rising)]) & late
        day.loc[rise, "error"] *= 30.0
        tr = score_tensor(model.scorer(topo), to_tensor(day, racks), validate_jobs(None, racks))
        return tr.co_racks[200:260, r2]  # clean-day units

    trimmed = ClusterModel().fit(train, topo)
    plain = ClusterModel(ClusterConfig(co_trim=0.0)).fit(train, topo)
    assert trimmed.config.co_trim == 0.25
    two, two_plain = co_r2(trimmed, 2).mean(), co_r2(plain, 2).mean()  # measured 0.80 and 2.11
    assert two < 1.0 < two_plain and two < 0.5 * two_plain
    five, five_plain = co_r2(trimmed, 5), co_r2(plain, 5)  # mean 8.2 and 7.6
    assert five.min() > 1.0 and five.mean() > 0.9 * five_plain.mean()
    with pytest.raises(DidactError, match="co_trim"):
        ClusterConfig(co_trim=0.5).validate()


def test_stragglers_are_found(scored, days):
    d = days["events"]
    r = evaluate(scored["events"], d["cluster_incidents"], d["stragglers"], d["job_members"])
    assert r["straggler_truth"] >= 2
    assert r["straggler_recall"] >= 0.8 and r["straggler_precision"] >= 0.8
    clean = evaluate(scored["clean"], None, None, days["clean"]["job_members"])
    assert clean["members_scored"] > 20 and clean["straggler_flagged"] <= 1


def test_training_continues_from_the_previous_model(model, days):
    d = days["clean"]
    before = model.calibration_
    warm = ClusterModel.from_dict(json.loads(json.dumps(model.to_dict())))
    warm.fit(d["scores"], d["topology"], d["job_members"], day="next")
    fresh = ClusterModel().fit(d["scores"], d["topology"], d["job_members"])
    assert warm.n_fits_ == 2 and warm.fits_[-1]["warm_start"] and not warm.fits_[0]["warm_start"]
    lo, hi = sorted([before.err_median, fresh.calibration_.err_median])
    assert lo <= warm.calibration_.err_median <= hi
    assert np.isfinite(warm.calibration_.threshold) and warm.calibration_.threshold >= model.config.min_threshold
    assert model.n_fits_ == 1  # the champion it started from is untouched (rollback = keep using it)


def test_save_load_round_trip(model, days, tmp_path):
    model.save(tmp_path / "m")
    again = ClusterModel.load(tmp_path / "m")
    d = days["events"]
    part = {**d, "scores": d["scores"][d["scores"]["ts"] < d["scores"]["ts"].iloc[0] + pd.Timedelta(hours=2)]}
    a, b = _score(model, part), _score(again, part)
    pd.testing.assert_frame_equal(a.timesteps, b.timesteps)
    pd.testing.assert_frame_equal(a.peers, b.peers)
    # a model saved before the level score and the trimmed means (no such keys) scores as it did
    old_cfg = ClusterConfig(level_weight=0.0, trim_top=False, co_trim=0.0, level_trim_beyond=False)
    train = days["train"]
    legacy = ClusterModel(old_cfg).fit(train["scores"], train["topology"], train["job_members"])
    meta = legacy.to_dict()
    for k in [k for k in meta["calibration"] if k.startswith("level_")]:
        del meta["calibration"][k]
    for k in ("level_weight", "trim_top", "co_trim", "level_trim_beyond"):
        del meta["config"][k]
    old = ClusterModel.from_dict(meta)
    assert old.config.level_weight == 0.0 and old.config.trim_top is False and old.config.co_trim == 0.0
    assert old.config.level_trim_beyond is False
    pd.testing.assert_frame_equal(_score(old, part).timesteps, _score(legacy, part).timesteps)
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot be read as JSON"):
        ClusterModel.load(tmp_path / "m")
    with pytest.raises(RegistryError, match="is missing"):
        ClusterModel.load(tmp_path / "nowhere")


def test_live_scoring_gives_the_batch_numbers(model, scored, days):
    d = days["events"]
    batch = scored["events"].timesteps.set_index("ts")
    scorer = model.scorer(d["topology"])
    frames = dict(list(d["scores"].groupby("ts"))[:40])
    for ts, frame in frames.items():
        got = scorer.score(frame, ts, d["job_members"])
        assert got.incident_score == pytest.approx(batch.loc[ts, "incident_score"], rel=1e-9, abs=1e-12)
        assert got.frac_ood == pytest.approx(batch.loc[ts, "frac_ood"])
    assert list(got.racks.index) == sorted(d["topology"]["rack"].unique())
    assert {"job_id", "node", "peer_score", "outlier"} <= set(got.peers.columns)


def test_serving_nodes_frame_is_accepted(model, days):
    d = days["events"]
    rows = d["scores"][d["scores"]["ts"] == d["scores"]["ts"].iloc[0]]
    nodes = rows.set_index("node").rename(columns={"error": "error_mean"}).drop(columns="ts")
    out = model.scorer(d["topology"]).score(nodes, rows["ts"].iloc[0])
    assert np.isfinite(out.incident_score) and out.top_rack in set(d["topology"]["rack"])


def test_bad_topology_and_input_are_clear_errors(model, days, tmp_path):
    d = days["events"]
    two = pd.concat([d["topology"], pd.DataFrame({"node": ["node0000"], "rack": ["rack-05"]})])
    with pytest.raises(DidactError, match="node0000 in .*two racks|two racks.*node0000"):
        RackMap.from_any(two)
    with pytest.raises(DidactError, match="does not know"):
        model.score(d["scores"], d["topology"].iloc[8:], d["job_members"])
    jobs = pd.concat([d["job_members"], d["job_members"].head(1).assign(node="ghost")])
    with pytest.raises(DidactError, match="job membership.*does not know"):
        model.score(d["scores"], d["topology"], jobs)
    with pytest.raises(DidactError, match="lacks column"):
        validate_node_scores(d["scores"].drop(columns="error"))
    csv = tmp_path / "topo.csv"
    csv.write_text("node,rack\nnode0000,r1\nnode0000,r2\n")
    with pytest.raises(DidactError, match="line 3"):
        Topology.from_csv(csv)
    topo = Topology.per_rack(d["topology"]["node"], 8)
    assert RackMap.from_any(topo).n_racks == 5
    with pytest.raises(DidactError, match="unknown keys"):
        ClusterModel.from_dict({**model.to_dict(), "config": {"nope": 1}})


def test_tensor_and_rack_aggregation(days):
    d = days["events"]
    racks = RackMap.from_any(d["topology"])
    t = to_tensor(validate_node_scores(d["scores"]), racks)
    assert t.shape == (480, 40) and t.features().shape == (480, 40, 2 + 3)
    mx = rack_aggregate(t.error, racks.rack_of, racks.n_racks, "max")
    mean = rack_aggregate(t.error, racks.rack_of, racks.n_racks, "mean")
    assert mx.shape == (480, 5) and np.allclose(mx[:, 0], t.error[:, :8].max(axis=1))
    assert np.allclose(mean[:, 1], t.error[:, 8:16].mean(axis=1))


def test_incidents_go_to_the_review_queue(scored, days, settings):
    from didact_core.data.review import ReviewQueue

    d = days["events"]
    found = find_incidents(scored["events"], d["job_members"])
    events = incident_events(found, model_version=3)
    assert len(events) == len(found) > 0
    ids = ReviewQueue(settings).add_events(events)
    assert len(ids) == len(found)


@pytest.mark.slow
def test_small_simulated_cluster(one_torch_thread):
    """The simulator's cluster events through preprocessing and a node detector."""
    from didact_core.cluster.node_scores import score_day
    from didact_core.data.preprocess import preprocess
    from didact_core.ingest.sim_cluster import ClusterRates
    from didact_core.ingest.simulator import SimulatedCluster
    from didact_core.learn.detector import Detector
    from didact_core.learn.models import ModelConfig

    clean = ClusterRates(0.25, 0.0, 0.0, 0.0, 0.0)
    events = ClusterRates(0.25, 3.0, 3.0, 1.0, 0.5)
    kw = dict(nodes_count=24, cpus=2, interval_s=60.0, seed=5, nodes_per_rack=8)
    day0, day1, day2 = LAST_DAY - dt.timedelta(days=2), LAST_DAY - dt.timedelta(days=1), LAST_DAY
    ai, _ = preprocess(SimulatedCluster(cluster=clean, **kw).fetch_day(day0).cpu)
    det = Detector(ModelConfig(max_epochs=3, seed=0)).fit(ai[list(Detector().feature_names)])

    def day(rates, d):
        b = SimulatedCluster(cluster=rates, **kw).fetch_day(d)
        return score_day(preprocess(b.cpu)[0], det), b.meta

    s1, m1 = day(clean, day1)
    s2, m2 = day(events, day2)
    topo = m1.get("topology")
    topo = topo if topo is not None else Topology.per_rack(sorted(s1["node"].unique()), 8)
    cm = ClusterModel().fit(s1, topo, m1.get("job_members"))
    assert find_incidents(cm.score(s1, topo, m1.get("job_members"))).empty
    r = evaluate(cm.score(s2, topo, m2.get("job_members")), m2["cluster_incidents"], m2.get("stragglers"))
    assert r["incidents_truth"] >= 2 and r["auc"] > 0.85
    assert r["incident_recall"] >= 0.5
