"""didact act: policies, plan (dry run), approved apply, audit — against a real single-node Slurm."""

from __future__ import annotations

import datetime as dt
import socket
import time

import pytest

from didact_core.act import AuditLog, NodeInfo, Observation, SlurmNodes, apply, parse_policy, plan
from didact_core.act.peers import peer_frame, with_peers
from didact_core.act.planner import observations_from_events, propose
from didact_core.errors import DidactError
from didact_core.act.shed import suspend_rules
from tests.slurm_cluster import INSTALL_HINT, missing_binaries, start_slurm
from tests.test_act_shed import SHED

POLICY = """
[limits]
drains_per_hour = {per_hour}
max_drained_fraction = 1.0

[[rule]]
name = "ood-drain"
when = "ood_intervals >= 3"
action = "drain"

[[rule]]
name = "ood-clear"
when = "ood_intervals == 0"
action = "resume"
auto = {auto}
"""


def policy(per_hour: int = 5, auto: bool = False):
    return parse_policy(POLICY.format(per_hour=per_hour, auto=str(auto).lower()), "act.toml")


# -- policy file errors (fast) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('[[rule]]\nwhen = "ood_intervals >= 3"\naction = "reboot"\n', 3, "action 'reboot' is not known.*drain, resume, notify"),
        ('[[rule]]\naction = "drain"\nwhen = "ood >> 3"\n', 3, "cannot be read.*ood_consecutive >= 3"),
        ('[[rule]]\naction = "drain"\n', 1, "has no 'when'"),
        ('[limits]\ndrains_per_hour = -1\n[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\n', 2, "whole number"),
        ('[limits]\nmax_drained_fraction = 2\n[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\n', 2, "between 0 and 1"),
        ('[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\nauto = "yes"\n', 4, "auto = 'yes' is not true or false"),
        ('[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\n[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\nlimit = 3\n', 7, "unknown key 'limit'"),
        ('[[rule]]\nwhen = "ood_intervals > 1\n', 2, "not valid TOML"),
        ('[limits]\ndrains_per_hour = 1\n', None, "has no \\[\\[rule\\]\\]"),
    ],
)
def test_a_bad_policy_names_the_line_the_problem_and_the_fix(text, line, words):
    with pytest.raises(DidactError, match=words) as e:
        parse_policy(text, "act.toml")
    assert e.value.fix
    if line is not None:
        assert f"act.toml line {line}" in str(e.value)


def test_a_good_policy_reads_back():
    p = policy(per_hour=3, auto=True)
    assert (p.drains_per_hour, p.max_drained_fraction) == (3, 1.0)
    assert [(r.name, r.when, r.action, r.auto) for r in p.rules] == [
        ("ood-drain", "ood_intervals >= 3", "drain", False), ("ood-clear", "ood_intervals == 0", "resume", True)]


# -- planning and applying without Slurm (fast) ----------------------------------------------


class FakeSlurm:
    """In-memory nodes with SlurmNodes' interface: what apply would have sent is visible."""

    def __init__(self, **nodes: NodeInfo):
        self.state = dict(nodes)
        self.calls: list[tuple] = []

    def nodes(self):
        return dict(self.state)

    def drain(self, node, reason):
        self.calls.append(("drain", node, reason))
        self.state[node] = NodeInfo(node, "IDLE+DRAIN", reason)
        return ""

    def resume(self, node):
        self.calls.append(("resume", node))
        self.state[node] = NodeInfo(node, "IDLE", "")
        return ""


def test_observations_count_distinct_intervals_and_keep_the_newest_event():
    obs = observations_from_events([
        {"node": "n1", "id": 4, "ts": "2026-01-01T00:00:00Z"}, {"node": "n1", "id": 5, "ts": "2026-01-01T00:00:00Z"},
        {"node": "n1", "id": 9, "ts": "2026-01-01T00:01:00Z"}, {"node": "n2", "id": 2, "ood_intervals": 7}])
    assert obs == {"n1": Observation("n1", 2, 9, ood_consecutive=2), "n2": Observation("n2", 7, 2)}


