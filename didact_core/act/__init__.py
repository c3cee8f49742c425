"""Acting on what didact sees: node drain/resume/notify through Slurm, dry run first.

Owns the policy file (``policy``), the plan of proposals and their approved application
with rate limits and the administrator's-drain guard (``planner``), the node controls
under the engine's Slurm watchdog (``nodes``) and the append-only audit log (``audit``).
"""

from didact_core.act.audit import AuditLog
from didact_core.act.nodes import NodeInfo, SlurmNodes
from didact_core.act.planner import Observation, Proposal, apply, observations_from_events, plan
from didact_core.act.policy import Policy, Rule, load_policy, parse_policy

__all__ = [
    "AuditLog",
    "NodeInfo",
    "Observation",
    "Policy",
    "Proposal",
    "Rule",
    "SlurmNodes",
    "apply",
    "load_policy",
    "observations_from_events",
    "parse_policy",
    "plan",
]
