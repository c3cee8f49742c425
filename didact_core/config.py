"""Settings of a didact installation: one typed object, the only reader of ``DIDACT_*`` variables.

Everything lives under one home folder (``DIDACT_HOME``, default ``./.didact``)::

    warehouse.duckdb   catalog of partition versions and the lineage table
    data/<asset>/<partition>/v<N>/<table>.parquet   immutable partition versions
    mlflow/            MLflow tracking + registry (sqlite) and artifacts
    dagster/           DAGSTER_HOME

Every field ``x`` is set by the environment variable ``DIDACT_X`` (upper case); an empty
variable counts as unset (the default).  The forms are the same for every field:

* booleans: ``1/0``, ``true/false``, ``yes/no``, ``on/off``, in any case (:func:`parse_bool`);
* lists: comma lists (``DIDACT_FEATURES=cpu,node``); ``prometheus_nodes`` and
  ``redfish_bmcs`` also take ``@/path``, a file with one entry a line (``#`` comments);
* ``prometheus_tls_verify`` / ``redfish_tls_verify``: a boolean word, or the path of an
  existing CA bundle;
* ``DIDACT_PROMETHEUS_BEARER_TOKEN_FILE`` fills ``prometheus_bearer_token`` when the token
  itself is unset.

Secrets (``prometheus_password``, ``prometheus_bearer_token``, ``redfish_password``) are
pydantic ``SecretStr``: repr, logs and errors show ``**********``.  Code that needs the
value asks for it explicitly: ``settings.prometheus_password.get_secret_value()``.

:meth:`Settings.from_env` reports every bad variable at once in one :class:`SettingsError`
(a :class:`DidactError`), each line naming the variable, its value and the expected form.
:meth:`Settings.from_env_lenient` is for definition time (a Dagster code location must load
whatever the environment holds): bad variables fall back to their defaults with a warning,
and the strict read in the run reports them.

``Settings(...)`` itself reads no environment: it is the defaults plus what it is given
(types are checked; :meth:`Settings.validate` checks ranges and choices).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from didact_core.config_forms import (  # noqa: F401 (parse_bool is part of the face)
    Bool,
    CommaList,
    IntList,
    ListOrFile,
    PathStr,
    TlsVerify,
    _bmcs,
    parse_bool,
)
from didact_core.errors import DidactError

log = logging.getLogger(__name__)

SOURCES = ("simulator", "prometheus")
#: what `didact serve` scores live (didact_core.ingest.live.make_feed)
LIVE_FEEDS = ("simulator", "prometheus", "localhost")
#: where a partition's node blocks run (didact_core.engine.EXECUTORS)
EXECUTORS = ("local", "slurm")
LIVE_JOBS = ("auto", "slurm", "none")
#: how the Prometheus source reads a day (``auto`` tries remote read, then the query API)
PROMETHEUS_APIS = ("auto", "remote_read", "query")
#: the fields that hold secrets (SecretStr; never shown, never in DidactResource)
SECRET_FIELDS = ("prometheus_password", "prometheus_bearer_token", "redfish_password")
ENV_PREFIX = "DIDACT_"
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
#: Slurm's time forms (didact_core.engine.duration_s reads them); empty = the partition's limit
_SLURM_TIME = re.compile(r"^((\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE|)$", re.IGNORECASE)



#: the expected form of a field when its type alone does not say it
_FORMS = {
    "features": "a comma list of feature names or groups, like cpu,node",
    "model_hidden": "a comma list of layer widths like 144,128",
    "prometheus_nodes": "a comma list of node names, or @/path to a file with one node a line",
    "redfish_bmcs": "node=url entries like node01=https://node01-bmc (comma list, or @/path, one a line)",
    "prometheus_tls_verify": "1/0, true/false, yes/no, on/off, or the path of a CA bundle",
    "redfish_tls_verify": "1/0, true/false, yes/no, on/off, or the path of a CA bundle",
}
#: the least value of each number setting (None: unset, the source's default)
_AT_LEAST = {
    **dict.fromkeys(("nodes", "cpus", "window", "max_train_samples", "drift_window_minutes"), 1),
    **dict.fromkeys(("prometheus_concurrency", "prometheus_max_samples_per_query", "slurm_cpus_per_task"), 1),
    **dict.fromkeys(("prometheus_retries", "drift_min_samples", "drift_cooldown_hours", "drift_threshold"), 0),
    **dict.fromkeys(("replay_fraction", "promotion_tolerance", "slurm_gpus", "slurm_max_parallel"), 0),
    **dict.fromkeys(("sim_fs_stalls_per_day", "sim_rack_events_per_day", "sim_sched_storms_per_day"), 0),
    "sim_nodes_per_rack": 1,
}
_POSITIVE = ("interval_s", "redfish_timeout_s", "prometheus_timeout_s", "slurm_wait_timeout_s",
             "slurm_command_timeout_s")  # fmt: skip
_PROBLEMS = {"model_hidden": "is not a comma list of positive layer widths"}
_TYPE_PROBLEMS = {
    **dict.fromkeys(("int_parsing", "int_from_float", "int_type"), "is not a whole number"),
    **dict.fromkeys(("float_parsing", "float_type"), "is not a number"),
    "finite_number": "is not a finite number", "string_type": "is not text",
    "bool_parsing": "is not a boolean", "extra_forbidden": "is not a setting",
}  # fmt: skip


# -- errors ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Issue:
    """One bad setting: ``what`` (name=value), the problem, and the fix naming its variable."""

    field: str
    what: str
    problem: str
    fix: str

    @property
    def var(self) -> str:
        return ENV_PREFIX + self.field.upper()

    def __str__(self) -> str:
        return f"{self.what}: {self.problem} — {self.fix}"


class SettingsError(DidactError):
    """Every bad setting at once (``issues``), each naming its ``DIDACT_*`` variable."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        if len(self.issues) == 1:
            i = self.issues[0]
            super().__init__(i.what, i.problem, i.fix)
        else:
            lines = "".join(f"\n  - {i}" for i in self.issues)
            super().__init__("didact settings", f"{len(self.issues)} values are invalid:{lines}")


