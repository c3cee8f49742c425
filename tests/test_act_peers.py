"""Job-peer stragglers and per-partition fractions in didact act: a synthetic peer-score feed
through the planner, apply and the CLI (fast), then the feed as Prometheus really stores it —
the exporter's series scraped by a real Prometheus (slow).  The drain on a real Slurm, and the
fraction on a node in two real partitions, are in test_act.py (they share its Slurm)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from didact_core.act import AuditLog, Context, NodeInfo, Observation, apply, parse_policy, plan, propose
from didact_core.act.conditions import with_power
from didact_core.act.limits import OutOfService
from didact_core.act.peers import peer_frame, straggler, with_peers
from didact_core.act.shed import SuspendRules, shed_plan
from didact_core.errors import DidactError
from tests.test_act import PEERS, FakeSlurm
from tests.test_act_shed import PEAK, SHED

T0 = pd.Timestamp("2026-02-10T12:00:00Z")
STEP = pd.Timedelta(seconds=15)


def peer_policy(per_hour: int = 5):
    return parse_policy(PEERS.format(per_hour=per_hour), "act.toml")


def feed(scores: dict[tuple[str, str], list[float | None]], steps: int = 4) -> pd.DataFrame:
    """{(job, node): scores oldest first (None: not scored then)} → the exported series' rows."""
    rows = [{"ts": T0 + i * STEP, "job": job, "node": node, "score": s}
            for (job, node), ss in scores.items() for i, s in enumerate(ss) if s is not None]  # fmt: skip
    return peer_frame(rows, "feed")


JOB = {("4242", n): [1.0, 0.5, 1.2, 0.8] for n in ("a", "b", "c")}


# -- the condition -----------------------------------------------------------------------------


def test_a_straggler_needs_the_score_in_each_of_the_newest_intervals():
    f = feed({**JOB, ("4242", "d"): [9.0, 12.0, 11.0, 10.0], ("4242", "c"): [0.1, 0.2, 0.3, 20.0]})
    obs = with_peers({}, f)
    assert obs["d"].peers == (("4242", (10.0, 11.0, 12.0, 9.0)),)
    assert straggler(obs["d"], ">=", 8, 3).__dict__ == {"job": "4242", "score": 10.0, "intervals": 4}
    assert straggler(obs["c"], ">=", 8, 3) is None and straggler(obs["c"], ">=", 8, 1).job == "4242"  # one spike
    assert straggler(obs["d"], ">", 10, 1) is None  # newest 10 is not > 10


def test_an_interval_the_job_was_not_scored_in_ends_the_streak():
    ended = feed({("4242", "d"): [9.0, 12.0, 11.0, None], ("7", "e"): [1.0, 1.0, 1.0, 1.0]})
    assert straggler(with_peers({}, ended)["d"], ">=", 8, 1) is None
    # the intervals looked at (Prometheus' steps) count even when no job was scored in the newest
    gone = feed({("4242", "d"): [9.0, 12.0, 11.0, None]})
    assert straggler(with_peers({}, gone)["d"], ">=", 8, 3).intervals == 3
    assert straggler(with_peers({}, gone, [T0 + i * STEP for i in range(4)])["d"], ">=", 8, 1) is None


def test_a_node_in_two_jobs_is_judged_by_the_job_it_straggles_most_in():
    f = feed({("1", "d"): [9.0, 9.0, 9.0, 9.0], ("2", "d"): [30.0, 30.0, 30.0, 30.0], ("3", "d"): [50.0, 1, 1, 1]})
    assert straggler(with_peers({}, f)["d"], ">=", 8, 3).job == "2"


def test_peer_scores_join_what_else_is_seen_of_the_node():
    obs = with_power(with_peers({"d": Observation("d", 2, 17)}, feed({("4242", "d"): [9, 9, 9, 9]})), {"d": 300})
    assert (obs["d"].ood_intervals, obs["d"].event_id, obs["d"].watts, obs["d"].peers[0][0]) == (2, 17, 300.0, "4242")


