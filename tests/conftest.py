"""Shared fixtures: a temporary didact home with a tiny simulated cluster."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from didact_core.config import Settings

from .days import LAST_DAY, fixed_days
from .slurm_cluster import INSTALL_HINT as SLURM_INSTALL_HINT
from .slurm_cluster import missing_binaries, start_slurm

REPO = Path(__file__).resolve().parent.parent
#: the pytest-xdist worker this process is ("gw0", "gw1", …; "main" without xdist)
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")

# Tests never touch the user's ./.didact: everything below gets its own home (each
# pytest-xdist worker its own: two workers never write one home).
os.environ.setdefault(
    "DIDACT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"didact-test-default-home-{WORKER}")
)


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


@pytest.fixture(scope="session")
def slurm_session(tmp_path_factory):
    """One real single-node Slurm (:mod:`tests.slurm_cluster`) for the session, started on
    first use (each pytest-xdist worker its own: ports, munge socket and state of its own)."""
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {SLURM_INSTALL_HINT}")
    with start_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def slurm_cluster(slurm_session):
    """The session's Slurm for a module; whatever job the module left is cancelled after it."""
    yield slurm_session
    slurm_session.cancel_all()


# -- the longest files first -------------------------------------------------------------------
# `make test` runs the suite on three pytest-xdist workers, a file's tests on one worker
# (--dist loadfile: a module's services start once).  The files go out in collection order,
# so a long file collected last would leave one worker running it alone at the end: the
# files start longest first, by what their tests took in the runs before (pytest's cache,
# .pytest_cache), a test never timed counting SLOW_GUESS_S if marked slow, else FAST_GUESS_S.
# A file's own tests keep their order.

SECONDS_KEY = "didact/test-seconds"
SLOW_GUESS_S, FAST_GUESS_S = 30.0, 1.0
_took: dict[str, float] = {}


def _known_seconds(config) -> dict[str, float]:
    """Seconds per test id from the runs before: a worker takes the controller's copy (every
    worker must order the files alike), a run without xdist reads the cache."""
    if hasattr(config, "workerinput"):
        return config.workerinput.get(SECONDS_KEY, {})
    cache = getattr(config, "cache", None)
    return cache.get(SECONDS_KEY, {}) if cache is not None else {}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # pytest-xdist, on the controller: what each worker is given
    node.workerinput[SECONDS_KEY] = _known_seconds(node.config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    known = _known_seconds(config)
    per_file: dict[str, float] = {}
    for item in items:
        guess = SLOW_GUESS_S if item.get_closest_marker("slow") else FAST_GUESS_S
        path = item.nodeid.split("::")[0]
        per_file[path] = per_file.get(path, 0.0) + known.get(item.nodeid, guess)
    items.sort(key=lambda item: (-per_file[item.nodeid.split("::")[0]], item.nodeid.split("::")[0]))


def pytest_runtest_logreport(report):
    _took[report.nodeid] = _took.get(report.nodeid, 0.0) + report.duration  # setup + call + teardown


def pytest_sessionfinish(session):
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _took:
        return
    cache.set(SECONDS_KEY, {**cache.get(SECONDS_KEY, {}), **{k: round(v, 2) for k, v in _took.items()}})
