"""Write raw blocks as OpenMetrics text, for ``promtool tsdb create-blocks-from openmetrics``.

The output holds two metric families::

    # TYPE node_cpu_seconds counter
    node_cpu_seconds_total{instance="node-001",cpu="0",mode="idle"} 1234.5 1767225600
    ...
    # TYPE didact_power_watts gauge
    didact_power_watts{instance="node-001",source="simulator"} 181.25 1767225600
    # EOF

so a Prometheus filled from it looks to :class:`~didact_core.ingest.prometheus.source.PrometheusSource`
like one scraped from node exporters (the node name is the ``instance`` label, or
``node_label``).  Each series is written contiguously in timestamp order, as the format
requires: rows are sorted by (node, cpu, ts) and a repeated timestamp keeps its first
row (promtool rejects out-of-order and conflicting duplicate samples).  Values are
written with Python's shortest round-trip repr, so a read-back is bit-exact.

Timestamps are seconds.  promtool turns them into milliseconds as ``int64(ts * 1000)``
(truncation), which for a few millisecond-fraction times lands one millisecond early;
those get one more digit (``1767225600.0151``) so they truncate to the right
millisecond.  Whole seconds are written as integers.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError
from didact_core.schema import CPU_MODES
from didact_core.ingest.base import RawBlock

log = logging.getLogger(__name__)

CPU_FAMILY = "node_cpu_seconds"
CPU_METRIC = "node_cpu_seconds_total"
POWER_METRIC = "didact_power_watts"


def escape_label_value(value: str) -> str:
    """Escape a label value for the text formats (backslash, double quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _ts_ms(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype="datetime64[ms]").astype(np.int64)


def format_timestamps(ts_ms: np.ndarray) -> list[str]:
    """OpenMetrics second timestamps that promtool reads back as exactly ``ts_ms``."""
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    sec, ms = np.divmod(ts_ms, 1000)
    if not ms.any():
        return sec.astype(str).tolist()
    # what promtool computes: int64(float64(text) * 1000); float(text) == ts_ms / 1000 exactly
    wrong = np.trunc((ts_ms / 1000.0) * 1000.0).astype(np.int64) != ts_ms
    out = []
    for s, m, w in zip(sec.tolist(), ms.tolist(), wrong.tolist()):
        out.append(str(s) if m == 0 else (f"{s}.{m:03d}1" if w else f"{s}.{m:03d}"))
    return out


def _format_values(values: np.ndarray) -> list[str]:
    if np.isfinite(values).all():
        return [repr(v) for v in values.tolist()]
    out = []
    for v in values.tolist():
        if math.isnan(v):
            out.append("NaN")
        elif v in (float("inf"), float("-inf")):
            out.append("+Inf" if v > 0 else "-Inf")
        else:
            out.append(repr(v))
    return out


def _sorted_unique(df: pd.DataFrame, keys: list[str], what: str) -> tuple[pd.DataFrame, int]:
    missing = [c for c in keys if c not in df.columns]
    if missing:
        raise DataQualityError(what, f"missing column(s) {missing}", "pass frames with the schema.py columns")
    df = df.sort_values(keys, kind="stable")
    dup = df.duplicated(keys, keep="first").to_numpy()
    n_dup = int(dup.sum())
    if n_dup:
        df = df.loc[~dup]
    return df, n_dup


def _group_bounds(*cols: np.ndarray) -> list[tuple[int, int]]:
    n = len(cols[0])
    if n == 0:
        return []
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for c in cols:
        change[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return list(zip(starts.tolist(), ends.tolist()))


def write_cpu(df: pd.DataFrame, out: TextIO, node_label: str = "instance") -> dict:
    """Write the ``node_cpu_seconds_total`` samples of a raw CPU frame (no family header)."""
    df, n_dup = _sorted_unique(df, ["node", "cpu", "ts"], "raw CPU frame")
    nodes = df["node"].astype(str).to_numpy(dtype=object)
    cpus = df["cpu"].to_numpy()
    ts_all = _ts_ms(df["ts"])
    samples = 0
    nan = 0
    modes = [m for m in CPU_MODES if m in df.columns]
    cols = {m: df[m].to_numpy(dtype=np.float64) for m in modes}
    for s, e in _group_bounds(nodes, cpus):
        ts_str = format_timestamps(ts_all[s:e])
        node = escape_label_value(nodes[s])
        for mode in modes:
            vals = cols[mode][s:e]
            nan += int(np.isnan(vals).sum())
            prefix = f'{CPU_METRIC}{{{node_label}="{node}",cpu="{int(cpus[s])}",mode="{mode}"}} '
            out.write("".join([f"{prefix}{v} {t}\n" for v, t in zip(_format_values(vals), ts_str)]))
            samples += e - s
    return {
        "samples": samples,
        "series": len(_group_bounds(nodes, cpus)) * len(modes),
        "duplicates_dropped": n_dup,
        "nan_values": nan,
    }


def write_power(df: pd.DataFrame, out: TextIO, node_label: str = "instance") -> dict:
    """Write per-node watts as ``didact_power_watts{instance,source}`` gauge samples."""
    df, n_dup = _sorted_unique(df, ["node", "source", "ts"], "raw power frame")
    nodes = df["node"].astype(str).to_numpy(dtype=object)
    sources = df["source"].astype(str).to_numpy(dtype=object)
    ts_all = _ts_ms(df["ts"])
    watts = df["watts"].to_numpy(dtype=np.float64)
    samples = 0
    for s, e in _group_bounds(nodes, sources):
        prefix = (
            f'{POWER_METRIC}{{{node_label}="{escape_label_value(nodes[s])}",'
            f'source="{escape_label_value(sources[s])}"}} '
        )
        ts_str = format_timestamps(ts_all[s:e])
        out.write("".join([f"{prefix}{v} {t}\n" for v, t in zip(_format_values(watts[s:e]), ts_str)]))
        samples += e - s
    return {"samples": samples, "duplicates_dropped": n_dup}


def write_openmetrics(
    blocks: Iterable[RawBlock] | RawBlock,
    out: str | Path | TextIO,
    node_label: str = "instance",
    include_power: bool = True,
) -> dict:
    """Write raw blocks as one OpenMetrics exposition ending in ``# EOF``.

    ``out`` is a path or a text stream.  CPU samples of all blocks come first (one
    family must be contiguous), then power.  Returns counts:
    ``{"cpu_samples", "cpu_series", "power_samples", "duplicates_dropped", "nan_values"}``.
    """
    if isinstance(blocks, RawBlock):
        blocks = [blocks]
    if isinstance(out, (str, Path)):
        with open(out, "w", encoding="utf-8", newline="\n", buffering=1 << 22) as f:
            return write_openmetrics(blocks, f, node_label, include_power)
    stats = {"cpu_samples": 0, "cpu_series": 0, "power_samples": 0, "duplicates_dropped": 0, "nan_values": 0}
    power_buf = io.StringIO()
    out.write(
        f"# TYPE {CPU_FAMILY} counter\n# UNIT {CPU_FAMILY} seconds\n"
        f"# HELP {CPU_FAMILY} Seconds the CPUs spent in each mode.\n"
    )
    for block in blocks:
        st = write_cpu(block.cpu, out, node_label)
        stats["cpu_samples"] += st["samples"]
        stats["cpu_series"] += st["series"]
        stats["duplicates_dropped"] += st["duplicates_dropped"]
        stats["nan_values"] += st["nan_values"]
        if include_power and block.power is not None and len(block.power):
            pst = write_power(block.power, power_buf, node_label)
            stats["power_samples"] += pst["samples"]
            stats["duplicates_dropped"] += pst["duplicates_dropped"]
    if stats["power_samples"]:
        out.write(f"# TYPE {POWER_METRIC} gauge\n# HELP {POWER_METRIC} Node power draw by source.\n")
        out.write(power_buf.getvalue())
    out.write("# EOF\n")
    if stats["duplicates_dropped"]:
        log.warning(
            "OpenMetrics export dropped %d rows with a repeated (series, ts)", stats["duplicates_dropped"]
        )
    return stats


def write_openmetrics_windows(
    blocks: Iterable[RawBlock] | RawBlock,
    folder: str | Path,
    window: pd.Timedelta | None = None,
    node_label: str = "instance",
    include_power: bool = True,
) -> tuple[list[Path], dict]:
    """Like :func:`write_openmetrics`, but one file per aligned time ``window``.

    promtool cuts its input into 2 h blocks and re-reads the whole file for each one, so
    a day in one file costs 12 passes; one file per 2 h window (aligned to the epoch,
    as promtool's blocks are) costs one.  Returns (files in time order, counts).
    """
    if isinstance(blocks, RawBlock):
        blocks = [blocks]
    window = pd.Timedelta(hours=2) if window is None else window
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    win_ms = int(window / pd.Timedelta(milliseconds=1))
    files: dict[int, TextIO] = {}
    power_bufs: dict[int, io.StringIO] = {}
    stats = {"cpu_samples": 0, "cpu_series": 0, "power_samples": 0, "duplicates_dropped": 0, "nan_values": 0}

    def handle(w: int) -> TextIO:
        if w not in files:
            f = open(
                folder / f"window-{w * win_ms // 1000}.om",
                "w",
                encoding="utf-8",
                newline="\n",
                buffering=1 << 22,
            )
            f.write(
                f"# TYPE {CPU_FAMILY} counter\n# UNIT {CPU_FAMILY} seconds\n"
                f"# HELP {CPU_FAMILY} Seconds the CPUs spent in each mode.\n"
            )
            files[w] = f
        return files[w]

    try:
        for block in blocks:
            cpu, n_dup = _sorted_unique(block.cpu, ["node", "cpu", "ts"], "raw CPU frame")
            stats["duplicates_dropped"] += n_dup
            win = _ts_ms(cpu["ts"]) // win_ms
            for w in np.unique(win):
                st = write_cpu(cpu.loc[win == w], handle(int(w)), node_label)
                stats["cpu_samples"] += st["samples"]
                stats["nan_values"] += st["nan_values"]
            stats["cpu_series"] += int(cpu.groupby(["node", "cpu"], observed=True).ngroups) * len(CPU_MODES)
            if include_power and block.power is not None and len(block.power):
                pw, n_dup = _sorted_unique(block.power, ["node", "source", "ts"], "raw power frame")
                stats["duplicates_dropped"] += n_dup
                pwin = _ts_ms(pw["ts"]) // win_ms
                for w in np.unique(pwin):
                    handle(int(w))
                    buf = power_bufs.setdefault(int(w), io.StringIO())
                    stats["power_samples"] += write_power(pw.loc[pwin == w], buf, node_label)["samples"]
        for w, f in files.items():
            if w in power_bufs:
                f.write(f"# TYPE {POWER_METRIC} gauge\n# HELP {POWER_METRIC} Node power draw by source.\n")
                f.write(power_bufs[w].getvalue())
            f.write("# EOF\n")
    finally:
        for f in files.values():
            f.close()
    return [Path(files[w].name) for w in sorted(files)], stats