@pytest.mark.parametrize(
    "rows, words",
    [
        ({"job": 1}, "not a list"),
        ([{"job": "1", "node": "a"}], "no 'score'"),
        ([{"job": "1", "node": "a", "score": 1}, {"job": "1", "node": "b", "score": "high"}], "entry 2"),
        ([{"job": "1", "node": "a", "score": 1, "ts": "tea time"}], "entry 1 has a ts"),
    ],
)
def test_a_bad_peer_feed_names_the_entry_and_the_fix(rows, words):
    with pytest.raises(DidactError, match=words) as e:
        peer_frame(rows, "peers.json")
    assert "peers.json" in str(e.value) and e.value.fix


# -- the policy --------------------------------------------------------------------------------


def test_a_straggler_rule_reads_back():
    (rule, _) = peer_policy().rules
    assert (rule.metric, rule.op, rule.value, rule.for_intervals, rule.action) == ("job_peer_score", ">=", 8.0, 3, "drain")
    assert parse_policy('[[rule]]\nwhen = "job_peer_score > 8"\naction = "notify"\n').rules[0].for_intervals == 1


def test_the_example_policy_reads():
    from pathlib import Path

    from didact_core.act import load_policy

    p = load_policy(Path(__file__).resolve().parent.parent / "docs" / "act-policy.example.toml")
    assert p.partition_fractions == (("gpu", 0.1),) and p.max_drained_fraction == 0.25
    assert {r.name: r.for_intervals for r in p.rules if r.metric == "job_peer_score"} == {"peer-drain": 3, "peer-note": 2}


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('[[rule]]\nwhen = "ood_consecutive >= 3"\naction = "drain"\nfor_intervals = 3\n', 4, "for_intervals is for job_peer_score"),
        ('[[rule]]\nwhen = "job_peer_score >= 8"\naction = "drain"\nfor_intervals = 0\n', 4, "for_intervals = 0"),
        ('[[rule]]\nwhen = "job_peer_score >= 8"\naction = "drain"\nfor_intervals = "3"\n', 4, "whole number"),
        ('[[rule]]\naction = "drain"\nwhen = "job_peer_score < 2"\n', 3, "like their peers, not stragglers"),
        ('[[rule]]\nwhen = "job_peer_score >= 8"\naction = "resume"\n', 3, "resume on job_peer_score"),
        ('[[rule]]\nwhen = "job_peer_score >= 8"\naction = "shed"\n', 3, "shed on job_peer_score"),
        ('[limits]\npartitions = { gpu = 2 }\n[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\n', 2,
         "limits.partitions.gpu = 2 is not a fraction"),
        ('[limits]\ndrains_per_hour = 1\n\n[limits.partitions]\nbatch = 0.5\ngpu = "x"\n[[rule]]\nwhen = "ood_intervals > 1"\n'
         'action = "drain"\n', 6, "limits.partitions.gpu"),
        ('[limits]\npartitions = 0.5\n[[rule]]\nwhen = "ood_intervals > 1"\naction = "drain"\n', 2, "table of partition"),
    ],
)
def test_bad_straggler_and_partition_keys_name_the_line_and_the_fix(text, line, words):
    with pytest.raises(DidactError, match=words) as e:
        parse_policy(text, "act.toml")
    assert f"act.toml line {line}" in str(e.value) and e.value.fix


# -- plan and apply ----------------------------------------------------------------------------


def test_a_straggler_is_proposed_with_its_job_and_score_and_one_proposal_per_job():
    nodes = {n: NodeInfo(n, "MIXED") for n in "abcd"}
    f = feed({**JOB, ("4242", "d"): [9.0, 12.0, 11.0, 10.0]})
    props, _ = propose(peer_policy(), with_peers({"d": Observation("d", 1, 17)}, f), nodes)
    (p,) = props
    assert (p.node, p.action, p.job) == ("d", "drain", "4242")
    assert p.reason == "didact: peer-drain straggler in job 4242, peer score 10 (event 17)"
    assert p.why.startswith("job_peer_score >= 8 in 3 interval(s) in a row: straggler in job 4242, peer score 10")
    # a new OOD event of the node is the same proposal; another job is a new one
    again, _ = propose(peer_policy(), with_peers({"d": Observation("d", 2, 18)}, f), nodes)
    other, _ = propose(peer_policy(), with_peers({}, feed({("99", "d"): [9, 9, 9, 9]})), nodes)
    assert again[0].id == p.id and other[0].id != p.id and other[0].reason.endswith("peer score 9")


