"""The Dagster instance under DIDACT_HOME (runs, materialisations, schedules, sensors),
and what keeps it clean of runs whose process died.

A run killed by SIGKILL (OOM killer, a reboot) never writes its end: Dagster shows it
STARTED for ever and its concurrency slot (pool ``didact_model``) stays taken, so every
later training waits "blocked by limit for pool didact_model".  The run monitoring of the
daemon cannot see it (the default run launcher has no worker health check), so didact's
executor (:data:`didact_executor`, every job's) does the check itself before any step
claims a slot: each run records its orchestrating process (host, pid, start time) in tags,
and a run whose process on this host is gone is marked failed and its slots are freed
(:func:`end_dead_runs`).  Runs of another host are left to that host (and to the
daemon's run monitoring).

An instance on PostgreSQL (``deploy/dagster/dagster.yaml``) is tried once before Dagster
opens it (:func:`check_postgres`): a server that is down, refuses or never answers is a
:class:`DidactError` naming the URL (password hidden) and the fix within about
:data:`PG_CONNECT_TIMEOUT_S`, not dagster-postgres' "too many retries" after its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml
from dagster_postgres.utils import DagsterPostgresException, pg_url_from_config

from didact_core.config import Settings, ensure_home
from didact_core.errors import DidactError
from didact_core.learn.stale_runs import process_gone, process_identity

DAGSTER_YAML = """\
# written by didact; edit freely (it is not overwritten)
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    # champion_model runs in pool "didact_model": one training at a time, so the
    # champion a day starts from is never moved under it by another run
    default_limit: 1
# the daemon (didact ui) fails runs stuck STARTING/CANCELING and frees the slots of ended
# runs; a run whose process was killed is failed by the next run on this host (didact's
# executor checks the recorded pid)
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  free_slots_after_run_end_seconds: 60
  poll_interval_seconds: 30
"""

#: run tags naming the process that orchestrates a run
HOST_TAG, PID_TAG, START_TAG = "didact/host", "didact/pid", "didact/process_start"
_IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def ensure_instance(settings: Settings) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at the didact home (unless set), create it, migrate its storage."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home)))
    ensure_home(home)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    url = postgres_url(cfg)
    if url is None:
        return dg.DagsterInstance.get()
    check_postgres(url)  # one bounded try: a down server is named now, not after dagster-postgres' retries
    try:
        return dg.DagsterInstance.get()
    except (DagsterPostgresException, sa.exc.SQLAlchemyError) as e:
        raise _postgres_error(url, e) from None


#: seconds one connection attempt to Dagster's PostgreSQL may take (when the URL sets none)
PG_CONNECT_TIMEOUT_S = 10


def _resolved(value):
    """A dagster.yaml value with ``{env: NAME}`` replaced by the variable's value."""
    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            return dg.EnvVar(value["env"]).get_value("")
        return {k: _resolved(v) for k, v in value.items()}
    return value


def postgres_url(cfg: Path) -> str | None:
    """The PostgreSQL URL of the instance that ``cfg`` (a dagster.yaml) describes; None for
    another storage (the SQLite default)."""
    doc = yaml.safe_load(cfg.read_text()) or {}
    for key in ("storage", "run_storage", "event_log_storage", "schedule_storage"):
        section = doc.get(key)
        if not isinstance(section, Mapping):
            continue
        pg = section.get("postgres")
        if pg is None and "Postgres" in str(section.get("class", "")):  # the long form: module, class, config
            pg = section.get("config")
        if isinstance(pg, Mapping):
            url = pg_url_from_config(_resolved(dict(pg)))
            if not url:
                raise DidactError(f"Dagster instance {cfg}", "uses PostgreSQL but its URL is empty",
                                  "set DAGSTER_PG_URL (deploy/dagster/README.md)")  # fmt: skip
            return url
    return None


