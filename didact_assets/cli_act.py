"""``didact act plan|apply|restore|log|queue|metrics``: node controls through Slurm, dry run first (docs/act.md).

Wiring (didact_assets/cli.py): ``from didact_assets import cli_act`` and, in
``build_parser``, ``cli_act.add_parsers(sub)``.  Exit status: 0 done, 1 some approved
action was refused, failed or could not be applied here (shown, and in the audit log),
2 a usage error.  After ``plan``, ``apply`` and ``restore`` the ``didact_act_*`` metrics
textfile is rewritten.  ``plan`` puts the proposals that need approval into the review
queue; ``apply`` applies the accepted ones (and ``--approve`` ids).  The audit goes to the
JSON-lines file and the lineage table; ``log`` reads lineage (``--file``: the file).

This module is the parser only; the commands are in :mod:`didact_assets.cli_act_run`,
imported when one runs (pandas and the act package take a second that `didact --help`,
or any other command, does not need).
"""

from __future__ import annotations

from pathlib import Path

from didact_core.config import Settings


def add_parsers(sub) -> None:
    act = sub.add_parser("act", help="drain/resume/notify/power-cap/shed nodes from policies: plan, apply, log",
                         description="Act on what didact sees (docs/act.md). `plan` changes nothing; `apply` "
                         "executes approved (--approve ID) and auto proposals that still hold.")  # fmt: skip
    asub = act.add_subparsers(dest="action", required=True, metavar="{plan,apply,restore,log,queue,metrics}")
    for name, text in (("plan", "print the proposed actions and why; changes nothing"),
                       ("apply", "execute approved proposals (review queue, --approve) and auto rules that still hold")):  # fmt: skip
        p = asub.add_parser(name, help=text, description=text)
        p.add_argument("--policy", type=Path, required=True, help="policy TOML file (docs/act.md)")
        p.add_argument("--events", type=Path, default=None,
                       help="JSON list of OOD events [{node, id, ts}] (default: the review queue's pending events)")  # fmt: skip
        p.add_argument("--window", type=float, default=30.0,
                       help="minutes of live review-queue events that count (default 30; --day takes the whole day)")  # fmt: skip
        p.add_argument("--day", default=None, metavar="YYYY-MM-DD",
                       help="judge a stored day instead of the live window: all its review-queue events")  # fmt: skip
        p.add_argument("--power", type=Path, default=None,
                       help='JSON of node watts, {"n1": 310} or [{"node", "watts"}] (default: Slurm\'s CurrentWatts)')  # fmt: skip
        p.add_argument("--peers", type=Path, default=None,
                       help='JSON of job-peer scores [{"job", "node", "score", "ts"}] for job_peer_score rules '
                       "(default: the cluster model's didact_job_peer_score from DIDACT_PROMETHEUS_URL)")  # fmt: skip
        p.add_argument("--at", default=None, metavar="ISO-TIME",
                       help="the UTC time a rule's peak hours are judged at (default: now)")  # fmt: skip
        p.add_argument("--slurm-conf", type=Path, default=None, help="slurm.conf (default: SLURM_CONF or Slurm's)")
        p.add_argument("--timeout", type=float, default=20.0, help="watchdog seconds for each scontrol call")
        p.add_argument("--no-slurm", action="store_true",
                       help="this host has no Slurm: read no node states (power-cap and notify rules only)")  # fmt: skip
        if name == "apply":
            p.add_argument("--approve", action="append", default=[], metavar="ID",
                           help="approve a proposal id from `didact act plan` (repeatable)")  # fmt: skip
            p.add_argument("--actor", default=None, help="who approves (default: the login name)")
            p.add_argument("--hold", type=float, default=0.0, metavar="MINUTES",
                           help="keep the power caps of this run for MINUTES, then restore them (also on Ctrl-C, "
                           "SIGTERM or an error); 0: they stay until `didact act restore`")  # fmt: skip
        p.set_defaults(func=cmd_act)
    rs = asub.add_parser("restore", help="write back the power limits didact replaced; --shed: bring shed nodes back")
    rs.add_argument("--shed", action="store_true", help="also resume / power up nodes with a `didact: shed` reason")
    rs.add_argument("--slurm-conf", type=Path, default=None, help="slurm.conf (default: SLURM_CONF or Slurm's)")
    rs.add_argument("--timeout", type=float, default=20.0, help="watchdog seconds for each scontrol call")
    rs.set_defaults(func=cmd_act)
    lg = asub.add_parser("log", help="list proposals, approvals, actions and Slurm's answers (from lineage)")
    lg.add_argument("--limit", type=int, default=50, help="newest N records (default 50)")
    lg.add_argument("--file", action="store_true", help="read the JSON-lines audit file instead of the lineage table")
    lg.set_defaults(func=cmd_act)
    qu = asub.add_parser("queue", help="list act proposals in the review queue (accept/reject: didact review)")
    qu.add_argument("--status", default="pending", choices=["pending", "accepted", "rejected", "all"],
                    help="items with this status (default pending)")  # fmt: skip
    qu.set_defaults(func=cmd_act)
    mt = asub.add_parser("metrics", help="print the didact_act_* metrics (what the textfile holds)")
    mt.set_defaults(func=cmd_act)


def cmd_act(args, settings: Settings) -> int:
    from didact_assets.cli_act_run import cmd_act as run

    return run(args, settings)
