"""Settings of a didact installation, read from the environment.

Everything lives under one home folder (``DIDACT_HOME``, default ``./.didact``)::

    warehouse.duckdb   catalog of partition versions and the lineage table
    data/<asset>/<partition>/v<N>/<table>.parquet   immutable partition versions
    mlflow/            MLflow tracking + registry (sqlite) and artifacts
    dagster/           DAGSTER_HOME

Every field can be set by an environment variable ``DIDACT_<FIELD>`` (upper case).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from didact_core.errors import DidactError

SOURCES = ("simulator", "prometheus")


def _parse(name: str, raw: str, typ):
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if typ is tuple:
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return typ(raw)
    except ValueError:
        raise DidactError(
            f"environment variable {name}={raw!r}",
            f"is not a valid {typ.__name__}",
            f"set {name} to a {typ.__name__} or unset it to use the default",
        ) from None


@dataclass(frozen=True)
class Settings:
    """One didact installation's configuration (env var ``DIDACT_<NAME>`` overrides each)."""

    home: str = ".didact"
    source: str = "simulator"
    #: first daily partition (UTC)
    start_date: str = "2026-01-01"
    # simulated cluster
    nodes: int = 16
    cpus: int = 8
    interval_s: float = 15.0
    seed: int = 0
    #: labelled behavioural faults (CPU hog, IO stall, ...) per node-hour
    fault_rate: float = 0.05
    # preprocessing
    features: tuple = ("idle", "iowait", "system", "user", "other")
    #: temporal context: the model sees each feature at this many consecutive timesteps
    window: int = 1
    #: a partition fails its quality check above this fraction of unusable samples
    max_unusable_fraction: float = 0.05
    #: partition versions kept per (asset, partition); 0 keeps all
    retention_versions: int = 0
    #: worker processes for a partition's node blocks; 0 = one per CPU core
    workers: int = 0
    #: job labels from a CSV (node,start,end,label) or scheduler export instead of the source
    labels_csv: str = ""
    # Prometheus source
    prometheus_url: str = "http://127.0.0.1:9090"
    prometheus_node_label: str = "instance"
    # MLflow: empty means sqlite + local artifacts under home
    mlflow_tracking_uri: str = ""
    model_name: str = "didact-autoencoder"
    # continual training
    model_family: str = "autoencoder"
    model_lr: float = 3e-3
    model_max_epochs: int = 20
    model_batch_size: int = 4096
    #: hidden widths of the encoder (the decoder mirrors them); empty = sized so the model
    #: has about 40K parameters whatever the number of inputs (144,128 for the 5 CPU fractions)
    model_hidden: tuple = ()
    #: continue from the champion's weights (False: train each day from scratch)
    model_warm_start: bool = True
    #: today's samples used for training at most (a seeded sample)
    max_train_samples: int = 200_000
    #: replayed samples of earlier days, as a fraction of today's training samples
    replay_fraction: float = 0.3
    replay_days: int = 7
    #: fraction of each day held out for evaluation and the promotion gate
    holdout_fraction: float = 0.2
    #: the challenger may be this much worse (relative error) than the champion and still pass
    promotion_tolerance: float = 0.05
    #: model_evaluation also trains one model per flavour left out (open-set AUC; slow)
    openset_eval: bool = False

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> "Settings":
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            name = f"DIDACT_{f.name.upper()}"
            if name in env:
                typ = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}[
                    f.type if isinstance(f.type, str) else f.type.__name__
                ]
                values[f.name] = _parse(name, env[name], typ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        s.validate()
        return s

    def replace(self, **changes) -> "Settings":
        s = dataclasses.replace(self, **changes)
        s.validate()
        return s

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise DidactError(
                f"source {self.source!r}",
                "is not a known telemetry source",
                f"use one of {', '.join(SOURCES)} (DIDACT_SOURCE)",
            )
        for name in ("nodes", "cpus"):
            if getattr(self, name) < 1:
                raise DidactError(f"{name}={getattr(self, name)}", "must be at least 1")
        if not self.interval_s > 0:
            raise DidactError(f"interval_s={self.interval_s}", "must be a positive number of seconds")
        if not 0 <= self.max_unusable_fraction <= 1:
            raise DidactError(
                f"max_unusable_fraction={self.max_unusable_fraction}", "must be between 0 and 1"
            )
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise DidactError(
                f"start_date={self.start_date!r}", "is not a date", "use YYYY-MM-DD (DIDACT_START_DATE)"
            ) from None
        try:
            hidden = [int(h) for h in self.model_hidden]
        except (TypeError, ValueError):
            hidden = [0]
        if any(h < 1 for h in hidden):
            raise DidactError(
                f"model_hidden={','.join(map(str, self.model_hidden))}",
                "is not a comma list of positive layer widths",
                "set DIDACT_MODEL_HIDDEN like 144,128, or unset it for the default size",
            )
        if not self.features:
            raise DidactError("features", "the feature list is empty", "name at least one feature")
        if self.window < 1:
            raise DidactError(f"window={self.window}", "must be at least 1 timestep", "DIDACT_WINDOW=1 (no context) or more")
        for name in ("replay_fraction", "promotion_tolerance"):
            if getattr(self, name) < 0:
                raise DidactError(f"{name}={getattr(self, name)}", "must not be negative")
        if not 0 < self.holdout_fraction < 1:
            raise DidactError(f"holdout_fraction={self.holdout_fraction}", "must be strictly between 0 and 1")
        if self.max_train_samples < 1:
            raise DidactError(f"max_train_samples={self.max_train_samples}", "must be at least 1")

    # -- paths -----------------------------------------------------------------
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
