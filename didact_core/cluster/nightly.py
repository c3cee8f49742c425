"""The cluster model, night by night: train from its own champion, register, gate, evaluate.

For day D, :func:`train_cluster_day`

1. scores every (interval, node) of D's AI-ready samples with the node detector's champion
   (:func:`~didact_core.cluster.node_scores.score_day`), places the nodes in racks
   (``DIDACT_TOPOLOGY``; a node it does not place goes to rack ``unplaced``, with a warning) and
   takes the multi-node jobs' membership (from the day's job labels where they name jobs — a
   ``job_id`` column, sacct's ``JobID`` — else the simulator's truth frames; else none: no
   peer scores);
2. splits D's intervals by time: every fourth hour (03, 07, 11, 15, 19, 23 UTC) is held out;
3. continues the cluster model's own ``champion`` on the other intervals (warm start; the
   intervals the champion itself scores as an incident are left out, so an incident does not
   become "normal"), or fits a fresh one when there is none — or when asked to ``rebase`` (a
   continued model keeps the config it was first trained with; a rebase brings this didact's);
4. registers the challenger in MLflow under ``<model_name>-cluster`` (a version holding the
   model's ``config.json``; aliases challenger / champion / previous_champion as the node
   model's) and applies the gate below; lineage rows under the asset ``cluster_model``.

**The gate** (:func:`cluster_gate`): on the held-out intervals that are *clean* (the
champion scores them below its low threshold — no incident is open there), each model's
99th percentile of its incident score divided by its own threshold says how close clean
time comes to a false alarm.  The challenger becomes champion unless its figure is worse
than the champion's by more than :data:`GATE_MARGIN` (0.25 of a threshold).  With no
champion it is promoted.  A rollback moves the alias back like the node model's
(:func:`rollback_cluster_champion`, reusing :func:`didact_core.learn.champion.rollback_champion`).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.cluster.evaluation import evaluate
from didact_core.cluster.incidents import find_incidents, incident_events
from didact_core.cluster.model import ClusterConfig, ClusterModel, ClusterScores
from didact_core.cluster.node_scores import score_day
from didact_core.config import Settings
from didact_core.data.parts import read_part
from didact_core.data.review import ReviewQueue
from didact_core.data.labels import JOB_ID
from didact_core.data.spine import AI_READY, LABELS
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError, RegistryError
from didact_core.ingest.simulator import cluster_truth
from didact_core.ingest.topology import topology_for
from didact_core.learn.champion import rollback_champion
from didact_core.learn.registry import CHALLENGER, CHAMPION, ModelRegistry, ModelVersionInfo
from didact_core.schema import EXCLUDE

log = logging.getLogger(__name__)

#: the asset whose lineage rows record the cluster model's versions
CLUSTER_ASSET = "cluster_model"
#: the registered model's name: the node model's plus this
NAME_SUFFIX = "-cluster"
#: every HOLDOUT_EVERY-th hour (the last of each block) is held out for the gate
HOLDOUT_EVERY = 4
#: the challenger may be this much worse (in units of a threshold) on clean held-out time
GATE_MARGIN = 0.25
_ARTIFACT = "cluster_model"


def cluster_model_name(settings: Settings) -> str:
    return settings.model_name + NAME_SUFFIX


class ClusterRegistry(ModelRegistry):
    """The node model's registry wrapper for the cluster model: same aliases, own name; a
    version holds the model's ``config.json`` (plain JSON, no MLflow flavour)."""

    def __init__(self, settings: Settings):
        super().__init__(settings.replace(model_name=cluster_model_name(settings)))

    def register(self, model: ClusterModel, tags: dict | None = None) -> ModelVersionInfo:
        """Log ``model`` in the active run and register it as a new version (alias challenger)."""
        import mlflow  # lazy: mlflow takes seconds to import

        with tempfile.TemporaryDirectory(prefix="didact-cluster-") as tmp:
            d = model.save(Path(tmp) / "cluster")
            self.call("logging the cluster model", mlflow.log_artifacts, str(d), artifact_path=_ARTIFACT)
        run_id = mlflow.active_run().info.run_id
        self._ensure_registered()
        mv = self.call("registering the cluster model", self.client.create_model_version, self.name,
                        mlflow.get_artifact_uri(_ARTIFACT), run_id=run_id,
                        tags={k: str(v) for k, v in (tags or {}).items()})  # fmt: skip
        self.set_alias(CHALLENGER, int(mv.version))
        return self.version(int(mv.version))

    def load(self, version: int) -> ClusterModel:
        """The cluster model of a registered version (a RegistryError when its files are gone)."""
        import mlflow  # lazy: mlflow takes seconds to import

        info = self.version(version)
        tmp = tempfile.mkdtemp(prefix="didact-cluster-load-")
        what = f"cluster model {self.name} v{version} (artifacts at {info.source})"
        fix = "restore the artifact store, or roll the cluster champion back to a version whose files exist"
        try:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=tmp)
            except Exception as e:  # noqa: BLE001 — MLflow raises many types for a missing artifact
                raise RegistryError(what, f"cannot be downloaded: {str(e)[:300]}", fix) from None
            found = sorted(Path(local).rglob("config.json"))
            if not found:
                raise RegistryError(what, "has no config.json in the artifact store", fix)
            return ClusterModel.load(found[0].parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- the day's inputs ------------------------------------------------------------------------
@dataclass
class DayInputs:
    scores: pd.DataFrame
    topology: object
    jobs: pd.DataFrame | None
    node_version: int
    data_version: str
    jobs_source: str


def day_inputs(settings: Settings, day: str, wh: Warehouse | None = None) -> DayInputs:
    """The day's node scores (node champion), topology and job membership."""
    wh = wh or Warehouse(settings.home_path, settings.retention_versions)
    detector, node_version = ModelRegistry(settings).load_alias(CHAMPION)
    if detector is None:
        raise RegistryError(f"model {settings.model_name}", "has no champion to score the day's nodes with",
                            "materialise champion_model for the day first")  # fmt: skip
    info = wh.require(AI_READY, day)
    cols = ["ts", "node", "cpu", *detector.feature_names]
    # part by part: a part holds whole nodes, so its (ts, node) rows are complete and memory
    # stays one part's (the 1,000-node reference day is 46M samples)
    scored = []
    for path in wh.part_paths(AI_READY, day, "samples"):
        part = read_part(path)
        if len(part):
            scored.append(score_day(part[[c for c in cols if c in part.columns]], detector))
    if not scored:
        raise DataQualityError(f"{AI_READY}/{day}", "has no samples", "check the day's raw data")
    scores = pd.concat(scored, ignore_index=True).sort_values(["ts", "node"], ignore_index=True)
    topology = topology_for(settings, sorted(scores["node"].astype(str).unique()), strict=False)
    jobs, source = label_jobs(wh, day)
    if jobs is None and settings.source == "simulator":
        jobs, source = cluster_truth(settings, dt.date.fromisoformat(day))["job_members"], "simulator"
    if jobs is not None:
        jobs = jobs[jobs["node"].astype(str).isin(set(topology.nodes))]
        jobs = jobs if len(jobs) else None
    return DayInputs(scores, topology, jobs, int(node_version), info.ref, source)


def label_jobs(wh: Warehouse, day: str) -> tuple[pd.DataFrame | None, str]:
    """(multi-node job membership ``job_id, node, start, end`` from the day's stored job labels,
    where they name jobs — a ``job_id`` column, sacct's ``JobID`` — and a line saying where it came
    from).  A job on one node has no peers and is left out."""
    none = "none (the job labels name no jobs: export sacct with JobID, or add a job_id column to the CSV)"
    info = wh.head(LABELS, day)
    if info is None:
        return None, "none (no job labels stored for the day)"
    labels = wh.read(LABELS, day, "labels", info.version)
    if JOB_ID not in labels.columns:
        return None, none
    rows = labels[labels[JOB_ID].notna() & (labels["label"].astype(str) != EXCLUDE)]
    nodes = rows.groupby(JOB_ID)["node"].transform("nunique")
    rows = rows[nodes >= 2]
    if rows.empty:
        return None, "none (no job in the day's job labels ran on more than one node)"
    jobs = pd.DataFrame({"job_id": rows[JOB_ID].astype(str), "node": rows["node"].astype(str),
                         "start": rows["start"], "end": rows["end"]}).reset_index(drop=True)  # fmt: skip
    return jobs, f"job labels ({jobs['job_id'].nunique()} multi-node jobs)"


def holdout_mask(ts: pd.Series) -> np.ndarray:
    """True for the held-out intervals: the last hour of every HOLDOUT_EVERY hours."""
    return (pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).hour % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)


