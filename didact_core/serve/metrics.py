"""The exported metrics: :class:`ServingMetrics` on its own ``CollectorRegistry``, the
per-node families of :class:`~didact_core.serve.collector.NodeCollector`, and the rendered
exposition that ``/metrics`` sends.

Prometheus naming (``didact_`` prefix, base units, ``_total`` counters); labels ``node``,
plus ``cpu`` only while nodes × CPUs ≤ ``cpu_label_cap``::

    didact_reconstruction_error{node}          mean over the node's CPUs, last interval
    didact_reconstruction_error_max{node}      max over the node's CPUs
    didact_reconstruction_error_cpu{node,cpu}  per CPU (only under the cardinality cap)
    didact_latent{node,dim}                    mean latent point of the node's CPUs
    didact_ood{node}                           1 when a CPU's error > the model threshold
    didact_node_power_watts{node}              when the feed knows power
    didact_ood_events_total                    events sent to the review queue
    didact_ood_samples_total                   CPU samples above the threshold
    didact_samples_scored_total                CPU samples scored
    didact_cleaning_events_total{kind}         preprocessing's counts (counter_resets, gaps, …,
                                               missing_node_metrics, window_incomplete)
    didact_scoring_duration_seconds            histogram: preprocess + model + aggregation
    didact_feed_poll_duration_seconds          the last poll of the feed
    didact_feed_up                             0 when the last poll failed
    didact_last_poll_timestamp_seconds         wall-clock time of the last successful poll
    didact_champion_version                    0 when there is none
    didact_model_threshold                     the champion's OOD threshold
    didact_model_reloads_total                 model switches (the first load included)
    didact_registry_up                         0 while the registry is unreachable
    didact_registry_errors_total               failed registry checks and loads
    didact_review_errors_total                 failed writes to the review queue
    didact_model_holdout_error                 the champion's held-out mean error (evaluation run)
    didact_model_latent_knn_accuracy           its latent kNN accuracy of job flavours
    didact_model_fault_roc_auc                 its ROC AUC on labelled faults (when evaluated)
    didact_model_train_loss / _val_loss        the last epoch of its training run
    didact_model_day_timestamp_seconds         UTC midnight of the day it was trained on (0: no
                                               model, or a version without a ``day`` tag)
    didact_serving_info{feed,model}            1
    didact_cluster_*, didact_rack_*{rack},     the cluster model's view (a collector of
    didact_job_peer_*{job,node}                :mod:`didact_core.serve.cluster` on this registry)

The exposition is rendered by whoever changes the state — the scoring loop once per
interval, the model watcher after a check — with :meth:`ServingMetrics.refresh`; a
request only sends the cached bytes (:meth:`ServingMetrics.exposition`), so scrapers
never render, and never take the scoring thread's time (issue 15, fault 5).
"""

from __future__ import annotations

import gzip
import threading

import pandas as pd
import prometheus_client as pc

from didact_core.serve.collector import NodeCollector
from didact_core.serve.model import LoadedModel
from didact_core.serve.options import DEFAULT_CPU_LABEL_CAP
from didact_core.serve.scoring import IntervalScores

#: preprocessing counts exported as didact_cleaning_events_total{kind}
CLEANING_KINDS = (
    "duplicates",
    "out_of_order",
    "nan_rows",
    "invalid_rows",
    "counter_resets",
    "gaps",
    "long_gaps",
    "clock_skew",
    "stalled",
    "clamped",
    "missing_node_metrics",
    "window_incomplete",
)
SCORING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: gzip level of the cached body: level 1 is 5-10x faster than 6 and within a few % of its size
GZIP_LEVEL = 1


