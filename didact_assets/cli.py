"""The ``didact`` command: the names an operator types, each a thin front over
``didact_core`` and Dagster."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from didact_assets import cli_act, cli_backfill, cli_ci, cli_storage
from didact_assets import cli_args as args_
from didact_assets import cli_services as services
from didact_assets.cli_args import last_days
from didact_assets.cli_output import console, reporter, table
from didact_assets.cli_testbed_eval import add_evaluate_arguments
from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.procs import StopRequested
from didact_core.serve.options import add_serve_arguments  # light: the service itself loads when it runs

REPO = Path(__file__).resolve().parent.parent


def _didact_version() -> str:
    try:
        return version("didact")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _benchmarks() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted((REPO / "bench").glob("bench_*.py"))}


# -- commands -----------------------------------------------------------------------------


def cmd_demo(args, settings: Settings) -> int:
    """Run the nightly job for the last N days on the configured source (default: simulator)."""
    from didact_assets.instance import ensure_instance

    instance = ensure_instance(settings)
    from didact_assets.definitions import defs
    from didact_core.data.spine import summary_row
    from didact_core.data.warehouse import Warehouse

    job = defs.resolve_job_def(args.job)
    days = last_days(args.days)
    console.print(
        f"[bold]didact demo[/]: {settings.source} · {settings.nodes} nodes × {settings.cpus} CPU threads · "
        f"{settings.interval_s:g} s scrapes · home {settings.home_path}"
    )
    failed = _run_days(job, days, instance, args.log_level)
    wh = Warehouse(settings.home_path)
    console.print(table("Data spine", [summary_row(wh, d) for d in days]))
    _print_model_summary(settings, days)
    console.print(
        "\nOpen the Dagster UI:  [bold]make ui[/]  (http://127.0.0.1:3000)\n"
        "Open the MLflow UI:   [bold]make mlflow-ui[/]  (http://127.0.0.1:5000)\n"
        f"Lineage of a day:     [bold]didact lineage ai_ready_metrics {days[-1]}[/]"
    )
    return 1 if failed else 0


def _run_days(job, days: list[str], instance, log_level: str) -> list[str]:
    """Run ``job`` for each day in order, with progress per day and per asset; the failed days.

    A challenger the promotion gate refuses fails its run (the gate is a blocking check,
    so the champion stays); for the demo that is an outcome, not a failure."""
    from didact_assets.assets.models import PROMOTION_GATE  # loaded with the job already

    gate = f"champion_model: {PROMOTION_GATE}"
    failed = []
    with reporter(console) as rep:
        all_days = rep.add(f"{job.name}: days", len(days))
        for day in days:
            task, failures, run_id = rep.add(f"{job.name} {day}", len(job.graph.nodes)), [], str(uuid.uuid4())
            instance.add_event_listener(run_id, lambda e, task=task, f=failures: _step_progress(rep, task, e, f))
            result = job.execute_in_process(
                partition_key=day, instance=instance, run_id=run_id, raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            )  # fmt: skip
            refused = bool(failures) and all(f.startswith("DagsterAssetCheckFailedError") and gate in f for f in failures)
            if refused:
                rep.log(f"{day}: the promotion gate kept the champion (challenger not promoted; see the Model table)")
            elif not result.success:
                failed.append(day)
                rep.log(f"[red]{day}: run {result.run_id} failed[/] — see `didact ui` for the logs")
            rep.update(all_days, advance=1, note=f"{day} {'failed' if day in failed else 'done'}")
    return failed


def _step_progress(rep, task: int, entry, failures: list[str]) -> None:
    """A Dagster event of a demo run → the day's progress (a line per asset done)."""
    ev = entry.dagster_event
    if ev is None or not ev.step_key:
        return
    kind = ev.event_type_value
    # the column-schema checks run as one step with a generated name
    step = "column schema checks" if ev.step_key.startswith("asset_check_") else ev.step_key
    if kind == "STEP_START":
        rep.update(task, note=f"running {step}", line=False)
    elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
        outcome = {"STEP_SUCCESS": "done", "STEP_FAILURE": "FAILED", "STEP_SKIPPED": "skipped"}[kind]
        rep.update(task, advance=1, note=f"{step} {outcome}")
    if kind == "STEP_FAILURE":
        error = getattr(ev.event_specific_data, "error", None)
        failures.append(f"{getattr(error, 'cls_name', '')}: {getattr(error, 'message', '')}")


