"""The nightly cluster model: day by day from its own champion, gated, rolled back; its
incidents in the review queue; the Dagster assets on a small simulated cluster."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd
import pytest

from didact_core.cluster import nightly
from didact_core.config import Settings
from didact_core.data import spine as pipeline
from didact_core.data.review import ReviewQueue
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError
from didact_core.learn import continual
from didact_core.learn.registry import CHAMPION, PREVIOUS

from .days import fixed_days

DAYS = fixed_days(2)


def small_cluster_days(home, after_day=None) -> Settings:
    """6 nodes × 2 threads in 2 racks of 3, 60 s scrapes; two days, each with a node champion
    (and whatever ``after_day(settings, day)`` adds)."""
    s = Settings(home=str(home), nodes=6, cpus=2, interval_s=60.0, seed=3,
                 workers=1, max_train_samples=4000, model_max_epochs=2, model_batch_size=512,
                 sim_nodes_per_rack=3, sim_multinode_share=0.5)  # fmt: skip
    for day in DAYS:
        d = dt.date.fromisoformat(day)
        pipeline.ingest_raw(s, d)
        pipeline.build_job_labels(s, d)
        pipeline.build_ai_ready(s, d)
        continual.train_day(s, day)
        if after_day is not None:
            after_day(s, day)
    return s


@pytest.fixture(scope="module")
def days_ready(tmp_path_factory) -> Settings:
    return small_cluster_days(tmp_path_factory.mktemp("cluster") / "home")


@pytest.fixture(scope="module")
def trained_two(days_ready):
    return days_ready, [nightly.train_cluster_day(days_ready, d) for d in DAYS]


def test_trains_day_by_day_from_its_own_champion(trained_two):
    s, outs = trained_two
    first, second = outs
    assert first.parent_version is None and first.promoted and first.racks == 2
    assert first.jobs_source == "simulator" and first.job_members > 0
    assert second.parent_version == first.version.version == 1 and second.version.version == 2
    assert "challenger" in second.gate.reason and second.gate.clean_steps > 0
    reg = nightly.ClusterRegistry(s)
    assert reg.name == s.model_name + "-cluster"
    model = reg.load(2)
    assert model.n_fits_ == 2 and model.fits_[-1]["warm_start"]  # continued, not refitted
    lin = Warehouse(s.home_path).lineage(nightly.CLUSTER_ASSET)
    assert set(lin["event"]) >= {"register", "promote"}


def test_rolls_back_and_says_why_not(trained_two):
    s, outs = trained_two
    reg = nightly.ClusterRegistry(s)
    if reg.alias(CHAMPION) != 2:  # the gate kept v1: make v2 champion by hand first
        reg.promote(2)
    res = nightly.rollback_cluster_champion(s, actor="test", reason="bad rack scores")
    assert res == {"from": 2, "to": 1} and reg.alias(CHAMPION) == 1 and reg.alias(PREVIOUS) == 2
    lin = Warehouse(s.home_path).lineage(nightly.CLUSTER_ASSET, event="rollback")
    assert lin["reason"].iloc[-1] == "bad rack scores"
    with pytest.raises(DidactError, match="does not exist"):
        nightly.rollback_cluster_champion(s, to_version=9)
    assert nightly.rollback_cluster_champion(s, to_version=2)["to"] == 2
    # the node model's champion is untouched by all this
    assert continual.ModelRegistry(s).alias(CHAMPION) is not None


def test_incidents_reach_the_review_queue_once(trained_two):
    s, outs = trained_two
    events = ReviewQueue(s).list(status=None, limit=10_000)
    cluster = events[events["node"].astype(str).str.match(r"^(cluster|rack:)")]
    found = sum(len(o.incidents) for o in outs)
    assert found > 0, "the simulated days hold fs stalls and rack events"
    assert len(cluster) == found == sum(o.events_added for o in outs)
    # a rerun of the day adds nothing new
    reg = nightly.ClusterRegistry(s)
    inp = nightly.day_inputs(s, DAYS[-1])
    _, added = nightly.nightly_incidents(s, reg.load(reg.alias(CHAMPION)), inp, reg.alias(CHAMPION), DAYS[-1])
    assert added == 0


def test_evaluation_against_simulated_truth(trained_two):
    s, _ = trained_two
    fig = nightly.evaluate_cluster_day(s, DAYS[-1])
    assert fig["truth"].startswith("simulator") and fig["racks"] == 2
    assert {"auc", "auc_frac_ood", "auc_mean_error", "auc_rack_max_error", "incidents_found"} <= set(fig)


def test_dagster_assets_materialise(trained_two):
    """The assets as the nightly job runs them (the day's upstream already stored)."""
    from didact_assets.assets import cluster
    from didact_assets.resources import DidactResource

    s, _ = trained_two
    res = dg.materialize(
        [cluster.cluster_model, cluster.cluster_evaluation], partition_key=DAYS[-1],
        resources={"didact": DidactResource(home=s.home, nodes=6, cpus=2, interval_s=60.0, seed=3, workers=1,
                                            sim_nodes_per_rack=3, sim_multinode_share=0.5)},
    )  # fmt: skip
    assert res.success
    mats = {e.asset_key.to_user_string(): e.materialization.metadata for e in res.get_asset_materialization_events()}
    assert mats["cluster_model"]["model_version"].value == 3
    assert "jobs_source" in mats["cluster_model"] and "auc" in mats["cluster_evaluation"]


def test_a_rebase_brings_new_defaults_to_a_deployment(trained_two):
    """A champion trained with older scoring options is continued with them night after night;
    materialising cluster_model with ``rebase`` trains a fresh model with this didact's config
    (still gated against the champion, and said so in lineage and metadata)."""
    from didact_assets.assets import cluster
    from didact_assets.resources import DidactResource
    from didact_core.cluster import ClusterConfig

    s, _ = trained_two
    reg = nightly.ClusterRegistry(s)
    old_cfg = ClusterConfig(co_trim=0.0, level_trim_beyond=False)
    old = nightly.train_cluster_day(s, DAYS[0], config=old_cfg, rebase=True)
    assert old.fresh and "challenger" in old.gate.reason  # gated against the champion it replaces
    reg.promote(old.version.version)
    kept = nightly.train_cluster_day(s, DAYS[1])  # the nightly run: continued, old options kept
    assert not kept.fresh and reg.load(kept.version.version).config.co_trim == 0.0
    reg.promote(kept.version.version)
    res = dg.materialize(
        [cluster.cluster_model], partition_key=DAYS[-1],
        run_config={"ops": {"cluster_model": {"config": {"rebase": True}}}},
        resources={"didact": DidactResource(home=s.home, nodes=6, cpus=2, interval_s=60.0, seed=3, workers=1,
                                            sim_nodes_per_rack=3, sim_multinode_share=0.5)},
    )  # fmt: skip
    assert res.success
    meta = res.get_asset_materialization_events()[0].materialization.metadata
    assert meta["started"].value == "fresh" and meta["parent_version"].value == kept.version.version
    assert "challenger" in meta["gate"].value
    rebased = reg.load(meta["model_version"].value)
    assert rebased.config == ClusterConfig() and rebased.n_fits_ == 1 and not rebased.fits_[-1]["warm_start"]
    lin = Warehouse(s.home_path).lineage(nightly.CLUSTER_ASSET, event="register")
    assert lin["reason"].iloc[-1].startswith("rebased: a fresh model")
    assert "continued" in lin["reason"].iloc[-2]


def test_job_peers_come_from_job_labels_that_name_jobs(trained_two, tmp_path):
    """Where the day's job labels name jobs (sacct's JobID, a CSV job_id column), the cluster
    model's job peers are those jobs' nodes; labels without job ids leave the simulator's."""
    s, _ = trained_two
    day = DAYS[-1]
    sacct = tmp_path / "sacct.txt"
    sacct.write_text("JobID|JobName|NodeList|Start|End|State\n"
                     f"501|mpi_3|node[0000-0002]|{day}T02:00:00|{day}T08:00:00|COMPLETED\n"
                     f"502|serial|node0003|{day}T02:00:00|{day}T05:00:00|COMPLETED\n")  # fmt: skip
    slurm = s.replace(labels_csv=str(sacct))
    pipeline.build_job_labels(slurm, dt.date.fromisoformat(day))
    inp = nightly.day_inputs(slurm, day)
    assert inp.jobs_source == "job labels (1 multi-node jobs)"  # the serial job has no peers
    assert sorted(inp.jobs["node"]) == ["node0000", "node0001", "node0002"]
    assert set(inp.jobs["job_id"]) == {"501"}
    reg = nightly.ClusterRegistry(s)
    peers = reg.load(reg.alias(CHAMPION)).score(inp.scores, inp.topology, inp.jobs).peers
    assert set(peers["job_id"]) == {"501"} and set(peers["node"]) == {"node0000", "node0001", "node0002"}
    hours = pd.to_datetime(peers["ts"], utc=True).dt.hour
    assert hours.min() >= 2 and hours.max() <= 8  # only while the job ran
    csv = tmp_path / "labels.csv"
    csv.write_text(f"node,start,end,label\nnode0000,{day}T02:00:00Z,{day}T03:00:00Z,x\n")
    pipeline.build_job_labels(s.replace(labels_csv=str(csv)), dt.date.fromisoformat(day))
    assert nightly.day_inputs(s, day).jobs_source == "simulator"
    pipeline.build_job_labels(s, dt.date.fromisoformat(day))  # the simulator's labels again