def shown_url(url: str) -> str:
    """``url`` with its password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def _postgres_error(url: str, e: BaseException) -> DidactError:
    cause = e.__cause__ or e
    detail = " ".join(str(getattr(cause, "orig", None) or cause).split())[:300]
    return DidactError(
        f"Dagster's PostgreSQL at {shown_url(url)}",
        f"cannot be reached: {detail}",
        "start the server (systemctl start postgresql, or pg_ctl start), check host, port, user and "
        "password in DAGSTER_PG_URL (deploy/dagster/README.md), or move dagster.yaml away to use the "
        "local SQLite instance",
    )


def check_postgres(url: str, timeout_s: float = PG_CONNECT_TIMEOUT_S) -> None:
    """Connect once to Dagster's PostgreSQL: a :class:`DidactError` naming the URL (no
    password) and the fix within about ``timeout_s`` when it is down, refuses or is silent."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        raise DidactError(f"DAGSTER_PG_URL {shown_url(url)}", f"is not a database URL ({e})",
                          "use postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB?connect_timeout=10") from None  # fmt: skip
    args = {} if "connect_timeout" in parsed.query else {"connect_timeout": max(1, int(timeout_s))}
    try:
        engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=args)
    except ModuleNotFoundError as e:  # postgresql:// means psycopg 3 to SQLAlchemy 2.1
        raise DidactError(f"DAGSTER_PG_URL {shown_url(url)}", f"needs a driver that is not installed ({e})",
                          "write the scheme as postgresql+psycopg2:// (dagster-postgres brings psycopg2)") from None  # fmt: skip
    try:
        with engine.connect():
            pass
    except (sa.exc.SQLAlchemyError, OSError) as e:
        raise _postgres_error(url, e) from None
    finally:
        engine.dispose()


def mark_run_process(instance: dg.DagsterInstance, run_id: str) -> None:
    """Record this process as the one orchestrating ``run_id``."""
    host, pid, start = process_identity()
    instance.add_run_tags(run_id, {HOST_TAG: host, PID_TAG: str(pid), START_TAG: start})


def end_dead_runs(instance: dg.DagsterInstance, current_run_id: str | None = None) -> dict[str, str]:
    """Mark failed the in-progress runs whose process on this host is gone, and free the
    concurrency slots that ended runs still hold.  Returns {run id: what was done}."""
    done = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_IN_PROGRESS)):
        tags = run.tags
        if run.run_id == current_run_id or not process_gone(tags.get(HOST_TAG, ""), tags.get(PID_TAG, ""),
                                                            tags.get(START_TAG, "")):  # fmt: skip
            continue
        why = (f"its process (pid {tags[PID_TAG]} on {tags[HOST_TAG]}) ended without ending the run "
               f"(killed, or the host rebooted); found by run {current_run_id or '-'}")  # fmt: skip
        instance.report_run_failed(run, message=f"didact: run {run.run_id} marked failed: {why}")
        done[run.run_id] = f"marked failed: {why}"
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids() - {current_run_id}:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                freed = storage.free_concurrency_slots_for_run(run_id)
                if freed:
                    done[run_id] = f"{done.get(run_id, 'ended')}; freed its concurrency slot(s)"
    return done


class _DeadRunsFirst(dg.Executor):
    """The standard executor, after :func:`end_dead_runs` (see the module doc)."""

    def __init__(self, inner: dg.Executor):
        self._inner = inner

    def execute(self, plan_context, execution_plan):
        instance = plan_context.instance
        if not instance.is_ephemeral:
            mark_run_process(instance, plan_context.run_id)
            for run_id, what in end_dead_runs(instance, plan_context.run_id).items():
                plan_context.log.warning(f"stale run {run_id}: {what}")
        yield from self._inner.execute(plan_context, execution_plan)

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config


_BASE = dg.multi_or_in_process_executor


def with_forkserver(config: Mapping[str, object]) -> dict:
    """The executor config, with the multiprocess mode starting each step from a forkserver
    that imported the job's module once (torch, MLflow, DuckDB, pandas: ~4 s a process on
    2 cores), not from a fresh interpreter ("spawn", Dagster's default), unless the run
    config chose a ``start_method`` itself."""
    config = dict(config)
    multi = config.get("multiprocess")
    if isinstance(multi, Mapping) and not multi.get("start_method"):
        config["multiprocess"] = {**multi, "start_method": {"forkserver": {}}}
    return config


def _create(init_context) -> dg.Executor:
    init_context = init_context._replace(executor_config=with_forkserver(init_context.executor_config))
    return _DeadRunsFirst(_BASE.executor_creation_fn(init_context))


#: every didact job's executor: Dagster's default (multiprocess, or in_process by config),
#: steps forked from a preloaded forkserver, after failing the runs a killed process left
#: STARTED and freeing their slots
didact_executor = dg.ExecutorDefinition(
    name="didact",
    config_schema=_BASE.config_schema,
    requirements=_BASE.get_requirements,
    executor_creation_fn=_create,
    description="Dagster's multiprocess/in-process executor, steps forked from a forkserver that preloaded "
    "the job's module; first fails runs whose process died and frees their concurrency slots.",
)