# -- the gate ----------------------------------------------------------------------------------
@dataclass
class ClusterGate:
    passed: bool
    reason: str
    challenger_q99: float | None = None
    champion_q99: float | None = None
    clean_steps: int = 0
    margin: float = GATE_MARGIN

    def metadata(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "challenger_q99_over_threshold": self.challenger_q99,
                "champion_q99_over_threshold": self.champion_q99, "clean_steps": self.clean_steps,
                "margin": self.margin}  # fmt: skip


def _q99_over_threshold(out: ClusterScores, clean: np.ndarray) -> float:
    s = out.timesteps["incident_score"].to_numpy(dtype=np.float64)[clean]
    s = s[np.isfinite(s)]
    return float(np.quantile(s, 0.99) / out.threshold) if s.size else 0.0


def cluster_gate(challenger: ClusterModel, champion: ClusterModel | None, held: DayInputs) -> ClusterGate:
    """The rule of the module doc, on the held-out node scores ``held``."""
    if champion is None:
        return ClusterGate(True, "first cluster model: promoted without a comparison")
    if held.scores.empty:
        return ClusterGate(True, "no held-out intervals: promoted without a comparison")
    champ = champion.score(held.scores, held.topology, held.jobs)
    chall = challenger.score(held.scores, held.topology, held.jobs)
    s = champ.timesteps["incident_score"].to_numpy(dtype=np.float64)
    clean = np.isfinite(s) & (s < champ.low_threshold)
    if not clean.any():
        return ClusterGate(True, "no clean held-out interval: promoted without a comparison")
    a, b = _q99_over_threshold(chall, clean), _q99_over_threshold(champ, clean)
    passed = a <= b + GATE_MARGIN
    why = (f"clean held-out q99 incident score / threshold: challenger {a:.3f} vs champion {b:.3f} "
           f"(margin {GATE_MARGIN}) over {int(clean.sum())} steps")  # fmt: skip
    return ClusterGate(passed, ("pass: " if passed else "fail: ") + why, a, b, int(clean.sum()))


