"""Shared fixtures: a temporary didact home with a tiny simulated cluster."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from didact_core.config import Settings

from .days import LAST_DAY, fixed_days

REPO = Path(__file__).resolve().parent.parent

# Tests never touch the user's ./.didact: everything below gets its own home.
os.environ.setdefault("DIDACT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "didact-test-default-home"))


def yesterday() -> dt.date:
    """The newest fixed data day (:data:`tests.days.LAST_DAY`), not the real yesterday: no
    test may depend on the date the suite runs (issue 15)."""
    return LAST_DAY


def last_days(n: int) -> list[str]:
    """``n`` fixed consecutive days ending on :func:`yesterday`, oldest first (all inside
    the partition range: after DIDACT_START_DATE's default, before any run of the suite)."""
    return fixed_days(n)


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "didact-home"
    h.mkdir()
    return h


@pytest.fixture
def settings(home) -> Settings:
    """A tiny cluster: 4 nodes × 2 CPU threads, 60 s scrapes (1,440 a day), one worker."""
    return Settings(home=str(home), nodes=4, cpus=2, interval_s=60.0, seed=7, workers=1)


@pytest.fixture
def didact_env(settings, monkeypatch) -> dict:
    """The same settings as env vars, for subprocesses (dagster CLI, webserver)."""
    env = {
        "DIDACT_HOME": settings.home,
        "DIDACT_NODES": str(settings.nodes),
        "DIDACT_CPUS": str(settings.cpus),
        "DIDACT_INTERVAL_S": str(settings.interval_s),
        "DIDACT_SEED": str(settings.seed),
        "DIDACT_WORKERS": "1",
        # the daemon in the webserver tests must not start runs of its own
        "DIDACT_SCHEDULE_ENABLED": "0",
        # small, quick training in the processes the daemon launches
        "DIDACT_MAX_TRAIN_SAMPLES": "2000",
        "DIDACT_MODEL_MAX_EPOCHS": "2",
        "DIDACT_MODEL_BATCH_SIZE": "512",
        "DIDACT_SENSORS_ENABLED": "0",
        "DAGSTER_HOME": str(Path(settings.home) / "dagster"),
    }
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **env, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (its models are small)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