def _print_model_summary(settings: Settings, days: list[str]) -> None:
    """The model path's per-day table, once the model assets exist."""
    try:
        from didact_core.learn.continual import model_summary_rows
    except ImportError:
        return
    rows = model_summary_rows(settings, days)
    if rows:
        console.print(table("Model", rows))


def cmd_lineage(args, settings: Settings) -> int:
    from didact_core.data.warehouse import Warehouse

    wh = Warehouse(settings.home_path)
    df = wh.lineage(args.asset, args.partition)
    if df.empty:
        raise DidactError(
            f"lineage of {args.asset} {args.partition or ''}".strip(),
            "has no rows",
            "materialise it first, or check the asset name (didact status lists them)",
        )
    cols = ["id", "ts", "event", "partition", "version", "data_version", "code_version", "upstream",
            "run_id", "mlflow_run_id", "model_version", "actor", "reason"]  # fmt: skip
    df = df[cols].copy()
    df["ts"] = df["ts"].astype(str).str[:19]
    for col, width in (("run_id", 8), ("mlflow_run_id", 8), ("upstream", 70), ("reason", 60)):
        df[col] = df[col].astype(str).str[:width]
    rows = [{k: v for k, v in r.items() if v is not None and str(v) not in ("None", "nan")} for r in df.to_dict("records")]
    console.print(table(f"lineage · {args.asset} {args.partition or ''}", rows))
    return 0


def cmd_rollback(args, settings: Settings) -> int:
    if args.asset:
        from didact_core.data.warehouse import Warehouse

        if args.model != "node":
            raise DidactError("didact rollback --asset with --model", "rolls back a data partition, not a model",
                              "drop --model, or drop --asset/--partition to roll a model's champion back")  # fmt: skip
        if not args.partition or args.to is None:
            raise DidactError("didact rollback --asset", "needs --partition DAY and --to VERSION")
        wh = Warehouse(settings.home_path)
        before = wh.require(args.asset, args.partition)
        info = wh.rollback(args.asset, args.partition, args.to, actor=args.actor or "", reason=args.reason or "")
        console.print(f"{args.asset}/{args.partition}: head v{before.version} → v{info.version} ({info.data_version})")
        return 0
    if args.model == "cluster":
        from didact_core.cluster.nightly import cluster_model_name, rollback_cluster_champion  # lazy: mlflow and torch

        res = rollback_cluster_champion(settings, to_version=args.to, actor=args.actor or "", reason=args.reason or "")
        console.print(f"champion of {cluster_model_name(settings)}: v{res['from']} → v{res['to']}")
        return 0
    from didact_core.learn.continual import rollback_champion

    res = rollback_champion(settings, to_version=args.to, actor=args.actor or "", reason=args.reason or "")
    console.print(f"champion of {settings.model_name}: v{res['from']} → v{res['to']}")
    return 0


def cmd_prune(args, settings: Settings) -> int:
    from didact_core.data.warehouse import Warehouse

    pruned = Warehouse(settings.home_path).prune(args.keep, asset=args.asset)
    console.print(f"pruned {len(pruned)} stored version(s)")
    for p in pruned:
        console.print(f"  {p.asset}/{p.partition} v{p.version}")
    from didact_core.engine import prune_staging

    staged = prune_staging(settings.home_path, args.staging_days)
    console.print(f"removed {len(staged)} staging folder(s) of jobs older than {args.staging_days} days")
    for p in staged:
        console.print(f"  {p.relative_to(settings.home_path)}")
    return 0


def cmd_status(args, settings: Settings) -> int:
    from didact_core.data.warehouse import Warehouse

    wh = Warehouse(settings.home_path)
    df = wh.sql(
        """select v.asset, count(*) as partitions, min(v.partition) as first, max(v.partition) as last,
                  sum(json_extract(v.tables, '$.cpu')::BIGINT) as raw_rows,
                  sum(json_extract(v.tables, '$.samples')::BIGINT) as samples
           from partition_versions v join partition_heads h using (asset, partition, version)
           group by 1 order by 1"""
    )
    for col in ("raw_rows", "samples"):
        df[col] = df[col].astype("Int64")
    console.print(f"home: {settings.home_path}   source: {settings.source}")
    console.print(table("partitions (heads)", df.astype(object).where(df.notna(), "").to_dict("records")))
    if note := cli_storage.damaged_heads_note(wh):
        console.print(note)
    from didact_core.learn.champion import registry_status  # lazy: mlflow and torch

    rows = registry_status(settings)
    if rows:
        console.print(table(f"registered model {settings.model_name}", rows))
    from didact_core.cluster.nightly import cluster_model_name  # lazy: mlflow and torch

    cluster = settings.replace(model_name=cluster_model_name(settings))
    if rows := registry_status(cluster):
        console.print(table(f"registered model {cluster.model_name} (cluster model)", rows))
    return 0


