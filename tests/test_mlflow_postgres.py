"""MLflow's backend store on PostgreSQL, as deploy/mlflow/README.md sets it up.

A throwaway PostgreSQL 15 (:mod:`tests.postgres_cluster`) and a real ``mlflow server
--backend-store-uri postgresql+psycopg2://…`` in front of it; didact points
``DIDACT_MLFLOW_TRACKING_URI`` at the server, trains and registers a day's model, and the
run, the version and the ``champion`` alias are rows in Postgres (nothing in a local
sqlite file), the weights come back through the server.  With the database down, didact's
registry fails within a bounded time with an error that names the tracking URI.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from didact_core.data import spine
from didact_core.errors import RegistryError
from didact_core.learn import continual
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.procs import default_signals, terminate_tree
from tests.postgres_cluster import INSTALL_HINT, pg_bin, start_postgres

from .conftest import last_days
from .services import free_port

pytestmark = pytest.mark.slow

#: SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, which is not installed
PG = "postgresql+psycopg2"


@pytest.fixture(scope="module")
def postgres():
    if pg_bin() is None:
        pytest.skip(f"PostgreSQL not installed: {INSTALL_HINT}")
    with start_postgres(databases=("mlflow",)) as pg:
        yield pg


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """The tracking server of deploy/mlflow/README.md, on the test cluster (one worker)."""
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    log = artifacts.parent / "mlflow-server.log"  # a file, not a pipe nobody reads: a full pipe stalls the server
    port = free_port()
    backend = postgres.url("mlflow", PG, connect_timeout="10")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, process_group=0, preexec_fn=default_signals,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # the first start creates the schema
        while not _healthy(f"{url}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, artifacts
    finally:
        terminate_tree(proc)


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def test_a_model_registered_through_the_server_lives_in_postgres(settings, postgres, mlflow_on_postgres):
    url, artifacts = mlflow_on_postgres
    s = settings.replace(mlflow_tracking_uri=url, max_train_samples=2000, model_max_epochs=2)
    day = last_days(1)[0]
    spine.ingest_raw(s, dt.date.fromisoformat(day))
    spine.build_ai_ready(s, dt.date.fromisoformat(day))
    out = continual.train_day(s, day)
    assert out.promoted and out.version.version == 1

    reg = ModelRegistry(s)
    assert reg.alias(CHAMPION) == 1 and reg.load(1).is_fitted  # weights back through the server
    rows = postgres.sql("SELECT name, version FROM model_versions", db="mlflow")
    assert rows == [[s.model_name, "1"]]
    aliases = dict(postgres.sql("SELECT alias, version FROM registered_model_aliases", db="mlflow"))
    assert aliases[CHAMPION] == "1"
    status = {r[0] for r in postgres.sql("SELECT status FROM runs", db="mlflow")}
    assert status == {"FINISHED"}  # no run left RUNNING
    assert not (s.mlflow_dir / "mlflow.db").exists()  # nothing went to the local sqlite store
    assert any(artifacts.rglob("weights.pt"))


def test_the_database_down_is_a_registry_error_within_a_bounded_time(settings, postgres, mlflow_on_postgres):
    url, _ = mlflow_on_postgres
    s = settings.replace(mlflow_tracking_uri=url)
    postgres.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryError) as e:
            ModelRegistry(s).alias(CHAMPION)
        took = time.monotonic() - t0
    finally:
        postgres.start()
    assert url in str(e.value) and "DIDACT_MLFLOW_TRACKING_URI" in str(e.value)
    assert took < 90, f"took {took:.0f} s"