def test_a_straggler_drain_is_approved_applied_audited_and_not_resumed_while_it_straggles(tmp_path):
    slurm, audit = FakeSlurm(**{n: NodeInfo(n, "MIXED") for n in "abcd"}), AuditLog(tmp_path / "audit.jsonl")
    obs = with_peers({}, feed({**JOB, ("4242", "d"): [9.0, 12.0, 11.0, 10.0]}))
    props, _ = plan(peer_policy(), obs, slurm, audit)
    assert apply(peer_policy(), obs, slurm, audit) == [] and slurm.calls == []  # not approved: nothing
    out = apply(peer_policy(), obs, slurm, audit, approve=[props[0].id], actor="op")
    assert [(r["kind"], r["node"], r["job"]) for r in out] == [("action", "d", "4242")]
    assert slurm.calls == [("drain", "d", "didact: peer-drain straggler in job 4242, peer score 10")]
    # still straggling: the auto resume rule (ood_intervals == 0 holds) leaves it drained
    props, skipped = plan(peer_policy(), obs, slurm, audit)
    assert props == [] and ("ood-clear", "d", "drained by rule peer-drain, whose condition still holds") in skipped
    assert apply(peer_policy(), obs, slurm, audit) == []
    # the job ended (no peer scores): the auto resume rule brings it back
    out = apply(peer_policy(), {}, slurm, audit)
    assert [(r["kind"], r["action"], r["by"]) for r in out] == [("action", "resume", "auto")]
    assert [r["kind"] for r in audit.records()] == ["proposal", "approval", "action", "proposal", "action"]


def test_an_approval_after_the_straggler_recovered_is_refused_and_the_rate_limit_holds(tmp_path):
    slurm, audit = FakeSlurm(**{n: NodeInfo(n, "MIXED") for n in "abcde"}), AuditLog(tmp_path / "audit.jsonl")
    obs = with_peers({}, feed({**JOB, ("4242", "d"): [9, 12, 11, 10], ("4242", "e"): [9, 9, 9, 9]}))
    props, _ = plan(peer_policy(per_hour=1), obs, slurm, audit)
    assert [p.node for p in props] == ["d", "e"]
    recovered = with_peers({}, feed({**JOB, ("4242", "d"): [9, 12, 11, 1.0], ("4242", "e"): [9, 9, 9, 9]}))
    out = apply(peer_policy(per_hour=1), recovered, slurm, audit, approve=[p.id for p in props])
    assert [(r["kind"], r["node"]) for r in out] == [("refused", "d"), ("action", "e")]
    assert "no longer holds" in out[0]["why"]
    out = apply(peer_policy(per_hour=1), obs, slurm, audit, approve=[props[0].id])
    assert out[0]["kind"] == "refused" and "rate limit: 1 drain(s)" in out[0]["why"]
    assert [c[1] for c in slurm.calls] == ["e"]


def test_a_straggler_notify_names_the_job(tmp_path):
    p = parse_policy('[[rule]]\nname = "peer-note"\nwhen = "job_peer_score >= 8"\naction = "notify"\nauto = true\n')
    out = apply(p, with_peers({}, feed({("4242", "x9"): [9, 9, 9, 12]})), FakeSlurm(), AuditLog(tmp_path / "a.jsonl"))
    assert [(r["kind"], r["node"], r["reason"]) for r in out] == [
        ("notify", "x9", "didact: peer-note straggler in job 4242, peer score 12")]