def cmd_review(args, settings: Settings) -> int:
    from didact_core.data.review import ReviewQueue

    queue = ReviewQueue(settings)
    if args.action == "list":
        df = queue.list(status=None if args.status == "all" else args.status, limit=args.limit)
        acts = queue.act_items(None if args.status == "all" else args.status)
        if len(acts):  # node-control proposals waiting for (or given) a verdict: same ids, same accept/reject
            console.print(f"{len(acts)} {args.status} act proposal(s): didact act queue --status {args.status} "
                          "lists them; didact review accept|reject ID decides one")  # fmt: skip
        if df.empty:
            console.print(f"no {args.status} OOD events")
            return 0
        rows = [
            {"id": r["id"], "time (UTC)": str(r["ts"])[:19], "node": r["node"], "cpu": r["cpu"] if r["cpu"] >= 0 else "all",
             "error": f"{r['score']:.4g}", "threshold": f"{r['threshold']:.4g}",
             "× thr": f"{r['score'] / r['threshold']:.1f}" if r["threshold"] else "",
             "nearest flavour": r["nearest_flavour"] or "", "model": f"v{r['model_version']}",
             "status": r["status"], "by": r["verdict_by"] or "", "reason": r["reason"] or ""}
            for r in df.to_dict("records")
        ]  # fmt: skip
        console.print(table(f"OOD events ({args.status})", rows))
        return 0
    if args.id is None:
        raise DidactError(f"didact review {args.action}", "needs an event ID", "didact review list shows them")
    ev = queue.verdict(args.id, args.action, args.reason, actor=args.actor or None)
    console.print(f"event {ev['id']} ({ev['node']} at {str(ev['ts'])[:19]}): {ev['status']} by {ev['verdict_by']}")
    return 0


def cmd_bench(args, settings: Settings) -> int:
    names = _benchmarks()
    if args.name not in names:
        raise DidactError(f"benchmark {args.name!r}", "does not exist", f"choose from {', '.join(names)}")
    return subprocess.call([sys.executable, str(names[args.name]), *args.rest], cwd=REPO)


# -- entry point --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="didact",
        description="Continual learning of a compute cluster. State lives under DIDACT_HOME "
        "(default ./.didact); every DIDACT_* env var overrides a setting.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"didact {_didact_version()}",
                   help="print didact's version and exit")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    cli_storage.add_parsers(sub)
    _add_data_parsers(sub)
    cli_backfill.add_parsers(sub)
    cli_ci.add_parsers(sub)
    cli_act.add_parsers(sub)

    sv = sub.add_parser("serve", help="score every node live with the champion, export /metrics (127.0.0.1:9108)")
    add_serve_arguments(sv)
    sv.set_defaults(func=services.cmd_serve)

    rv = sub.add_parser("review", help="vet out-of-distribution events: list, accept ID, reject ID")
    rv.add_argument("action", choices=["list", "accept", "reject"], help="list events, or give a verdict on one")
    rv.add_argument("id", nargs="?", type=args_.int_at_least(1, "accept 12"), help="event id (accept/reject)")
    rv.add_argument("--reason", default="", help="why (required for accept/reject)")
    rv.add_argument("--actor", default="", help="who (default: your login)")
    rv.add_argument("--status", default="pending", choices=["pending", "accepted", "rejected", "all"],
                    help="list: events with this status (default pending)")  # fmt: skip
    rv.add_argument("--limit", type=args_.int_at_least(1, "--limit 50"), default=50,
                    help="list: at most this many events, newest first (default 50)")  # fmt: skip
    rv.set_defaults(func=cmd_review)

    pw = sub.add_parser("power", help="record power from RAPL, NVML and Redfish BMCs for power_profiles")
    pw.add_argument("action", choices=["record"], help="record: poll the readers into the spool")
    pw.add_argument("--interval", type=args_.positive_float("--interval 5"), default=5.0, help="seconds between samples")
    pw.add_argument("--flush", type=args_.positive_float("--flush 300"), default=300.0, help="seconds between spool files")
    pw.add_argument("--seconds", type=args_.positive_float("--seconds 60"), default=None,
                    help="stop after this long (default: until Ctrl-C)")  # fmt: skip
    pw.set_defaults(func=services.cmd_power)

    _add_testbed_parser(sub)

    ui = sub.add_parser("ui", help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=args_.port, default=3000, help="port (default 3000)")
    ui.set_defaults(func=services.cmd_ui)

    names = ", ".join(_benchmarks())
    b = sub.add_parser("bench", help=f"run a benchmark from bench/ ({names})",
                       description=f"Run a benchmark from bench/ and print its figures. Benchmarks: {names}; "
                       "`didact bench NAME --help` shows a benchmark's own options.")  # fmt: skip
    b.add_argument("name", help=f"the benchmark: {names}")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    b.set_defaults(func=cmd_bench)
    return p