# -- one day ---------------------------------------------------------------------------------
@dataclass
class ClusterOutcome:
    day: str
    version: ModelVersionInfo
    parent_version: int | None
    gate: ClusterGate
    promoted: bool
    champion_version: int | None
    node_model_version: int
    train_steps: int
    holdout_steps: int
    nodes: int
    racks: int
    job_members: int
    jobs_source: str
    threshold: float
    peer_threshold: float
    seconds: float
    incidents: pd.DataFrame = field(default_factory=pd.DataFrame)
    events_added: int = 0
    mlflow_run_id: str = ""
    #: trained fresh (no champion, or a rebase) rather than continued from the champion
    fresh: bool = True


def _subset(inp: DayInputs, mask: np.ndarray) -> DayInputs:
    return DayInputs(inp.scores[mask].reset_index(drop=True), inp.topology, inp.jobs, inp.node_version,
                     inp.data_version, inp.jobs_source)  # fmt: skip


def train_cluster_day(settings: Settings, day: str, run_id: str | None = None,
                      config: ClusterConfig | None = None, rebase: bool = False) -> ClusterOutcome:
    """Train day ``day``'s cluster challenger from the cluster champion, register, gate (module doc).

    ``config``: the challenger's config when it starts fresh (no champion, or ``rebase``; default:
    this didact's ``ClusterConfig()``).  ``rebase``: start fresh even though a champion exists — a
    continued model keeps the config it was first trained with, so new scoring options (new
    defaults) reach an existing deployment only this way.  The day's incidents under the champion
    are still left out of training, and the fresh challenger is gated against the champion as usual."""
    import mlflow  # lazy: mlflow takes seconds to import

    t0 = time.perf_counter()
    registry = ClusterRegistry(settings)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    inp = day_inputs(settings, day, wh)
    parent = registry.alias(CHAMPION)
    champion = registry.load(parent) if parent is not None else None
    held = holdout_mask(inp.scores["ts"])
    train, test = _subset(inp, ~held), _subset(inp, held)
    if champion is not None:  # leave out what the champion calls an incident
        own = champion.score(train.scores, train.topology, train.jobs).timesteps
        busy = set(pd.to_datetime(own["ts"][own["incident_score"] >= champion.calibration_.low_threshold], utc=True))
        keep = ~pd.to_datetime(train.scores["ts"], utc=True).isin(busy).to_numpy()
        train = _subset(train, keep) if keep.sum() >= 10 else train
    warm = champion is not None and not rebase
    challenger = (ClusterModel.from_dict(champion.to_dict()) if warm
                  else ClusterModel(config or ClusterConfig()))  # fmt: skip
    tags = {"didact.day": day, "didact.kind": "train_cluster", "didact.dagster_run_id": run_id or "",
            "didact.parent_version": str(parent or ""),
            "didact.rebase": str(bool(rebase)).lower()}  # fmt: skip
    with registry.run(f"train cluster {day}", tags=tags) as run:
        challenger.fit(train.scores, train.topology, train.jobs, day=day)
        gate = cluster_gate(challenger, champion, test)
        mlflow.log_params({"day": day, "parent_version": parent or "none", "warm_start": warm,
                           "rebase": bool(rebase),
                           "node_model_version": inp.node_version, "jobs_source": inp.jobs_source,
                           **{f"model.{k}": v for k, v in challenger.config.to_dict().items()}})  # fmt: skip
        mlflow.log_metrics({"threshold": challenger.threshold_, "peer_threshold": challenger.calibration_.peer_threshold,
                            "train_steps": train.scores["ts"].nunique(), "holdout_steps": test.scores["ts"].nunique()})  # fmt: skip
        mlflow.log_dict(gate.metadata(), "cluster_gate.json")
        mv = registry.register(challenger, tags={"day": day, "parent_version": parent or "", "data_version": inp.data_version,
                                                 "node_model_version": inp.node_version})  # fmt: skip
        mlflow_run_id = run.info.run_id
    upstream = {f"{AI_READY}/{day}": inp.data_version, "parent_model_version": parent,
                "node_model_version": inp.node_version}  # fmt: skip
    started = "continued from the champion" if warm else ("rebased: a fresh model with this didact's config"
                                                          if champion is not None else "a fresh model")
    wh.record("register", CLUSTER_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
              upstream=upstream, run_id=run_id, mlflow_run_id=mlflow_run_id,
              reason=f"{started}; {gate.reason}")  # fmt: skip
    if gate.passed:
        old = registry.promote(mv.version)
        wh.record("promote", CLUSTER_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
                  upstream={"from": old}, run_id=run_id, mlflow_run_id=mlflow_run_id, actor="cluster_gate",
                  reason=gate.reason)  # fmt: skip
    served = challenger if gate.passed else champion
    incidents, added = nightly_incidents(settings, served, inp, registry.alias(CHAMPION), day)
    return ClusterOutcome(
        day=day, version=mv, parent_version=parent, gate=gate, promoted=gate.passed,
        champion_version=registry.alias(CHAMPION), node_model_version=inp.node_version,
        train_steps=int(train.scores["ts"].nunique()), holdout_steps=int(test.scores["ts"].nunique()),
        nodes=len(inp.topology.nodes), racks=len(inp.topology.racks),
        job_members=0 if inp.jobs is None else len(inp.jobs), jobs_source=inp.jobs_source,
        threshold=challenger.threshold_, peer_threshold=challenger.calibration_.peer_threshold,
        seconds=time.perf_counter() - t0, incidents=incidents, events_added=added, mlflow_run_id=mlflow_run_id,
        fresh=not warm,
    )  # fmt: skip


