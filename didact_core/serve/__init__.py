"""Serving: score every node with the registry's champion in near real time, export the
scores on ``/metrics`` for Prometheus, and send OOD events to the review queue.

    model.py      LoadedModel (a champion ready to score), its MLflow facts
    history.py    NodeHistory, WindowBuffer: what scoring remembers between polls
    scoring.py    Scorer, IntervalScores, aggregate_nodes: one interval, polls → per-node scores
    events.py     ood_events, ReviewSink: OOD events to the review queue
    collector.py  NodeCollector: the per-node/per-CPU families of /metrics
    metrics.py    ServingMetrics: every exported metric, the rendered (cached) exposition
    watcher.py    ModelWatcher: follows the champion alias, keeps the last good model
    http.py       MetricsServer: /metrics for many scrapers without slowing scoring
    service.py    ServingService (the loop), serve()
    cli.py        python -m didact_core.serve.cli; the options of `didact serve` (not re-exported
                  here, so that `python -m` runs it fresh)
"""

from didact_core.serve.collector import DEFAULT_CPU_LABEL_CAP, NodeCollector
from didact_core.serve.events import ReviewSink, ood_events
from didact_core.serve.history import NodeHistory, WindowBuffer
from didact_core.serve.http import MetricsServer
from didact_core.serve.metrics import CLEANING_KINDS, ServingMetrics
from didact_core.serve.model import LoadedModel
from didact_core.serve.scoring import IntervalScores, Scorer, aggregate_nodes
from didact_core.serve.service import DEFAULT_INTERVAL_S, ServingService, serve
from didact_core.serve.watcher import DEFAULT_RELOAD_S, ModelWatcher

__all__ = [
    "CLEANING_KINDS",
    "DEFAULT_CPU_LABEL_CAP",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_RELOAD_S",
    "IntervalScores",
    "LoadedModel",
    "MetricsServer",
    "ModelWatcher",
    "NodeCollector",
    "NodeHistory",
    "ReviewSink",
    "Scorer",
    "ServingMetrics",
    "ServingService",
    "WindowBuffer",
    "aggregate_nodes",
    "ood_events",
    "serve",
]
