"""Node exporter's node-level series → raw ``node_metrics`` rows.

One row per (node, scrape) with :data:`~didact_core.schema.NODE_COUNTERS` (summed over
devices; loopback and virtual network devices excluded) and the gauges, as
:mod:`didact_core.ingest.node_exporter` defines them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from didact_core.ingest.node_exporter import NODE_METRICS, NODE_VALUES, node_metric_column, pivot_node_metrics
from didact_core.ingest.prometheus.wire import Series
from didact_core.schema import TS_DTYPE

#: the ``__name__`` regex that selects every node-level metric
NODE_METRICS_RE = "|".join(NODE_METRICS)


def node_metrics_frame(
    series: list[Series], node_label: str, node_of: Callable[[str], str]
) -> pd.DataFrame | None:
    """Node-level series → raw node_metrics rows ordered by (node, ts); None when no
    series had a node and a known metric."""
    parts = []
    for s in series:
        raw = s.labels.get(node_label)
        column = node_metric_column(s.labels.get("__name__", ""), s.labels)
        if raw is None or column is None or not len(s.ts):
            continue
        parts.append(pd.DataFrame({"node": node_of(raw), "ts": s.ts, "col": column, "v": s.values}))
    if not parts:
        return None
    wide = pivot_node_metrics(pd.concat(parts, ignore_index=True))
    nodes = sorted(wide["node"].unique())
    return (
        pd.DataFrame(
            {
                "ts": pd.to_datetime(wide["ts"].to_numpy(), unit="ms", utc=True).astype(TS_DTYPE),
                "node": pd.Categorical(wide["node"], categories=nodes),
                **{c: wide[c].to_numpy(dtype=np.float64) for c in NODE_VALUES},
            }
        )
        .sort_values(["node", "ts"], kind="stable")
        .reset_index(drop=True)
    )


__all__ = ["NODE_METRICS_RE", "node_metrics_frame"]
