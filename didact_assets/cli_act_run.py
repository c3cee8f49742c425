"""The commands of ``didact act`` (its parser: :mod:`didact_assets.cli_act`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import time

from prometheus_client import generate_latest

from didact_assets.cli_output import console, table
from didact_core.act import AuditLog, SlurmNodes, load_policy, observations_from_events, plan
from didact_core.act.audit import summary
from didact_core.act.conditions import power_from_json, scoring_intervals, with_power
from didact_core.act.live import live_events
from didact_core.act.metrics import registry, textfile_path, write_textfile
from didact_core.act.nodes import NoSlurm
from didact_core.act.peers import live_peers, peer_frame, peer_intervals, with_peers
from didact_core.act.planner import shed_nodes
from didact_core.act.powercap import PowerCaps
from didact_core.act.queue import apply_reviewed, queue_proposals
from didact_core.act.shed import unshed
from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.errors import DidactError


def cmd_act(args, settings: Settings) -> int:
    if args.action == "log" and args.limit < 1:
        raise DidactError(f"--limit {args.limit}", "is not a number of records", "pass --limit 1 or more")
    queue = ReviewQueue(settings)
    audit = AuditLog.under(settings.home_path, queue.wh)
    caps = PowerCaps.under(settings.home_path, settings.powercap_root, audit=audit)
    if args.action == "log":
        return _log(audit, args.limit, args.file)
    if args.action == "queue":
        return _queue(queue, args.status)
    if args.action == "metrics":
        sys.stdout.write(generate_latest(registry(audit, caps)).decode())  # raw: rich would wrap the lines
        return 0
    try:
        return _run(args, settings, audit, caps, queue)
    finally:
        write_textfile(textfile_path(settings), audit, caps)


def _run(args, settings: Settings, audit: AuditLog, caps: PowerCaps, queue: ReviewQueue) -> int:
    slurm = NoSlurm() if getattr(args, "no_slurm", False) else SlurmNodes(conf=args.slurm_conf, timeout_s=args.timeout)
    if args.action == "restore":
        return _restore(args, caps, slurm, audit)
    policy = load_policy(args.policy)
    observations = with_power(observations_from_events(*_events(args, queue)), _power(args, slurm))
    at = _at(args.at)
    observations = with_peers(observations, *_peers(args, settings, policy, at))
    if args.action == "plan":
        proposals, skipped = plan(policy, observations, slurm, audit, caps, now=at)
        live = args.day is None and args.at is None  # a stored day's or another hour's plan is not queued
        items = queue_proposals(queue, proposals) if live else {}
        rows = [{"id": p.id, "node": p.node, "action": p.action, "rule": p.rule,
                 "approval": "auto" if p.auto else f"review item {items[p.id][0]}" if live else "needed", "why": p.why,
                 "reason": p.reason} for p in proposals]  # fmt: skip
        console.print(table("proposed (dry run: nothing changed)", rows) if rows else "nothing to propose")
        for rule, node, why in skipped:
            console.print(f"left alone: {node} ({rule}): {why}")
        if any(not p.auto for p in proposals):
            how = "didact review accept ITEM --reason '…', then didact act apply --policy … (or " if live else "("
            console.print(f"approve with: {how}didact act apply --policy … --approve ID)", markup=False)
        return 0
    with caps.held() if args.hold > 0 else _restore_on_error(caps):  # SIGTERM restores from here on
        outcomes = apply_reviewed(policy, observations, slurm, audit, queue, approve=args.approve, actor=args.actor,
                                  now=at, caps=caps, webhook_url=policy.notify_url or settings.act_webhook_url)  # fmt: skip
        if not outcomes:
            console.print("nothing to apply (no approved or auto proposal)")
        for r in outcomes:
            console.print(summary(r), markup=False)
        held = args.hold > 0 and any(r["kind"] == "action" and r.get("action") == "power-cap" for r in outcomes)
        if held:
            console.print(f"holding the power caps for {args.hold:g} min (Ctrl-C or SIGTERM restores them now)")
            time.sleep(args.hold * 60)
    if held:
        console.print("power caps restored")
    return 1 if any(r["kind"] in ("refused", "failed", "not_applied") for r in outcomes) else 0


@contextlib.contextmanager
def _restore_on_error(caps: PowerCaps):
    """An error (or Ctrl-C) part way through apply: the caps do not outlive it."""
    try:
        yield
    except BaseException:
        caps.restore("restored after an error in apply")
        raise


def _restore(args, caps: PowerCaps, slurm: SlurmNodes, audit: AuditLog) -> int:
    bad = 0
    recs = caps.restore("didact act restore")
    for r in recs:
        if r["applied"]:
            console.print(f"restored {r['zone']} to {r['previous_uw'] / 1e6:g} W", markup=False)
        else:
            bad += 1
            console.print(f"could not restore {r['zone']} ({r['error']}); run: {r['command']}", markup=False)
    if not recs:
        console.print("no power caps to restore")
    if args.shed:
        for info in shed_nodes(slurm.nodes()):
            try:
                unshed(slurm, info)
                audit.append("action", action="unshed", node=info.name, by="restore", reason=info.reason)
                console.print(f"brought back {info.name} (was: {info.reason})", markup=False)
            except DidactError as e:
                bad += 1
                audit.append("failed", action="unshed", node=info.name, by="restore", error=str(e))
                console.print(f"could not bring back {info.name}: {e}", markup=False)
    return 1 if bad else 0


def _at(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DidactError(f"--at {text!r}", "is not an ISO time", "write e.g. --at 2026-11-20T18:30:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _power(args, slurm: SlurmNodes) -> dict[str, float]:
    if args.power is None:
        return {n: i.watts for n, i in slurm.nodes().items() if i.watts is not None}
    try:
        doc = json.loads(args.power.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DidactError(f"power file {args.power}", f"cannot be read as JSON ({e})",
                          'write {"node01": 310.5, …} (watts per node)') from None  # fmt: skip
    return power_from_json(doc, str(args.power))


def _peers(args, settings: Settings, policy, at: dt.datetime | None):
    """(peer scores, the intervals looked at, or None): ``--peers``, else Prometheus (not for ``--day``)."""
    if args.peers is not None:
        try:
            doc = json.loads(args.peers.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DidactError(f"peer scores file {args.peers}", f"cannot be read as JSON ({e})",
                              'write a JSON list like [{"job": "4242", "node": "n1", "score": 9.5, "ts": "…"}]') from None  # fmt: skip
        return peer_frame(doc, str(args.peers)), None
    if not peer_intervals(policy):
        return None, None
    if args.day is not None:
        console.print("job_peer_score rules: a stored day keeps no peer scores; they hold for no node (pass --peers FILE)")
        return None, None
    try:
        return live_peers(settings, policy, at or dt.datetime.now(dt.timezone.utc))
    except DidactError as e:
        raise DidactError(f"job peer scores for {policy.source}", f"cannot be read from Prometheus ({e})",
                          "start Prometheus scraping didact serve, set DIDACT_PROMETHEUS_URL, or pass --peers FILE.json") from None  # fmt: skip


def _events(args, queue: ReviewQueue):
    """(events, scoring intervals or None)."""
    if args.events is not None and args.day is not None:
        raise DidactError("--events and --day", "both say where the events come from", "give one of them")
    if args.events is not None:
        try:
            return json.loads(args.events.read_text()), None
        except (OSError, json.JSONDecodeError) as e:
            raise DidactError(f"events file {args.events}", f"cannot be read as JSON ({e})",
                              'write a JSON list like [{"node": "n1", "id": 7, "ts": "2026-01-01T00:00:00Z"}]') from None  # fmt: skip
    if args.day is not None:
        try:
            start = dt.datetime.combine(dt.date.fromisoformat(args.day), dt.time(), dt.timezone.utc)
        except ValueError:
            raise DidactError(f"--day {args.day!r}", "is not a date", "write --day YYYY-MM-DD") from None
        df = queue.list(status=None, limit=1_000_000, day=args.day)
        return df, scoring_intervals(queue, start, start + dt.timedelta(days=1))
    return live_events(queue, args.window)


def _log(audit: AuditLog, limit: int, from_file: bool) -> int:
    if from_file:
        rows, where = audit.records()[-limit:], str(audit.path)
    else:
        audit.sync_lineage()  # rows the file has and lineage lacks (a catalog error at the time)
        rows, where = audit.lineage_records()[-limit:], "lineage, asset act"
    if not rows:
        console.print(f"no act records in {where}")
        return 0
    console.print(table(f"act audit ({where})", [_log_row(r) for r in rows]))
    return 0


def _log_row(r: dict) -> dict:
    return {"time (UTC)": r["ts"][:19], "kind": r["kind"], "id": r.get("id", ""), "node": r.get("node", ""),
            "action": r.get("action", ""), "what": summary(r), "reason": r.get("reason", "")}  # fmt: skip


def _queue(queue: ReviewQueue, status: str) -> int:
    df = queue.act_items(None if status == "all" else status)
    if df.empty:
        console.print(f"no {status} act proposals in the review queue")
        return 0
    rows = [{"item": r["id"], "time (UTC)": str(r["ts"])[:19], "proposal": r["proposal"], "node": r["node"],
             "action": r["action"], "rule": r["rule"], "why": r["why"] or "", "status": r["status"],
             "by": r["verdict_by"] or "", "outcome": r["outcome"] or ""} for r in df.to_dict("records")]  # fmt: skip
    console.print(table(f"act proposals in the review queue ({status})", rows))
    console.print("accept/reject: didact review accept|reject ITEM --reason '…'; apply: didact act apply --policy …",
                  markup=False)  # fmt: skip
    return 0
