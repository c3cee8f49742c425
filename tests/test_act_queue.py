"""didact act: the audit in the lineage table, and approval through the review queue (real DuckDB)."""

from __future__ import annotations

import argparse
import fcntl
import json

import pandas as pd
import pytest

from didact_assets import cli_act
from didact_core.act import AuditLog, NodeInfo, Observation, plan
from didact_core.act.queue import apply_reviewed, queue_proposals
from didact_core.config import Settings
from didact_core.data import catalog
from didact_core.data.review import ReviewQueue
from didact_core.errors import DidactError
from tests.test_act import FakeSlurm, policy


@pytest.fixture
def queue(tmp_path):
    return ReviewQueue(Settings(home=str(tmp_path / "home")))


def _audit(queue) -> AuditLog:
    return AuditLog.under(queue.settings.home_path, queue.wh)


def test_every_audit_record_is_a_lineage_row_too(queue):
    audit = _audit(queue)
    slurm = FakeSlurm(a=NodeInfo("a", "IDLE"))
    (p,), _ = plan(policy(), {"a": Observation("a", 3, 7)}, slurm, audit)
    audit.append("approval", id=p.id, by="op", node="a", action="drain")
    rows = queue.wh.lineage(asset="act")
    assert list(rows["event"]) == ["act_proposal", "act_approval"]
    assert list(rows["partition"]) == ["a", "a"] and list(rows["version"]) == [p.id, p.id]
    assert rows["actor"].iloc[1] == "op" and rows["reason"].iloc[1] == f"approval {p.id} drain a by op"
    assert audit.lineage_records() == audit.records()  # the whole record travels in upstream
    assert json.loads(rows["upstream"].iloc[0])["why"] == "ood_intervals >= 3 holds: ood_intervals = 3"


def test_a_record_lineage_could_not_take_is_in_the_file_and_synced_later(queue, monkeypatch, caplog):
    audit = _audit(queue)
    monkeypatch.setattr(catalog, "LOCK_TIMEOUT_S", 0.2)
    with open(queue.wh.home / "warehouse.lock", "a+") as held:  # another process holds the catalog
        fcntl.flock(held, fcntl.LOCK_EX)
        rec = audit.append("action", id="x1", node="a", action="drain", by="op", slurm="ok")
        fcntl.flock(held, fcntl.LOCK_UN)
    assert audit.records() == [rec] and audit.lineage_records() == []
    assert "not yet in lineage" in caplog.text
    assert audit.sync_lineage() == 1 and audit.sync_lineage() == 0
    assert audit.lineage_records() == [rec]


def test_an_accepted_review_item_is_applied_once_and_closed(queue):
    audit, slurm = _audit(queue), FakeSlurm(a=NodeInfo("a", "IDLE"))
    bad = {"a": Observation("a", 3, 7)}
    props, _ = plan(policy(), bad, slurm, audit)
    (item, new), = queue_proposals(queue, props).values()
    assert new and queue_proposals(queue, props) == {props[0].id: (item, False)}  # one open item per proposal
    assert apply_reviewed(policy(), bad, slurm, audit, queue) == [] and slurm.calls == []  # pending: nothing
    done = queue.verdict(item, "accept", "bad DIMM suspected", actor="alice")
    assert (done["status"], done["verdict_by"], done["node"]) == ("accepted", "alice", "a")
    out = apply_reviewed(policy(), bad, slurm, audit, queue, actor="bob")
    assert [(r["kind"], r["action"], r["by"], r["review"]) for r in out] == [("action", "drain", "alice", item)]
    assert slurm.calls == [("drain", "a", "didact: ood-drain ood_intervals 3 (event 7)")]
    assert queue.act_item(item)["outcome"] == "action"
    assert apply_reviewed(policy(), bad, slurm, audit, queue) == []  # closed: not applied twice
    (approval,) = audit.records("approval")
    assert (approval["by"], approval["review"]) == ("alice", item)
    review = queue.wh.lineage(asset="act", event="review")
    assert review["actor"].tolist() == ["alice"] and "accepted: drain a" in review["reason"].iloc[0]
    with pytest.raises(DidactError, match="already accepted by alice"):
        queue.verdict(item, "reject", "changed my mind", actor="carol")


