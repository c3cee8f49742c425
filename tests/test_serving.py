"""Serving as an operator sees it: `didact serve` scores every node with the champion and
exports it on /metrics; a promotion or rollback is picked up without a restart; a dead
registry does not stop scoring; every Grafana panel's query returns data from a real
Prometheus; OOD events land in the review queue; a champion trained on node-level
features with temporal context is served with exactly the features and scores training
computes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from didact_core.cluster import nightly
from didact_core.learn import continual
from didact_core.data import spine as pipeline
from didact_core.config import Settings
from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.ingest.live import NODE_VALUES, LocalHostFeed, PrometheusLiveFeed, SimulatedLiveFeed
from didact_core.learn.models import ModelConfig
from didact_core.learn.detector import Detector
from didact_core.data.preprocess import feature_columns, preprocess, split_feature_columns
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.schema import CPU_MODES, NODE_FEATURES, RAW_NODE_COLUMNS
from didact_core.serve import LoadedModel, MetricsServer, Scorer, ServingMetrics, ServingService, WindowBuffer
from didact_core.ingest.simulator import DataFaultRates, SimulatedCluster
from didact_core.data.warehouse import Warehouse

from .conftest import REPO, yesterday
from .days import LIVE_START, LIVE_START_ARG
from .services import free_port, require_binary, start_node_exporter, start_prometheus

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


# -- helpers ---------------------------------------------------------------------------------------


def metrics_of(text: str) -> dict[str, list]:
    """{sample name: [(labels, value), ...]} of an exposition text."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape(url: str) -> dict[str, list]:
    r = requests.get(url + "/metrics", timeout=10)
    r.raise_for_status()
    return metrics_of(r.text)