def _add_data_parsers(sub) -> None:
    """``didact demo|lineage|rollback|prune|status``: runs and the stored data."""
    d = sub.add_parser("demo", help="run the nightly job for the last days (simulated cluster by default)")
    d.add_argument("--days", type=args_.int_at_least(1, "--days 3"), default=3,
                   help="how many days, ending yesterday (default 3)")  # fmt: skip
    d.add_argument("--nodes", type=args_.int_at_least(1, "--nodes 16"), help="simulated nodes (DIDACT_NODES, default 16)")
    d.add_argument("--job", default="nightly", choices=["nightly", "data_spine"],
                   help="nightly: data and model (default); data_spine: raw → labels → AI-ready only")  # fmt: skip
    d.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="Dagster console log level (default WARNING)")  # fmt: skip
    d.set_defaults(func=cmd_demo)

    lg = sub.add_parser("lineage", help="print the lineage of an asset (partition)")
    lg.add_argument("asset", help="asset name, e.g. ai_ready_metrics (didact status lists the stored ones)")
    lg.add_argument("partition", nargs="?", type=args_.day, help="day YYYY-MM-DD (default: every partition)")
    lg.set_defaults(func=cmd_lineage)

    rb = sub.add_parser("rollback", help="roll a data partition or a model's champion back")
    rb.add_argument("--asset", help="data asset to roll back (omit to roll back the champion model)")
    rb.add_argument("--model", choices=["node", "cluster"], default="node",
                    help="which model's champion to roll back when --asset is omitted: node (the per-node model, "
                    "default) or cluster (the cluster model, registered as <model_name>-cluster)")  # fmt: skip
    rb.add_argument("--partition", type=args_.day, help="day of the data partition, YYYY-MM-DD")
    rb.add_argument("--to", type=args_.version_number, help="version to restore (data: vN or N; model: registry version; "
                    "default for the model: the previous champion)")  # fmt: skip
    rb.add_argument("--reason", default="", help="why (recorded in lineage)")
    rb.add_argument("--actor", default="", help="who (default: your login)")
    rb.set_defaults(func=cmd_rollback)

    pr = sub.add_parser("prune", help="delete stored partition versions beyond the newest N")
    pr.add_argument("--keep", type=args_.int_at_least(1, "--keep 3"), required=True,
                    help="versions to keep per partition, newest first (at least 1; a head is never deleted)")  # fmt: skip
    pr.add_argument("--asset", help="prune only this asset (default: every asset)")
    pr.add_argument("--staging-days", type=args_.int_at_least(1, "--staging-days 7"), default=7,
                    help="also remove the staging folders (inputs, parts, results) of executor jobs that nothing "
                    "has written to for this many days: failed or cancelled Slurm jobs (default 7)")  # fmt: skip
    pr.set_defaults(func=cmd_prune)

    st = sub.add_parser("status", help="what is stored: partitions, versions, models")
    st.set_defaults(func=cmd_status)