def test_a_rejected_proposal_is_never_applied(queue):
    audit, slurm = _audit(queue), FakeSlurm(a=NodeInfo("a", "IDLE"))
    bad = {"a": Observation("a", 3, 7)}
    props, _ = plan(policy(), bad, slurm, audit)
    ((item, _),) = queue_proposals(queue, props).values()
    queue.verdict(item, "reject", "a benchmark, not a fault", actor="alice")
    out = apply_reviewed(policy(), bad, slurm, audit, queue, approve=[props[0].id], actor="bob")
    assert [r["kind"] for r in out] == ["refused"] and "rejected in the review queue by alice" in out[0]["why"]
    assert slurm.calls == []
    again, _ = plan(policy(), bad, slurm, audit)
    assert queue_proposals(queue, again) == {props[0].id: (item, False)}  # the rejection stands


def test_an_approval_after_the_condition_cleared_is_refused(queue):
    audit, slurm = _audit(queue), FakeSlurm(a=NodeInfo("a", "IDLE"))
    props, _ = plan(policy(), {"a": Observation("a", 3, 7)}, slurm, audit)
    ((item, _),) = queue_proposals(queue, props).values()
    queue.verdict(item, "accept", "ok", actor="alice")
    out = apply_reviewed(policy(), {}, slurm, audit, queue)  # the OOD events are gone
    assert [r["kind"] for r in out] == ["refused"] and "no longer holds" in out[0]["why"]
    assert slurm.calls == [] and queue.act_item(item)["outcome"] == "refused"
    again, _ = plan(policy(), {"a": Observation("a", 3, 7)}, slurm, audit)
    ((item2, new),) = queue_proposals(queue, again).values()
    assert new and item2 != item  # it recurs: a person is asked again


def test_act_items_and_ood_events_share_ids_but_not_the_training_queue(queue):
    (ev,) = queue.add_events(pd.DataFrame([{"ts": pd.Timestamp("2026-01-01", tz="UTC"), "node": "a", "cpu": 0,
                                            "score": 2.0, "threshold": 1.0}]))  # fmt: skip
    item, _ = queue.add_act_item({"id": "p1", "node": "a", "action": "drain", "rule": "r", "why": "w", "reason": "x"})
    assert item != ev and queue.list(status=None)["id"].tolist() == [ev]
    queue.verdict(ev, "accept", "legit", actor="alice")
    queue.verdict(item, "reject", "no", actor="alice")
    assert queue.decided()["id"].tolist() == [ev] and queue.act_item(item)["status"] == "rejected"


def test_the_cli_queues_plans_applies_the_accepted_item_and_logs_from_lineage(tmp_path, monkeypatch, capsys):
    from didact_assets.cli import cmd_review

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    (tmp_path / "act.toml").write_text('[[rule]]\nname = "hot"\nwhen = "node_watts > 400"\naction = "notify"\n')
    (tmp_path / "power.json").write_text(json.dumps({"n1": 450, "n2": 300}))
    (tmp_path / "none.json").write_text("[]")
    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args(["act", *argv])
        return args.func(args, settings)

    common = ["--no-slurm", "--policy", str(tmp_path / "act.toml"), "--events", str(tmp_path / "none.json"),
              "--power", str(tmp_path / "power.json")]  # fmt: skip
    assert run("plan", *common) == 0
    (item,) = ReviewQueue(settings).act_items()["id"].tolist()
    assert f"review item {item}" in capsys.readouterr().out
    assert run("queue") == 0 and "n1" in capsys.readouterr().out
    cmd_review(argparse.Namespace(action="accept", id=item, reason="page the on-call", actor="alice"), settings)
    assert f"event {item} (n1 at" in capsys.readouterr().out
    assert run("apply", *common) == 0
    assert "notify" in capsys.readouterr().out
    assert run("apply", *common) == 0 and "nothing to apply" in capsys.readouterr().out
    assert run("log") == 0
    out = capsys.readouterr().out
    assert "lineage" in out and all(w in out for w in ("proposal", "approval", "notify", "alice"))
    assert run("log", "--file", "--limit", "1") == 0 and "audit.jsonl" in capsys.readouterr().out.replace("\n", "")
    assert run("queue", "--status", "accepted") == 0 and "notify" in capsys.readouterr().out
