"""Dagster on PostgreSQL: the instance that deploy/dagster/dagster.yaml describes.

A throwaway PostgreSQL 15 cluster (:mod:`tests.postgres_cluster`); a Dagster instance
loaded from the deploy file materialises a one-line asset, and the run is in Postgres.
A server that is down, or one that never answers, is an error within a bounded time;
opened through didact (``ensure_instance``) a down server is a DidactError that names the
URL (password hidden) and the fix.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import dagster as dg
import pytest

from didact_assets.instance import ensure_instance, postgres_url
from didact_core.config import Settings
from didact_core.errors import DidactError
from tests.postgres_cluster import INSTALL_HINT, pg_bin, start_postgres

pytestmark = pytest.mark.slow

#: SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; dagster-postgres ships psycopg2
PG = "postgresql+psycopg2"
DAGSTER_YAML = Path(__file__).resolve().parent.parent / "deploy" / "dagster" / "dagster.yaml"


@pytest.fixture(scope="module")
def postgres():
    if pg_bin() is None:
        pytest.skip(f"PostgreSQL not installed: {INSTALL_HINT}")
    with start_postgres(databases=("dagster",)) as pg:
        yield pg


def instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
    return home


@dg.asset
def tiny() -> int:
    return 1


def test_a_run_on_the_postgres_instance_is_stored_in_postgres(postgres, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_URL", postgres.url("dagster", PG, connect_timeout="10"))
    with dg.DagsterInstance.from_config(str(instance_home(tmp_path))) as instance:
        kinds = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                            instance.schedule_storage)}  # fmt: skip
        assert kinds == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 180

        result = dg.materialize([tiny], instance=instance)
        assert result.success

    rows = postgres.sql("SELECT run_id, status FROM runs", db="dagster")
    assert [result.run_id, "SUCCESS"] in rows
    events = postgres.sql(
        "SELECT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
        f"AND run_id = '{result.run_id}'", db="dagster",
    )  # fmt: skip
    assert events == [['["tiny"]']]


def test_postgres_down_is_an_error_within_bounded_time(postgres, tmp_path, monkeypatch):
    home = instance_home(tmp_path)
    monkeypatch.setenv("DAGSTER_PG_URL", postgres.url("dagster", PG, connect_timeout="3"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        postgres.stop()
        try:
            started = time.monotonic()
            with pytest.raises(Exception, match=r"(?i)connection|connect") as e:
                dg.materialize([tiny], instance=instance)
            assert time.monotonic() - started < 60, e.value
        finally:
            postgres.start()
        assert dg.materialize([tiny], instance=instance).success  # back once the server is


def test_a_dead_or_silent_server_fails_the_instance_in_bounded_time(tmp_path, monkeypatch):
    home = instance_home(tmp_path)
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setenv("DAGSTER_PG_URL", f"{PG}://postgres@127.0.0.1:{port}/dagster?connect_timeout=3")
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)connection refused|too many retries|could not connect"):
            dg.DagsterInstance.from_config(str(home)).get_runs()
        assert time.monotonic() - started < 30

    with socket.socket() as silent:  # accepts connections, never answers: connect_timeout ends the wait
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        monkeypatch.setenv("DAGSTER_PG_URL", f"{PG}://postgres@127.0.0.1:{port}/dagster?connect_timeout=2")
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timeout|too many retries|could not connect"):
            dg.DagsterInstance.from_config(str(home)).get_runs()
        assert time.monotonic() - started < 60


def test_postgres_down_is_a_didact_error_naming_the_url_and_the_fix(postgres, tmp_path, monkeypatch):
    """didact's own entry (ensure_instance, as `didact ui` / `didact demo` open it): one bounded
    try, then a DidactError with the URL (password hidden) and the fix, not "too many retries"."""
    home = instance_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    url = f"{PG}://postgres:s3cret@127.0.0.1:{postgres.port}/dagster"
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    settings = Settings(home=str(tmp_path / "didact"))
    ensure_instance(settings).dispose()  # up: the instance opens
    assert postgres_url(home / "dagster.yaml") == url
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(DidactError) as e:
            ensure_instance(settings)
        assert time.monotonic() - started < 30
    finally:
        postgres.start()
    msg = str(e.value)
    assert f"postgres:***@127.0.0.1:{postgres.port}/dagster" in msg and "s3cret" not in msg
    assert "cannot be reached" in msg and "pg_ctl start" in msg and "too many retries" not in msg

    monkeypatch.setenv("DAGSTER_PG_URL", url.replace("+psycopg2", ""))  # psycopg 3 is not installed
    with pytest.raises(DidactError, match=r"postgresql\+psycopg2://"):
        ensure_instance(settings)


def test_the_sqlite_instance_needs_no_postgres(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    ensure_instance(Settings(home=str(tmp_path / "didact"))).dispose()  # didact's own dagster.yaml: SQLite
    assert postgres_url(tmp_path / "dagster" / "dagster.yaml") is None
