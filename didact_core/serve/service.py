"""Serving: score every node with the champion in near real time and export to Prometheus.

    serve(settings, host="127.0.0.1", port=9108, interval_s=15, reload_s=30)   # until SIGTERM/SIGINT
    python -m didact_core.serve.cli --port 9108 --interval 15 --reload 30 [--feed simulator|prometheus|…]

Every ``interval_s`` the :class:`ServingService`, in the thread that runs it,

1. polls the live feed (:mod:`didact_core.ingest.live`) for the latest counters of every
   (node, cpu) — and, when the champion uses node-level features, the node-level
   metrics of the same scrapes — and pairs them with the previous poll;
2. turns each pair into the interval's features with :func:`~didact_core.data.preprocess.preprocess`
   (the training code: counter resets, NaN, skew … are handled and counted, exported as
   ``didact_cleaning_events_total{kind}``; node-level rates joined by node and scrape
   time); for a champion with temporal context (window T > 1) the lag columns come from
   a rolling buffer of each series' last T − 1 samples, as training's ``add_windows``
   builds them from consecutive scrapes (a series without full history yet is counted
   as ``window_incomplete`` and not scored) — :mod:`didact_core.serve.scoring`;
3. applies the champion (its frozen feature transform included) to all samples at once:
   reconstruction error and latent coordinates per (node, cpu), then per node the mean
   and max error over CPUs, the mean latent point and the OOD flag (a CPU's error above
   the champion's ``threshold_``);
4. updates the exported metrics (:mod:`didact_core.serve.metrics`) and renders the
   exposition once, which ``/metrics`` (:mod:`didact_core.serve.http`, threads of its
   own) sends until the next interval; sends the interval's OOD events (one per OOD node:
   its worst CPU's sample) and totals to the review queue in one batch
   (:mod:`didact_core.serve.events`).
5. runs the cluster model's champion, when there is one, on the interval's per-node frame
   (:mod:`didact_core.serve.cluster`: cluster, rack and job-peer scores; a newly opened
   cluster incident joins the interval's events in the review queue).

A :class:`~didact_core.serve.watcher.ModelWatcher` follows the registry's ``champion``
alias every ``reload_s`` in a thread of its own.  Without a champion, serving says so and
keeps polling (``didact_champion_version`` 0).

What the champion needs is read from its ``feature_names``
(:func:`~didact_core.data.preprocess.split_feature_columns`: base features and window), so any
model the nightly training produces (``DIDACT_FEATURES``, ``DIDACT_WINDOW``) is served with
the same features and transform it was trained on.  A windowed model's lags are the
series' previous *scrapes*: poll more often than the source scrapes (e.g. ``--interval 7.5``
for 15 s scrapes; a poll that finds no new scrape costs little and scores nothing), or a
scrape the feed never showed makes a gap and leaves the next T − 1 samples without history
(serving warns when that happens often).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.ingest.live import LiveFeed, make_feed
from didact_core.learn.registry import bound_mlflow_http
from didact_core.schema import NODE_FEATURES
from didact_core.serve.cluster import LiveCluster
from didact_core.serve.events import ReviewFailed, ReviewSink, ood_events
from didact_core.serve.http import MetricsServer
from didact_core.serve.metrics import ServingMetrics
from didact_core.serve.model import LoadedModel
from didact_core.serve.options import (
    DEFAULT_CPU_LABEL_CAP,
    DEFAULT_HOST,
    DEFAULT_INTERVAL_S,
    DEFAULT_PORT,
    DEFAULT_RELOAD_S,
)
from didact_core.serve.scoring import IntervalScores, Scorer
from didact_core.serve.watcher import ModelWatcher

log = logging.getLogger(__name__)



class ServingService:
    """Feed → scorer → exporter + review queue, with a :class:`ModelWatcher` (see the module doc).

    ``run_once()`` does one interval (tests, benchmarks); ``run(stop)`` loops until
    ``stop`` is set, with the watcher in a thread of its own.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        feed: LiveFeed | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        reload_s: float = DEFAULT_RELOAD_S,
        cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
        review: bool = True,
        stale_after_s: float | None = None,
    ):
        self.settings = settings or Settings.from_env()
        if not interval_s > 0 or not reload_s > 0:
            raise DidactError(
                f"serving interval {interval_s}s / reload {reload_s}s", "must be positive seconds"
            )
        if cpu_label_cap < 0:
            raise DidactError(
                f"cpu_label_cap={cpu_label_cap}", "must not be negative", "0 disables per-CPU series"
            )
        self.feed = feed or make_feed(None, self.settings)
        self.interval_s = float(interval_s)
        self.reload_s = float(reload_s)
        stale = stale_after_s if stale_after_s is not None else max(10 * self.interval_s, 120.0)
        self.metrics = ServingMetrics(
            cpu_label_cap, stale, feed=self.feed.name, model_name=self.settings.model_name
        )
        self.watcher = ModelWatcher(self.settings, self.metrics, self.reload_s)
        self.scorer = Scorer(interval_s=getattr(self.feed, "scrape_interval_s", None))
        #: the cluster model (racks, incidents, job peers) on each interval's node scores
        self.cluster = LiveCluster(self.settings, self.feed, self.metrics.registry, self.reload_s)
        self.review = ReviewSink(self.settings) if review else None
        self.last: IntervalScores | None = None
        self.intervals = 0
        self._http = None
        self._watch_thread: threading.Thread | None = None
        self._warned_no_node_metrics = False
        self._warned_gaps_at = -math.inf

    # -- one interval --
    def run_once(self) -> IntervalScores | None:
        """Poll, score, export, enqueue events, and render the exposition that ``/metrics``
        sends until the next interval.  Checks the registry first when no watcher thread
        runs and a check is due.  Returns the interval's scores (None: first poll, no
        model, or the feed failed)."""
        try:
            return self._interval()
        finally:
            self.metrics.refresh()

    def _interval(self) -> IntervalScores | None:
        if self._watch_thread is None and self.watcher.due():
            self.watcher.check()
        if self._watch_thread is None and self.cluster.due():
            self.cluster.check()
        model = self.watcher.current
        t0 = time.perf_counter()
        polled = self._poll(model)
        if polled is None:
            return None
        raw, node_metrics = polled
        poll_s = time.perf_counter() - t0
        now = time.time()
        scores = self.scorer.score(raw, model, now, node_metrics=node_metrics)
        events = pd.DataFrame()
        if scores is not None:
            events = ood_events(scores, model)
            self._check_skipped_scrapes(scores, model)
        sent = len(events)
        self.metrics.interval(scores, self.feed.power(), now, poll_s, sent)
        if scores is not None:  # cluster incidents join the OOD events in the review queue
            incidents = self.cluster.score(scores)
            events = pd.concat([events, incidents], ignore_index=True) if len(incidents) else events
        if self.review is not None and scores is not None:
            try:
                self.review.submit(
                    events, (scores.ts, len(scores.samples), scores.ood_samples, scores.model_version)
                )
            except ReviewFailed as e:
                self.metrics.review_errors.inc()
                log.warning("review queue: %s — %d event(s) kept for the next interval", e, sent)
        self.intervals += 1
        self.last = scores
        if scores is not None:
            log.debug(
                "interval: %d samples, %d nodes, %d OOD, %.1f ms",
                len(scores.samples),
                len(scores.nodes),
                int(scores.nodes["ood"].sum()),
                scores.seconds * 1e3,
            )
        return scores

    def _poll(self, model: LoadedModel | None) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
        """(CPU counters, node-level metrics when the model needs them) of one poll (None: the
        feed failed)."""
        want_nodes = model is not None and model.needs_node_metrics
        try:
            raw = self.feed.poll(node_metrics=True) if want_nodes else self.feed.poll()
            node_metrics = self.feed.node_metrics() if want_nodes else None
        except SourceUnavailableError as e:
            self.metrics.feed_up.set(0)
            log.warning("live feed %s: %s", self.feed.name, e)
            return None
        if want_nodes and node_metrics is None and not self._warned_no_node_metrics:
            log.warning(
                "live feed %s gives no node-level metrics, which champion v%d uses (%s): its samples are "
                "counted as missing_node_metrics and not scored",
                self.feed.name,
                model.version,
                ", ".join(f for f in model.base_features if f in NODE_FEATURES),
            )
        self._warned_no_node_metrics = want_nodes and node_metrics is None
        return raw, node_metrics

    def _check_skipped_scrapes(self, scores: IntervalScores, model: LoadedModel) -> None:
        """Warn (at most hourly) when a windowed model's samples often span skipped scrapes."""
        rep = scores.report
        seen = rep.rows_out + rep.window_incomplete + rep.missing_node_metrics
        if model.window <= 1 or seen == 0 or rep.gaps <= 0.1 * seen:
            return
        if time.monotonic() - self._warned_gaps_at < 3600:
            return
        self._warned_gaps_at = time.monotonic()
        log.warning(
            "%d of %d samples span more than one scrape interval (%.3gs): champion v%d's window of %d "
            "needs consecutive scrapes — poll more often than the source scrapes (--interval, e.g. half "
            "the scrape interval)",
            rep.gaps,
            seen,
            self.scorer.step_s() or float("nan"),
            model.version,
            model.window,
        )

    # -- HTTP --
    def start_http(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Serve ``/metrics`` on host:port from threads of its own (port 0 picks a free one);
        returns the port."""
        try:
            server = MetricsServer(host, port, self.metrics.exposition)
        except OSError as e:
            raise DidactError(
                f"metrics address {host}:{port}",
                f"cannot be bound ({e.strerror or e})",
                "pick a free port with --port (or stop what holds it)",
            ) from None
        server.start()
        self._http = server
        log.info("metrics on http://%s:%d/metrics", host, server.port)
        return server.port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    # -- loops --
    def run(self, stop: threading.Event, max_intervals: int | None = None) -> None:
        """Score every ``interval_s`` in the calling thread until ``stop`` is set (or
        ``max_intervals`` ran); the watcher follows the registry in a thread of its own and
        ``/metrics`` is served by its own threads, so neither ever delays an interval."""
        self.watcher.check()  # the first interval already has the champion, if there is one
        self.cluster.check()
        self.metrics.refresh()
        self._watch_thread = threading.Thread(
            target=self.watcher.follow,
            args=(stop, self.metrics.refresh),
            name="didact-model-watcher",
            daemon=True,
        )
        self._watch_thread.start()
        cluster_thread = threading.Thread(target=self.cluster.follow, args=(stop,), name="didact-cluster-watcher",
                                          daemon=True)  # fmt: skip
        cluster_thread.start()
        next_t = time.monotonic()
        try:
            while not stop.is_set():
                self.run_once()
                if max_intervals is not None and self.intervals >= max_intervals:
                    break
                next_t += self.interval_s
                late = time.monotonic() - next_t
                if late > 0:  # an interval overran: skip ahead rather than bursting to catch up
                    next_t += math.ceil(late / self.interval_s) * self.interval_s
                stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            stop.set()
            self._watch_thread.join(timeout=max(5.0, self.reload_s + 1))
            cluster_thread.join(timeout=max(5.0, self.reload_s + 1))
            self._watch_thread = None

    def close(self) -> None:
        self.stop_http()
        self.feed.close()


def serve(
    settings: Settings | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    interval_s: float = DEFAULT_INTERVAL_S,
    reload_s: float = DEFAULT_RELOAD_S,
    feed: LiveFeed | str | None = None,
    *,
    cpu_label_cap: int = DEFAULT_CPU_LABEL_CAP,
    review: bool = True,
    max_intervals: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set, or ``max_intervals``); returns 0.

    ``feed``: a :class:`~didact_core.ingest.live.LiveFeed`, or its name (``simulator``,
    ``prometheus``, ``localhost``); default: the settings' source.  Signal handlers are
    installed only when called from the main thread.
    """
    settings = settings or Settings.from_env()
    # a dead HTTP tracking server should cost a check seconds, not MLflow's minutes of retries
    bound_mlflow_http()
    if feed is None or isinstance(feed, str):
        feed = make_feed(feed, settings)
    service = ServingService(
        settings, feed, interval_s=interval_s, reload_s=reload_s, cpu_label_cap=cpu_label_cap, review=review
    )
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum, frame):
            log.info("%s: stopping", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        bound = service.start_http(host, port)
        log.info(
            "didact serving: feed %s, every %gs, champion checked every %gs, metrics on %s:%d",
            feed.name,
            interval_s,
            reload_s,
            host,
            bound,
        )
        service.run(stop, max_intervals=max_intervals)
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("didact serving stopped after %d intervals", service.intervals)
    return 0
