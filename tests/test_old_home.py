"""A home written by didact before the house moved (commit 88aa664) still reads back.

The fixture ``fixtures/home-88aa664.tar.gz`` is a whole DIDACT_HOME made by that commit:
2 simulated nodes × 2 threads at 120 s, days 2026-01-02 and 2026-01-03 through raw →
labels → AI-ready → champion (v1, v2) → evaluation.  Old homes record absolute paths, so
it is unpacked where it was written (``/tmp/didact-home-88aa664``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from didact_assets.cli import main as didact_cli
from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse
from didact_core.learn.registry import CHAMPION, ModelRegistry

from .services import free_port, wait_http_ok

FIXTURE = Path(__file__).parent / "fixtures" / "home-88aa664.tar.gz"
WHERE = Path("/tmp/didact-home-88aa664")
DAYS = ["2026-01-02", "2026-01-03"]
ENV = {"DIDACT_HOME": str(WHERE), "DIDACT_NODES": "2", "DIDACT_CPUS": "2", "DIDACT_INTERVAL_S": "120",
       "DIDACT_START_DATE": "2026-01-01", "DIDACT_WORKERS": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def unpacked():
    """Unpacked once for the module: MLflow keeps its sqlite engine per URI, so the file
    must not be replaced under it. The tests below run in order (status, rollback, serve)."""
    shutil.rmtree(WHERE, ignore_errors=True)
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(WHERE.parent, filter="data")
    yield WHERE
    shutil.rmtree(WHERE, ignore_errors=True)


@pytest.fixture
def old_home(unpacked, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    return Settings.from_env()


def test_status_and_lineage_read_the_old_home(old_home, capsys):
    assert didact_cli(["status"]) == 0
    out = capsys.readouterr().out
    for asset in ("raw_node_metrics", "job_labels", "ai_ready_metrics"):
        assert asset in out
    assert didact_cli(["lineage", "ai_ready_metrics", DAYS[1]]) == 0
    assert DAYS[1] in capsys.readouterr().out

    wh = Warehouse(old_home.home_path)
    for day in DAYS:
        head = wh.require("ai_ready_metrics", day)
        samples = wh.read("ai_ready_metrics", day, "samples")
        assert len(samples) == head.tables["samples"] > 0
        assert set(samples["node"].astype(str).unique()) == {"node0000", "node0001"} or samples["node"].nunique() == 2


def test_rollback_and_score_with_the_old_models(old_home, capsys):
    reg = ModelRegistry(old_home)
    assert reg.alias(CHAMPION) == 2
    assert didact_cli(["rollback", "--reason", "old home check"]) == 0
    assert "v2 → v1" in capsys.readouterr().out
    det, version = reg.load_alias(CHAMPION)
    assert version == 1
    samples = Warehouse(old_home.home_path).read("ai_ready_metrics", DAYS[1], "samples")
    scores = det.score_samples(samples)
    assert len(scores) == len(samples) and (scores >= 0).all()

    # a data partition rolls back too (the raw day has one version: roll the labels back to it)
    wh = Warehouse(old_home.home_path)
    v = wh.require("ai_ready_metrics", DAYS[0]).version
    assert didact_cli(["rollback", "--asset", "ai_ready_metrics", "--partition", DAYS[0], "--to", str(v)]) == 0


@pytest.mark.slow
def test_didact_serve_serves_the_old_champion(old_home):
    port = free_port()
    env = {**__import__("os").environ, **ENV}
    log = WHERE / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "didact_assets.cli", "serve", "--port", str(port),
                                 "--interval", "1", "--no-review"], env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/metrics", proc)
        import requests

        deadline = time.monotonic() + 60
        body = ""
        while time.monotonic() < deadline:
            body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if "didact_champion_version 1.0" in body and "didact_reconstruction_error{" in body:
                break
            time.sleep(1)
        # the test above rolled the champion back to v1
        assert "didact_champion_version 1.0" in body, log.read_text()[-2000:]
        assert "didact_reconstruction_error{" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