def nightly_incidents(settings: Settings, model: ClusterModel, inp: DayInputs, version: int | None,
                      day: str) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """The day's incidents under the champion, added to the review queue (once: a rerun of
    the day adds only incidents the queue does not hold yet).  Returns (incidents, added)."""
    found = find_incidents(model.score(inp.scores, inp.topology, inp.jobs), inp.jobs)
    events = incident_events(found, version)
    if events.empty:
        return found, 0
    queue = ReviewQueue(settings)
    known = queue.list(status=None, limit=100_000, day=day)
    if len(known):
        have = set(zip(_utc_naive(known["ts"]), known["node"].astype(str)))
        new = [k not in have for k in zip(_utc_naive(events["ts"]), events["node"].astype(str))]
        events = events[np.asarray(new, dtype=bool)]
    return found, len(queue.add_events(events)) if len(events) else 0


def _utc_naive(ts) -> list:
    t = pd.DatetimeIndex(pd.to_datetime(ts))
    t = t.tz_convert("UTC").tz_localize(None) if t.tz is not None else t
    return list(t.round("s"))


def rollback_cluster_champion(settings: Settings, to_version=None, actor: str = "", reason: str = "") -> dict:
    """Move the cluster model's ``champion`` back (to ``previous_champion``, or ``to_version``)."""
    return rollback_champion(settings, to_version=to_version, actor=actor, reason=reason,
                             registry=ClusterRegistry(settings), asset=CLUSTER_ASSET)  # fmt: skip


