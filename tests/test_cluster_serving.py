"""The cluster model live: `didact serve`'s cluster, rack and job-peer metrics, and its
incidents in the review queue."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pandas as pd
import pytest

from didact_core.cluster import nightly
from didact_core.config import Settings
from didact_core.data import spine as pipeline
from didact_core.data.review import ReviewQueue
from didact_core.ingest.live import SimulatedLiveFeed
from didact_core.ingest.simulator import cluster_truth
from didact_core.learn import continual
from didact_core.serve import ServingService

from .conftest import REPO
from .days import LIVE_START, LIVE_START_ARG, fixed_days
from .services import free_port
from .test_serving import metrics_of, scrape, value, wait_until

DAY = fixed_days(1)[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Settings:
    """6 nodes × 2 threads in 2 racks of 3; the node champion and the cluster champion of one day."""
    s = Settings(home=str(tmp_path_factory.mktemp("cluster-serve") / "home"), nodes=6, cpus=2, interval_s=60.0,
                 seed=5, workers=1, max_train_samples=4000, model_max_epochs=2, model_batch_size=512,
                 sim_nodes_per_rack=3, sim_multinode_share=0.5)  # fmt: skip
    d = dt.date.fromisoformat(DAY)
    pipeline.ingest_raw(s, d)
    pipeline.build_job_labels(s, d)
    pipeline.build_ai_ready(s, d)
    continual.train_day(s, DAY)
    assert nightly.train_cluster_day(s, DAY).promoted
    return s


def _job_running(s: Settings) -> tuple[float, pd.DataFrame]:
    """Ten simulated minutes into the day's first multi-node job of 3+ nodes: (epoch s, its members)."""
    jm = cluster_truth(s, dt.date.fromisoformat(DAY))["job_members"]
    big = jm[jm["n_nodes"] >= 3].sort_values("start")
    job = big["job_id"].iloc[0]
    start = pd.Timestamp(big["start"].iloc[0]) + pd.Timedelta(minutes=10)
    return start.timestamp(), jm[jm["job_id"] == job]


def _service(s: Settings, start: float, **faults) -> ServingService:
    t = [0.0]

    def clock():  # each call one simulated minute later (speed 60): one new scrape per interval
        t[0] += 1.0
        return t[0]

    feed = SimulatedLiveFeed(s, speed=60, start=start, clock=clock, faults=faults or None)
    return ServingService(s, feed, interval_s=1, reload_s=60)


def test_cluster_rack_and_peer_metrics(home):
    start, members = _job_running(home)
    service = _service(home, start)
    for _ in range(4):
        service.run_once()
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_cluster_model_version") == 1
    assert value(m, "didact_cluster_state") in (0, 1, 2)
    assert value(m, "didact_cluster_threshold") > 0 and "didact_cluster_incident_score" in m
    assert {lab["rack"] for lab, _ in m["didact_rack_score"]} == {"rack-00", "rack-01"}
    assert {lab["rack"] for lab, _ in m["didact_rack_max_error"]} == {"rack-00", "rack-01"}
    peers = {(lab["job"], lab["node"]) for lab, _ in m["didact_job_peer_score"]}
    job = members["job_id"].iloc[0]
    assert {(job, n) for n in members["node"]} <= peers
    assert {(lab["job"], lab["node"]) for lab, _ in m["didact_job_peer_outlier"]} == peers
    assert value(m, "didact_job_peers_running") >= 1
    assert service.cluster.last.seconds < 1.0  # a few ms; generous for a loaded machine


def test_cluster_wide_fault_opens_one_incident_in_the_review_queue(home):
    """A fault on every node at once (95 % iowait: a filesystem stall as the node detector sees
    it) opens one cluster incident, sent to the review queue once, and it stays open."""
    start, _ = _job_running(home)
    stall = {"iowait": 0.95, "idle": 0.05}
    service = _service(home, start - 3 * 3600, **{f"node{i:04d}": stall for i in range(6)})
    before = len(ReviewQueue(home).list(status=None, limit=100_000))
    for _ in range(6):
        service.run_once()
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_cluster_state") == 2 and value(m, "didact_cluster_open_incidents") == 1
    assert value(m, "didact_cluster_incidents_total") == 1
    events = ReviewQueue(home).list(status=None, limit=100_000).iloc[before:]
    mine = events[events["node"].astype(str).str.match(r"^(cluster|rack:)")]
    assert len(mine) == 1 and int(mine["cpu"].iloc[0]) == -1
    feats = json.loads(mine["features"].iloc[0])
    assert feats["kind"] == "cluster_incident" and feats["live"] and set(feats["racks"]) <= {"rack-00", "rack-01"}
    assert int(mine["model_version"].iloc[0]) == 1


def test_no_cluster_champion_changes_nothing(home):
    """A registry without a cluster champion: node scoring as before, cluster version 0."""
    service = _service(home, LIVE_START)
    service.cluster.settings = home.replace(model_name="no-such-model")  # its "-cluster" model: none
    for _ in range(3):
        service.run_once()
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_cluster_model_version") == 0 and "didact_rack_score" not in m
    assert len(m["didact_reconstruction_error"]) == home.nodes


@pytest.mark.slow
def test_metrics_on_a_running_didact_serve(home):
    port = free_port()
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "DIDACT_HOME": home.home, "DIDACT_NODES": "6",
           "DIDACT_CPUS": "2", "DIDACT_INTERVAL_S": "60.0", "DIDACT_SEED": "5", "DIDACT_SIM_NODES_PER_RACK": "3",
           "DIDACT_SIM_MULTINODE_SHARE": "0.5"}  # fmt: skip
    argv = f"-m didact_core.serve.cli --port {port} --interval 1 --reload 5 --speed 60 --no-review".split()
    argv += ["--start", LIVE_START_ARG]  # a fixed stretch of the simulated cluster, the same every run
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def exported():
            m = scrape(url)
            return "didact_cluster_incident_score" in m and m

        m = wait_until("didact serve exports the cluster's scores", exported, timeout=90)
        assert value(m, "didact_cluster_model_version") == 1
        assert len(m["didact_rack_score"]) == 2 and len(m["didact_rack_max_error"]) == 2
        assert value(m, "didact_cluster_state") in (0, 1, 2) and "didact_cluster_open_incidents" in m
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
