"""``didact act plan|apply|log``: node controls through Slurm, dry run first (docs/act.md).

Wiring (didact_assets/cli.py): ``from didact_assets import cli_act`` and, in
``build_parser``, ``cli_act.add_parsers(sub)``.  Exit status: 0 done, 1 some approved
action was refused or failed (shown, and in the audit log), 2 a usage error.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from didact_assets.cli_output import console, table
from didact_core.act import AuditLog, SlurmNodes, apply, load_policy, observations_from_events, plan
from didact_core.config import Settings
from didact_core.errors import DidactError


def add_parsers(sub) -> None:
    act = sub.add_parser("act", help="drain/resume/notify nodes through Slurm from policies: plan, apply, log",
                         description="Act on what didact sees (docs/act.md). `plan` changes nothing; `apply` "
                         "executes approved (--approve ID) and auto proposals that still hold.")  # fmt: skip
    asub = act.add_subparsers(dest="action", required=True, metavar="{plan,apply,log}")
    for name, text in (("plan", "print the proposed actions and why; changes nothing"),
                       ("apply", "execute approved proposals (and auto rules) that still hold")):  # fmt: skip
        p = asub.add_parser(name, help=text, description=text)
        p.add_argument("--policy", type=Path, required=True, help="policy TOML file (docs/act.md)")
        p.add_argument("--events", type=Path, default=None,
                       help="JSON list of OOD events [{node, id, ts}] (default: the review queue's pending events)")  # fmt: skip
        p.add_argument("--window", type=float, default=30.0,
                       help="minutes of review-queue events that count (default 30)")  # fmt: skip
        p.add_argument("--slurm-conf", type=Path, default=None, help="slurm.conf (default: SLURM_CONF or Slurm's)")
        p.add_argument("--timeout", type=float, default=20.0, help="watchdog seconds for each scontrol call")
        if name == "apply":
            p.add_argument("--approve", action="append", default=[], metavar="ID",
                           help="approve a proposal id from `didact act plan` (repeatable)")  # fmt: skip
            p.add_argument("--actor", default=None, help="who approves (default: the login name)")
        p.set_defaults(func=cmd_act)
    lg = asub.add_parser("log", help="list proposals, approvals, actions and Slurm's answers")
    lg.add_argument("--limit", type=int, default=50, help="newest N records (default 50)")
    lg.set_defaults(func=cmd_act)


def cmd_act(args, settings: Settings) -> int:
    audit = AuditLog.under(settings.home_path)
    if args.action == "log":
        rows = audit.records()[-args.limit:]
        if not rows:
            console.print(f"no act records in {audit.path}")
            return 0
        console.print(table(f"act audit ({audit.path})", [_log_row(r) for r in rows]))
        return 0
    policy = load_policy(args.policy)
    observations = observations_from_events(_events(args, settings))
    slurm = SlurmNodes(conf=args.slurm_conf, timeout_s=args.timeout)
    if args.action == "plan":
        proposals, skipped = plan(policy, observations, slurm, audit)
        rows = [{"id": p.id, "node": p.node, "action": p.action, "rule": p.rule,
                 "approval": "auto" if p.auto else "needed", "why": p.why, "reason": p.reason} for p in proposals]  # fmt: skip
        console.print(table("proposed (dry run: nothing changed)", rows) if rows else "nothing to propose")
        for rule, node, why in skipped:
            console.print(f"left alone: {node} ({rule}): {why}")
        if any(not p.auto for p in proposals):
            console.print("approve with: didact act apply --policy … --approve ID")
        return 0
    outcomes = apply(policy, observations, slurm, audit, approve=args.approve, actor=args.actor)
    if not outcomes:
        console.print("nothing to apply (no approved or auto proposal)")
    for r in outcomes:
        console.print(_log_row(r)["what"])
    return 1 if any(r["kind"] in ("refused", "failed") for r in outcomes) else 0


def _events(args, settings: Settings):
    if args.events is not None:
        try:
            return json.loads(args.events.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DidactError(f"events file {args.events}", f"cannot be read as JSON ({e})",
                              'write a JSON list like [{"node": "n1", "id": 7, "ts": "2026-01-01T00:00:00Z"}]') from None  # fmt: skip
    from didact_core.data.review import ReviewQueue  # lazy: opens the warehouse only when no --events

    df = ReviewQueue(settings).list(status="pending", limit=100000)
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=args.window)
    return df[df["ts"] >= since] if not df.empty else df


def _log_row(r: dict) -> dict:
    detail = r.get("why") or r.get("error") or r.get("slurm") or ""
    what = f"{r['kind']} {r.get('id', '')} {r.get('action', '')} {r.get('node', '')}".strip()
    if r.get("by"):
        what += f" by {r['by']}"
    if detail:
        what += f": {detail}"
    return {"time (UTC)": r["ts"][:19], "kind": r["kind"], "id": r.get("id", ""), "node": r.get("node", ""),
            "action": r.get("action", ""), "what": what, "reason": r.get("reason", "")}  # fmt: skip
