"""Spool of sampled power (local RAPL, NVML, Redfish BMCs) for the daily power_profiles.

``didact power record`` polls the configured sampling readers and flushes their samples
every few minutes into ``$DIDACT_HOME/spool/power/<day>/<ts>-<pid>.parquet`` (written to
a temporary name, then renamed: a reader never sees half a file).  ``power_profiles``
for a day reads that day's files next to the raw partition's power table.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pandas as pd

from didact_core.errors import DidactError
from didact_core.power.base import SamplingPowerReader, empty_power, poll

log = logging.getLogger(__name__)


def spool_dir(home: Path) -> Path:
    return Path(home) / "spool" / "power"


def flush(home: Path, samples: pd.DataFrame) -> list[Path]:
    """Write samples into per-day spool files; returns the files written."""
    if samples is None or samples.empty:
        return []
    out = []
    days = pd.to_datetime(samples["ts"], utc=True).dt.date
    for day, part in samples.groupby(days):
        folder = spool_dir(home) / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S%f}-{os.getpid()}.parquet"
        tmp = folder / f".{name}"
        part.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, folder / name)
        out.append(folder / name)
    return out


def read_spool(home: Path, day: str) -> pd.DataFrame:
    """All spooled power samples of ``day`` (empty when none were recorded)."""
    files = sorted((spool_dir(home) / day).glob("*.parquet"))
    if not files:
        return empty_power()
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return df[(pd.to_datetime(df["ts"], utc=True).dt.date.astype(str) == day)].reset_index(drop=True)


def record(
    home: Path,
    readers: list[SamplingPowerReader],
    interval_s: float = 5.0,
    flush_every_s: float = 300.0,
    stop: threading.Event | None = None,
    max_seconds: float | None = None,
) -> int:
    """Poll ``readers`` until ``stop`` (or ``max_seconds``), flushing to the spool; returns samples."""
    usable = []
    for r in readers:
        ok, why = r.available()
        if ok:
            usable.append(r)
        else:
            log.warning("power reader %s not available: %s", r.source, why)
    if not usable:
        raise DidactError("power readers", "none is available here", "configure DIDACT_REDFISH_BMCS, or run on a "
                          "host with RAPL (/sys/class/powercap) or an NVIDIA GPU")  # fmt: skip
    stop = stop or threading.Event()
    total, t0 = 0, time.monotonic()
    per_flush = max(1, int(flush_every_s / interval_s))
    while not stop.is_set():
        if max_seconds is not None:
            left = max_seconds - (time.monotonic() - t0)
            if left <= 0:
                break
            count = max(1, min(per_flush, int(left / interval_s) or 1))
        else:
            count = per_flush
        for r in usable:  # each flush holds only its own window
            with r._lock:
                r._ts.clear()
                r._watts.clear()
        samples = poll(usable, interval_s, count, stop=stop)
        flush(home, samples)
        total += len(samples)
        log.info("power spool: %d samples so far", total)
    return total
