"""cluster: from every node's score to the state of the cluster, its racks and its jobs.

The node detector judges each node alone; this stage reads the per-interval node scores it
produces (reconstruction error, OOD flag, latent point) with the topology (node → rack) and
the multi-node jobs' membership, and says what no single node's score shows: an incident
that hits many nodes at once (a filesystem stall, a rack event, a scheduler storm), where it
hits (the racks), and which member of a multi-node job behaves unlike its peers (a straggler).

    frames.py      validated inputs (node scores, RackMap, jobs), ScoreTensor, rack_aggregate
    core.py        one timestep's arithmetic: node excess, scope means, EMA, peer robust z
    scorer.py      ClusterScorer (live, one interval; batch via score_tensor), StepScores
    model.py       ClusterConfig, ClusterModel (fit / continual fit / score / save / load), ClusterScores
    incidents.py   find_incidents (hysteresis), incident_events (the review queue's shape)
    node_scores.py score_day: a day's AI-ready samples → the node detector → node scores (batch)
    evaluation.py  evaluate against truth: ROC-AUC (model, baselines), rack localisation, stragglers
    synthetic.py   synthetic node scores with planted events (tests, quick checks)

The simple baselines (fraction of OOD nodes, mean error, per-rack maximum error) are in every
``ClusterScores.timesteps`` beside the model's scores.  No torch: see model.py for why.
"""

from didact_core.cluster.core import Calibration, StepParams
from didact_core.cluster.evaluation import BASELINES, evaluate, incident_labels
from didact_core.cluster.frames import (
    RackMap,
    ScoreTensor,
    node_scores_from_interval,
    rack_aggregate,
    to_tensor,
    validate_jobs,
    validate_node_scores,
)
from didact_core.cluster.incidents import INCIDENT_COLUMNS, find_incidents, incident_events
from didact_core.cluster.model import ClusterConfig, ClusterModel, ClusterScores
from didact_core.cluster.node_scores import aggregate_samples, score_day
from didact_core.cluster.scorer import ClusterInterval, ClusterScorer, StepScores, score_tensor
from didact_core.cluster.synthetic import synthetic_day

__all__ = [
    "BASELINES", "INCIDENT_COLUMNS", "Calibration", "ClusterConfig", "ClusterInterval", "ClusterModel",
    "ClusterScorer", "ClusterScores", "RackMap", "ScoreTensor", "StepParams", "StepScores", "evaluate",
    "find_incidents", "incident_events", "incident_labels", "node_scores_from_interval", "rack_aggregate",
    "aggregate_samples", "score_day", "score_tensor", "synthetic_day", "to_tensor", "validate_jobs", "validate_node_scores",
]  # fmt: skip
