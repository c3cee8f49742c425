"""didact against a real MLflow tracking server (not the default local sqlite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from didact_core.learn import continual
from didact_core.data import spine as pipeline
from didact_core.learn.registry import CHAMPION, ModelRegistry

from .conftest import last_days
from .services import free_port, wait_http_ok

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", proc, timeout=90)
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_training_against_a_tracking_server(settings, mlflow_server):
    import datetime as dt

    url, artifacts = mlflow_server
    s = settings.replace(mlflow_tracking_uri=url, max_train_samples=3000, model_max_epochs=3)
    for day in last_days(2):
        pipeline.ingest_raw(s, dt.date.fromisoformat(day))
        pipeline.build_ai_ready(s, dt.date.fromisoformat(day))
        continual.train_day(s, day)
    reg = ModelRegistry(s)
    assert reg.alias(CHAMPION) == 2
    assert reg.load(2).is_fitted
    # everything went to the server: nothing under the local home's mlflow folder
    assert not (s.mlflow_dir / "mlflow.db").exists()
    assert any(artifacts.rglob("weights.pt"))
    assert {r.info.status for r in reg.runs()} == {"FINISHED"}