def test_the_cli_plans_from_a_peer_file_and_a_dead_prometheus_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import argparse
    import json

    from didact_assets import cli_act
    from didact_core.config import Settings
    from tests.services import free_port

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIDACT_PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    settings = Settings.from_env()
    (tmp_path / "act.toml").write_text('[[rule]]\nname = "peer-note"\nwhen = "job_peer_score >= 8"\n'
                                       'for_intervals = 2\naction = "notify"\n')  # fmt: skip
    rows = [{"job": "4242", "node": "n3", "score": s, "ts": (T0 + i * STEP).isoformat()} for i, s in enumerate((9, 9.5))]
    (tmp_path / "peers.json").write_text(json.dumps(rows))
    (tmp_path / "none.json").write_text("[]")
    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))
    common = ["--policy", str(tmp_path / "act.toml"), "--no-slurm", "--events", str(tmp_path / "none.json")]
    args = parser.parse_args(["act", "plan", *common, "--peers", str(tmp_path / "peers.json")])
    assert args.func(args, settings) == 0
    (p,) = AuditLog.under(settings.home_path).records("proposal")
    assert (p["node"], p["job"], p["reason"]) == ("n3", "4242", "didact: peer-note straggler in job 4242, peer score 9.5")
    assert p["id"] in capsys.readouterr().out
    args = parser.parse_args(["act", "plan", *common])
    with pytest.raises(DidactError, match="(?s)job peer scores for .*act.toml: cannot be read from Prometheus.*--peers"):
        args.func(args, settings)


# -- per-partition fractions -------------------------------------------------------------------


def _parts(**spec: str) -> dict[str, NodeInfo]:
    """n="part1,part2[|STATE]" → nodes in those partitions."""
    return {n: NodeInfo(n, (s.split("|") + ["IDLE"])[1], "", tuple(p for p in s.split("|")[0].split(",") if p))
            for n, s in spec.items()}  # fmt: skip


def test_the_fraction_is_per_partition_and_a_node_counts_against_each_of_its_partitions():
    nodes = _parts(a="batch", b="batch", c="batch", d="batch,gpu", e="gpu", f="")
    out = OutOfService(nodes, 0.5)
    assert out.shares() == {"": (0, 1), "batch": (0, 4), "gpu": (0, 2)}
    assert out.refuse("e") is None
    out.add("e")
    # d: batch 1 of 4 would be fine (and 2 of 6 over all nodes), but gpu would be 2 of 2
    assert out.refuse("d") == "2 of 2 nodes of partition gpu would be out of service, more than limits.max_drained_fraction = 0.5"
    assert out.refuse("a") is None
    assert out.refuse("f") == "1 of 1 nodes would be out of service, more than limits.max_drained_fraction = 0.5"
    own = OutOfService(nodes, 1.0, {"batch": 0.25})
    own.add("a")
    assert own.refuse("b") == "2 of 4 nodes of partition batch would be out of service, more than limits.partitions.batch = 0.25"
    assert own.refuse("e") is None
    with pytest.raises(DidactError, match=r"\[limits.partitions\] gpus.*no such partition.*batch, gpu"):
        OutOfService(nodes, 1.0, {"gpus": 0.1})  # a typo is an error, not a limit that never applies


def test_apply_and_shed_keep_to_each_partitions_fraction(tmp_path):
    text = PEERS.format(per_hour=10).replace("max_drained_fraction = 1.0", "max_drained_fraction = 0.5")
    nodes = _parts(a="batch", b="batch", c="batch", d="batch,gpu", e="gpu")
    slurm, audit, p = FakeSlurm(**nodes), AuditLog(tmp_path / "audit.jsonl"), parse_policy(text, "act.toml")
    obs = with_peers({}, feed({("1", n): [9, 9, 9, 9] for n in ("d", "e")}))
    props, _ = plan(p, obs, slurm, audit)
    out = apply(p, obs, slurm, audit, approve=[x.id for x in props])
    assert [(r["kind"], r["node"]) for r in out] == [("action", "d"), ("refused", "e")]
    assert "1 of 2 nodes of partition gpu" not in out[1]["why"] and "2 of 2 nodes of partition gpu" in out[1]["why"]
    # shed: the same count, node by node, in the plan
    chosen, skipped = shed_plan(nodes, {"e": 300.0, "d": 200.0}, SuspendRules(0), out_of_service=OutOfService(nodes, 0.5))
    assert [n for n, _ in chosen] == ["e", "a", "b"] and "partition gpu" in dict(skipped)["d"]
    assert "2 of 4 nodes of partition batch" not in dict(skipped)["c"] and "3 of 4 nodes of partition batch" in dict(skipped)["c"]


