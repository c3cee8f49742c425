"""The cluster model, live: each interval's node scores → the state of the cluster, its racks
and its jobs' peers, exported next to the node metrics; incidents into the review queue.

:class:`LiveCluster` follows the cluster model's ``champion`` alias (``<model_name>-cluster``,
trained nightly by the ``cluster_model`` asset; :mod:`didact_core.cluster.nightly`) every
``reload_s``; without one it exports ``didact_cluster_model_version 0`` and nothing else
changes.  Per interval it runs the champion's :class:`~didact_core.cluster.ClusterScorer` on
serving's per-node frame (a few ms for 1,000 nodes: bench/README_cluster.md) with

* the topology: ``DIDACT_TOPOLOGY``, or the simulated feed's own racks (a node the topology
  does not place goes to rack ``unplaced``);
* the running multi-node jobs (``DIDACT_LIVE_JOBS``): ``auto`` — the simulated feed's job
  membership of the day (its ``cluster_truth``), or a feed's ``jobs()`` frame (job_id, node[,
  start, end]) when it has one; ``slurm`` — ``squeue``'s running jobs
  (:mod:`didact_core.serve.slurm_jobs`); ``none``.

Exported (a collector renders the last interval's view at refresh time, so no stale labels)::

    didact_cluster_model_version                 0 when there is no cluster champion
    didact_cluster_incident_score                max of cluster and rack scores (clean-day units)
    didact_cluster_score                         the whole cluster's score
    didact_cluster_threshold                     the incident threshold
    didact_cluster_state                         0 normal, 1 elevated (≥ low threshold), 2 incident
    didact_cluster_open_incidents                incidents open now (0 or 1)
    didact_cluster_incidents_total               incidents opened since start
    didact_cluster_frac_ood / _mean_error        the simple baselines of this interval
    didact_cluster_scoring_duration_seconds      the last interval's cluster scoring
    didact_rack_score{rack}                      per rack, clean-day units
    didact_rack_max_error{rack}                  the rack's highest node error (baseline)
    didact_job_peer_score{job,node}              a job member's robust z against its peers
    didact_job_peer_outlier{job,node}            1 when above the peer threshold
    didact_job_peers_running                     multi-node jobs scored this interval

An incident opens when the incident score reaches the threshold and stays open while it is
at least the low threshold (as the nightly :func:`~didact_core.cluster.find_incidents`);
its opening sends one event to the review queue (node ``cluster`` or ``rack:<rack>``, cpu -1,
the racks above the low threshold in ``features``), as OOD events are sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from didact_core.cluster.model import ClusterModel
from didact_core.cluster.nightly import ClusterRegistry
from didact_core.cluster.scorer import ClusterInterval, ClusterScorer
from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.topology import topology_for
from didact_core.learn.registry import CHAMPION
from didact_core.serve.scoring import IntervalScores
from didact_core.serve.slurm_jobs import SlurmJobs

log = logging.getLogger(__name__)

EVENT_COLUMNS = ["ts", "node", "cpu", "score", "threshold", "model_version", "features", "latent_0", "latent_1",
                 "nearest_flavour"]  # fmt: skip


class LiveCluster:
    """The cluster champion in the serving loop (see the module doc)."""

    def __init__(self, settings: Settings, feed, registry=None, reload_s: float = 30.0):
        self.settings = settings
        self.feed = feed
        self.reload_s = float(reload_s)
        self.model: ClusterModel | None = None
        self.version = 0
        self.last: ClusterInterval | None = None
        self.open = False
        self.incidents_total = 0
        self.errors = 0
        self._scorer: ClusterScorer | None = None
        self._scorer_nodes: frozenset | None = None
        self._jobs: tuple[dt.date, pd.DataFrame | None] | None = None
        self._slurm_jobs = None  # DIDACT_LIVE_JOBS=slurm: squeue, asked once a minute
        self._slurm_seen: tuple | None = None
        self._slurm_warned = False
        self._next_check = 0.0
        self._reg: ClusterRegistry | None = None
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    # -- the champion --
    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    def check(self) -> bool:
        """Load the cluster champion when its version changed; True when it did.  A registry
        that cannot be reached keeps the model being served (logged)."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow is heavy to import

        self._next_check = time.monotonic() + self.reload_s
        uri = self.settings.tracking_uri
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
            self._reg = None  # nothing trained in this home yet (or its registry is away): never create one
            return False
        try:
            if self._reg is None:
                self._reg = ClusterRegistry(self.settings)
            v = self._reg.alias(CHAMPION)
            if v is None or v == self.version:
                return False
            model = self._reg.load(v)
        except (DidactError, MlflowException, OSError) as e:
            self.errors += 1
            self._reg = None
            log.warning("cluster model: %s (still serving v%d)", e, self.version)
            return False
        with self._lock:
            self.model, self.version, self._scorer, self._scorer_nodes = model, int(v), None, None
        log.info("cluster model: serving v%d (threshold %.3g)", v, model.threshold_)
        return True

    def follow(self, stop: threading.Event) -> None:
        """Check every ``reload_s`` until ``stop`` is set (a thread of its own)."""
        while not stop.wait(self.reload_s):
            self.check()

    # -- one interval --
    def _topology(self, nodes: list[str]):
        sim = getattr(self.feed, "cluster", None)
        topo = getattr(sim, "topology", None) if not self.settings.topology.strip() else None
        if topo is not None and set(nodes) <= set(topo.nodes):
            return topo
        return topology_for(self.settings, nodes, strict=False)

    def running_jobs(self, ts: pd.Timestamp, scored: frozenset) -> pd.DataFrame | None:
        """The multi-node jobs running at ``ts`` (job_id, node), by ``DIDACT_LIVE_JOBS``; from
        Slurm, only those on the ``scored`` nodes.  None: no membership."""
        if self.settings.live_jobs == "none":
            return None
        if self.settings.live_jobs == "slurm":
            if self._slurm_jobs is None:
                self._slurm_jobs = SlurmJobs(self.settings.slurm_conf, self.settings.slurm_command_timeout_s)
            return self._scored_only(self._slurm_jobs(), scored)
        sim = getattr(self.feed, "cluster", None)
        if sim is not None and hasattr(sim, "cluster_truth"):
            day = ts.date()
            if self._jobs is None or self._jobs[0] != day:  # one frame a day: validated once by the scorer
                members = sim.cluster_truth(day)["job_members"]
                self._jobs = (day, members if len(members) else None)
            return self._jobs[1]
        jobs = getattr(self.feed, "jobs", None)
        return jobs() if callable(jobs) else None

    def _scored_only(self, jobs: pd.DataFrame | None, scored: frozenset) -> pd.DataFrame | None:
        """Slurm's running jobs on the nodes being scored: a node the telemetry does not name (not
        monitored, or named otherwise) is left out — said once — instead of failing the interval."""
        if jobs is None:
            return None
        seen = self._slurm_seen
        if seen is not None and seen[0] is jobs and seen[1] == scored:
            return seen[2]  # the same answer: the scorer validates a frame it saw once only
        known = jobs["node"].isin(scored)
        if not known.all() and not self._slurm_warned:
            self._slurm_warned = True
            log.warning("running jobs from Slurm: %d node(s) not scored here, e.g. %s (left out; with "
                        "Prometheus, DIDACT_PROMETHEUS_NODE_LABEL picks the node names)",
                        (~known).sum(), jobs["node"][~known].iloc[0])  # fmt: skip
        self._slurm_seen = (jobs, scored, jobs[known].reset_index(drop=True))
        return self._slurm_seen[2]

    def score(self, scores: IntervalScores) -> pd.DataFrame:
        """Score the interval; returns the review-queue events it opened (usually none)."""
        with self._lock:
            model = self.model
        if model is None or scores is None or scores.nodes.empty:
            return pd.DataFrame(columns=EVENT_COLUMNS)
        nodes = scores.nodes
        key = frozenset(nodes.index.astype(str))
        if self._scorer is None or not key <= self._scorer_nodes:
            topo = self._topology(sorted(key))
            self._scorer, self._scorer_nodes = model.scorer(topo), frozenset(topo.nodes)
        ts = pd.Timestamp(scores.samples["ts"].max()) if len(scores.samples) else pd.Timestamp(scores.ts)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        try:
            out = self._scorer.score(nodes, ts, self.running_jobs(ts, self._scorer_nodes))
        except DidactError as e:  # a bad topology or job frame must not stop node scoring
            self.errors += 1
            log.warning("cluster scoring: %s", e)
            return pd.DataFrame(columns=EVENT_COLUMNS)
        self.last = out
        return self._incident(out, model)

    def _incident(self, out: ClusterInterval, model: ClusterModel) -> pd.DataFrame:
        low = model.calibration_.low_threshold
        s = out.incident_score
        if self.open:
            self.open = bool(np.isfinite(s) and s >= low)
            return pd.DataFrame(columns=EVENT_COLUMNS)
        if not (np.isfinite(s) and s >= out.threshold):
            return pd.DataFrame(columns=EVENT_COLUMNS)
        self.open, self.incidents_total = True, self.incidents_total + 1
        racks = out.racks["score"]
        top_score = racks.get(out.top_rack, np.nan) if out.top_rack is not None else np.nan
        scope = "cluster" if not np.isfinite(top_score) or out.cluster_score >= top_score else "rack"
        feats = {"kind": "cluster_incident", "live": True, "scope": scope, "top_rack": out.top_rack,
                 "racks": [str(r) for r in racks[racks >= low].sort_values(ascending=False).index],
                 "cluster_score": round(float(out.cluster_score), 4), "frac_ood": round(float(out.frac_ood), 4),
                 "mean_error": round(float(out.mean_error), 6),
                 "peer_outliers": [f"{j}/{n}" for j, n in out.peers.loc[out.peers["outlier"], ["job_id", "node"]].to_numpy()][:32]}  # fmt: skip
        return pd.DataFrame([{
            "ts": out.ts, "node": "cluster" if scope == "cluster" else f"rack:{out.top_rack}", "cpu": -1,
            "score": float(s), "threshold": float(out.threshold), "model_version": self.version, "features": feats,
            "latent_0": np.nan, "latent_1": np.nan, "nearest_flavour": None,
        }], columns=EVENT_COLUMNS)  # fmt: skip

    # -- the exported families (prometheus_client collector protocol) --
    def describe(self):
        return []

    def collect(self):
        yield _gauge("didact_cluster_model_version", "Registry version of the cluster model being served (0: none)", self.version)
        yield CounterMetricFamily("didact_cluster_incidents", "Cluster incidents opened since start", value=self.incidents_total)
        out, model = self.last, self.model
        if out is None or model is None:
            return
        low = model.calibration_.low_threshold
        s = out.incident_score
        state = 2 if s >= out.threshold else 1 if s >= low else 0
        for name, doc, v in (
            ("didact_cluster_incident_score", "Cluster incident score, clean-day units (max of cluster and racks)", s),
            ("didact_cluster_score", "The whole cluster's score, clean-day units", out.cluster_score),
            ("didact_cluster_threshold", "Incident threshold of the cluster model", out.threshold),
            ("didact_cluster_state", "0 normal, 1 elevated (above the low threshold), 2 incident", state),
            ("didact_cluster_open_incidents", "Cluster incidents open now", int(self.open)),
            ("didact_cluster_frac_ood", "Share of OOD nodes this interval (baseline)", out.frac_ood),
            ("didact_cluster_mean_error", "Mean node error this interval (baseline)", out.mean_error),
            ("didact_cluster_scoring_duration_seconds", "Cluster scoring of the last interval", out.seconds),
            ("didact_job_peers_running", "Multi-node jobs with peer scores this interval", out.peers["job_id"].nunique()),
        ):  # fmt: skip
            yield _gauge(name, doc, v)
        racks = out.racks
        yield _labelled("didact_rack_score", "Rack score, clean-day units", ["rack"], zip(racks.index, racks["score"]))
        yield _labelled("didact_rack_max_error", "Highest node error in the rack (baseline)", ["rack"],
                        zip(racks.index, racks["max_error"]))  # fmt: skip
        p = out.peers
        keys = list(zip(p["job_id"].astype(str), p["node"].astype(str)))
        yield _labelled("didact_job_peer_score", "A job member's robust z against its peers", ["job", "node"],
                        ((k, v) for k, v in zip(keys, p["peer_score"])))  # fmt: skip
        yield _labelled("didact_job_peer_outlier", "1 when the member is above the peer threshold", ["job", "node"],
                        ((k, float(v)) for k, v in zip(keys, p["outlier"])))  # fmt: skip


def _gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value) if value is not None and np.isfinite(value) else float("nan"))


def _labelled(name: str, doc: str, labels: list[str], rows) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in rows:
        v = float(value)
        if np.isfinite(v):
            g.add_metric([str(k) for k in key] if isinstance(key, tuple) else [str(key)], v)
    return g
