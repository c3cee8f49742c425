"""The Dagster instance under DIDACT_HOME (runs, materialisations, schedules, sensors)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from didact_core.config import Settings, ensure_home

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
"""


def ensure_instance(settings: Settings) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at the didact home (unless set), create it, migrate its storage."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home)))
    ensure_home(home)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML)
    return dg.DagsterInstance.get()
