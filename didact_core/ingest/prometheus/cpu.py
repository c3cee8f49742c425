"""``node_cpu_seconds_total{<node label>, cpu, mode}`` series → the wide raw CPU frame.

One row per (ts, node, cpu), one column per mode (:data:`didact_core.schema.RAW_CPU_COLUMNS`),
rows ordered by (node, cpu, ts).  A series split over several answers (time windows) is
joined again; a mode whose timestamps differ from the others' is aligned on the union
of timestamps (NaN where it has no sample) and counted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError
from didact_core.ingest.node_exporter import CPU_METRIC
from didact_core.ingest.prometheus.wire import Series
from didact_core.schema import CPU_MODES, RAW_CPU_COLUMNS, TS_DTYPE, empty_raw_cpu


def _cpu_index(labels: dict) -> int:
    """The CPU number of a series' ``cpu`` label (digits kept: ``cpu3`` → 3)."""
    cpu_label = labels.get("cpu", "")
    try:
        return int(cpu_label)
    except ValueError:
        digits = re.sub(r"\D", "", cpu_label)
        if not digits:
            raise DataQualityError(
                f"{CPU_METRIC} series {labels}",
                f"cpu label {cpu_label!r} is not a number",
                "relabel cpu to the CPU index",
            ) from None
        return int(digits)


def _group(series: list[Series], node_label: str, node_of: Callable[[str], str]):
    """{(node, cpu): {mode: [series parts]}}, the modes that are not CPU_MODES, samples seen."""
    by_key: dict[tuple[str, int], dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
    unknown_modes: set = set()
    samples = 0
    for s in series:
        samples += len(s.ts)
        mode = s.labels.get("mode")
        if mode not in CPU_MODES:
            unknown_modes.add(mode)
            continue
        cpu = _cpu_index(s.labels)
        if len(s.ts):
            by_key[(node_of(s.labels.get(node_label)), cpu)][mode].append(s)
    return by_key, sorted(map(str, unknown_modes)), samples


def _align_modes(modes: dict[str, list[Series]]) -> tuple[np.ndarray, list[np.ndarray], int, bool]:
    """One (node, cpu)'s modes on one time axis: (ts, a column per CPU mode, modes
    missing, whether the modes' timestamps differed)."""
    merged = {}
    for mode, parts in modes.items():
        parts.sort(key=lambda s: s.ts[0])
        if len(parts) == 1:
            merged[mode] = (parts[0].ts, parts[0].values)
        else:
            merged[mode] = (np.concatenate([p.ts for p in parts]), np.concatenate([p.values for p in parts]))
    ts_list = [v[0] for v in merged.values()]
    ts = ts_list[0]
    unaligned = not all(len(t) == len(ts) and np.array_equal(t, ts) for t in ts_list[1:])
    if unaligned:
        ts = np.unique(np.concatenate(ts_list))
    columns, missing = [], 0
    for mode in CPU_MODES:
        if mode not in merged:
            missing += 1
            columns.append(np.full(len(ts), np.nan))
            continue
        mts, mv = merged[mode]
        if len(mts) == len(ts) and (mts is ts or np.array_equal(mts, ts)):
            columns.append(mv)
        else:
            col = np.full(len(ts), np.nan)
            col[np.searchsorted(ts, mts)] = mv
            columns.append(col)
    return ts, columns, missing, unaligned


def cpu_frame(
    series: list[Series], node_label: str, node_of: Callable[[str], str]
) -> tuple[pd.DataFrame, dict]:
    """CPU series → (the wide raw CPU frame ordered by (node, cpu, ts), facts for metadata).

    ``node_of`` maps a ``node_label`` value to the node name (port stripping)."""
    by_key, unknown_modes, samples = _group(series, node_label, node_of)
    if not by_key:
        return empty_raw_cpu(), {"samples": samples, "series": 0, "unknown_modes": unknown_modes}
    ts_parts, node_rep, cpu_rep = [], [], []
    mode_parts: dict[str, list] = {m: [] for m in CPU_MODES}
    missing_modes = unaligned = 0
    for key in sorted(by_key):
        ts, columns, missing, skewed = _align_modes(by_key[key])
        missing_modes += missing
        unaligned += skewed
        for mode, col in zip(CPU_MODES, columns):
            mode_parts[mode].append(col)
        ts_parts.append(ts)
        node_rep.append((key[0], len(ts)))
        cpu_rep.append((key[1], len(ts)))
    counts = np.array([n for _, n in node_rep])
    names = sorted({n for n, _ in node_rep})
    code_of = {n: i for i, n in enumerate(names)}
    node_col = pd.Categorical.from_codes(
        np.repeat(np.array([code_of[n] for n, _ in node_rep], dtype=np.int32), counts), names
    )
    data = {
        "ts": pd.Series(np.concatenate(ts_parts).astype("datetime64[ms]"))
        .dt.tz_localize("UTC")
        .astype(TS_DTYPE),
        "node": node_col,
        "cpu": np.repeat(np.array([c for c, _ in cpu_rep], dtype=np.int16), counts),
    }
    for mode in CPU_MODES:
        data[mode] = np.concatenate(mode_parts[mode])
    df = pd.DataFrame(data, columns=list(RAW_CPU_COLUMNS))
    info = {
        "samples": samples,
        "series": sum(len(v) for v in by_key.values()),
        "unknown_modes": unknown_modes,
        "missing_mode_series": missing_modes,
        "unaligned_cpu_series": unaligned,
    }
    return df, info


__all__ = ["cpu_frame"]
