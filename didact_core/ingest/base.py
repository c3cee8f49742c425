"""The telemetry source interface.

A source yields one UTC day of raw samples in node blocks, so a 1,000-node day never
has to sit in memory at once.  The simulator (embedded default) and the Prometheus
source implement it; anything that can produce ``node_cpu_seconds_total``-shaped
counters can.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class RawBlock:
    """Raw samples of some nodes for one day.

    ``cpu``: :data:`didact_core.schema.RAW_CPU_COLUMNS`, rows ordered by (node, cpu) series
    (within a series normally by ts; out-of-order rows are the preprocessor's business).
    ``power``: :data:`~didact_core.schema.RAW_POWER_COLUMNS` or ``None``.
    ``labels`` / ``faults``: ``(node, start, end, label)`` / ``(node, start, end, fault)``
    or ``None`` when the source does not know them.
    ``node_metrics``: optional node-level counters, one row per (ts, node).
    """

    cpu: pd.DataFrame
    power: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    faults: pd.DataFrame | None = None
    node_metrics: pd.DataFrame | None = None
    #: nodes expected but absent from this block (e.g. not scraped)
    missing_nodes: list[str] = field(default_factory=list)
    #: free-form facts for metadata (e.g. the simulator's injected data faults); the simulator's
    #: cluster-level truth frames, when it draws them (rates given, two racks or more): ``cluster_incidents`` (the whole
    #: day's), ``incident_nodes``, ``job_members``, ``stragglers``, ``topology`` (this block's
    #: nodes) — schemas in :mod:`didact_core.ingest.sim_cluster`
    meta: dict = field(default_factory=dict)


class TelemetrySource(abc.ABC):
    """Where raw node metrics come from."""

    #: short name used in config, metadata and errors
    name: str = "source"

    @abc.abstractmethod
    def nodes(self, day: dt.date) -> list[str]:
        """The nodes this source expects to report on ``day``."""

    @abc.abstractmethod
    def iter_blocks(self, day: dt.date, nodes_per_block: int = 64) -> Iterator[RawBlock]:
        """Yield the day's samples, a block of whole nodes at a time."""

    def plan_blocks(self, day: dt.date, nodes_per_block: int = 64) -> list | None:
        """Picklable descriptions of the day's blocks, for sources whose blocks can be
        fetched independently in worker processes (see :meth:`fetch_block`); ``None``
        when the source can only stream them in order."""
        return None

    def fetch_block(self, day: dt.date, plan_item) -> RawBlock:
        """Fetch one block of :meth:`plan_blocks`."""
        raise NotImplementedError(f"{type(self).__name__} cannot fetch blocks independently")

    def describe(self) -> dict:
        """Facts about the source for metadata (no secrets)."""
        return {"source": self.name}


def day_bounds(day: dt.date) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of a UTC day as timestamps."""
    start = pd.Timestamp(day, tz="UTC")
    return start, start + pd.Timedelta(days=1)