class ServingMetrics:
    """didact's serving metrics on their own ``CollectorRegistry`` (see the module doc)."""

    def __init__(
        self,
        cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
        stale_after_s: float = 300.0,
        registry=None,
        feed: str = "",
        model_name: str = "",
    ):
        pc.disable_created_metrics()  # no *_created series: low cardinality, nothing the dashboards use
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        #: per-node families, rendered next to the registry's (see :meth:`text`)
        self.nodes = NodeCollector(cpu_label_cap, stale_after_s)
        self._scoring_metrics(self.registry)
        self._health_metrics(self.registry)
        self._model_metrics(self.registry, feed, model_name)
        self.feed_up.set(0)
        self.registry_up.set(0)
        self.champion_version.set(0)
        self.model_day.set(0)
        self._render_lock = threading.Lock()
        self._node_text: tuple[int, bytes] = (-1, b"")
        self._exposition: tuple[bytes, bytes] = (b"", b"")
        self.refresh()

    def _scoring_metrics(self, r) -> None:
        self.ood_events = pc.Counter("didact_ood_events", "OOD events sent to the review queue", registry=r)
        self.ood_samples = pc.Counter(
            "didact_ood_samples", "CPU samples above the model threshold", registry=r
        )
        self.samples_scored = pc.Counter("didact_samples_scored", "CPU samples scored", registry=r)
        self.cleaning = pc.Counter(
            "didact_cleaning_events", "What preprocessing found in the live counters", ["kind"], registry=r
        )
        for k in CLEANING_KINDS:
            self.cleaning.labels(k)
        self.scoring_seconds = pc.Histogram(
            "didact_scoring_duration_seconds",
            "Time to preprocess, score and aggregate one interval",
            buckets=SCORING_BUCKETS,
            registry=r,
        )

    def _health_metrics(self, r) -> None:
        self.poll_seconds = pc.Gauge(
            "didact_feed_poll_duration_seconds", "Time of the last feed poll", registry=r
        )
        self.feed_up = pc.Gauge(
            "didact_feed_up", "1 when the last poll of the live feed succeeded", registry=r
        )
        self.last_poll = pc.Gauge(
            "didact_last_poll_timestamp_seconds", "Wall-clock time of the last successful poll", registry=r
        )
        self.champion_version = pc.Gauge(
            "didact_champion_version", "Registry version of the model being served (0: none)", registry=r
        )
        self.threshold = pc.Gauge(
            "didact_model_threshold", "OOD threshold of the model being served", registry=r
        )
        self.reloads = pc.Counter(
            "didact_model_reloads", "Model switches (the first load included)", registry=r
        )
        self.registry_up = pc.Gauge(
            "didact_registry_up", "1 when the model registry answered the last check", registry=r
        )
        self.registry_errors = pc.Counter(
            "didact_registry_errors", "Failed registry checks and model loads", registry=r
        )
        self.review_errors = pc.Counter(
            "didact_review_errors", "Failed writes to the OOD review queue", registry=r
        )

    def _model_metrics(self, r, feed: str, model_name: str) -> None:
        self.facts = {
            "holdout_error": pc.Gauge(
                "didact_model_holdout_error",
                "Mean reconstruction error of the served model on its day's held-out split",
                registry=r,
            ),
            "latent_knn_accuracy": pc.Gauge(
                "didact_model_latent_knn_accuracy",
                "kNN accuracy of job flavours in the served model's latent space",
                registry=r,
            ),
            "fault_roc_auc": pc.Gauge(
                "didact_model_fault_roc_auc",
                "ROC AUC of the served model's error on labelled faults",
                registry=r,
            ),
            "train_loss": pc.Gauge(
                "didact_model_train_loss", "Last training loss of the served model", registry=r
            ),
            "val_loss": pc.Gauge(
                "didact_model_val_loss", "Last validation loss of the served model", registry=r
            ),
        }
        # the nightly-missing alert: a champion that stays on an old day means nights failed
        self.model_day = pc.Gauge(
            "didact_model_day_timestamp_seconds",
            "UTC midnight of the day the served model was trained on (0: none or unknown)",
            registry=r,
        )
        self.info = pc.Gauge(
            "didact_serving_info",
            "The serving process: live feed and registered model",
            ["feed", "model"],
            registry=r,
        )
        self.info.labels(feed, model_name).set(1)

    def model_loaded(self, model: LoadedModel) -> None:
        self.champion_version.set(model.version)
        self.threshold.set(model.threshold)
        self.reloads.inc()
        self.model_day.set(float(model.facts.get("day_timestamp_seconds") or 0.0))
        for name, gauge in self.facts.items():
            v = model.facts.get(name)
            gauge.set(float(v) if v is not None else float("nan"))

    def interval(
        self,
        scores: IntervalScores | None,
        power: pd.Series | None,
        now: float,
        poll_seconds: float,
        events: int,
    ) -> None:
        self.feed_up.set(1)
        self.last_poll.set(now)
        self.poll_seconds.set(poll_seconds)
        self.nodes.update(scores, power, now)
        if scores is None:
            return
        self.scoring_seconds.observe(scores.seconds)
        self.samples_scored.inc(len(scores.samples))
        self.ood_samples.inc(scores.ood_samples)
        self.ood_events.inc(events)
        rep = scores.report
        for k in CLEANING_KINDS:
            v = getattr(rep, k)
            if v:
                self.cleaning.labels(k).inc(v)

    def text(self) -> bytes:
        """The exposition text rendered now: the per-node families, then the registry's."""
        with self._render_lock:
            return self._render()

    def _render(self) -> bytes:
        version = self.nodes.version
        if self._node_text[0] != version:  # the per-node part changes once per interval
            self._node_text = (version, self.nodes.text().encode())
        return self._node_text[1] + pc.generate_latest(self.registry)

    def refresh(self) -> None:
        """Render the exposition and its gzip once, for every request until the next refresh."""
        with self._render_lock:
            body = self._render()
            self._exposition = (body, gzip.compress(body, compresslevel=GZIP_LEVEL))

    def exposition(self) -> tuple[bytes, bytes]:
        """(text, gzip of the text) as of the last :meth:`refresh` — what ``/metrics`` sends."""
        return self._exposition
