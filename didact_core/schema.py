"""Column contracts shared by every part of didact.

Raw CPU samples mirror node exporter's ``node_cpu_seconds_total{cpu,mode}``: one row per
``(ts, node, cpu)`` with the cumulative seconds of each mode.  Everything downstream
(preprocessing, Prometheus ingest, the warehouse) relies on these names and dtypes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError

#: node exporter's CPU modes, in the column order of a raw sample
CPU_MODES: tuple[str, ...] = ("idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user")
#: modes folded into the ``other`` fraction
OTHER_MODES: tuple[str, ...] = ("irq", "nice", "softirq", "steal")
#: the default AI-ready features: fractions of an interval spent in each group
CPU_FRACTIONS: tuple[str, ...] = ("idle", "iowait", "system", "user", "other")

KEY_COLUMNS = ("ts", "node", "cpu")
RAW_CPU_COLUMNS = KEY_COLUMNS + CPU_MODES
#: per-node power, one row per (ts, node, source)
RAW_POWER_COLUMNS = ("ts", "node", "source", "watts")
#: job labels: which job flavour ran on which node when (end exclusive)
LABEL_COLUMNS = ("node", "start", "end", "label")
#: the AI-ready ``label`` of a sample that no labelled interval covers
NO_LABEL = "unknown"
#: the reserved label of an interval to leave out (a hung segment, installs beside a workload):
#: its samples are dropped from ``ai_ready_metrics`` (counted as ``excluded_samples``), so no
#: training or evaluation sees them; it may overlap job labels
EXCLUDE = "exclude"
#: how tables, plots and power profiles show a sample without a job label
UNLABELLED = "(unlabelled)"
#: raw label values that mean "no label": the AI-ready default, the display value, empty,
#: and missing values written out as text (a CSV or a str() of NaN/None/pd.NA); ``exclude``
#: names no flavour either
NO_LABEL_MARKERS: tuple[str, ...] = (NO_LABEL, UNLABELLED, "", "nan", "None", "<NA>", EXCLUDE)

TS_DTYPE = "datetime64[ms, UTC]"


def has_label(labels) -> np.ndarray:
    """True where a label names a job flavour: not missing, not one of :data:`NO_LABEL_MARKERS`."""
    ser = pd.Series(np.asarray(labels, dtype=object))
    return (ser.notna() & ~ser.astype(str).isin(NO_LABEL_MARKERS)).to_numpy()


def empty_raw_cpu() -> pd.DataFrame:
    """An empty raw CPU frame with the right dtypes."""
    return pd.DataFrame(
        {
            "ts": pd.Series([], dtype=TS_DTYPE),
            "node": pd.Series([], dtype="string"),
            "cpu": pd.Series([], dtype="int16"),
            **{m: pd.Series([], dtype="float64") for m in CPU_MODES},
        }
    )


def validate_raw_cpu(df: pd.DataFrame, what: str = "raw CPU samples") -> pd.DataFrame:
    """Check a raw CPU frame has the contract's columns and numeric counters.

    Returns the frame with dtypes normalised (``ts`` UTC ms, ``cpu`` int16, counters float64).
    Raises :class:`DataQualityError` naming the column that is wrong.
    """
    missing = [c for c in RAW_CPU_COLUMNS if c not in df.columns]
    if missing:
        raise DataQualityError(
            what,
            f"missing column(s) {missing}; got {list(df.columns)}",
            "a raw sample needs ts, node, cpu and one cumulative-seconds column per CPU mode",
        )
    out = df
    for mode in CPU_MODES:
        col = df[mode]
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
            example = repr(bad.iloc[0]) if len(bad) else "?"
            raise DataQualityError(
                what,
                f"counter column '{mode}' is not numeric (dtype {col.dtype}, e.g. {example})",
                "counters must be cumulative CPU seconds as numbers; fix the source or re-export the data",
            )
    if out["ts"].dtype != TS_DTYPE:
        out = out.assign(ts=pd.to_datetime(out["ts"], utc=True).astype(TS_DTYPE))
    if out["cpu"].dtype != np.int16:
        out = out.assign(cpu=out["cpu"].astype("int16"))
    conv = {m: "float64" for m in CPU_MODES if out[m].dtype != np.float64}
    if conv:
        out = out.astype(conv)
    return out


#: node-level counters (cumulative) of a raw ``node_metrics`` row, from node exporter:
#: node_context_switches_total, node_intr_total, node_disk_io_time_seconds_total,
#: node_disk_read_bytes_total, node_disk_written_bytes_total, node_vmstat_pgfault,
#: node_network_receive_bytes_total, node_network_transmit_bytes_total (summed over
#: devices, loopback excluded)
NODE_COUNTERS: tuple[str, ...] = (
    "ctxt", "intr", "disk_io_time", "disk_read_bytes", "disk_written_bytes", "pgfault", "net_rx_bytes", "net_tx_bytes",
)  # fmt: skip
#: node-level gauges: MemTotal − MemAvailable, and the 1-minute load average
NODE_GAUGES: tuple[str, ...] = ("mem_used_bytes", "load1")
RAW_NODE_COLUMNS = ("ts", "node") + NODE_COUNTERS + NODE_GAUGES
#: the AI-ready node-level features: per-second rates of the counters, gauges as they are
NODE_FEATURES: tuple[str, ...] = tuple(f"{c}_rate" for c in NODE_COUNTERS) + NODE_GAUGES