def value(m: dict, name: str, **labels) -> float:
    hits = [v for lab, v in m.get(name, []) if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {hits}"
    return hits[0]


def wait_until(what: str, fn, timeout: float = 30.0, every: float = 0.25):
    """Call ``fn`` until it returns something truthy; fail naming ``what`` (and the last value)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (requests.RequestException, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def quick_detector(seed: int = 0) -> Detector:
    """A detector trained for a second on random CPU fractions (no registry)."""
    X = np.random.default_rng(seed).dirichlet(np.ones(5), 4000).astype(np.float32)
    return Detector(ModelConfig(max_epochs=2, batch_size=512, seed=seed)).fit(X)


def quick_rich_detector(window: int = 3, seed: int = 0) -> Detector:
    """A detector over the five fractions + every node-level feature with ``window``
    timesteps (log1p + standardisation, as training configures it), trained for a moment
    on random positive rows."""
    cols = feature_columns(("cpu", "node"), window)
    X = np.abs(np.random.default_rng(seed).standard_normal((3000, len(cols)))).astype(np.float32)
    cfg = ModelConfig(
        n_features=len(cols), max_epochs=1, batch_size=512, log1p=True, standardize=True, seed=seed
    )
    return Detector(cfg, cols).fit(X)


def fast_feed(s: Settings, **kw) -> SimulatedLiveFeed:
    """The simulated cluster from a fixed instant on a fake clock: every poll two simulated
    minutes later."""
    return SimulatedLiveFeed(s, speed=60, start=LIVE_START, clock=iter(range(0, 10**6, 2)).__next__, **kw)


def raw_frame(ts_s: float, counters: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    rows = [
        {"ts": pd.Timestamp(ts_s, unit="s", tz="UTC"), "node": n, "cpu": c, **dict(zip(CPU_MODES, v))}
        for (n, c), v in counters.items()
    ]
    return pd.DataFrame(rows)


# -- a trained home, shared by the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Settings:
    """6 nodes × 2 threads at 60 s scrapes in 2 racks of 3; two days trained (v1, v2), the second
    evaluated; the cluster model trained on the second day (its v1 champion)."""
    home = tmp_path_factory.mktemp("serving") / "didact-home"
    s = Settings(
        home=str(home),
        nodes=6,
        cpus=2,
        interval_s=60.0,
        seed=7,
        workers=1,
        max_train_samples=5000,
        model_max_epochs=4,
        model_batch_size=512,
        sim_nodes_per_rack=3,
    )
    days = [yesterday() - dt.timedelta(days=1), yesterday()]
    for day in days:
        pipeline.ingest_raw(s, day)
        pipeline.build_job_labels(s, day)
        pipeline.build_ai_ready(s, day)
        continual.train_day(s, day.isoformat())
    continual.evaluate_day(s, days[-1].isoformat())
    assert nightly.train_cluster_day(s, days[-1].isoformat()).promoted
    reg = ModelRegistry(s)
    assert [v.version for v in reg.versions()] == [1, 2]
    assert reg.alias(CHAMPION) is not None
    return s


def serve_env(s: Settings) -> dict:
    import os

    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DIDACT_HOME": s.home,
        "DIDACT_NODES": str(s.nodes),
        "DIDACT_CPUS": str(s.cpus),
        "DIDACT_INTERVAL_S": str(s.interval_s),
        "DIDACT_SEED": str(s.seed),
        "DIDACT_SIM_NODES_PER_RACK": str(s.sim_nodes_per_rack),
    }


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """`python -m didact_core.serve.cli` (1 s intervals, simulated time at 60×), a node
    exporter, and a real Prometheus scraping both every second."""
    require_binary("prometheus")
    work = tmp_path_factory.mktemp("served")
    port = free_port()
    log_path = work / "serve.log"
    argv = f"-m didact_core.serve.cli --port {port} --interval 1 --reload 1 --speed 60 --log-level INFO".split()
    argv += ["--start", LIVE_START_ARG]  # a fixed stretch of the simulated cluster, the same every run
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=serve_env(trained), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            "didact serve exports node scores",
            lambda: proc.poll() is None and "didact_reconstruction_error" in scrape(url),
            timeout=90,
        )
        with (
            start_node_exporter(
                work, collectors=("cpu", "stat", "vmstat", "diskstats", "netdev", "meminfo", "loadavg")
            ) as ne,
            start_prometheus(work, [f"127.0.0.1:{port}", ne.address], scrape_interval="1s") as prom,
        ):
            yield {
                "proc": proc,
                "url": url,
                "prom": prom,
                "node_exporter": ne,
                "settings": trained,
                "log": log_path,
            }
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def serve_log(served) -> str:
    return Path(served["log"]).read_text(errors="replace")[-4000:]


#: the rich home's day and cluster: a fixed day, data faults more frequent than the default
#: (every kind but out-of-order arrivals, see test_serving_a_rich_windowed_champion_equals_training)
RICH_DAY = dt.date(2026, 11, 20)
RICH_FAULTS = DataFaultRates(
    reboot_per_node_day=0.5,
    missed_scrape=0.01,
    duplicate=0.005,
    out_of_order=0.0,
    nan=0.005,
    clock_skew=0.005,
)


@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> dict:
    """One simulated day through the nightly path with DIDACT_FEATURES=cpu,node and
    DIDACT_WINDOW=3: raw partition (node-level metrics included), AI-ready partition, and
    the champion trained on it (45 input columns, log1p + standardisation)."""
    home = tmp_path_factory.mktemp("serving-rich") / "didact-home"
    s = Settings(
        home=str(home), nodes=4, cpus=2, interval_s=60.0, seed=12, workers=1, features=("cpu", "node"), window=3,
        max_train_samples=6000, model_max_epochs=3, model_batch_size=512,
    )  # fmt: skip
    sim = SimulatedCluster(nodes_count=4, cpus=2, interval_s=60.0, seed=12, data_faults=RICH_FAULTS)
    pipeline.ingest_raw(s, RICH_DAY, source=sim)
    pipeline.build_ai_ready(s, RICH_DAY)
    out = continual.train_day(s, RICH_DAY.isoformat())
    assert out.promoted and out.champion_version == 1
    return {"settings": s, "cluster": sim, "day": RICH_DAY}


# -- (a) didact serve: metrics over HTTP -----------------------------------------------------------


@pytest.mark.slow
def test_serve_exports_every_node(served):
    s = served["settings"]
    m = wait_until(
        "two intervals scored",
        lambda: (
            (m := scrape(served["url"]))
            and m.get("didact_samples_scored_total", [({}, 0)])[0][1] >= 2 * s.nodes * s.cpus
            and m
        ),
    )
    nodes = {f"node{i:04d}" for i in range(s.nodes)}
    errors = {lab["node"]: v for lab, v in m["didact_reconstruction_error"]}
    assert set(errors) == nodes, errors  # one series per node
    assert all(v >= 0 and math.isfinite(v) for v in errors.values())
    maxes = {lab["node"]: v for lab, v in m["didact_reconstruction_error_max"]}
    assert all(maxes[n] >= errors[n] for n in nodes)
    cpu_series = {(lab["node"], lab["cpu"]) for lab, _ in m["didact_reconstruction_error_cpu"]}
    assert cpu_series == {(n, str(c)) for n in nodes for c in range(s.cpus)}
    assert {(lab["node"], lab["dim"]) for lab, _ in m["didact_latent"]} == {
        (n, d) for n in nodes for d in "01"
    }
    assert {lab["node"] for lab, v in m["didact_ood"] if v in (0.0, 1.0)} == nodes
    assert (
        all(50 < v < 600 for _, v in m["didact_node_power_watts"])
        and len(m["didact_node_power_watts"]) == s.nodes
    )

    reg = ModelRegistry(s)
    champion = reg.alias(CHAMPION)
    assert value(m, "didact_champion_version") == champion
    assert value(m, "didact_model_threshold") == pytest.approx(reg.load(champion).threshold_)
    assert value(m, "didact_registry_up") == 1 and value(m, "didact_feed_up") == 1
    assert value(m, "didact_model_reloads_total") == 1
    assert abs(value(m, "didact_last_poll_timestamp_seconds") - time.time()) < 10
    assert value(m, "didact_scoring_duration_seconds_count") >= 2
    if champion == 2:  # the evaluated version exports its held-out metrics
        assert 0 < value(m, "didact_model_holdout_error") < 1
        assert 0 < value(m, "didact_model_latent_knn_accuracy") <= 1
    assert "Traceback" not in serve_log(served)


# -- (d) every Grafana panel's query returns data from a real Prometheus ---------------------------


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target of both dashboards."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        panels = list(doc["panels"])
        for p in list(panels):
            panels += p.get("panels", [])
        for p in panels:
            for t in p.get("targets", []):
                out.append((path.name, p["title"], t["expr"]))
    return out


def substitute(expr: str, node: str) -> str:
    return (
        expr.replace("${node}", node)
        .replace("$node", node)
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$job", ".*")
    )


def test_dashboards_are_valid_and_use_exported_metrics(trained):
    """Static checks: schema, datasource variable, provisioning, and that every metric a
    panel names is one didact exports (taken from a real exporter after one interval)."""
    service = ServingService(trained, fast_feed(trained), interval_s=1, review=False)
    service.run_once()
    service.run_once()
    families = list(text_string_to_metric_families(service.metrics.text().decode()))
    # a family with no series now (job peers while no multi-node job runs) is exported too
    exported = {s.name for fam in families for s in fam.samples} | {fam.name for fam in families}
    assert "didact_reconstruction_error_cpu" in exported and "didact_node_power_watts" in exported

    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus"
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "didact.yaml").read_text())["providers"][0]
    assert prov["type"] == "file" and prov["options"]["path"]

    titles = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["schemaVersion"] >= 36 and doc["uid"] and doc["title"] not in titles
        titles.add(doc["title"])
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource"
        assert variables["DS_PROMETHEUS"]["current"]["value"] == ds["uid"]
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids))
        for p in doc["panels"]:
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
                names = set(re.findall(r"\b(didact_[a-z_]+)", t["expr"]))
                assert names and names <= exported, (p["title"], names - exported)
    detail = json.loads((DASHBOARDS / "didact-detail.json").read_text())
    node_var = {v["name"]: v for v in detail["templating"]["list"]}["node"]
    assert "didact_reconstruction_error" in node_var["definition"]
    assert all(
        "$node" in t["expr"] or "node" not in t["legendFormat"]
        for p in detail["panels"]
        for t in p.get("targets", [])
        if "_cpu" in t["expr"] or "latent" in t["expr"]
    )

    promtool = require_binary("promtool")
    r = subprocess.run(
        [promtool, "check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_every_panel_query_returns_data(served):
    prom = served["prom"]
    node = "node0001"

    def query(expr: str) -> list:
        r = requests.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    # rate() over 1m needs two scrapes of every counter
    wait_until(
        "Prometheus has two scrapes of didact",
        lambda: query("count_over_time(didact_champion_version[1m]) >= 3"),
    )
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = [(d, title, substitute(e, node)) for d, title, e in queries]
    deadline = time.monotonic() + 30
    while empty and time.monotonic() < deadline:
        # job-peer panels have data while a multi-node job runs (the simulated cluster's own jobs;
        # tests/test_cluster_serving.py starts at one): here they must evaluate, and return data then
        peers_running = bool(query("didact_job_peers_running > 0"))
        empty = [(d, title, e) for d, title, e in empty
                 if not query(e) and (peers_running or "didact_job_peer_" not in e)]  # fmt: skip
        if empty:
            time.sleep(1)
    assert not empty, f"panels without data: {empty}"
    # the detail dashboard's $node variable lists every node
    r = requests.get(
        prom.url + "/api/v1/label/node/values", params={"match[]": "didact_reconstruction_error"}, timeout=10
    )
    assert node in r.json()["data"] and len(r.json()["data"]) == served["settings"].nodes


@pytest.mark.slow
def test_prometheus_live_feed_reads_node_exporter(served, trained):
    """The Prometheus feed: this machine's node exporter, via instant queries."""
    prom, ne = served["prom"], served["node_exporter"]
    feed = PrometheusLiveFeed(trained.replace(prometheus_url=prom.url), job=None)
    feed.metric = f'node_cpu_seconds_total{{instance="{ne.address}"}}'

    def poll_cpu():
        try:
            return [feed.poll()]
        except SourceUnavailableError:  # not scraped yet (when this test runs first)
            return None

    raw = wait_until("node exporter's CPU counters in Prometheus", poll_cpu)[0]
    assert set(raw["node"].astype(str)) == {"127.0.0.1"}  # instance, port stripped
    local = LocalHostFeed(node="127.0.0.1").poll()
    assert sorted(raw["cpu"]) == sorted(local["cpu"])
    assert (raw[list(CPU_MODES)].to_numpy() >= 0).all()
    busy = raw[["user", "system"]].sum(axis=1).to_numpy()
    assert np.all(busy <= local.sort_values("cpu")[["user", "system"]].sum(axis=1).to_numpy() + 0.05)
    assert abs(raw["ts"].max() - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(
        seconds=15
    )  # scrape time, not query time

    # node-level metrics of the same scrape, as the nightly ingest reads them
    from didact_core.ingest.node_exporter import NODE_METRICS

    def poll_both():
        cpu = feed.poll(node_metrics=True)
        nm = feed.node_metrics()
        return nm is not None and nm["ts"].iloc[0] == cpu["ts"].max() and (cpu, nm)

    raw, nm = wait_until("node exporter's node-level metrics in Prometheus", poll_both)
    assert list(nm.columns) == list(RAW_NODE_COLUMNS) and nm["node"].astype(str).tolist() == ["127.0.0.1"]
    t_ms = int(nm["ts"].iloc[0].value // 1_000_000)
    ingest = feed.source.node_metrics_frame(
        feed.source.fetch(
            [("__name__", "=~", "|".join(NODE_METRICS)), ("instance", "=", ne.address)], t_ms, t_ms
        )
    )
    want = ingest[ingest["ts"] == nm["ts"].iloc[0]]
    assert len(want) == 1
    np.testing.assert_allclose(nm[list(NODE_VALUES)].to_numpy(float), want[list(NODE_VALUES)].to_numpy(float))
    # … and the local-host feed reads the same devices from /proc (a moment later: counters a bit higher)
    local = LocalHostFeed(node="127.0.0.1")
    local.poll(node_metrics=True)
    here, there = local.node_metrics().iloc[0], nm.iloc[0]
    slack = {"ctxt": 1e6, "intr": 1e6, "pgfault": 1e6, "disk_io_time": 5, "disk_read_bytes": 5e7,
             "disk_written_bytes": 5e7, "net_rx_bytes": 5e7, "net_tx_bytes": 5e7}  # fmt: skip
    for c, extra in slack.items():  # a partition or loopback counted twice would be far above
        # (a counter that did not move may differ in the last bit: devices summed in another order)
        assert there[c] * (1 - 1e-9) <= here[c] <= 1.2 * there[c] + extra, (c, there[c], here[c])
    assert here["mem_used_bytes"] == pytest.approx(there["mem_used_bytes"], abs=2**30)

    dead = PrometheusLiveFeed(trained.replace(prometheus_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(SourceUnavailableError, match="connection refused"):
        dead.poll()


# -- (b) promotion / rollback: hot reload, same process --------------------------------------------


@pytest.mark.slow
def test_rollback_is_served_without_restart(served):
    s, proc, url = served["settings"], served["proc"], served["url"]
    pid = proc.pid
    before = scrape(url)
    old = int(value(before, "didact_champion_version"))
    reloads = value(before, "didact_model_reloads_total")
    target = 1 if old == 2 else 2
    continual.rollback_champion(s, to_version=target, actor="test", reason="serving hot reload")
    m = wait_until(
        f"champion v{target} exported",
        lambda: (m := scrape(url)) and value(m, "didact_champion_version") == target and m,
        timeout=20,
    )
    assert proc.poll() is None and proc.pid == pid  # same process, no restart
    assert value(m, "didact_model_reloads_total") == reloads + 1
    assert value(m, "didact_model_threshold") == pytest.approx(ModelRegistry(s).load(target).threshold_)
    # and back (a promotion of the other version), scores keep coming
    continual.rollback_champion(s, to_version=old, actor="test", reason="back")
    wait_until(
        f"champion v{old} exported", lambda: value(scrape(url), "didact_champion_version") == old, timeout=20
    )
    assert proc.poll() is None


# -- (e) OOD events reach the review queue ---------------------------------------------------------


def test_injected_fault_reaches_the_review_queue(trained):
    """A kernel livelock (95 % system time) injected on one simulated node — the live
    feed's fault injection, not a lowered threshold — crosses the champion's threshold
    every interval, and each interval's event lands in the review queue.  (The
    simulator's own fault kinds are in the training days too, so the champion flags
    them only part of the time; a behaviour it never saw is flagged always.)"""
    from didact_core.data.review import ReviewQueue

    t = [0.0]

    def clock():  # each call one simulated minute later (speed 60): one new scrape per interval
        t[0] += 1.0
        return t[0]

    livelock = {"system": 0.95, "idle": 0.05}
    feed = SimulatedLiveFeed(trained, speed=60, start=LIVE_START, clock=clock, faults={"node0002": livelock})
    service = ServingService(trained, feed, interval_s=1, reload_s=60)
    before = len(ReviewQueue(trained).list(status=None, limit=100_000))
    scored = [service.run_once() for _ in range(6)]
    version = service.watcher.current.version
    assert scored[0] is None and all(sc is not None for sc in scored[1:])
    assert all(bool(sc.nodes.loc["node0002", "ood"]) for sc in scored[1:])
    events = ReviewQueue(trained).list(status=None, limit=100_000).iloc[before:]
    # (the `didact serve` of the other tests writes its own, natural events to the same queue)
    livelocked = events["features"].map(lambda f: json.loads(f).get("system", 0) > 0.8)  # cluster events: none
    mine = events[(events["node"] == "node0002") & livelocked]
    assert len(mine) == 5  # one event per interval while the node is OOD (its worst CPU)
    assert (mine["score"] > mine["threshold"]).all() and (mine["model_version"] == version).all()
    feats = json.loads(mine["features"].iloc[-1])
    assert set(feats) == set(trained.features) and feats["system"] > 0.8
    assert mine["latent_0"].notna().all() and mine["cpu"].between(0, trained.cpus - 1).all()
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_ood", node="node0002") == 1
    assert value(m, "didact_ood_events_total") >= 5
    assert value(m, "didact_ood_samples_total") >= 5 * trained.cpus


# -- (c) registry gone: keep serving ---------------------------------------------------------------


@pytest.mark.slow
def test_registry_gone_keeps_serving(served):
    s, url = served["settings"], served["url"]
    mlflow_dir = s.mlflow_dir
    away = mlflow_dir.with_name("mlflow-away")
    version = value(scrape(url), "didact_champion_version")
    mlflow_dir.rename(away)
    try:
        down = wait_until(
            "didact_registry_up 0",
            lambda: (m := scrape(url)) and value(m, "didact_registry_up") == 0 and m,
            timeout=20,
        )
        n0, t0 = value(down, "didact_samples_scored_total"), value(down, "didact_last_poll_timestamp_seconds")
        later = wait_until(
            "scores still updating",
            lambda: (
                (m := scrape(url)) and value(m, "didact_samples_scored_total") > n0 + s.nodes * s.cpus and m
            ),
            timeout=20,
        )
        assert value(later, "didact_last_poll_timestamp_seconds") > t0
        assert value(later, "didact_champion_version") == version  # the last good model
        assert value(later, "didact_registry_errors_total") >= 1
        assert not mlflow_dir.exists()  # serving never creates an empty registry in its place
    finally:
        away.rename(mlflow_dir)
    wait_until(
        "didact_registry_up 1 again", lambda: value(scrape(url), "didact_registry_up") == 1, timeout=75
    )
    assert "registry" in serve_log(served) and served["proc"].poll() is None


@pytest.mark.slow
def test_serve_stops_cleanly_on_sigterm(served):
    proc = served["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, serve_log(served)
    assert "stopped after" in serve_log(served) and "Traceback" not in serve_log(served)
    with pytest.raises(requests.ConnectionError):
        requests.get(served["url"] + "/metrics", timeout=2)


# -- (f) many scrapers never slow scoring down (issue 15, fault 5) ------------------------------------


def http_get(port: int, path: str = "/metrics", gzipped: bool = False, timeout: float = 30.0) -> dict:
    """One GET on a fresh connection (raw socket: a light client, so that 20 of them measure
    the server, not the test process): status, headers, body (un-gzipped), seconds,
    and whether the body had exactly Content-Length bytes."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        extra = "Accept-Encoding: gzip\r\n" if gzipped else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: didact\r\nConnection: close\r\n{extra}\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    seconds = time.monotonic() - t0
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    complete = len(body) == int(headers.get("content-length", -1))
    if headers.get("content-encoding") == "gzip" and complete:
        body = gzip.decompress(body)
    return {"status": int(lines[0].split()[1]), "headers": headers, "body": body, "seconds": seconds,
            "complete": complete}  # fmt: skip


def http09_get(port: int, path: str = "/metrics", timeout: float = 10.0) -> tuple[bytes, float]:
    """A bare ``GET /metrics`` line (HTTP/0.9: no version, no headers); (what came back, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path}\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - t0


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def test_metrics_http_answers_at_once_and_drops_idle_connections():
    """The /metrics server in process: cached bodies (plain and gzip), 404/405, HEAD,
    keep-alive, a bare HTTP/0.9 line answered at once, idle and half-open connections
    closed after the read timeout while requests keep being answered."""
    text = b"# HELP didact_x x\n# TYPE didact_x gauge\ndidact_x 1.0\n" * 2000
    server = MetricsServer("127.0.0.1", 0, lambda: (text, gzip.compress(text)), workers=2, read_timeout_s=1.0)
    server.start()
    port, url = server.port, f"http://127.0.0.1:{server.port}"
    try:
        plain, zipped = http_get(port), http_get(port, gzipped=True)
        assert plain["status"] == 200 and plain["complete"] and plain["body"] == text
        assert zipped["headers"]["content-encoding"] == "gzip" and zipped["body"] == text
        assert plain["headers"]["content-type"] == CONTENT_TYPE_LATEST  # what the old wsgiref app sent
        assert http_get(port, "/nothing")["status"] == 404 and http_get(port, "/metrics?x=1")["body"] == text
        assert requests.post(url + "/metrics", timeout=5).status_code == 405
        head = requests.head(url + "/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) == len(text)
        wait_until("closed connections gone", lambda: server.open_connections == 0, timeout=5)
        with requests.Session() as session:  # keep-alive: two requests, one connection
            assert [session.get(url + "/metrics", timeout=5).content for _ in range(2)] == [text, text]
            assert server.open_connections == 1
        body, seconds = http09_get(port)
        assert body == text and seconds < 2  # the old server waited for headers until the client gave up

        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: didact\r\n")  # never finished
        try:
            t0 = time.monotonic()
            assert all(http_get(port, timeout=5)["body"] == text for _ in range(5))
            assert time.monotonic() - t0 < 3  # idle connections hold no worker
            assert all(closed_by_server(s, timeout=5) for s in [*idle, half])
            wait_until("idle connections dropped", lambda: server.open_connections == 0, timeout=5)
        finally:
            for s in [*idle, half]:
                s.close()
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.slow
def test_many_scrapers_never_starve_scoring(trained, tmp_path):
    """`didact serve` over 200 simulated nodes × 8 CPUs (about 0.2 MB of /metrics) while 20
    scrapers GET /metrics back to back for 12 s and 50 idle connections stay open: every
    scrape gets its complete body, none waits long behind another's, a bare HTTP/0.9
    request is answered at once, scoring keeps its 1 s interval, and the idle connections
    are dropped.  (The old server — a thread per connection rendering every request,
    listen backlog 5 — starved scoring to one interval a minute.)  Bounds are generous:
    the machine has 2 cores and may be busy."""
    nodes, cpus, load_s = 200, 8, 12.0
    port = free_port()
    env = {**serve_env(trained), "DIDACT_NODES": str(nodes), "DIDACT_CPUS": str(cpus)}
    argv = f"-m didact_core.serve.cli --port {port} --interval 1 --reload 60 --speed 60 --no-review".split()
    argv += ["--start", LIVE_START_ARG]  # a fixed stretch of the simulated cluster, the same every run
    log_path = tmp_path / "serve-load.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            "every node exported",
            lambda: proc.poll() is None and len(scrape(url).get("didact_reconstruction_error", [])) == nodes,
            timeout=120,
        )
        before, t_before = scrape(url), time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        results: list[dict] = []
        errors: list[str] = []
        stop_at = time.monotonic() + load_s

        def scraper(i: int) -> None:
            while time.monotonic() < stop_at:
                try:
                    results.append(http_get(port, gzipped=i % 2 == 0))
                except OSError as e:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(20)]
        for t in threads:
            t.start()
        time.sleep(load_s / 2)
        bare, bare_s = http09_get(port)  # in the middle of the load
        for t in threads:
            t.join(timeout=load_s + 60)
        after, elapsed = scrape(url), time.monotonic() - t_before

        assert not errors, errors[:5]
        assert len(results) >= 20, len(results)
        assert all(r["status"] == 200 and r["complete"] for r in results)
        assert all(r["body"].count(b"didact_reconstruction_error{") == nodes for r in results[::25])
        assert all(b"didact_serving_info{" in r["body"] for r in results)  # the last family: the whole body
        worst = max(r["seconds"] for r in results)
        # measured: p99 0.08 s, max 0.15 s (~800 scrapes a second); the old server: p99 2.2 s, max 7.8 s
        assert worst < 5.0, f"slowest scrape {worst:.2f} s"
        assert b"didact_reconstruction_error{" in bare and bare_s < 5.0
        scored = value(after, "didact_scoring_duration_seconds_count") - value(
            before, "didact_scoring_duration_seconds_count"
        )
        # 1 s intervals: measured ~0.75 a second on a busy 2-core machine (issue 15: the old server
        # stretched a 4 s interval to 60 s at 1,000 nodes)
        assert scored >= elapsed / 4, f"{scored} intervals scored in {elapsed:.0f} s of scraping (1 s interval)"
        assert value(after, "didact_feed_poll_duration_seconds") < 5.0
        assert all(closed_by_server(s, timeout=15) for s in idle)  # dropped after the read timeout
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


# -- in-process pieces -----------------------------------------------------------------------------


def test_stopped_tracking_server_keeps_the_last_model(trained, monkeypatch):
    """Registry behind an HTTP tracking server that is down: the watcher says so
    (registry_up 0, backoff), scoring goes on with the model it has."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what serve() sets, smaller
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    model = LoadedModel(ModelRegistry(trained).load(1), version=1)
    dead = trained.replace(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    service = ServingService(dead, fast_feed(trained), interval_s=1, reload_s=0.05, review=False)
    service.watcher.current = model
    t0 = time.monotonic()
    scores = [service.run_once() for _ in range(3)]
    assert time.monotonic() - t0 < 30
    assert scores[-1] is not None and scores[-1].model_version == 1
    assert service.watcher.up is False and service.watcher.failures >= 1
    assert "127.0.0.1" in service.watcher.last_error
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_registry_up") == 0 and value(m, "didact_registry_errors_total") >= 1
    assert len(m["didact_reconstruction_error"]) == trained.nodes


def test_simulated_feed_is_the_simulators_day(settings):
    """The live feed at time t returns the simulator's counters of the scrape at or before t."""
    day = yesterday()
    sim = SimulatedCluster.from_settings(settings)
    block = sim.fetch_day(day)
    t = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=13, seconds=30)
    feed = SimulatedLiveFeed(settings, start=t.timestamp(), clock=lambda: 0.0)
    raw = feed.poll()
    assert len(raw) == settings.nodes * settings.cpus
    for node, cpu in [("node0000", 0), ("node0003", 1)]:
        got = raw[(raw["node"] == node) & (raw["cpu"] == cpu)].iloc[0]
        rows = block.cpu[(block.cpu["node"] == node) & (block.cpu["cpu"] == cpu) & (block.cpu["ts"] <= t)]
        want = rows.iloc[-1]
        assert got["ts"] == want["ts"] == pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=13)
        np.testing.assert_allclose(
            got[list(CPU_MODES)].to_numpy(float), want[list(CPU_MODES)].to_numpy(float)
        )
    watts = block.power[block.power["ts"] == pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=13)]
    np.testing.assert_allclose(
        feed.power().loc[watts["node"].astype(str)].to_numpy(), watts["watts"].to_numpy()
    )


def test_localhost_feed_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 500 5 200 10000 30 0 7 1 0 0\ncpu1 100 0 50 9000 3 1 2 0 0 0\n"
        "intr 12345\nctxt 999\n"
    )
    feed = LocalHostFeed(node="here", proc_stat=stat, clock=lambda: 1_800_000_000.0)
    raw = feed.poll()
    hz = feed.user_hz
    assert raw["node"].astype(str).tolist() == ["here", "here"] and raw["cpu"].tolist() == [0, 1]
    row = raw.iloc[0]
    assert row["user"] == pytest.approx(500 / hz) and row["idle"] == pytest.approx(10000 / hz)
    assert row["softirq"] == pytest.approx(7 / hz) and row["steal"] == pytest.approx(1 / hz)
    assert raw["ts"].iloc[0] == pd.Timestamp(1_800_000_000, unit="s", tz="UTC")
    with pytest.raises(SourceUnavailableError, match="cannot be read"):
        LocalHostFeed(proc_stat=tmp_path / "nope").poll()
    real = LocalHostFeed().poll()  # this machine
    assert len(real) >= 1 and (real[list(CPU_MODES)].to_numpy() >= 0).all()


def test_scorer_counts_damage_and_skips_unchanged_scrapes():
    """Consecutive polls become one interval per series; a reset is counted and not
    scored, a series not scraped again gives no sample (and is not a 'duplicate'), a NaN
    scrape is counted and the series' last valid scrape spans the next interval."""
    model = LoadedModel(quick_detector(), version=7)
    scorer = Scorer()
    split = np.array([0.8, 1 / 30, 0, 0, 0, 0, 1 / 15, 0.1])  # CPU seconds per second, by mode (sums to 1)
    base = {("a", 0): 1000.0, ("a", 1): 2000.0, ("b", 0): 3000.0}

    def counters(t: float, keys=base) -> dict:
        return {k: list(base[k] * split / split.sum() * 10 + t * split) for k in keys}

    assert scorer.score(raw_frame(0, counters(0)), model) is None  # first poll: nothing to compare with
    poll = counters(15)
    poll[("b", 0)] = list(split)  # node b rebooted: its counters restarted near zero
    r = scorer.score(raw_frame(15, poll), model)
    assert r.report.counter_resets == 1 and set(r.nodes.index) == {"a"} and len(r.samples) == 2
    assert r.samples["idle"].iloc[0] == pytest.approx(0.8) and r.samples["dt_s"].iloc[0] == pytest.approx(15)
    assert r.nodes.loc["a", "cpus"] == 2 and r.nodes.loc["a", "error_max"] >= r.nodes.loc["a", "error_mean"]

    # node a was not scraped again (same ts as before); b moved on: only b is scored, nothing "duplicate"
    a_again = raw_frame(15, counters(15, [("a", 0), ("a", 1)]))
    b_next = raw_frame(30, {("b", 0): list(split * 16)})
    r2 = scorer.score(pd.concat([a_again, b_next], ignore_index=True), model)
    assert set(r2.nodes.index) == {"b"} and r2.report.duplicates == 0

    # a NaN counter on (a, 1): dropped and counted
    poll = counters(45, [("a", 0), ("a", 1)])
    poll[("a", 1)][0] = math.nan
    poll[("b", 0)] = list(split * 31)
    r3 = scorer.score(raw_frame(45, poll), model)
    assert r3.report.nan_rows == 1
    assert ("a", 1) not in set(zip(r3.samples["node"].astype(str), r3.samples["cpu"]))
    # … and the next interval of (a, 1) runs from its last valid scrape (t=15)
    poll = counters(60, [("a", 0), ("a", 1)])
    poll[("b", 0)] = list(split * 46)
    r4 = scorer.score(raw_frame(60, poll), model)
    a1 = r4.samples[(r4.samples["node"].astype(str) == "a") & (r4.samples["cpu"] == 1)]
    assert len(a1) == 1 and a1["dt_s"].iloc[0] == pytest.approx(45) and r4.report.nan_rows == 0
    assert a1["idle"].iloc[0] == pytest.approx(0.8)


def test_scoring_matches_the_detector():
    """The one-pass scoring equals score_samples/embed, and per-node aggregates are exact."""
    det = quick_detector(1)
    model = LoadedModel(det, version=1)
    X = np.random.default_rng(2).dirichlet(np.ones(5), 300).astype(np.float32)
    err, Z = model.score(X)
    assert model._fused
    np.testing.assert_allclose(err, det.score_samples(X), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(Z, det.embed(X), rtol=1e-5, atol=1e-6)


def test_cpu_series_are_capped(settings):
    """Above nodes × CPUs > cap, per-CPU series are not exported; per-node ones are."""
    feed = fast_feed(settings)
    metrics = ServingMetrics(cpu_label_cap=settings.nodes * settings.cpus - 1)
    model = LoadedModel(quick_detector(), version=3)
    scorer = Scorer()
    for _ in range(2):
        scores = scorer.score(feed.poll(), model)
        metrics.interval(scores, feed.power(), time.time(), 0.01, 0)
    m = metrics_of(metrics.text().decode())
    assert "didact_reconstruction_error_cpu" not in m
    assert len(m["didact_reconstruction_error"]) == settings.nodes
    assert metrics.nodes.cpu_series_capped


def test_no_champion_then_a_promotion_is_picked_up(settings, caplog):
    """Serving starts before anything is trained: it says so, exports version 0, keeps
    polling (never creating a registry itself), and serves the first champion as soon as
    it is promoted."""
    service = ServingService(settings, fast_feed(settings), interval_s=1, reload_s=0.01, review=False)
    with caplog.at_level("WARNING", logger="didact_core.serve"):
        assert service.run_once() is None
    assert "nothing trained in this home" in caplog.text
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_champion_version") == 0 and value(m, "didact_registry_up") == 0
    assert value(m, "didact_registry_errors_total") == 0 and not settings.mlflow_dir.exists()

    reg = ModelRegistry(settings)  # a registry, still without a champion
    time.sleep(0.02)
    assert service.run_once() is None and service.run_once() is None
    m = metrics_of(service.metrics.text().decode())
    assert value(m, "didact_champion_version") == 0 and value(m, "didact_registry_up") == 1
    assert value(m, "didact_feed_up") == 1 and "didact_reconstruction_error" not in m

    det = quick_detector()
    with reg.run("quick"):
        v = reg.log_and_register(det, np.random.default_rng(0).dirichlet(np.ones(5), 64)).version
    reg.promote(v)
    time.sleep(0.02)
    scores = service.run_once()
    assert scores is not None and scores.model_version == v
    m = metrics_of(service.metrics.text().decode())
    assert (
        value(m, "didact_champion_version") == v and len(m["didact_reconstruction_error"]) == settings.nodes
    )


# -- (f) any model the training side produces: node-level features, temporal context ---------------


def test_model_columns_give_features_and_window():
    """Serving reads what a champion needs from its feature_names alone."""
    cols = feature_columns(("cpu", "node"), 3)
    assert split_feature_columns(cols) == (feature_columns(("cpu", "node")), 3)
    assert split_feature_columns(("idle", "user")) == (("idle", "user"), 1)
    model = LoadedModel(quick_rich_detector(window=2), version=1)
    assert (
        model.window == 2 and model.needs_node_metrics and len(model.features) == 2 * len(model.base_features)
    )
    assert not LoadedModel(quick_detector(), version=1).needs_node_metrics
    for bad in (("idle", "user_lag1"), ("idle", "idle_lag2"), ("x0", "x1")):
        with pytest.raises(DidactError):
            split_feature_columns(bad)
    with pytest.raises(DidactError, match="x0"):  # columns preprocessing cannot make: not servable
        LoadedModel(Detector(ModelConfig(n_features=2, max_epochs=1)).fit(np.ones((64, 2), np.float32)), 1)


def test_serving_a_rich_windowed_champion_equals_training(rich):
    """The same input gives the same score at training and at serving.

    Training side: the nightly path's own artifacts for a simulated day with
    DIDACT_FEATURES=cpu,node and DIDACT_WINDOW=3 — the AI-ready partition and the champion
    trained on it.  Serving side: the simulated live feed replays the same day one poll per
    scrape arrival (missed, duplicated, NaN and clock-skewed scrapes and reboots included);
    the Scorer pairs the polls' CPU counters and node-level metrics, calls preprocess and
    builds the lags from its rolling buffer.  Over six hours the samples serving scores
    are exactly the partition's: the same (node, cpu, ts) keys, the same 45 input columns
    bit for bit, the champion's score_samples on the partition's rows, and the same
    cleaning counts.  (Out-of-order arrivals are left out of this day: a live feed cannot
    show a late scrape in the order training sorts it into, so there the two see different
    intervals by design.)"""
    s, day = rich["settings"], rich["day"]
    det, version = ModelRegistry(s).load_alias(CHAMPION)
    model = LoadedModel(det, version)
    assert model.base_features == feature_columns(("cpu", "node")) and model.window == 3
    assert det.config.log1p and det.config.standardize  # the frozen transform serving must apply
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(hours=6)
    wh = Warehouse(s.home_path)
    raw = wh.read(pipeline.RAW, day.isoformat(), "cpu")
    raw = raw[raw["ts"] < end]
    arrivals = np.unique(raw["ts"].astype("datetime64[ms, UTC]").array.asi8)

    now = [arrivals[0] / 1000]
    feed = SimulatedLiveFeed(s, cluster=rich["cluster"], start=now[0], clock=lambda: now[0])
    scorer = Scorer(interval_s=feed.scrape_interval_s)
    served, reports = [], []
    for t_ms in arrivals:
        now[0] = t_ms / 1000
        r = scorer.score(feed.poll(node_metrics=True), model, node_metrics=feed.node_metrics())
        if r is not None:
            reports.append(r.report)
            served.append(r.samples)
    served = pd.concat(served, ignore_index=True)

    train = wh.read(pipeline.AI_READY, day.isoformat(), "samples")
    train = train[train["ts"] < end].reset_index(drop=True)
    train["train_error"] = det.score_samples(train[list(model.features)])
    key = ["ts", "node", "cpu"]
    both = [df.assign(node=df["node"].astype(str), cpu=df["cpu"].astype(int)) for df in (train, served)]
    m = both[0].merge(both[1], on=key, how="outer", suffixes=("_train", "_serve"), indicator=True)
    assert (m["_merge"] == "both").all(), m.loc[m["_merge"] != "both", [*key, "_merge"]].head(10)
    assert len(m) > 0.9 * 6 * 60 * s.nodes * s.cpus
    for c in model.features:
        np.testing.assert_array_equal(m[f"{c}_train"].to_numpy(), m[f"{c}_serve"].to_numpy(), err_msg=c)
    np.testing.assert_allclose(m["error"], m["train_error"], rtol=1e-5, atol=1e-7)

    # … and serving counts the day's damage as training does (a duplicate scrape is simply no new poll)
    nm = wh.read(pipeline.RAW, day.isoformat(), "node_metrics")
    _, want = preprocess(raw, s.features, node_metrics=nm[nm["ts"] < end], window=3)
    got = sum(reports[1:], reports[0])
    kinds = ["nan_rows", "invalid_rows", "counter_resets", "gaps", "long_gaps", "clock_skew", "stalled",
             "missing_node_metrics", "window_incomplete", "rows_out"]  # fmt: skip
    assert {k: getattr(got, k) for k in kinds} == {k: getattr(want, k) for k in kinds}
    assert want.counter_resets and want.gaps and want.clock_skew and want.nan_rows  # the span holds damage


def test_windows_come_from_consecutive_scrapes():
    """A window-2 model: lag 1 is the series' previous interval; a series without one (the
    first interval, or after a pause) is not scored but counted; the history survives a
    model with another window and is emptied by one with other features."""
    cols = feature_columns(("cpu",), 2)
    det = Detector(ModelConfig(n_features=len(cols), max_epochs=1, batch_size=512), cols).fit(
        np.random.default_rng(0).dirichlet(np.ones(5), 2000).repeat(2, axis=1).astype(np.float32)
    )
    model = LoadedModel(det, version=2)
    busy = np.array([0.2, 0, 0, 0, 0, 0, 0.2, 0.6])  # idle, iowait, irq, nice, softirq, steal, system, user
    quiet = np.array([0.9, 0, 0, 0, 0, 0, 0.05, 0.05])
    counters = {("a", 0): np.full(8, 100.0), ("a", 1): np.full(8, 200.0)}

    def poll(t: float, split: np.ndarray, dt_s: float = 15.0) -> pd.DataFrame:
        for k, v in counters.items():
            counters[k] = v + split * dt_s
        return raw_frame(t, {k: list(v) for k, v in counters.items()})

    scorer = Scorer(interval_s=15.0)
    assert scorer.score(poll(0, quiet), model) is None
    first = scorer.score(poll(15, quiet), model)  # no previous sample yet
    assert len(first.samples) == 0 and first.report.window_incomplete == 2
    r = scorer.score(poll(30, busy), model)
    assert len(r.samples) == 2 and r.report.window_incomplete == 0
    row = r.samples.iloc[0]
    assert row["user"] == pytest.approx(0.6) and row["user_lag1"] == pytest.approx(0.05)
    assert row["idle"] == pytest.approx(0.2) and row["idle_lag1"] == pytest.approx(0.9)
    # a pause of three scrapes: a usable (gap) interval, but its previous sample is too old
    paused = scorer.score(poll(90, quiet, dt_s=60), model)
    assert paused.report.gaps == 2 and paused.report.window_incomplete == 2 and len(paused.samples) == 0
    r = scorer.score(poll(105, busy), model)
    assert len(r.samples) == 2 and r.samples["user_lag1"].iloc[0] == pytest.approx(0.05)
    frame = r.samples[["ts", "node", "cpu", "idle", "user"]]

    # a CPU-only model with no window on the same scorer, then the window-2 model again
    assert len(scorer.score(poll(120, quiet), LoadedModel(quick_detector(), 3)).samples) == 2
    r = scorer.score(poll(135, busy), model)  # the buffer still holds t=105; 120 was not recorded
    assert r.report.window_incomplete == 2
    # other features empty the buffer
    buf = WindowBuffer()
    buf.apply(frame, ("idle", "user"), 2, 15_000)
    assert len(buf) == 2
    buf.apply(frame.iloc[:0], ("idle",), 2, 15_000)
    assert len(buf) == 0


def _fault_free(s: Settings) -> SimulatedCluster:
    """The simulated cluster of ``s`` without data faults."""
    return dataclasses.replace(SimulatedCluster.from_settings(s), data_faults=DataFaultRates.none())


def test_rich_champion_in_process_and_what_it_needs(settings, caplog):
    """A CPU-only champion, then a promotion to a node-level, window-3 one: its first poll
    with node-level metrics only sets their state, the next two build each series' history
    (counted, not damage), then every node is scored and exported.  A feed with no
    node-level metrics: nothing scored, every sample counted as missing_node_metrics, one
    warning.  An injected fault kind drives the node's node-level metrics too."""
    model = LoadedModel(quick_rich_detector(), version=4)
    n = settings.nodes * settings.cpus

    # one poll per scrape (a simulated minute per poll): a poll that skipped a scrape would
    # leave the next samples without consecutive history, as it would in production
    # and no data faults: a missed scrape would take a node's samples out of the counts below
    feed = SimulatedLiveFeed(settings, cluster=_fault_free(settings), speed=60, start=LIVE_START,
                             clock=iter(range(10**6)).__next__, faults={"node0001": "io_stall"})  # fmt: skip
    service = ServingService(settings, feed, interval_s=1, review=False)
    service.watcher.current, service.watcher._next = LoadedModel(quick_detector(), version=3), math.inf
    assert service.run_once() is None and len(service.run_once().samples) == n
    assert feed.node_metrics() is None  # a CPU-only champion: the feed reads no more than it needs
    service.watcher.current = model  # (what the watcher does when the alias moves)
    scores = [service.run_once() for _ in range(5)]
    assert scores[0] is None
    assert [len(sc.samples) for sc in scores[1:]] == [0, 0, n, n]
    assert [sc.report.window_incomplete for sc in scores[1:]] == [n, n, 0, 0]
    assert scores[-1].samples[list(NODE_FEATURES)].notna().all().all()
    m = metrics_of(service.metrics.text().decode())
    assert len(m["didact_reconstruction_error"]) == settings.nodes
    assert value(m, "didact_cleaning_events_total", kind="window_incomplete") == 2 * n
    assert value(m, "didact_cleaning_events_total", kind="missing_node_metrics") == 0
    assert value(m, "didact_samples_scored_total") == 3 * n
    io_stall = scores[-1].samples[scores[-1].samples["node"].astype(str) == "node0001"]
    # io_stall keeps the disk busy: rate 1.0 × lognormal(σ 0.2) noise, capped at 1 (idle: 0.002);
    # 0.4 is 4.5 σ below, while 0.7 (1.7 σ) failed one CI run in twenty
    assert (
        io_stall["disk_io_time_rate"].between(0.4, 1.0001).all() and (io_stall["mem_used_bytes"] == 4e9).all()
    )
    nm = service.feed.node_metrics()
    assert list(nm.columns) == list(RAW_NODE_COLUMNS) and len(nm) == settings.nodes

    class NoNodeMetrics(SimulatedLiveFeed):
        def node_metrics(self):
            return None

    blind = ServingService(
        settings, NoNodeMetrics(cluster=_fault_free(settings), speed=60, start=LIVE_START,
                                clock=iter(range(0, 10**6, 2)).__next__),
        interval_s=1, review=False,
    )  # fmt: skip
    blind.watcher.current, blind.watcher._next = model, math.inf
    with caplog.at_level("WARNING", logger="didact_core.serve"):
        scores = [blind.run_once() for _ in range(4)]
    assert all(len(sc.samples) == 0 and sc.report.missing_node_metrics == n for sc in scores[1:])
    assert caplog.text.count("gives no node-level metrics") == 1
    m = metrics_of(blind.metrics.text().decode())
    assert value(m, "didact_cleaning_events_total", kind="missing_node_metrics") == 3 * n
    assert value(m, "didact_feed_up") == 1


def test_localhost_feed_reads_node_metrics(tmp_path):
    """/proc as node exporter reads it: whole disks, non-virtual network devices, bytes and seconds."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "stat").write_text("cpu  1 0 1 10 0 0 0 0\ncpu0 1 0 1 10 0 0 0 0\nintr 12345 7 8 9\nctxt 999\n")
    (proc / "vmstat").write_text("nr_free_pages 5\npgfault 4242\npgmajfault 3\n")
    (proc / "diskstats").write_text(
        "   8       0 sda 100 0 2000 50 200 0 4000 70 0 1500 120 0 0 0 0\n"
        "   8       1 sda1 90 0 1800 40 190 0 3900 60 0 1400 100 0 0 0 0\n"
        "   7       0 loop0 5 0 10 0 0 0 0 0 0 3 3 0 0 0 0\n"
        " 259       0 nvme0n1 10 0 100 1 20 0 200 2 0 500 3 0 0 0 0\n"
        " 259       1 nvme0n1p1 10 0 100 1 20 0 200 2 0 500 3 0 0 0 0\n"
    )
    (proc / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
        "carrier compressed\n"
        "    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n"
        "  eth0: 5000 50 0 0 0 0 0 0 7000 70 0 0 0 0 0 0\n"
        "veth12ab: 300 3 0 0 0 0 0 0 400 4 0 0 0 0 0 0\n"
        "docker0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"
        "  ens3: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n"
    )
    (proc / "meminfo").write_text(
        "MemTotal:       16000000 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n"
    )
    (proc / "loadavg").write_text("0.52 0.40 0.30 1/123 4567\n")
    feed = LocalHostFeed(node="here", proc_stat=proc / "stat", proc=proc, clock=lambda: 1_800_000_000.0)
    raw = feed.poll()
    assert feed.node_metrics() is None  # only read when asked for
    raw = feed.poll(node_metrics=True)
    nm = feed.node_metrics()
    assert list(nm.columns) == list(RAW_NODE_COLUMNS) and len(nm) == 1
    assert nm["ts"].iloc[0] == raw["ts"].iloc[0] and nm["node"].astype(str).iloc[0] == "here"
    got = nm.iloc[0]
    assert got["ctxt"] == 999 and got["intr"] == 12345 and got["pgfault"] == 4242
    assert got["disk_read_bytes"] == (2000 + 100) * 512 and got["disk_written_bytes"] == (4000 + 200) * 512
    assert got["disk_io_time"] == pytest.approx((1500 + 500) / 1000)
    assert got["net_rx_bytes"] == 5100 and got["net_tx_bytes"] == 7200
    assert got["mem_used_bytes"] == 4_000_000 * 1024 and got["load1"] == pytest.approx(0.52)
    (proc / "vmstat").unlink()  # a file that cannot be read: its columns NaN, the rest still read
    feed.poll(node_metrics=True)
    assert math.isnan(feed.node_metrics()["pgfault"].iloc[0]) and feed.node_metrics()["ctxt"].iloc[0] == 999

    real = LocalHostFeed()
    real.poll(node_metrics=True)  # this machine
    vals = real.node_metrics()[list(NODE_VALUES)].to_numpy(dtype=float)
    assert np.isfinite(vals).all() and (vals >= 0).all() and real.node_metrics()["ctxt"].iloc[0] > 0


@pytest.mark.slow
def test_serve_a_rich_windowed_champion(rich):
    """`python -m didact_core.serve.cli` with a champion trained on cpu,node features and a
    window of 3: every node is scored once its series have two intervals of history."""
    s = rich["settings"]
    port = free_port()
    # two polls per simulated scrape (60 s scrapes, 30 simulated seconds a poll): every scrape is seen
    argv = f"-m didact_core.serve.cli --port {port} --interval 1 --reload 60 --speed 30 --no-review".split()
    argv += ["--start", LIVE_START_ARG]  # a fixed stretch of the simulated cluster, the same every run
    log_path = Path(s.home) / "serve-rich.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=serve_env(s), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    n = s.nodes * s.cpus
    try:
        m = wait_until(
            "the rich champion scores every node",
            lambda: (
                proc.poll() is None
                and (m := scrape(url))
                and m.get("didact_samples_scored_total", [({}, 0)])[0][1] >= 2 * n
                and m
            ),
            timeout=90,
        )
        nodes = {f"node{i:04d}" for i in range(s.nodes)}
        errors = {lab["node"]: v for lab, v in m["didact_reconstruction_error"]}
        assert set(errors) == nodes and all(math.isfinite(v) and v >= 0 for v in errors.values())
        assert {(lab["node"], lab["dim"]) for lab, _ in m["didact_latent"]} == {
            (nd, d) for nd in nodes for d in "01"
        }
        assert all(math.isfinite(v) for _, v in m["didact_latent"])
        assert {lab["node"] for lab, v in m["didact_ood"] if v in (0.0, 1.0)} == nodes
        assert value(m, "didact_champion_version") == 1
        assert value(m, "didact_model_threshold") == pytest.approx(ModelRegistry(s).load(1).threshold_)
        # the first two scored intervals only built each series' history
        assert value(m, "didact_cleaning_events_total", kind="window_incomplete") >= 2 * n
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert "node-level, window 3" in text and "Traceback" not in text, text[-3000:]