def test_a_shed_rule_plans_within_each_partition():
    nodes = _parts(a="batch", b="batch", c="gpu", d="gpu")
    text = SHED.format(budget=100, frac=0.5).replace("[limits]\n", "[limits]\npartitions = { gpu = 0.0 }\n")
    p = parse_policy(text, "act.toml")
    props, skipped = propose(p, with_power({}, {"a": 100, "b": 100, "c": 500, "d": 500}), nodes, Context(now=PEAK))
    assert [x.node for x in props] == ["a"]
    assert "limits.partitions.gpu = 0" in dict((n, w) for _, n, w in skipped)["c"]


# -- the series as a real Prometheus keeps it (slow) ---------------------------------------------


@pytest.mark.slow
def test_the_exported_peer_scores_come_back_from_a_real_prometheus_to_the_sensor(tmp_path, monkeypatch):
    """``didact_job_peer_score{job,node}`` as serving's collector renders it, scraped by a real
    Prometheus under a scrape job of its own (Prometheus keeps the exporter's job as ``exported_job``);
    the sensor's tick reads it, and says so when Prometheus is gone."""
    import prometheus_client as pc
    import requests
    from prometheus_client.core import GaugeMetricFamily

    from didact_core.act.live import tick
    from didact_core.act.peers import live_peers
    from didact_core.config import Settings
    from tests.services import free_port, start_prometheus, wait_for_samples

    class Peers:  # the shape of didact_core.serve.cluster's job-peer family
        def collect(self):
            g = GaugeMetricFamily("didact_job_peer_score", "A job member's robust z against its peers", labels=["job", "node"])
            for node, score in (("n1", 0.4), ("n2", 1.1), ("n3", 14.5)):
                g.add_metric(["4242", node], score)
            yield g

    reg = pc.CollectorRegistry()
    reg.register(Peers())
    port = free_port()
    server, _ = pc.start_http_server(port, addr="127.0.0.1", registry=reg)
    (tmp_path / "act.toml").write_text('[[rule]]\nname = "peer-note"\nwhen = "job_peer_score >= 8"\n'
                                       'for_intervals = 2\naction = "notify"\nauto = true\n')  # fmt: skip
    try:
        with start_prometheus(tmp_path, [f"127.0.0.1:{port}"], scrape_interval="1s") as prom:
            wait_for_samples(prom, 'count_over_time(didact_job_peer_score{node="n3"}[1m])', 4)
            settings = Settings(home=str(tmp_path / "home"), prometheus_url=prom.url, interval_s=1.0,
                                act_policy=str(tmp_path / "act.toml"))  # fmt: skip
            frame, steps = live_peers(settings, parse_policy((tmp_path / "act.toml").read_text()), dt.datetime.now(dt.timezone.utc))
            assert set(frame["job"]) == {"4242"} and set(frame["node"]) == {"n1", "n2", "n3"} and len(steps) == 3
            stored = requests.get(f"{prom.url}/api/v1/series", params={"match[]": "didact_job_peer_score"}, timeout=10)
            assert {(s["job"], s.get("exported_job")) for s in stored.json()["data"]} == {("node", "4242")}
            obs = with_peers({}, frame, steps)
            assert straggler(obs["n3"], ">=", 8, 2).score == 14.5 and straggler(obs["n2"], ">=", 1, 1) is not None
            (tmp_path / "bin").mkdir()
            monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no scontrol: a notify policy needs no Slurm
            msg, _ = tick(settings)
            assert "auto: notify" in msg and "n3" in msg
            (note,) = AuditLog.under(settings.home_path).records("notify")
            assert note["reason"] == "didact: peer-note straggler in job 4242, peer score 14.5"
        msg, _ = tick(settings)  # Prometheus is gone: the tick says so and goes on
        assert msg.startswith("job peer scores unavailable, job_peer_score rules hold for no node")
    finally:
        server.shutdown()
        server.server_close()