def _show(field: str, value: Any) -> str:
    if field in SECRET_FIELDS:
        return "**********" if value else ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _fix(field: str, expected: str) -> str:
    info = Settings.model_fields.get(field)
    if info is None:
        return "the settings are the fields of didact_core.config.Settings"
    if field == "model_hidden":
        default = "the default size"
    elif info.default is None:
        default = "the source's own default"
    else:
        default = f"the default ({_show(field, info.default) or 'empty'})"
    return f"set {ENV_PREFIX}{field.upper()} to {expected}, or unset it for {default}"


def _expected(field: str) -> str:
    if field in _FORMS:
        return _FORMS[field]
    info = Settings.model_fields.get(field)
    if info is None:
        return ""
    types = set(get_args(info.annotation)) or {info.annotation}
    kind = "a value"
    for typ, text in ((float, "a number"), (int, "a whole number"), (bool, "1/0, true/false, yes/no or on/off")):
        if typ in types:
            kind = text
    return kind


def _issues_from(err: ValidationError, data: Mapping[str, Any]) -> list[Issue]:
    out: dict[str, Issue] = {}
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "settings"
        if field in out:
            continue
        if e["type"] == "value_error":
            problem = str(e["ctx"]["error"])
        else:
            problem = _TYPE_PROBLEMS.get(e["type"], e["msg"])
        problem = _PROBLEMS.get(field, problem)
        out[field] = Issue(
            field, f"{field}={_show(field, data.get(field))}", problem, _fix(field, _expected(field))
        )
    return list(out.values())


# -- the settings --------------------------------------------------------------------------


def _doc(default: Any, description: str) -> Any:
    """A field default with its description (shown in the Dagster launchpad)."""
    return Field(default, description=description)


