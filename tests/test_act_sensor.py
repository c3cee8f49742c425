"""The act sensor: proposes from the live state, queues for approval, applies only auto rules."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest

from didact_assets.definitions import defs
from didact_assets.resources import DidactResource
from didact_assets.sensors_act import act_sensor
from didact_core.act import AuditLog
from didact_core.act.live import NO_POLICY, NOTIFY_REPEAT, tick
from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.act.nodes import SlurmNodes
from tests.slurm_cluster import INSTALL_HINT, missing_binaries, start_slurm
from tests.test_act import POLICY, steady

NOTIFY = """
[[rule]]
name = "ood-note"
when = "ood_intervals >= 1"
action = "notify"
auto = true

[[rule]]
name = "ood-ask"
when = "ood_intervals >= 2"
action = "notify"
"""


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


def evaluate(instance, cursor, **fields):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"didact": DidactResource(**fields)})
    result = act_sensor.evaluate_tick(ctx)
    return result, ctx.cursor


def _events(settings: Settings, node: str, minutes=(0, 1, 2)) -> list[int]:
    now = pd.Timestamp.now(tz="UTC").floor("s")
    return ReviewQueue(settings).add_events(pd.DataFrame(
        [{"ts": now - pd.Timedelta(minutes=m), "node": node, "cpu": -1, "score": 2.0, "threshold": 1.0} for m in minutes]))  # fmt: skip


def test_the_sensor_is_registered_and_stopped_by_default():
    (sensor,) = [s for s in defs.sensors if s.name == "act_sensor"]
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_without_a_policy_the_sensor_says_how_to_set_one(instance, tmp_path):
    result, _ = evaluate(instance, None, home=str(tmp_path / "home"), act_policy="")
    assert result.run_requests == [] and result.skip_message == NO_POLICY


def test_a_bad_policy_is_the_ticks_error_not_a_load_failure(instance, tmp_path, monkeypatch):
    bad = tmp_path / "act.toml"
    bad.write_text('[[rule]]\nwhen = "ood_intervals >= 3"\naction = "reboot"\n')
    monkeypatch.setenv("DIDACT_ACT_POLICY", str(bad))
    assert Settings.from_env().act_policy == str(bad)  # nothing reads the file until a tick
    with pytest.raises(Exception) as err:
        evaluate(instance, None, home=str(tmp_path / "home"))
    assert f"policy file {bad} line 3: action 'reboot' is not known" in _chain(err.value)


def test_without_slurm_the_sensor_queues_what_needs_approval_and_notifies_auto_rules_once(instance, tmp_path, monkeypatch):
    """A host without ``scontrol`` (PATH without it) and a policy of notify rules: no Slurm is needed."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "act.toml").write_text(NOTIFY)
    fields = {"home": str(tmp_path / "home"), "act_policy": str(tmp_path / "act.toml")}
    settings = DidactResource(**fields).settings()
    result, cursor = evaluate(instance, None, **fields)
    assert result.skip_message.startswith("nothing to propose: 2 rule(s)")
    _events(settings, "n1")
    result, cursor = evaluate(instance, cursor, **fields)
    (item,) = ReviewQueue(settings).act_items()["id"].tolist()
    assert "auto: notify" in result.skip_message and f"review items {item} (notify n1)" in result.skip_message
    result, cursor = evaluate(instance, cursor, **fields)  # the next tick: nothing new is recorded or sent
    assert "auto:" not in result.skip_message and "(0 new)" in result.skip_message
    audit = AuditLog.under(settings.home_path)
    assert [(r["kind"], r["rule"]) for r in audit.records()] == [
        ("proposal", "ood-ask"), ("proposal", "ood-note"), ("notify", "ood-note")]
    assert audit.lineage_records() == [] and len(AuditLog.under(settings.home_path, ReviewQueue(settings).wh)
                                                 .lineage_records()) == 3  # fmt: skip
    sent = dt.datetime.now(dt.timezone.utc) - NOTIFY_REPEAT - dt.timedelta(minutes=1)
    msg, notified = tick(settings, dict.fromkeys(json.loads(cursor), sent.isoformat()))  # an hour on: sent again
    assert "auto: notify" in msg and len(audit.records("notify")) == 2


def test_a_dead_controller_fails_the_tick_within_the_watchdog(instance, tmp_path):
    (tmp_path / "act.toml").write_text('[[rule]]\nwhen = "ood_intervals >= 3"\naction = "drain"\n')
    (tmp_path / "slurm.conf").write_text("ClusterName=gone\nSlurmctldHost=localhost\nSlurmctldPort=9\n")
    fields = {"home": str(tmp_path / "home"), "act_policy": str(tmp_path / "act.toml"),
              "slurm_conf": str(tmp_path / "slurm.conf"), "slurm_command_timeout_s": 3.0}  # fmt: skip
    if missing_binaries():
        pytest.skip(f"Slurm not installed: {INSTALL_HINT}")
    with pytest.raises(Exception) as err:
        evaluate(instance, None, **fields)
    assert "`scontrol show node …` did not answer within 3 s" in _chain(err.value)


def _chain(e) -> str:
    out = []
    while e is not None:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(out)


DRAIN = POLICY.format(per_hour=2, auto="true")  # the default drain rate


@pytest.mark.slow
def test_on_a_real_slurm_the_sensor_asks_first_and_resumes_by_itself(instance, tmp_path):
    if missing := missing_binaries():
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): {INSTALL_HINT}")
    import argparse

    from didact_assets import cli_act

    (tmp_path / "act.toml").write_text(DRAIN)
    with start_slurm(tmp_path / "slurm") as cluster:
        fields = {"home": str(tmp_path / "home"), "act_policy": str(tmp_path / "act.toml"),
                  "slurm_conf": str(cluster.conf)}  # fmt: skip
        settings = DidactResource(**fields).settings()
        events = _events(settings, cluster.node)
        slurm = SlurmNodes(conf=cluster.conf)
        before = steady(slurm.nodes()[cluster.node])
        result, cursor = evaluate(instance, None, **fields)
        (item,) = ReviewQueue(settings).act_items()["id"].tolist()
        assert f"review items {item} (drain {cluster.node})" in result.skip_message
        assert steady(slurm.nodes()[cluster.node]) == before  # proposed, not done
        ReviewQueue(settings).verdict(item, "accept", "take it out", actor="alice")
        result, cursor = evaluate(instance, cursor, **fields)
        assert "DRAIN" not in cluster.node_state()  # the sensor applies auto rules only
        parser = argparse.ArgumentParser()
        cli_act.add_parsers(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["act", "apply", "--policy", str(tmp_path / "act.toml"), "--slurm-conf", str(cluster.conf)])
        assert args.func(args, settings) == 0
        assert "DRAIN" in cluster.node_state()
        for ev in events:  # the OOD events are vetted: the condition clears
            ReviewQueue(settings).verdict(ev, "accept", "a new workload", actor="alice")
        result, cursor = evaluate(instance, cursor, **fields)
        assert "auto: action" in result.skip_message and f"resume {cluster.node} by auto" in result.skip_message
        assert "DRAIN" not in cluster.node_state()
        kinds = [r["kind"] for r in AuditLog.under(settings.home_path).records()]
        assert kinds == ["proposal", "approval", "action", "proposal", "action"]
