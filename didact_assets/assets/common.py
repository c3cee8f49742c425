"""Small helpers shared by the asset modules."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from didact_core.config import Settings
from didact_core.data.spine import check_partition
from didact_core.data.warehouse import VersionInfo


def day_of(context: dg.AssetExecutionContext, settings: Settings) -> dt.date:
    """The run's partition as a date, validated against the configured range."""
    return check_partition(settings, context.partition_key)


def version_metadata(v: VersionInfo) -> dict:
    return {
        "version": f"v{v.version}",
        "data_version": v.data_version,
        "tables": dg.MetadataValue.json(v.tables),
        "path": dg.MetadataValue.path(str(v.path)),
    }