def _add_testbed_parser(sub) -> None:
    """``didact testbed record|ingest|export|serve|evaluate``, each with its own options."""
    tb = sub.add_parser("testbed", help="record real, labelled workloads on this node; ingest them; "
                        "evaluate how well a model separates the flavours",
                        description="Record real, labelled workloads on this node, ingest the recording into "
                        "DIDACT_HOME, serve its TSDB, or evaluate a model on it.")  # fmt: skip
    tsub = tb.add_subparsers(dest="action", required=True, metavar="{record,ingest,export,serve,evaluate}")

    rec = tsub.add_parser("record", help="run the workloads back to back while Prometheus scrapes this node")
    rec.add_argument("--minutes", type=args_.positive_float("--minutes 30"), default=30.0,
                     help="length, rounded to whole rounds (every flavour once per round; default 30)")  # fmt: skip
    rec.add_argument("--segments", type=args_.int_at_least(1, "--segments 9"), help="number of segments instead of --minutes")
    rec.add_argument("--flavours", help="comma list (default all: idle,io_good,io_bad,cpu_1,cpu_n,memory,"
                     "ctx_switch,mpi_compute,mpi_comm)")  # fmt: skip
    rec.add_argument("--set", dest="workload_set", choices=["A", "B"], type=str.upper, default="A",
                     help="workload set: A (stress-ng, MPI over TCP) or B (other programs for the same flavours: "
                     "compile, xz, pandas, dd, MPI over shared memory; default A)")  # fmt: skip
    rec.add_argument("--segment-seconds", type=args_.positive_float("--segment-seconds 60"), default=60.0,
                     help="seconds each segment runs one flavour (default 60)")  # fmt: skip
    rec.add_argument("--out", help="labels CSV (default $DIDACT_HOME/testbed/labels.csv; rows there are kept)")
    rec.add_argument("--prometheus-url", help="a Prometheus that already scrapes this node (default: start node "
                     "exporter + Prometheus on 127.0.0.1, data kept in $DIDACT_HOME/testbed/prometheus)")  # fmt: skip
    rec.add_argument("--node-name", help="the node's name in Prometheus (default: the host name, or the target "
                     "of --prometheus-url that scrapes this host)")  # fmt: skip
    rec.add_argument("--seed", type=int, help="seed of the segments' random order (default: a random one, printed)")
    rec.add_argument("--io-dir", help="where IO flavours write (a disk, not tmpfs; default $DIDACT_HOME/testbed)")
    rec.set_defaults(func=services.cmd_testbed_record)

    ing = tsub.add_parser("ingest", help="run raw → labels → AI-ready for the recorded days")
    ing.add_argument("--labels", action="append",
                     help="labels CSV, repeatable: recordings of one UTC day share its partitions, so ingest "
                     "their CSVs together (default $DIDACT_HOME/testbed/labels.csv)")  # fmt: skip
    ing.add_argument("--day", action="append", type=args_.day,
                     help="UTC day YYYY-MM-DD, repeatable (default: the days the CSV's labels touch)")  # fmt: skip
    ing.add_argument("--prometheus-url", help="read from this Prometheus (default: serve the recorder's stored "
                     "TSDB for the duration)")  # fmt: skip
    ing.set_defaults(func=services.cmd_testbed_ingest)

    exp = tsub.add_parser("export", help="write the raw samples of a recording's first segments, with their labels, "
                          "into a small folder (e.g. ci/fixtures/NAME for didact ci gate)")  # fmt: skip
    exp.add_argument("--labels", required=True, help="the recording's labels CSV (its days must be ingested)")
    exp.add_argument("--segments", type=args_.int_at_least(1, "--segments 27"), default=27,
                     help="how many labelled segments, from the first (default 27: 3 rounds of 9 flavours)")  # fmt: skip
    exp.add_argument("--out", required=True, help="folder to write cpu.parquet, node_metrics.parquet, labels.csv into")
    exp.set_defaults(func=services.cmd_testbed_export)

    srv = tsub.add_parser("serve", help="serve the stored TSDB on 127.0.0.1 for the Dagster path (until Ctrl-C)")
    srv.add_argument("--port", type=args_.port, default=9090, help="port on 127.0.0.1 (default 9090)")
    srv.set_defaults(func=services.cmd_testbed_serve)

    ev = tsub.add_parser("evaluate", help="train on ingested days; judge held-out segments or another recording")
    add_evaluate_arguments(ev)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # MLflow's INFO lines ("Creating initial MLflow database tables…") are noise here
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        overrides = {}
        if getattr(args, "nodes", None):
            overrides["nodes"] = args.nodes
        settings = Settings.from_env(**overrides)
        if overrides:  # subprocesses (Dagster steps) read the env
            os.environ.update({f"DIDACT_{k.upper()}": str(v) for k, v in overrides.items()})
        return args.func(args, settings)
    except DidactError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    except StopRequested as e:  # systemd's SIGTERM is a clean stop, Ctrl-C an interruption
        console.print(f"[yellow]stopped ({signal.Signals(e.signum).name})[/]")
        return 130 if e.signum == signal.SIGINT else 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
