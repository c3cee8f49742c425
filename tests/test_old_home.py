"""A home written by didact before the house moved (commit 88aa664) still reads back.

The fixture ``fixtures/home-88aa664.tar.gz`` is a whole DIDACT_HOME made by that commit:
2 simulated nodes × 2 threads at 120 s, days 2026-01-02 and 2026-01-03 through raw →
labels → AI-ready → champion (v1, v2) → evaluation.  It was written at
``/tmp/didact-home-88aa664`` and records absolute paths there (catalog and MLflow); each
test unpacks it into its own temporary folder, so this also checks that a home restored
elsewhere works (the catalog maps old paths by their part under ``data/``; MLflow's
artifact locations are rewritten to the new home).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from didact_assets.cli import main as didact_cli
from didact_core.config import Settings
from didact_core.data.catalog_rebuild import rebuild_catalog
from didact_core.data.warehouse import Warehouse
from didact_core.learn.registry import CHAMPION, ModelRegistry

from .days import LIVE_START_ARG
from .services import free_port, wait_http_ok

FIXTURE = Path(__file__).parent / "fixtures" / "home-88aa664.tar.gz"
WRITTEN_AT = Path("/tmp/didact-home-88aa664")
DAYS = ["2026-01-02", "2026-01-03"]
ENV = {"DIDACT_NODES": "2", "DIDACT_CPUS": "2", "DIDACT_INTERVAL_S": "120",
       "DIDACT_START_DATE": "2026-01-01", "DIDACT_WORKERS": "1"}  # fmt: skip


@pytest.fixture
def where(tmp_path) -> Path:
    """The fixture unpacked into this test's own folder (function scope: MLflow keeps its
    sqlite engine per URI, so each test gets a URI of its own)."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    home = tmp_path / "restored-home"
    (tmp_path / WRITTEN_AT.name).rename(home)
    return home


@pytest.fixture
def old_home(where, monkeypatch):
    for k, v in {**ENV, "DIDACT_HOME": str(where)}.items():
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


def test_its_catalog_can_be_rebuilt_from_the_parts(old_home):
    """Versions written before manifests: rebuilt from their Parquet files, same data versions."""
    wh = Warehouse(old_home.home_path)
    before = {(v.asset, v.partition, v.version): v.data_version for v, _ in wh.stored()}
    (old_home.home_path / "warehouse.duckdb").unlink()
    rep = rebuild_catalog(old_home.home_path)
    assert rep.versions == len(before) == len(rep.without_manifest)
    after = {(v.asset, v.partition, v.version): v.data_version for v, _ in Warehouse(old_home.home_path).stored()}
    assert after == before  # the digests recomputed from the data match the old catalog's


@pytest.mark.slow
def test_didact_serve_serves_the_old_champion(old_home, where):
    assert didact_cli(["rollback", "--reason", "old home check"]) == 0
    port = free_port()
    env = {**os.environ, **ENV, "DIDACT_HOME": str(where)}
    log = where / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "didact_assets.cli", "serve", "--port", str(port),
                                 "--interval", "1", "--no-review",
                                 # 120 s scrapes: two simulated minutes a second, so each interval has new ones
                                 "--speed", "120", "--start", LIVE_START_ARG], env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
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
        assert "didact_champion_version 1.0" in body, log.read_text()[-2000:]
        assert "didact_reconstruction_error{" in body, log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_old_versions_load_as_mlflow_pyfunc_models(old_home):
    """Their stored mlflow_pyfunc.py imports the old module names (didact_core.models.detector,
    didact_core.registry); didact_core.legacy answers them with today's modules."""
    import mlflow.pyfunc

    reg = ModelRegistry(old_home)  # also rewrites the moved home's artifact locations
    code = next(Path(old_home.home_path, "mlflow", "artifacts").rglob("mlflow_pyfunc.py")).read_text()
    assert "didact_core.models.detector" in code  # really the old code
    model = mlflow.pyfunc.load_model(f"models:/{reg.name}/1")
    samples = Warehouse(old_home.home_path).read("ai_ready_metrics", DAYS[1], "samples").head(50)
    out = model.predict(samples[["idle", "iowait", "system", "user", "other"]])
    assert list(out.columns[:1]) == ["reconstruction_error"] and len(out) == 50
    assert (out["reconstruction_error"] >= 0).all() and set(out["ood"].unique()) <= {0.0, 1.0}
