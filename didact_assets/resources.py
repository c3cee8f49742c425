"""The one didact resource: the installation's settings, defaulted from ``DIDACT_*`` env vars.

Every field can be overridden in the launchpad (run config) or in ``Definitions``.
"""

from __future__ import annotations

import dagster as dg

from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse

_ENV = Settings.from_env()


class DidactResource(dg.ConfigurableResource):
    """Where didact keeps its state and where telemetry comes from."""

    home: str = str(_ENV.home_path)
    source: str = _ENV.source
    start_date: str = _ENV.start_date
    nodes: int = _ENV.nodes
    cpus: int = _ENV.cpus
    interval_s: float = _ENV.interval_s
    seed: int = _ENV.seed
    fault_rate: float = _ENV.fault_rate
    features: list[str] = list(_ENV.features)
    window: int = _ENV.window
    max_unusable_fraction: float = _ENV.max_unusable_fraction
    retention_versions: int = _ENV.retention_versions
    workers: int = _ENV.workers
    mlflow_tracking_uri: str = _ENV.mlflow_tracking_uri
    model_name: str = _ENV.model_name
    model_family: str = _ENV.model_family
    model_lr: float = _ENV.model_lr
    model_max_epochs: int = _ENV.model_max_epochs
    model_batch_size: int = _ENV.model_batch_size
    #: encoder widths; empty = sized to about 40K parameters (DIDACT_MODEL_HIDDEN)
    model_hidden: list[int] = [int(h) for h in _ENV.model_hidden]
    model_warm_start: bool = _ENV.model_warm_start
    max_train_samples: int = _ENV.max_train_samples
    replay_fraction: float = _ENV.replay_fraction
    replay_days: int = _ENV.replay_days
    holdout_fraction: float = _ENV.holdout_fraction
    promotion_tolerance: float = _ENV.promotion_tolerance
    openset_eval: bool = _ENV.openset_eval

    def settings(self) -> Settings:
        fields = self.model_dump()
        fields["features"] = tuple(fields["features"])
        fields["model_hidden"] = tuple(fields["model_hidden"])
        return Settings.from_env(**fields)

    def warehouse(self) -> Warehouse:
        s = self.settings()
        return Warehouse(s.home_path, s.retention_versions)
