"""The ``power_profiles`` partition: a day's power samples → profile tables and a plot.

Reads the raw partition's power table and the spooled samples of the sampling readers,
utilisation from the AI-ready samples and the day's job labels, runs
:func:`didact_core.power.profiles.power_profiles`, and stores the tables and the PNG as
a new version of ``power_profiles/<day>``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from didact_core.config import Settings
from didact_core.data.spine import AI_READY, RAW, intervals_for
from didact_core.data.warehouse import VersionInfo, Warehouse
from didact_core.errors import DataQualityError
from didact_core.power.profiles import power_profiles
from didact_core.power.spool import read_spool
from didact_core.versioning import code_version

POWER = "power_profiles"
#: the profiles, the readers whose spool they read, and the partition plumbing
POWER_CODE_VERSION = code_version("power", "data/spine", "data/parts", "data/warehouse")


@dataclass
class PowerResult:
    version: VersionInfo
    summary: dict
    plot_png: bytes
    sources: list[str]


def build_power_profiles(settings: Settings, day: dt.date, run_id: str | None = None) -> PowerResult:
    """Power profiles of a day from the raw partition's power table and the spooled
    samples of the sampling readers, with utilisation from the AI-ready samples and the
    day's job labels.  Tables and the plot go into ``power_profiles/<day>``."""
    wh = Warehouse(settings.home_path, settings.retention_versions)
    partition = day.isoformat()
    raw = wh.require(RAW, partition)
    frames = [wh.read(RAW, partition, "power", raw.version)] if "power" in raw.tables else []
    spooled = read_spool(settings.home_path, partition)
    if len(spooled):
        frames.append(spooled)
    if not frames:
        raise DataQualityError(
            f"power for {partition}",
            "no source recorded any: the raw partition has no power table and the spool is empty",
            "scrape node exporter's RAPL/hwmon metrics, or run `didact power record` with a reader",
        )
    power = pd.concat(frames, ignore_index=True)
    ai = wh.require(AI_READY, partition)
    cols = ["ts", "node", "idle", "iowait"]
    util = pd.concat([p[cols] for p in wh.iter_parts(AI_READY, partition, "samples")], ignore_index=True)
    labels, _faults, _ref = intervals_for(wh, partition, raw)
    if labels is not None and len(labels):
        labels = labels.assign(node=labels["node"].astype(str), label=labels["label"].astype(str))
    else:
        labels = None
    prof = power_profiles(power, util.assign(node=util["node"].astype(str)), labels)
    png = prof.plot_png()
    tables = {"nodes": prof.nodes, "flavours": prof.flavours, "jobs": prof.jobs, "shedding": prof.shedding}
    tables = {k: _plain(v) for k, v in tables.items()}
    sources = sorted(power["source"].astype(str).unique())
    version = wh.write(POWER, partition, tables, code_version=POWER_CODE_VERSION, run_id=run_id,
                       upstream={RAW: raw.ref, AI_READY: ai.ref},
                       metadata={"summary": prof.summary, "sources": sources})  # fmt: skip
    (version.path / "profile.png").write_bytes(png)
    return PowerResult(version, prof.summary, png, sources)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns as strings (Parquet needs one type per column)."""
    out = df.reset_index(drop=True).copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype(str)
    return out