def evaluate_cluster_day(settings: Settings, day: str) -> dict:
    """The cluster champion on day ``day`` beside the simple baselines; against the simulator's
    truth when the source is the simulator, else incident counts only (``truth`` says which)."""
    registry = ClusterRegistry(settings)
    version = registry.alias(CHAMPION)
    if version is None:
        raise RegistryError(f"model {registry.name}", "has no champion", "materialise cluster_model for the day first")
    model = registry.load(version)
    inp = day_inputs(settings, day)
    out = model.score(inp.scores, inp.topology, inp.jobs)
    steps = out.timesteps
    figures: dict = {"cluster_version": version, "node_model_version": inp.node_version, "steps": len(steps),
                     "racks": len(inp.topology.racks), "jobs_source": inp.jobs_source,
                     "threshold": out.threshold, "peer_threshold": out.peer_threshold}  # fmt: skip
    if settings.source == "simulator":
        truth = cluster_truth(settings, dt.date.fromisoformat(day))
        figures.update(evaluate(out, truth["cluster_incidents"], truth["stragglers"], inp.jobs))
        figures["truth"] = "simulator (cluster_truth of the day)"
    else:
        found = find_incidents(out, inp.jobs)
        figures.update({"incidents_found": len(found), "steps_above_threshold": int((steps["incident_score"] >= out.threshold).sum()),
                        "truth": f"none for source {settings.source}: incident counts only"})  # fmt: skip
    return figures
