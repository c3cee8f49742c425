"""didact act conditions and shed: OOD streaks, peak hours, power budgets, a shed plan within
Slurm power saving's rules — planner unit tests, then a real single-node Slurm."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from didact_core.act import AuditLog, Context, NodeInfo, apply, parse_policy, plan, propose
from didact_core.act.conditions import in_hours, observations_from_events, ood_streaks, power_from_json, with_power
from didact_core.act.shed import SuspendRules, shed_plan, suspend_rules
from didact_core.errors import DidactError

UTC = dt.timezone.utc
PEAK = dt.datetime(2026, 11, 20, 18, 30, tzinfo=UTC)
T0 = pd.Timestamp("2026-11-20T18:00:00Z")

SHED = """
[limits]
max_drained_fraction = {frac}

[[rule]]
name = "peak-shed"
when = "cluster_watts > {budget}"
hours = "17:00-21:00"
action = "shed"
"""


def shed_policy(budget: float = 1000, frac: float = 1.0):
    return parse_policy(SHED.format(budget=budget, frac=frac), "act.toml")


# -- conditions ------------------------------------------------------------------------------


def test_a_streak_counts_the_newest_intervals_in_a_row():
    steps = [T0 + pd.Timedelta(minutes=m) for m in range(5)]
    ev = pd.DataFrame({"node": ["a"] * 3 + ["b"] * 3 + ["c"],
                       "ts": [steps[2], steps[3], steps[4], steps[0], steps[1], steps[4], steps[3]]})  # fmt: skip
    assert ood_streaks(ev, steps) == {"a": 3, "b": 1, "c": 0}
    # without the scoring intervals the events' own timestamps stand for them
    assert ood_streaks(ev) == {"a": 3, "b": 1, "c": 0}
    obs = observations_from_events(ev.assign(id=range(7)), steps)
    assert (obs["b"].ood_intervals, obs["b"].ood_consecutive) == (3, 1)


def test_peak_hours_wrap_midnight():
    at = lambda h, m=0: dt.datetime(2026, 11, 20, h, m, tzinfo=UTC)  # noqa: E731
    assert in_hours("17:00-21:00", at(17)) and not in_hours("17:00-21:00", at(21))
    assert in_hours("22:00-06:00", at(23, 59)) and in_hours("22:00-06:00", at(5)) and not in_hours("22:00-06:00", at(12))
    assert in_hours(None, at(3))


def test_power_files_read_both_forms():
    assert power_from_json({"a": 1, "b": "2.5"}, "p.json") == {"a": 1.0, "b": 2.5}
    assert power_from_json([{"node": "a", "watts": 3}], "p.json") == {"a": 3.0}
    with pytest.raises(DidactError, match="p.json.*without a node"):
        power_from_json([{"watts": 3}], "p.json")


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('[[rule]]\nwhen = "node_watts > 300"\naction = "shed"\n', 2, "shed plans for the whole cluster.*cluster_watts"),
        ('[[rule]]\nwhen = "cluster_watts > 3"\naction = "drain"\n', 2, "drain acts on one node"),
        ('[[rule]]\nwhen = "node_watts > 300"\naction = "power-cap"\n', 1, "has no 'watts'.*watts = 150"),
        ('[[rule]]\nwhen = "node_watts > 300"\naction = "power-cap"\nwatts = -5\n', 4, "not a package limit"),
        ('[[rule]]\nwhen = "ood_consecutive >= 3"\naction = "drain"\nwatts = 100\n', 4, "watts is for power-cap"),
        ('[[rule]]\nwhen = "cluster_watts > 9"\naction = "shed"\nhours = "5pm-9pm"\n', 4, "not a window.*17:00-21:00"),
        ('[[rule]]\nwhen = "cluster_watts > 9"\naction = "shed"\nmax_nodes = 0\n', 4, "max_nodes = 0"),
        ('[notify]\nurl = "ftp://x"\n[[rule]]\nwhen = "ood_consecutive > 1"\naction = "notify"\n', 2, "not an http"),
        ('[notify]\nretries = 3\n[[rule]]\nwhen = "ood_consecutive > 1"\naction = "notify"\n', 2, "notify.retries"),
    ],
)
def test_bad_new_keys_name_the_line_and_the_fix(text, line, words):
    with pytest.raises(DidactError, match=words) as e:
        parse_policy(text, "act.toml")
    assert f"act.toml line {line}" in str(e.value) and e.value.fix


def test_power_over_a_budget_only_in_peak_hours():
    p = parse_policy('[[rule]]\nname = "budget"\nwhen = "cluster_watts > 500.5"\nhours = "17:00-21:00"\n'
                     'action = "notify"\n', "act.toml")  # fmt: skip
    obs = with_power({}, {"a": 300, "b": 250})
    props, _ = propose(p, obs, {}, Context(now=PEAK))
    assert [(x.node, x.why) for x in props] == [("cluster", "cluster_watts > 500.5 holds: cluster_watts = 550 in 17:00-21:00 UTC")]
    assert propose(p, obs, {}, Context(now=PEAK.replace(hour=9)))[0] == []
    assert propose(p, with_power({}, {"a": 300}), {}, Context(now=PEAK))[0] == []


# -- the shed planner ------------------------------------------------------------------------


def _nodes(**states) -> dict[str, NodeInfo]:
    return {n: NodeInfo(n, s.split("|")[0], s.split("|")[1] if "|" in s else "", ("batch",)) for n, s in states.items()}


def test_shed_picks_idle_nodes_most_watts_first_until_the_excess_is_covered():
    nodes = _nodes(a="IDLE", b="IDLE", c="MIXED", d="IDLE", e="IDLE+DRAIN|disk", f="IDLE")
    watts = {"a": 100.0, "b": 300.0, "c": 500.0, "d": 200.0, "f": None}
    chosen, skipped = shed_plan(nodes, watts, SuspendRules(60), excess_w=450)
    assert chosen == [("b", "idle, 300 W"), ("d", "idle, 200 W")]
    assert dict(skipped)["e"].startswith("IDLE+DRAIN by an administrator")
    assert "not needed" in dict(skipped)["a"] and "c" not in dict(skipped)  # busy: not a candidate


def test_shed_keeps_to_suspend_rate_exclusions_max_nodes_and_the_fraction():
    nodes = _nodes(a="IDLE", b="IDLE", c="IDLE", d="IDLE")
    nodes["c"] = NodeInfo("c", "IDLE", "", ("gpu",))
    rules = SuspendRules(rate_per_min=2, exc_nodes=frozenset({"a"}), exc_parts=frozenset({"gpu"}))
    chosen, skipped = shed_plan(nodes, {}, rules, shed_last_minute=1)
    assert [n for n, _ in chosen] == ["b"] and "SuspendRate 2/min is reached" in dict(skipped)["d"]
    assert dict(skipped)["a"] == "in SuspendExcNodes" and dict(skipped)["c"] == "in SuspendExcParts (gpu)"
    assert [n for n, _ in shed_plan(nodes, {}, SuspendRules(0), max_nodes=1)[0]] == ["a"]
    assert shed_plan(nodes, {}, SuspendRules(0), room=0)[0] == []


class FakeSlurm:
    def __init__(self, nodes, config=None):
        self.state, self.cfg, self.calls = dict(nodes), config or {}, []

    def nodes(self):
        return dict(self.state)

    def config(self):
        return self.cfg

    def hostnames(self, hostlist):
        return [h for h in hostlist.split(",") if h]

    def drain(self, node, reason):
        self.calls.append(("drain", node, reason))
        self.state[node] = NodeInfo(node, "IDLE+DRAIN", reason)
        return ""

    def power_down(self, node, reason):
        self.calls.append(("power_down", node, reason))
        self.state[node] = NodeInfo(node, "IDLE+POWERING_DOWN", reason)
        return ""


def test_suspend_rules_come_from_slurms_config():
    cfg = {"SuspendRate": "5", "SuspendExcNodes": "a,b:1", "SuspendExcParts": "gpu", "SuspendProgram": "/bin/true"}
    r = suspend_rules(FakeSlurm({}, cfg))
    assert (r.rate_per_min, r.exc_nodes, r.exc_parts, r.method) == (5, {"a", "b"}, {"gpu"}, "power_down")
    off = suspend_rules(FakeSlurm({}, {"SuspendRate": "60", "SuspendProgram": "(null)", "SuspendExcNodes": "(null)"}))
    assert (off.method, off.exc_nodes) == ("drain", frozenset())


def test_shed_applies_after_approval_within_the_rate_and_a_late_approval_is_refused(tmp_path):
    cfg = {"SuspendRate": "1", "SuspendProgram": "/usr/local/sbin/suspend"}
    slurm = FakeSlurm(_nodes(a="IDLE", b="IDLE", c="ALLOCATED"), cfg)
    audit, power = AuditLog(tmp_path / "audit.jsonl"), with_power({}, {"a": 200, "b": 250, "c": 900})
    props, skipped = plan(shed_policy(1000), power, slurm, audit, now=PEAK)
    assert [p.node for p in props] == ["b"] and "SuspendRate 1/min is reached" in dict((n, w) for _, n, w in skipped)["a"]
    assert props[0].reason == "didact: shed peak-shed cluster_watts 1350" and slurm.calls == []
    late = apply(shed_policy(1000), power, slurm, audit, approve=[props[0].id], now=PEAK.replace(hour=21, minute=5))
    assert late[0]["kind"] == "refused" and slurm.calls == []
    out = apply(shed_policy(1000), power, slurm, audit, approve=[props[0].id], now=PEAK)
    assert [(r["kind"], r["node"], r["method"]) for r in out] == [("action", "b", "power_down")]
    assert slurm.calls == [("power_down", "b", props[0].reason)]
    # the same minute: SuspendRate 1/min leaves nothing more to propose
    assert plan(shed_policy(1000), power, slurm, audit, now=PEAK)[0] == []


def test_a_stored_days_streaks_come_from_the_review_queue(tmp_path, monkeypatch, capsys):
    """``didact act plan --day D``: the day's OOD events and scoring intervals in the real warehouse."""
    import argparse

    from didact_assets import cli_act
    from didact_core.config import Settings
    from didact_core.data.review import ReviewQueue
    from tests.days import LAST_DAY

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    queue = ReviewQueue(settings)
    steps = [pd.Timestamp(f"{LAST_DAY}T12:00:00Z") + pd.Timedelta(minutes=m) for m in range(5)]
    for t in steps:
        queue.record_scoring(t, samples=16, ood=1, model_version=1)
    ood = [("n1", 2), ("n1", 3), ("n1", 4), ("n2", 0), ("n2", 1), ("n2", 3)]
    queue.add_events(pd.DataFrame([{"ts": steps[i], "node": n, "cpu": 0, "score": 2.0, "threshold": 1.0} for n, i in ood]))
    (tmp_path / "act.toml").write_text('[[rule]]\nname = "streak"\nwhen = "ood_consecutive >= 3"\naction = "notify"\n')
    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["act", "plan", "--no-slurm", "--policy", str(tmp_path / "act.toml"), "--day", str(LAST_DAY)])
    assert args.func(args, settings) == 0
    (p,) = AuditLog.under(settings.home_path).records("proposal")
    assert (p["node"], p["why"]) == ("n1", "ood_consecutive >= 3 holds: ood_consecutive = 3")
    assert p["reason"].startswith("didact: streak ood_consecutive 3 (event ")