def test_the_admins_drain_is_left_alone_and_ours_is_resumed():
    nodes = {"a": NodeInfo("a", "IDLE"), "b": NodeInfo("b", "IDLE+DRAIN", "disk swap"),
             "c": NodeInfo("c", "DRAINED", "didact: ood-drain ood_intervals 3 (event 1)"), "d": NodeInfo("d", "DOWN", "")}
    obs = {n: Observation(n, 4, 10) for n in ("a", "b", "d")}
    props, skipped = propose(policy(), obs, nodes)
    assert [(p.node, p.action) for p in props] == [("a", "drain"), ("c", "resume")]
    assert props[0].reason == "didact: ood-drain ood_intervals 4 (event 10)"
    assert {n for _, n, _ in skipped} == {"b", "d"}


def test_unapproved_proposals_are_not_applied_and_a_stale_approval_is_refused(tmp_path):
    audit, slurm = AuditLog(tmp_path / "audit.jsonl"), FakeSlurm(a=NodeInfo("a", "IDLE"))
    props, _ = plan(policy(), {"a": Observation("a", 3, 7)}, slurm, audit)
    assert apply(policy(), {"a": Observation("a", 3, 7)}, slurm, audit) == [] and slurm.calls == []
    out = apply(policy(), {"a": Observation("a", 0)}, slurm, audit, approve=[props[0].id], actor="op")
    assert [(r["kind"], r["id"]) for r in out] == [("refused", props[0].id)]
    assert "no longer holds" in out[0]["why"] and slurm.calls == []
    assert [r["kind"] for r in audit.records()] == ["proposal", "approval", "refused"]
    bogus = apply(policy(), {}, slurm, audit, approve=["nosuchid"])
    assert bogus[0]["kind"] == "refused" and "no proposal" in bogus[0]["why"]


def test_the_fraction_limit_holds(tmp_path):
    p = parse_policy(POLICY.format(per_hour=10, auto="false").replace("1.0", "0.5"), "act.toml")
    slurm = FakeSlurm(**{n: NodeInfo(n, "IDLE") for n in "abcd"})
    audit = AuditLog(tmp_path / "audit.jsonl")
    obs = {n: Observation(n, 3, i) for i, n in enumerate("abcd")}
    props, _ = plan(p, obs, slurm, audit)
    out = apply(p, obs, slurm, audit, approve=[x.id for x in props])
    assert [r["kind"] for r in out] == ["action", "action", "refused", "refused"]
    assert "max_drained_fraction = 0.5" in out[-1]["why"]


# -- a real Slurm (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {INSTALL_HINT}")
    with start_slurm(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture
def node(cluster):
    """The node, in service before and after each test."""
    cluster.resume() if "DRAIN" in cluster.node_state() else None
    yield cluster.node
    if "DRAIN" in cluster.node_state():
        cluster.resume()


def steady(info: NodeInfo) -> NodeInfo:
    """The node without NOT_RESPONDING: slurmctld sets it while a ping is in flight (a few
    seconds every SlurmdTimeout/3), whatever didact does."""
    state = "+".join(w for w in info.state.split("+") if w != "NOT_RESPONDING")
    return NodeInfo(info.name, state, info.reason, info.partitions, info.watts)


def _reason(cluster) -> str:
    return SlurmNodes(conf=cluster.conf).nodes()[cluster.node].reason


@pytest.mark.slow
def test_drain_then_resume_with_the_didact_reason(cluster, node, tmp_path):
    slurm, audit = SlurmNodes(conf=cluster.conf), AuditLog(tmp_path / "audit.jsonl")
    bad = {node: Observation(node, 3, 42)}
    props, _ = plan(policy(), bad, slurm, audit)
    out = apply(policy(), bad, slurm, audit, approve=[props[0].id], actor="op")
    assert [(r["kind"], r["action"]) for r in out] == [("action", "drain")]
    assert "DRAIN" in cluster.node_state()
    assert _reason(cluster) == "didact: ood-drain ood_intervals 3 (event 42)"
    out = apply(policy(auto=True), {}, slurm, audit)  # condition cleared; the resume rule is auto
    assert [(r["kind"], r["action"], r["by"]) for r in out] == [("action", "resume", "auto")]
    assert "DRAIN" not in cluster.node_state()


@pytest.mark.slow
def test_an_administrators_drain_is_neither_drained_again_nor_resumed(cluster, node, tmp_path):
    cluster.drain("hardware check")
    slurm, audit = SlurmNodes(conf=cluster.conf), AuditLog(tmp_path / "audit.jsonl")
    props, skipped = plan(policy(auto=True), {node: Observation(node, 5, 1)}, slurm, audit)
    assert props == [] and "by an administrator (hardware check)" in skipped[0][2]
    assert apply(policy(auto=True), {}, slurm, audit) == []  # the auto resume rule leaves it
    assert "DRAIN" in cluster.node_state() and _reason(cluster) == "hardware check"


@pytest.mark.slow
def test_the_drain_rate_limit_holds(cluster, node, tmp_path):
    slurm, audit, p = SlurmNodes(conf=cluster.conf), AuditLog(tmp_path / "audit.jsonl"), policy(per_hour=1)
    for round_, event in enumerate((1, 2)):
        bad = {node: Observation(node, 3, event)}
        props, _ = plan(p, bad, slurm, audit)
        out = apply(p, bad, slurm, audit, approve=[props[0].id])
        if round_ == 0:
            assert out[0]["kind"] == "action"
            cluster.resume()
    assert out[0]["kind"] == "refused" and "rate limit" in out[0]["why"]
    assert "DRAIN" not in cluster.node_state()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1, minutes=1)
    assert apply(p, bad, slurm, audit, approve=[props[0].id], now=later)[0]["kind"] == "action"


