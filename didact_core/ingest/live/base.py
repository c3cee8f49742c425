"""The live-feed interface: where ``didact serve`` gets the present counters of every node.

Serving (:mod:`didact_core.serve.service`) polls a :class:`LiveFeed` every interval and
turns two consecutive polls into AI-ready features with the same ``preprocess`` as
training; see :mod:`didact_core.ingest.live` for the feeds.
"""

from __future__ import annotations

import abc

import numpy as np
import pandas as pd

from didact_core.config import LIVE_FEEDS
from didact_core.ingest.node_exporter import NODE_VALUES
from didact_core.schema import CPU_MODES

FEEDS = LIVE_FEEDS


class LiveFeed(abc.ABC):
    """Where serving gets the present counters of every node."""

    name: str = "feed"
    #: the feed's scrape interval in seconds when it knows it (the simulator), else None
    scrape_interval_s: float | None = None
    _last_node_metrics: pd.DataFrame | None = None

    @abc.abstractmethod
    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        """The latest counters of every (node, cpu): one row each (schema.RAW_CPU_COLUMNS).

        With ``node_metrics`` the feed also reads the node-level metrics of the same
        scrapes, for :meth:`node_metrics`; without, it reads nothing more (the fast path)."""

    def node_metrics(self) -> pd.DataFrame | None:
        """The node-level metrics read by the last ``poll(node_metrics=True)``: one row per
        node (schema.RAW_NODE_COLUMNS), ``ts`` = its scrape time; None when the last poll
        did not ask for them or the feed has none."""
        return self._last_node_metrics

    def power(self) -> pd.Series | None:
        """Watts per node at the last :meth:`poll` (index: node), or None if the feed has none."""
        return None

    def close(self) -> None:
        """Release connections (nothing by default)."""

    def describe(self) -> dict:
        return {"feed": self.name}


def cpu_frame(
    ts_ms: np.ndarray, node_codes: np.ndarray, node_names, cpu: np.ndarray, values: np.ndarray
) -> pd.DataFrame:
    """A raw CPU frame from arrays; ``values`` is (rows, len(CPU_MODES)) float64."""
    return pd.DataFrame(
        {
            "ts": pd.Series(np.asarray(ts_ms, dtype=np.int64).view("M8[ms]")).dt.tz_localize("UTC"),
            "node": pd.Categorical.from_codes(np.asarray(node_codes, dtype=np.int32), list(node_names)),
            "cpu": np.asarray(cpu, dtype=np.int16),
            **{m: values[:, j] for j, m in enumerate(CPU_MODES)},
        }
    )


def node_frame(ts_ms: np.ndarray, node_codes: np.ndarray, node_names, values: np.ndarray) -> pd.DataFrame:
    """A raw node_metrics frame from arrays; ``values`` is (nodes, len(NODE_VALUES)) float64."""
    return pd.DataFrame(
        {
            "ts": pd.Series(np.asarray(ts_ms, dtype=np.int64).view("M8[ms]")).dt.tz_localize("UTC"),
            "node": pd.Categorical.from_codes(np.asarray(node_codes, dtype=np.int32), list(node_names)),
            **{c: np.asarray(values[:, j], dtype=np.float64) for j, c in enumerate(NODE_VALUES)},
        }
    )


__all__ = ["FEEDS", "NODE_VALUES", "LiveFeed", "cpu_frame", "node_frame"]
