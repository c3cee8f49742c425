"""Dagster for real: concurrent processes on one warehouse, the webserver's GraphQL API,
and a backfill launched the way the UI launches it (webserver + daemon)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from didact_core.data.warehouse import Warehouse

from . import dagster_web as web
from .conftest import REPO, last_days
from .dagster_web import graphql, wait_backfill, wait_run
from .services import dagster_site

DAGSTER_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def test_parallel_processes_share_the_warehouse(settings, didact_env):
    """Four partitions materialised by four concurrent `dagster asset materialize`
    processes (each running its steps in further processes): all land, no lock error."""
    days = last_days(4)
    # the Dagster instance exists before the runs, as in any deployment (its sqlite
    # schema migration is not safe to race)
    dg.DagsterInstance.from_config(didact_env["DAGSTER_HOME"]).dispose()
    procs = [
        subprocess.Popen(
            [str(DAGSTER_BIN / "dagster"), "asset", "materialize", "-m", "didact_assets.definitions",
             "--select", "raw_node_metrics,job_labels,ai_ready_metrics", "--partition", day],
            cwd=REPO, env=didact_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for day in days
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "lock" not in out.lower() or "RUN_SUCCESS" in out
    wh = Warehouse(settings.home_path)
    assert wh.partitions("raw_node_metrics") == days
    assert wh.partitions("ai_ready_metrics") == days
    rows = wh.sql("select count(*) as n from ai_ready_metrics__samples")["n"][0]
    assert rows == sum(wh.require("ai_ready_metrics", d).tables["samples"] for d in days)


@pytest.fixture
def dagster_dev(didact_env, tmp_path):
    """`dagster dev` (webserver + daemon); its daemon passes over the backfills every few
    seconds (:func:`tests.services.dagster_site`)."""
    site = dagster_site(tmp_path / "site")
    with web.dagster_dev({**didact_env, "PYTHONPATH": f"{site}:{REPO}"}, tmp_path / "dagster-dev.log") as url:
        yield url


def chromium(*args: str) -> str:
    """Debian's Chromium, headless, with a budget for the UI's scripts to render."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: run scripts/install_system_deps.sh"
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=20000", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_webserver_serves_the_graph_and_runs_a_backfill(dagster_dev, settings, tmp_path):
    url = dagster_dev
    data = graphql(url, "{ assetNodes { assetKey { path } isPartitioned partitionKeys dependencyKeys { path } } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"raw_node_metrics", "job_labels", "ai_ready_metrics"} <= set(nodes)
    ai = nodes["ai_ready_metrics"]
    assert ai["isPartitioned"]
    days = last_days(2)
    # from the start date to the last whole UTC day (the real yesterday): the fixed days are among them
    assert ai["partitionKeys"][0] == settings.start_date and set(days) <= set(ai["partitionKeys"])
    assert {"/".join(d["path"]) for d in ai["dependencyKeys"]} == {"raw_node_metrics", "job_labels"}

    # launch a 2-day backfill of the data spine as the UI's "Materialize → backfill" does
    launched = graphql(
        url,
        """mutation($params: LaunchBackfillParams!) {
             launchPartitionBackfill(backfillParams: $params) {
               __typename
               ... on LaunchBackfillSuccess { backfillId }
               ... on PythonError { message }
               ... on InvalidSubsetError { message }
             } }""",
        {"params": {"partitionNames": days,
                    "assetSelection": [{"path": [k]} for k in ("raw_node_metrics", "job_labels", "ai_ready_metrics",
                                                                "ood_review", "champion_model")]}},
    )["launchPartitionBackfill"]  # fmt: skip
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    assert wait_backfill(url, launched["backfillId"]) in ("COMPLETED", "COMPLETED_SUCCESS")
    wh = Warehouse(settings.home_path)
    assert wh.partitions("ai_ready_metrics") == days

    # the model days trained in order, each from the champion the previous day left
    lin = wh.lineage("champion_model", event="register")
    assert lin["partition"].tolist() == days
    assert [json.loads(u)["parent_model_version"] for u in lin["upstream"]] == [None, 1]

    # the UI shows each materialisation with its metadata
    data = graphql(
        url,
        """{ assetOrError(assetKey: {path: ["ai_ready_metrics"]}) { ... on Asset {
              assetMaterializations(limit: 5) { partition metadataEntries { label } } } } }""",
    )
    mats = data["assetOrError"]["assetMaterializations"]
    assert sorted(m["partition"] for m in mats) == days
    assert "cleaning/duplicates" in {e["label"] for e in mats[0]["metadataEntries"]}

    # a single run launched as the launchpad does: the data-spine job for one more day
    day = last_days(3)[0]
    launched = graphql(
        url,
        """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
             __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {"p": {"selector": {"repositoryLocationName": "didact", "repositoryName": "__repository__",
                            "jobName": "data_spine"},
               "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]}}},
    )["launchRun"]  # fmt: skip
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert wait_run(url, launched["run"]["runId"]) == "SUCCESS"
    assert day in wh.partitions("ai_ready_metrics")

    # headless Chromium renders the asset graph pages; screenshots for the README
    graphql(url, "mutation { setNuxSeen }")  # no "join the community" dialog over the graph
    shots = Path(os.environ.get("DIDACT_DOCS_DIR", tmp_path))
    for group, names in (("telemetry", ["raw_node_metrics", "job_labels", "ai_ready_metrics"]),
                         ("models", ["ood_review", "champion_model", "model_evaluation"])):  # fmt: skip
        page = f"{url}/locations/didact/asset-groups/{group}"
        png = shots / f"asset-graph-{group}.png"
        dom = chromium("--dump-dom", f"--screenshot={png}", "--window-size=1600,900", page)  # one start, both
        for name in names:
            assert name in dom, f"{name} not rendered on {page}"
        assert png.stat().st_size > 20_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
