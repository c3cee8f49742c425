"""The act sensor: proposes node actions from the live state (docs/act.md, "The sensor").

Each tick (every minute while it runs) reads the policy named by ``DIDACT_ACT_POLICY`` (the
resource's ``act_policy``), plans from the review queue's pending OOD events, Slurm's
nodes and (for ``job_peer_score`` rules) the cluster model's peer scores in Prometheus, puts the proposals that need approval into the review queue (``didact review
accept ID``, then ``didact act apply``) and applies only the proposals of ``auto = true``
rules.  It launches no runs: every tick ends in a SkipReason that says what it saw and did.
Stopped by default (start it in the UI or with ``dagster sensor start act_sensor``): it
changes Slurm node states.  Nothing is read at import; a missing or bad policy file, a
dead controller, fail the tick with the clear error, never the code location.
"""

import json

import dagster as dg

from didact_core.act.live import tick

from .resources import DidactResource


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Plan node actions (drain/resume/notify/power-cap/shed) from DIDACT_ACT_POLICY and the live "
    "state: proposals wait in the review queue; only auto rules are applied.",
)
def act_sensor(context: dg.SensorEvaluationContext, didact: DidactResource):
    settings = didact.settings()  # a bad DIDACT_* value or policy file fails this tick with its message
    notified = json.loads(context.cursor) if context.cursor else {}
    message, notified = tick(settings, notified)
    context.update_cursor(json.dumps(notified))
    return dg.SkipReason(message)
