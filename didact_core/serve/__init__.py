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
    options.py    the options of serving: defaults, the arguments of `didact serve` (light: no torch)
    cli.py        python -m didact_core.serve.cli, serve_from_args (what `didact serve` runs; not
                  re-exported here, so that `python -m` runs it fresh)

The names below are imported on first use (PEP 562): importing a light submodule (the
options) does not import torch through this package.
"""

import importlib

#: each re-exported name → the submodule that defines it
_WHERE = {
    "DEFAULT_CPU_LABEL_CAP": "options",
    "DEFAULT_INTERVAL_S": "options",
    "DEFAULT_RELOAD_S": "options",
    "NodeCollector": "collector",
    "ReviewSink": "events",
    "ood_events": "events",
    "NodeHistory": "history",
    "WindowBuffer": "history",
    "MetricsServer": "http",
    "CLEANING_KINDS": "metrics",
    "ServingMetrics": "metrics",
    "LoadedModel": "model",
    "IntervalScores": "scoring",
    "Scorer": "scoring",
    "aggregate_nodes": "scoring",
    "ServingService": "service",
    "serve": "service",
    "ModelWatcher": "watcher",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
