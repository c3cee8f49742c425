"""``didact ci gate``: the model-quality gate on a code change (``didact_core.learn.ci_gate``).

Wiring (didact_assets/cli.py): ``from didact_assets import cli_ci`` and, in ``build_parser``,
``cli_ci.add_parsers(sub)``.  Exit status: 0 pass, 1 a regression (the table of what failed
is printed and written to the report), 2 a usage or input error (``DidactError``).
"""

from __future__ import annotations

from pathlib import Path

from didact_assets.cli_output import console, table
from didact_core.config import Settings
from didact_core.errors import DidactError

REPO = Path(__file__).resolve().parent.parent
CI_DIR = REPO / "ci"


def add_parsers(sub) -> None:
    """``didact ci gate`` with its options."""
    ci = sub.add_parser("ci", help="model CI: train the code under test on a frozen reference set and gate it",
                        description="Model CI/CD (docs/ci.md).")  # fmt: skip
    csub = ci.add_subparsers(dest="action", required=True, metavar="{gate}")
    g = csub.add_parser("gate", help="train on the frozen reference set, compare with ci/reference.json; "
                        "exit 1 on a regression", description="Train the code under test on a frozen, seeded "
                        "reference set, evaluate it on held-out days and compare every metric with the reference "
                        "(or the registry's champion) under the thresholds file. Exit 0 pass, 1 regression.")  # fmt: skip
    g.add_argument("--profile", choices=["quick", "full", "tiny"], default="quick",
                   help="quick: about a minute on 2 cores (CI); full: more nodes, days and flavours; tiny: tests")  # fmt: skip
    g.add_argument("--accept", action="store_true",
                   help="record this run's metrics as the profile's reference (on main, after an intended change)")  # fmt: skip
    g.add_argument("--thresholds", type=Path, default=CI_DIR / "thresholds.toml",
                   help="thresholds file (default ci/thresholds.toml)")  # fmt: skip
    g.add_argument("--reference", type=Path, default=CI_DIR / "reference.json",
                   help="reference metrics (default ci/reference.json)")  # fmt: skip
    g.add_argument("--report", type=Path, default=None,
                   help="folder for report.md, metrics.json and the plots (default $DIDACT_HOME/ci-report)")  # fmt: skip
    g.add_argument("--fixtures", type=Path, default=CI_DIR / "fixtures",
                   help="folder of real labelled recording slices (didact testbed export) trained on and judged as "
                   "real.* (default ci/fixtures; a folder without slices adds none)")  # fmt: skip
    g.add_argument("--against-registry", action="store_true",
                   help="compare with the registry's champion scored on the same held-out split, not the reference")  # fmt: skip
    g.set_defaults(func=cmd_ci)


def cmd_ci(args, settings: Settings) -> int:
    """Run the gate, print its verdict; 0 pass, 1 regression."""
    from didact_core.learn.ci_gate import run_gate  # lazy: imports torch (seconds); the parser must not wait
    from didact_core.learn.ci_report import verdict_rows  # lazy: as above

    champion, label, gate_settings = None, "registry champion", None
    if args.against_registry:
        from didact_core.learn.registry import CHAMPION, ModelRegistry  # lazy: imports mlflow (seconds)

        champion, version = ModelRegistry(settings).load_alias(CHAMPION)
        if champion is None:
            console.print(f"[red]error:[/] model {settings.model_name} has no champion in {settings.tracking_uri} — "
                          "train one (didact demo), or gate against ci/reference.json without --against-registry")  # fmt: skip
            return 2
        label, gate_settings = f"registry champion {settings.model_name} v{version}", settings
    report = args.report or settings.home_path / "ci-report"
    fixture = args.fixtures
    if fixture != CI_DIR / "fixtures" and not fixture.is_dir():
        raise DidactError(f"--fixtures {fixture}", "is not a folder",
                          "give the folder that holds didact testbed export slices (e.g. ci/fixtures)")  # fmt: skip
    with console.status("didact ci gate") as status:
        outcome = run_gate(
            args.profile, thresholds=args.thresholds, reference=args.reference, accept=args.accept,
            champion=champion, champion_label=label, report_dir=report, settings=gate_settings,
            fixture=fixture if fixture.is_dir() else None, progress=lambda msg: status.update(f"ci gate: {msg}"),
        )  # fmt: skip
    for w in outcome.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    failed = verdict_rows(outcome.verdicts, only_failed=True)
    gated = [v for v in outcome.verdicts if v.rule is not None]
    console.print(table(f"ci gate ({outcome.profile}) against {outcome.baseline_source}",
                        [r for r in verdict_rows(gated) if r["status"] != "FAIL"] + failed))  # fmt: skip
    if outcome.accepted:
        console.print(f"reference for profile {outcome.profile} recorded in {args.reference}")
    console.print(f"report: {outcome.report} ({outcome.seconds:.0f} s)")
    if not outcome.passed:
        console.print(table("what failed", failed))
        console.print(f"[red]FAIL[/]: {len(failed)} metric(s) regressed: {', '.join(r['metric'] for r in failed)}")
        return 1
    console.print("[green]PASS[/]")
    return 0
