"""The cluster model's incidents in the act planner: review-queue events on ``cluster`` or
``rack:<rack>`` are the ``cluster_incidents`` metric (for notify rules), never a node to drain."""

from __future__ import annotations

import datetime as dt

import pytest

from didact_core.act import NodeInfo, parse_policy
from didact_core.act.conditions import INCIDENTS, cluster_metrics
from didact_core.act.planner import observations_from_events, propose
from didact_core.errors import DidactError

POLICY = """
[limits]
max_drained_fraction = 1.0

[[rule]]
name = "ood-drain"
when = "ood_intervals >= 1"
action = "drain"

[[rule]]
name = "incident-notify"
when = "cluster_incidents >= 1"
action = "notify"
"""

T0 = dt.datetime(2026, 2, 10, 12, tzinfo=dt.timezone.utc)


def _events(*nodes):
    return [{"id": i + 1, "node": n, "ts": T0 + dt.timedelta(minutes=i)} for i, n in enumerate(nodes)]


def test_incidents_are_counted_for_the_cluster_and_never_drained():
    obs = observations_from_events(_events("n1", "cluster", "rack:r1"))
    assert set(obs) == {"n1", INCIDENTS} and obs[INCIDENTS].ood_intervals == 2 and obs[INCIDENTS].event_id == 3
    assert cluster_metrics(obs)["cluster_incidents"] == 2
    nodes = {n: NodeInfo(n, "IDLE") for n in ("n1", "n2")}
    proposals, _ = propose(parse_policy(POLICY), obs, nodes)
    got = sorted((p.action, p.node) for p in proposals)
    assert got == [("drain", "n1"), ("notify", "cluster")]
    # a new incident is a new notify (its newest event id is part of the proposal)
    later, _ = propose(parse_policy(POLICY), observations_from_events(_events("n1", "cluster", "rack:r1", "cluster")), nodes)
    assert {p.id for p in later if p.action == "notify"} != {p.id for p in proposals if p.action == "notify"}
    # no incident: no notify, and the metric is 0
    quiet = observations_from_events(_events("n1"))
    assert cluster_metrics(quiet)["cluster_incidents"] == 0
    assert [p.action for p in propose(parse_policy(POLICY), quiet, nodes)[0]] == ["drain"]


@pytest.mark.parametrize("action", ["drain", "shed", "power-cap"])
def test_only_notify_may_act_on_incidents(action):
    extra = "\nwatts = 150" if action == "power-cap" else ""
    text = f'[[rule]]\nname = "x"\nwhen = "cluster_incidents >= 1"\naction = "{action}"{extra}\n'
    with pytest.raises(DidactError, match="notify"):
        parse_policy(text)
