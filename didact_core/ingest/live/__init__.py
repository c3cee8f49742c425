"""Live feeds: the latest CPU counters of every node, one scrape at a time.

Serving (:mod:`didact_core.serve.service`) polls a :class:`LiveFeed` every interval and turns
two consecutive polls into AI-ready features with the same :func:`preprocess` as
training.  One interface (:mod:`~didact_core.ingest.live.base`)::

    feed.poll()           -> raw CPU frame (schema.RAW_CPU_COLUMNS): the latest counters of
                             every (node, cpu), one row each, ``ts`` = when they were scraped
    feed.poll(node_metrics=True)
                          -> the same, and the feed also reads the node-level metrics of
                             the same scrapes (only asked for when the model uses them)
    feed.node_metrics()   -> those node-level metrics (schema.RAW_NODE_COLUMNS: one row per
                             node, ``ts`` = the node's scrape time, equal to its CPU rows'),
                             or None (not asked for at the last poll, or the feed has none)
    feed.power()          -> watts per node (pd.Series indexed by node) of the last poll, or None
    feed.close()

Node-level metrics are cumulative counters (``schema.NODE_COUNTERS``: context switches,
interrupts, disk busy seconds and bytes, page faults, network bytes; summed over
devices, virtual network devices excluded) and gauges (``schema.NODE_GAUGES``: memory
in use, load1), exactly the raw ``node_metrics`` rows a nightly run saves; serving pairs
consecutive polls of them as it does the CPU counters.

Three feeds, one module each:

* :class:`SimulatedLiveFeed` (``simulated``, the default) — the simulated cluster's
  counters at the current wall-clock time; ``speed`` runs simulated time faster than
  the wall clock (demos, tests); ``faults`` injects a behavioural fault on a node from
  the moment it is set (an OOD source for demos/tests).
* :class:`PrometheusLiveFeed` (``prometheus``) — instant queries of
  ``node_cpu_seconds_total`` (value and ``timestamp()``) on the configured Prometheus;
  the node is the ``DIDACT_PROMETHEUS_NODE_LABEL`` label.
* :class:`LocalHostFeed` (``localhost``) — this machine's ``/proc/stat`` as one node
  (USER_HZ ticks → seconds, the same numbers node exporter reports), node-level metrics
  from the rest of ``/proc`` as node exporter computes them.

A feed whose source is down raises :class:`SourceUnavailableError` naming it.
"""

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.live.base import FEEDS, NODE_VALUES, LiveFeed
from didact_core.ingest.live.localhost import LocalHostFeed
from didact_core.ingest.live.prometheus import PrometheusLiveFeed
from didact_core.ingest.live.simulated import SimulatedLiveFeed


def make_feed(kind: str | None, settings: Settings, **kwargs) -> LiveFeed:
    """The feed named ``kind`` (``None``: ``prometheus`` if the settings' source is, else the simulator)."""
    kind = kind or ("prometheus" if settings.source == "prometheus" else "simulator")
    if kind == "simulator":
        return SimulatedLiveFeed(settings, **kwargs)
    if kind == "prometheus":
        return PrometheusLiveFeed(settings, **kwargs)
    if kind == "localhost":
        return LocalHostFeed(**kwargs)
    raise DidactError(f"live feed {kind!r}", "is not a known feed", f"use one of {', '.join(FEEDS)}")


__all__ = [
    "FEEDS",
    "NODE_VALUES",
    "LiveFeed",
    "LocalHostFeed",
    "PrometheusLiveFeed",
    "SimulatedLiveFeed",
    "make_feed",
]