class Settings(BaseModel):
    """One didact installation's configuration (env var ``DIDACT_<NAME>`` sets each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    home: PathStr = ".didact"
    source: str = "simulator"
    start_date: str = _doc("2026-01-01", "first daily partition (UTC), YYYY-MM-DD")
    # simulated cluster
    nodes: int = 16
    cpus: int = 8
    interval_s: float = 15.0
    seed: int = 0
    fault_rate: float = _doc(0.05, "labelled behavioural faults (CPU hog, IO stall, ...) per node-hour")
    # racks, and the simulated cluster-level truth (clusters of two racks or more; ingest.sim_cluster)
    topology: str = _doc("", "racks: a node,rack CSV path, pattern:<regex with (?P<rack>...)> or "
                             "per_rack:<N>; empty = the simulator's racks (one rack for other sources)")
    sim_nodes_per_rack: int = _doc(8, "simulated nodes per rack (rack-00, rack-01, ...)")
    sim_multinode_share: float = _doc(0.25, "share of simulated node time in multi-node MPI jobs")
    sim_fs_stalls_per_day: float = _doc(2.0, "simulated shared-filesystem stalls per day (iowait rises)")
    sim_rack_events_per_day: float = _doc(2.0, "simulated rack network/power events per day")
    sim_sched_storms_per_day: float = _doc(1.0, "simulated scheduler storms per day (system time bursts)")
    sim_straggler_rate: float = _doc(0.2, "share of simulated multi-node jobs (3+ nodes) with one straggler")
    live_jobs: str = _doc("auto", "running jobs for didact serve's job-peer scores: auto (the simulated "
                                  "feed's, or the feed's own), slurm (squeue, once a minute) or none")
    # preprocessing
    features: CommaList = ("idle", "iowait", "system", "user", "other")
    window: int = _doc(1, "temporal context: the model sees each feature at this many consecutive timesteps")
    max_unusable_fraction: float = _doc(0.05, "a partition fails its quality check above this unusable share")
    retention_versions: int = _doc(0, "partition versions kept per (asset, partition); 0 keeps all")
    workers: int = _doc(0, "worker processes for a partition's node blocks; 0 = one per CPU core")
    labels_csv: PathStr = _doc("", "job labels from a CSV (node,start,end,label) or scheduler export")
    labels_allow_overlap: Bool = _doc(False, "labels may overlap on a node (the latest-starting one wins)")
    # Prometheus source (None: the source's own default)
    prometheus_url: str = "http://127.0.0.1:9090"
    prometheus_node_label: str = _doc("instance", "the label that names nodes")
    prometheus_username: str = _doc("", "basic auth user (password: DIDACT_PROMETHEUS_PASSWORD)")
    prometheus_password: SecretStr = SecretStr("")
    prometheus_bearer_token: SecretStr = SecretStr("")
    prometheus_tls_verify: TlsVerify = _doc(True, "verify TLS: a boolean or a CA bundle path")
    prometheus_nodes: ListOrFile = _doc((), "expected nodes (comma list or @/path); empty = discover")
    prometheus_job: str = _doc("", "only series of this scrape job")
    prometheus_strip_port: Bool = _doc(True, "node names without their :port")
    prometheus_api: str = _doc("auto", "auto, remote_read or query")
    prometheus_timeout_s: float | None = None
    prometheus_retries: int | None = None
    prometheus_concurrency: int | None = None
    prometheus_max_samples_per_query: int | None = None
    # Redfish power readers (didact power record)
    redfish_bmcs: Annotated[tuple[str, ...], BeforeValidator(_bmcs)] = _doc((), "node=url of each BMC")
    redfish_username: str = ""
    redfish_password: SecretStr = SecretStr("")
    redfish_tls_verify: TlsVerify = _doc(True, "verify TLS: a boolean or a CA bundle path")
    redfish_timeout_s: float = 5.0
    # MLflow: empty means sqlite + local artifacts under home
    mlflow_tracking_uri: str = ""
    model_name: str = "didact-autoencoder"
    # continual training
    model_family: str = "autoencoder"
    model_lr: float = 3e-3
    model_max_epochs: int = 20
    model_batch_size: int = 4096
    #: the decoder mirrors the encoder; empty = about 40K parameters whatever the number of
    #: inputs (144,128 for the 5 CPU fractions)
    model_hidden: IntList = _doc((), "hidden widths of the encoder; empty = sized to about 40K parameters")
    model_warm_start: Bool = _doc(True, "continue from the champion's weights (False: from scratch)")
    max_train_samples: int = _doc(200_000, "today's samples used for training at most (a seeded sample)")
    replay_fraction: float = _doc(0.3, "replayed samples of earlier days, as a fraction of today's")
    replay_days: int = 7
    holdout_fraction: float = _doc(0.2, "fraction of each day held out for evaluation and the gate")
    promotion_tolerance: float = _doc(0.05, "how much worse (relative error) a challenger may be and pass")
    openset_eval: Bool = _doc(False, "also train one model per flavour left out (open-set AUC; slow)")
    eval_recordings: PathStr = _doc("", "folders of didact testbed export slices, os.pathsep-separated "
                                        "(a:b), that model_evaluation judges within and across; empty = none")
    # Dagster schedule and sensors
    nightly_at: str = _doc("02:30", "UTC time of day (HH:MM) of the nightly run")
    schedule_enabled: Bool = _doc(True, "the nightly schedule starts running")
    sensors_enabled: Bool = _doc(True, "the retrain sensors start running")
    drift_threshold: float = _doc(0.05, "live OOD rate above which the drift sensor retrains")
    drift_window_minutes: int = _doc(60, "the OOD rate is taken over this many minutes")
    drift_min_samples: int = _doc(1000, "fewer scored samples in the window is not drift")
    drift_cooldown_hours: float = _doc(6.0, "at most one drift retrain per this many hours")
    # where a partition's node blocks run: local processes, or one Slurm job array per partition
    executor: str = _doc("local", "local or slurm (one job array per partition, parts in a shared home)")
    slurm_conf: PathStr = _doc("", "the cluster's slurm.conf (SLURM_CONF); empty = Slurm's default")
    slurm_partition: str = _doc("", "Slurm partition; empty = the cluster's default")
    slurm_account: str = _doc("", "Slurm account (--account); empty = the user's default")
    slurm_qos: str = _doc("", "Slurm QOS (--qos); empty = the default")
    slurm_time_limit: str = _doc("1:00:00", "per task, Slurm's form: MM, HH:MM:SS or D-HH:MM:SS")
    slurm_mem: str = _doc("", "memory per task, Slurm's form (4G); empty = the partition's default")
    slurm_gpus: int = _doc(0, "GPUs for training jobs (--gres=gpu:N); 0 = the CPU path")
    slurm_cpus_per_task: int = 1
    slurm_max_parallel: int = _doc(0, "array tasks running at once (%N); 0 = no limit")
    slurm_wait_timeout_s: float = _doc(3600.0, "a step gives up on (and cancels) its Slurm job after this")
    slurm_command_timeout_s: float = _doc(30.0, "an sbatch/scontrol call that does not answer in this fails")
    # didact act (docs/act.md): power caps, notify webhook, exported metrics
    powercap_root: PathStr = _doc("/sys/class/powercap", "the powercap sysfs tree power-cap actions write")
    act_webhook_url: str = _doc("", "Alertmanager-style webhook for notify actions (the policy's url wins)")
    act_metrics_textfile: PathStr = _doc("", "didact_act_* metrics file; empty = HOME/act/didact_act.prom")
    act_policy: PathStr = _doc("", "policy TOML the act sensor plans from; empty = the sensor skips")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SettingsError(_issues_from(e, data)) from None

    # -- reading the environment ---------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """The settings from ``DIDACT_*`` variables (``os.environ`` by default), then ``overrides``
        (``None`` values ignored).  Raises one :class:`SettingsError` listing every bad value."""
        settings, issues = cls._read(environ, overrides)
        if issues:
            raise SettingsError(issues)
        return settings

    @classmethod
    def from_env_lenient(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Like :meth:`from_env`, but a bad value falls back to its default (logged as a warning).

        For definition time only (Dagster defaults, cron times): the strict read at run
        time still reports the bad value."""
        settings, issues = cls._read(environ, overrides)
        if issues:
            log.warning("using defaults for bad settings: %s", "; ".join(map(str, issues)))
        return settings

    @classmethod
    def env_issues(cls, environ: Mapping[str, str] | None = None) -> list[Issue]:
        """Every problem of the environment's ``DIDACT_*`` values (empty when all are good)."""
        return cls._read(environ, {})[1]

    @classmethod
    def _read(
        cls, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]
    ) -> tuple[Settings, list[Issue]]:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        issues: list[Issue] = []
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip():
                values[name] = raw
        token_file = env.get("DIDACT_PROMETHEUS_BEARER_TOKEN_FILE", "").strip()
        if token_file and "prometheus_bearer_token" not in values:
            try:
                values["prometheus_bearer_token"] = Path(token_file).expanduser().read_text().strip()
            except OSError as e:
                issues.append(Issue(
                    "prometheus_bearer_token", f"DIDACT_PROMETHEUS_BEARER_TOKEN_FILE={token_file}",
                    f"cannot be read ({e.strerror or e})",
                    "point DIDACT_PROMETHEUS_BEARER_TOKEN_FILE at a readable file holding the token"))  # fmt: skip
        values.update({k: v for k, v in overrides.items() if v is not None})
        # each pass drops the bad values and tries again, so the problems of the good
        # values (ranges, choices) are found in the same read
        while True:
            try:
                settings = cls(**values)
            except SettingsError as e:
                new = e.issues
            else:
                new = settings.problems()
                if not new:
                    return settings, issues
            issues += new
            bad = {i.field for i in new} & values.keys()
            if not bad:  # a default is wrong: a bug, not a setting
                raise SettingsError(issues)
            for field in bad:
                del values[field]

    def replace(self, **changes) -> Settings:
        """A copy with ``changes``, validated (SettingsError on a bad value)."""
        s = type(self)(**{**dict(self), **changes})
        s.validate()
        return s

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:  # type: ignore[override]  # pydantic's deprecated classmethod
        """Raise one :class:`SettingsError` listing every range or choice that is wrong."""
        issues = self.problems()
        if issues:
            raise SettingsError(issues)

    def problems(self) -> list[Issue]:
        """Every range or choice that is wrong (the types were checked on construction)."""
        out: list[Issue] = []

        def bad(field: str, problem: str, expected: str, what: str | None = None) -> None:
            what = what or f"{field}={_show(field, getattr(self, field))}"
            out.append(Issue(field, what, problem, _fix(field, expected)))

        for name, allowed, noun in (
            ("source", SOURCES, "telemetry source"), ("prometheus_api", PROMETHEUS_APIS, "API"),
            ("executor", EXECUTORS, "executor"), ("live_jobs", LIVE_JOBS, "live job source"),
        ):  # fmt: skip
            if getattr(self, name) not in allowed:
                bad(name, f"is not a known {noun}", f"one of {', '.join(allowed)}", f"{name} {getattr(self, name)!r}")
        for name, low in _AT_LEAST.items():
            v = getattr(self, name)
            if v is not None and not v >= low:
                bad(name, f"must be at least {low}", f"{low} or more")
        for name in _POSITIVE:
            v = getattr(self, name)
            if v is not None and not v > 0:
                bad(name, "must be a positive number of seconds", "seconds, e.g. 5")
        if not 0 <= self.max_unusable_fraction <= 1:
            bad("max_unusable_fraction", "must be between 0 and 1", "a fraction like 0.05")
        if not 0 < self.holdout_fraction < 1:
            bad("holdout_fraction", "must be strictly between 0 and 1", "a fraction like 0.2")
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            bad("start_date", "is not a date", "YYYY-MM-DD", what=f"start_date={self.start_date!r}")
        if not _SLURM_TIME.match(self.slurm_time_limit.strip()):
            bad("slurm_time_limit", "is not a Slurm time", "MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] or UNLIMITED")
        if not _HHMM.match(self.nightly_at):
            bad("nightly_at", "is not a time of day", "HH:MM (UTC), e.g. 02:30")
        if any(h < 1 for h in self.model_hidden):
            bad("model_hidden", _PROBLEMS["model_hidden"], _FORMS["model_hidden"])
        for name, top in (("sim_multinode_share", 0.95), ("sim_straggler_rate", 1.0)):
            if not 0 <= getattr(self, name) <= top:
                bad(name, f"must be between 0 and {top}", "a fraction like 0.2")
        if self.topology.startswith("pattern:"):
            form = "pattern:<regex with a (?P<rack>...) group>"
            try:
                if "rack" not in re.compile(self.topology[8:]).groupindex:
                    bad("topology", "has no named group 'rack'", form)
            except re.error as e:
                bad("topology", f"is not a regular expression ({e})", form)
        if not self.features:
            bad("features", "the feature list is empty", _FORMS["features"])
        return out

    # -- derived values --------------------------------------------------------------------
    @property
    def nightly_hour_minute(self) -> tuple[int, int]:
        """``nightly_at`` as (hour, minute); ValueError when it is not HH:MM."""
        if not (m := _HHMM.match(self.nightly_at)):
            raise ValueError(f"nightly_at={self.nightly_at!r} is not HH:MM")
        return int(m.group(1)), int(m.group(2))

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def warehouse_path(self) -> Path:
        return self.home_path / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home_path / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home_path / "mlflow"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def artifact_uri(self) -> str:
        return (self.mlflow_dir / "artifacts").as_uri()


def ensure_home(path: Path) -> Path:
    """Create the home folder if needed and prove it is writable.

    Raises :class:`DidactError` naming the folder when it cannot be created or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise DidactError(
            f"DIDACT_HOME {path}",
            f"is not writable ({e.strerror or e})",
            "point DIDACT_HOME at a folder you can write to",
        ) from None
    return path
