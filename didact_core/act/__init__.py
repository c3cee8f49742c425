"""Acting on what didact sees: drain/resume/notify/power-cap/shed, dry run first.

Owns the policy file (``policy``), what a policy compares (``conditions``: OOD streaks,
node and cluster watts, cluster incidents, peak hours; ``peers``: the cluster model's job-peer
scores, stragglers), the plan of proposals and their approved application with rate limits,
the per-partition out-of-service fraction (``limits``) and the administrator's-drain guard
(``planner``), the node controls under the engine's Slurm watchdog (``nodes``), RAPL power
caps restored on exit (``powercap``), peak-hour shedding within Slurm power saving's rules
(``shed``), the Alertmanager-style webhook (``notify``), the audit (``audit``: a JSON-lines
file and the lineage table) and its ``didact_act_*`` metrics (``metrics``), approval through
the review queue (``queue``) and one look at the live state for the Dagster sensor (``live``).
"""

from didact_core.act.audit import AuditLog
from didact_core.act.conditions import Observation, observations_from_events
from didact_core.act.nodes import NodeInfo, SlurmNodes
from didact_core.act.planner import Context, Proposal, apply, plan, propose
from didact_core.act.policy import Policy, Rule, load_policy, parse_policy
from didact_core.act.powercap import CapResult, PowerCaps

__all__ = [
    "AuditLog",
    "CapResult",
    "Context",
    "NodeInfo",
    "Observation",
    "Policy",
    "PowerCaps",
    "Proposal",
    "Rule",
    "SlurmNodes",
    "apply",
    "load_policy",
    "observations_from_events",
    "parse_policy",
    "plan",
    "propose",
]