@pytest.mark.slow
def test_plan_is_a_dry_run(cluster, node, tmp_path):
    slurm = SlurmNodes(conf=cluster.conf)
    before = slurm.show(node).replace("+NOT_RESPONDING", "")  # a ping in flight, see steady()
    props, _ = plan(policy(auto=True), {node: Observation(node, 9, 3)}, slurm, AuditLog(tmp_path / "a.jsonl"))
    assert [p.action for p in props] == ["drain"]
    assert slurm.show(node).replace("+NOT_RESPONDING", "") == before


@pytest.mark.slow
def test_a_hung_controller_hits_the_watchdog(cluster, tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hung = tmp_path / "hung.conf"
        hung.write_text(cluster.conf.read_text().replace(
            f"SlurmctldPort={cluster.ctld_port}", f"SlurmctldPort={silent.getsockname()[1]}"))
        started = time.monotonic()
        with pytest.raises(DidactError, match="did not answer within 2 s"):
            plan(policy(), {}, SlurmNodes(conf=hung, timeout_s=2), AuditLog(tmp_path / "a.jsonl"))
        assert time.monotonic() - started < 6


@pytest.mark.slow
def test_the_cli_plans_from_the_review_queue_applies_the_approval_and_logs(cluster, node, tmp_path, monkeypatch, capsys):
    import argparse
    import json

    import pandas as pd

    from didact_assets import cli_act
    from didact_core.config import Settings
    from didact_core.data.review import ReviewQueue

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    now = pd.Timestamp.now(tz="UTC").floor("min")
    ReviewQueue(settings).add_events(pd.DataFrame(
        [{"ts": now - pd.Timedelta(minutes=m), "node": node, "cpu": -1, "score": 2.0, "threshold": 1.0} for m in (0, 1, 2)]))
    (tmp_path / "act.toml").write_text(POLICY.format(per_hour=5, auto="false"))
    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args(["act", *argv])
        return args.func(args, settings)

    common = ["--policy", str(tmp_path / "act.toml"), "--slurm-conf", str(cluster.conf)]
    before = cluster.scontrol("show", "node", node, "-o").replace("+NOT_RESPONDING", "")  # see steady()
    assert run("plan", *common) == 0
    assert cluster.scontrol("show", "node", node, "-o").replace("+NOT_RESPONDING", "") == before
    pid = AuditLog.under(settings.home_path).records("proposal")[-1]["id"]
    assert pid in capsys.readouterr().out
    cleared = tmp_path / "cleared.json"
    cleared.write_text(json.dumps([]))
    assert run("apply", *common, "--events", str(cleared), "--approve", pid) == 1  # stale: refused
    assert "DRAIN" not in cluster.node_state()
    assert run("apply", *common, "--approve", pid, "--actor", "op") == 0
    assert "DRAIN" in cluster.node_state() and _reason(cluster).endswith("(event 3)")
    capsys.readouterr()
    assert run("log") == 0
    out = capsys.readouterr().out
    for word in ("proposal", "approval", "refused", "action"):
        assert word in out


# -- job-peer stragglers and partitions on the real Slurm (slow; unit tests: test_act_peers.py) --

PEERS = """
[limits]
drains_per_hour = {per_hour}
max_drained_fraction = 1.0  # a one-node cluster

[[rule]]
name = "peer-drain"
when = "job_peer_score >= 8"
for_intervals = 3
action = "drain"

[[rule]]
name = "ood-clear"
when = "ood_intervals == 0"
action = "resume"
auto = true
"""
STRAGGLER = PEERS.format(per_hour=10)


@pytest.mark.slow
def test_a_straggler_is_drained_with_its_job_and_score_and_resumed_when_the_job_is_gone(cluster, node, tmp_path):
    slurm, audit, p = SlurmNodes(conf=cluster.conf), AuditLog(tmp_path / "audit.jsonl"), parse_policy(STRAGGLER)
    rows = [{"job": "4242", "node": n, "score": s, "ts": f"2026-02-10T12:00:{15 * i:02d}Z"}
            for i in range(3) for n, s in ((node, 12.0 + i), ("peer1", 0.5), ("peer2", 0.7))]  # fmt: skip
    seen = with_peers({node: Observation(node, 1, 42)}, peer_frame(rows, "feed"))  # and one OOD event
    props, _ = plan(p, seen, slurm, audit)
    assert [(x.node, x.action, x.job) for x in props] == [(node, "drain", "4242")]
    out = apply(p, seen, slurm, audit, approve=[props[0].id], actor="op")
    assert [(r["kind"], r["action"], r["job"]) for r in out] == [("action", "drain", "4242")]
    assert _reason(cluster) == "didact: peer-drain straggler in job 4242, peer score 14 (event 42)"
    straggling = with_peers({}, peer_frame(rows, "feed"))  # no OOD event now: ood-clear holds, peer-drain too
    assert apply(p, straggling, slurm, audit) == [] and "DRAIN" in cluster.node_state()
    out = apply(p, {}, slurm, audit)  # the job ended: no peer scores, the auto resume rule holds
    assert [(r["kind"], r["action"]) for r in out] == [("action", "resume")] and "DRAIN" not in cluster.node_state()


@pytest.mark.slow
def test_a_node_in_two_partitions_counts_against_each(cluster, node, tmp_path):
    """A second partition made at run time (``scontrol create``; the harness's slurm.conf has one)."""
    cluster.scontrol("create", "PartitionName=second", f"Nodes={node}", "State=UP")
    try:
        slurm, audit = SlurmNodes(conf=cluster.conf), AuditLog(tmp_path / "audit.jsonl")
        assert set(slurm.nodes()[node].partitions) == {"debug", "second"}
        own = parse_policy(POLICY.format(per_hour=5, auto="false").replace(
            "max_drained_fraction = 1.0", "max_drained_fraction = 1.0\npartitions = { second = 0.5 }"), "act.toml")  # fmt: skip
        bad = {node: Observation(node, 3, 7)}
        props, _ = plan(own, bad, slurm, audit)
        out = apply(own, bad, slurm, audit, approve=[props[0].id])
        assert [(r["kind"], r["why"]) for r in out] == [
            ("refused", "1 of 1 nodes of partition second would be out of service, more than limits.partitions.second = 0.5")]
        assert "DRAIN" not in cluster.node_state()
        assert apply(policy(), bad, slurm, audit, approve=[props[0].id])[0]["kind"] == "action"  # 1.0 everywhere
        assert "DRAIN" in cluster.node_state()
    finally:
        cluster.scontrol("delete", "PartitionName=second")


# -- shed on the real Slurm (slow; the planner's unit tests are in test_act_shed.py) -----------


@pytest.mark.slow
def test_a_peak_hour_shed_on_a_real_slurm_and_restore(cluster, node, tmp_path, monkeypatch, capsys):
    """The test Slurm has no power saving (no SuspendProgram): a shed is the drain equivalent."""
    import argparse
    import json

    from didact_assets import cli_act
    from didact_core.config import Settings

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIDACT_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    settings = Settings.from_env()
    (tmp_path / "act.toml").write_text(SHED.format(budget=100, frac=1.0))
    (tmp_path / "power.json").write_text(json.dumps({node: 240.0}))
    (tmp_path / "none.json").write_text("[]")
    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args(["act", *argv])
        return args.func(args, settings)

    common = ["--policy", str(tmp_path / "act.toml"), "--slurm-conf", str(cluster.conf), "--events",
              str(tmp_path / "none.json"), "--power", str(tmp_path / "power.json"), "--at", "2026-11-20T18:30:00Z"]  # fmt: skip
    before = steady(SlurmNodes(conf=cluster.conf).nodes()[node])
    assert run("plan", *common) == 0
    assert steady(SlurmNodes(conf=cluster.conf).nodes()[node]) == before  # a dry run: state and reason unchanged
    proposal = AuditLog.under(settings.home_path).records("proposal")[-1]
    assert proposal["node"] == node and proposal["why"].endswith("; idle, 240 W")
    assert proposal["id"] in capsys.readouterr().out
    pid = proposal["id"]
    assert run("apply", *common, "--approve", pid) == 0
    assert "DRAIN" in cluster.node_state()
    assert "didact: shed peak-shed cluster_watts 240" in cluster.scontrol("show", "node", node, "-o")
    capsys.readouterr()
    assert run("restore", "--shed", "--slurm-conf", str(cluster.conf)) == 0
    assert f"brought back {node}" in capsys.readouterr().out and "DRAIN" not in cluster.node_state()
    prom = (tmp_path / "home" / "act" / "didact_act.prom").read_text()
    assert 'didact_act_actions_total{action="shed"} 1.0' in prom


@pytest.mark.slow
def test_slurms_suspend_rate_and_exclusions_are_read_live(cluster, node, tmp_path):
    from didact_core.act.conditions import with_power

    slurm = SlurmNodes(conf=cluster.conf)
    rules = suspend_rules(slurm)
    assert rules.rate_per_min == 60 and rules.method == "drain"  # Slurm's default rate; power saving off
    assert slurm.hostnames("n[1-3],x") == ["n1", "n2", "n3", "x"]
    conf = cluster.conf.read_text()
    cluster.conf.write_text(conf + f"SuspendRate=5\nSuspendExcNodes={node}\n")
    try:
        cluster.scontrol("reconfigure")
        rules = suspend_rules(slurm)
        assert (rules.rate_per_min, rules.exc_nodes) == (5, {node})
        p = parse_policy(SHED.format(budget=100, frac=1.0), "act.toml")
        at = dt.datetime(2026, 11, 20, 18, 30, tzinfo=dt.timezone.utc)
        props, skipped = plan(p, with_power({}, {node: 500}), slurm, AuditLog(tmp_path / "a.jsonl"), now=at)
        assert props == [] and skipped == [("peak-shed", node, "in SuspendExcNodes")]
    finally:
        cluster.conf.write_text(conf)
        cluster.scontrol("reconfigure")


@pytest.mark.slow
def test_with_slurms_power_saving_a_shed_is_a_power_down(tmp_path):
    """Its own Slurm, reconfigured with SuspendProgram=/bin/true: the node is left powering down."""
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {INSTALL_HINT}")
    from didact_core.act.conditions import with_power

    with start_slurm(tmp_path / "slurm") as c:
        c.conf.write_text(c.conf.read_text() + "SuspendProgram=/bin/true\nResumeProgram=/bin/true\n"
                          "SuspendTime=3600\nSuspendTimeout=5\nResumeTimeout=30\nSuspendRate=3\n")  # fmt: skip
        c.scontrol("reconfigure")
        slurm, audit = SlurmNodes(conf=c.conf), AuditLog(tmp_path / "a.jsonl")
        p = parse_policy(SHED.format(budget=100, frac=1.0), "act.toml")
        at = dt.datetime(2026, 11, 20, 18, 30, tzinfo=dt.timezone.utc)
        power = with_power({}, {c.node: 300})
        props, _ = plan(p, power, slurm, audit, now=at)
        out = apply(p, power, slurm, audit, approve=[props[0].id], now=at)
        assert [(r["kind"], r["method"]) for r in out] == [("action", "power_down")]
        info = slurm.nodes()[c.node]
        assert "POWER" in info.state and info.reason == "didact: shed peak-shed cluster_watts 300"
        # shed by didact: a resume rule leaves it to `didact act restore --shed`
        resume = parse_policy('[[rule]]\nwhen = "ood_intervals == 0"\naction = "resume"\nauto = true\n', "r.toml")
        assert apply(resume, {}, slurm, audit, now=at) == []
