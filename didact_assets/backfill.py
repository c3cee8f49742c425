"""``didact backfill``: launch a backfill of days from the terminal and follow its progress,
or follow (and cancel) one launched from the UI.

A backfill launched here is a Dagster *asset backfill* in the instance the UI reads
(``DAGSTER_HOME``): the Dagster daemon (``didact ui`` runs one) launches its runs, one or
more per day, in the order the asset graph asks (``champion_model`` of day D after day
D-1's), and the UI lists it under Overview → Backfills.  Following reads the instance only:
Ctrl-C stops following, never the backfill; ``--cancel`` cancels it as the UI's Cancel does.

Progress is per day: done when every selected asset of the day is materialised, failed when
a run of the day failed (or the daemon gave the day up because an upstream day failed).

Its options: ``cli_backfill`` (which imports this module only when the command runs: dagster
takes seconds to import and ``didact --help`` must not wait for it).
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg

# no public API launches or cancels a backfill outside GraphQL; these are what
# `dagster job backfill` and the webserver's GraphQL mutations use
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster._core.utils import make_new_backfill_id

from didact_assets.cli_output import console, reporter, table
from didact_assets.instance import ensure_instance
from didact_core.config import Settings
from didact_core.data.spine import check_partition
from didact_core.errors import DidactError

#: seconds between looks at the instance while following
POLL_S = 2.0
#: a daemon whose backfill heartbeat is older than this is taken as not running
DAEMON_FRESH_S = 120.0
#: backfill states after which nothing more happens
ENDED = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
         BulkActionStatus.FAILED, BulkActionStatus.CANCELED}  # fmt: skip
_SUCCESS = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS}
LAUNCHED_BY_TAG = "didact/launched_by"


def cmd_backfill(args, settings: Settings) -> int:
    from didact_assets.definitions import defs  # loads the code location (seconds)

    graph = defs.resolve_asset_graph()
    instance = ensure_instance(settings)
    if args.action == "status":
        if args.first or args.last or args.asset:
            raise DidactError("didact backfill status", "takes no --from/--to/--asset (they launch a backfill)",
                              "drop them, or launch with `didact backfill --from DAY --to DAY`")  # fmt: skip
        if args.cancel and not args.id:  # never cancel a backfill the operator did not name
            raise DidactError("didact backfill status --cancel", "needs the backfill's ID",
                              "give it: didact backfill status ID --cancel (`didact backfill status` shows the newest)")  # fmt: skip
        backfill = find_backfill(instance, args.id)
        if args.cancel:
            cancel(instance, backfill)
        return follow(instance, graph, backfill.backfill_id, once=args.no_follow)
    if args.cancel:
        raise DidactError("didact backfill --cancel", "needs the backfill to cancel",
                          "give it as `didact backfill status ID --cancel` (`didact backfill status` shows the newest)")  # fmt: skip
    backfill = launch(instance, graph, settings, args.first, args.last, args.asset)
    days = backfill.asset_backfill_data.target_subset.iterate_asset_partitions()
    n_days = len({p.partition_key for p in days})
    assets = ", ".join(k.to_user_string() for k in backfill.asset_selection)
    console.print(f"backfill [bold]{backfill.backfill_id}[/]: {n_days} day(s) {args.first} … {args.last}; "
                  f"assets {assets}. The UI lists it under Overview → Backfills.")  # fmt: skip
    if not daemon_running(instance):
        console.print(f"[yellow]no Dagster daemon is running for DAGSTER_HOME={instance.root_directory}[/]: the "
                      "backfill waits until one does — start `didact ui` (webserver + daemon) or "
                      "`dagster-daemon run -w workspace.yaml`")  # fmt: skip
    if args.no_follow:
        console.print(f"follow it: didact backfill status {backfill.backfill_id}")
        return 0
    return follow(instance, graph, backfill.backfill_id)


# -- launching, finding, cancelling ------------------------------------------------------------


def asset_keys(graph, names: list[str] | None) -> list[dg.AssetKey]:
    """The asset keys ``--asset`` names (default: every materialisable asset); a clear
    error naming the known ones for a name that is not an asset."""
    known = {k.to_user_string(): k for k in graph.materializable_asset_keys}
    wanted = [n.strip() for raw in names or [] for n in raw.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise DidactError(f"--asset {', '.join(unknown)}", "is not an asset of didact",
                          f"choose from {', '.join(sorted(known))}")  # fmt: skip
    return [known[n] for n in dict.fromkeys(wanted)] if wanted else sorted(known.values(), key=lambda k: k.path)


def backfill_days(settings: Settings, first: str | None, last: str | None) -> list[str]:
    """The days ``--from first --to last``, checked: both given, in order, in the partition range."""
    if not first or not last:
        raise DidactError("didact backfill", "needs the days to backfill",
                          "give --from DAY --to DAY (YYYY-MM-DD, UTC, --to inclusive), or `status` to follow one")  # fmt: skip
    if first > last:
        raise DidactError(f"--from {first} --to {last}", "ends before it starts",
                          f"give the earlier day first: --from {last} --to {first}")  # fmt: skip
    lo, hi = check_partition(settings, first), check_partition(settings, last)
    return [(lo + dt.timedelta(days=i)).isoformat() for i in range((hi - lo).days + 1)]


def launch(instance, graph, settings: Settings, first, last, names) -> PartitionBackfill:
    """Add an asset backfill of the days for the daemon to run (what the UI's Materialize →
    backfill does)."""
    days = backfill_days(settings, first, last)
    keys = asset_keys(graph, names)
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(), asset_graph=graph, partition_names=days, asset_selection=keys,
        backfill_timestamp=time.time(), tags={LAUNCHED_BY_TAG: "didact backfill"},
        dynamic_partitions_store=instance, all_partitions=False, title=f"didact backfill {first} … {last}",
        description=f"launched from the terminal: didact backfill --from {first} --to {last}", run_config=None,
    )  # fmt: skip
    instance.add_backfill(backfill)
    return backfill


def find_backfill(instance, backfill_id: str | None) -> PartitionBackfill:
    """The backfill ``backfill_id``, or (None) the newest one still running, else the newest."""
    if backfill_id:
        found = instance.get_backfill(backfill_id)
        if found is None:
            recent = ", ".join(b.backfill_id for b in instance.get_backfills(limit=5)) or "none"
            raise DidactError(f"backfill {backfill_id!r}", f"is not in the Dagster instance at {instance.root_directory}",
                              f"give one of its backfills (newest first: {recent}), or check DAGSTER_HOME")  # fmt: skip
        return found
    recent = instance.get_backfills(limit=50)
    if not recent:
        raise DidactError(f"the Dagster instance at {instance.root_directory}", "has no backfill",
                          "launch one: didact backfill --from DAY --to DAY (or from the UI)")  # fmt: skip
    return next((b for b in recent if b.status not in ENDED), recent[0])


def daemon_running(instance) -> bool:
    """Whether a Dagster daemon's backfill loop reported in lately."""
    beat = instance.get_daemon_heartbeats().get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_S


def cancel(instance, backfill: PartitionBackfill) -> None:
    """Cancel as the UI does (CANCELING: the daemon stops the runs, then marks it CANCELED);
    with no daemon and no run in flight there is nobody to do that, so it ends CANCELED here."""
    bid = backfill.backfill_id
    if backfill.status in ENDED:
        console.print(f"backfill {bid} already ended ({backfill.status.value}): nothing to cancel")
        return
    running = [r for r in instance.get_runs(filters=dg.RunsFilter.for_backfill(bid)) if not r.is_finished]
    if not running and not daemon_running(instance):
        instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED).with_end_timestamp(time.time()))
        console.print(f"backfill {bid} cancelled (no run of it had started)")
        return
    instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))
    console.print(f"backfill {bid}: cancelling — the daemon stops its {len(running)} running run(s) and marks it "
                  "CANCELED; days already done stay done")  # fmt: skip


# -- progress ----------------------------------------------------------------------------------


def day_states(instance, graph, backfill: PartitionBackfill, seen: dict) -> dict[str, dict]:
    """Per day of the backfill: {"state": waiting|running|done|failed|not run, "runs": [run ids]}.

    ``seen`` caches the materialisations of finished runs between calls."""
    records = instance.get_run_records(filters=dg.RunsFilter.for_backfill(backfill.backfill_id))
    by_day: dict[str, list] = {}
    for rec in records:
        by_day.setdefault(rec.dagster_run.tags.get(PARTITION_NAME_TAG, ""), []).append(rec)
    if backfill.is_asset_backfill:
        data = backfill.get_asset_backfill_data(graph)
        targets: dict[str, set] = {}
        for ap in data.target_subset.iterate_asset_partitions():
            targets.setdefault(ap.partition_key, set()).add(ap.asset_key)
        done = {(ap.asset_key, ap.partition_key) for ap in data.materialized_subset.iterate_asset_partitions()}
        given_up = {ap.partition_key for ap in data.failed_and_downstream_subset.iterate_asset_partitions()}
        for rec in records:
            done |= _materialised(instance, rec, seen)
    else:  # a job backfill (the UI's job partitions page): a run per day
        targets = {p: set() for p in backfill.partition_names or []}
        done, given_up = set(), set()
    out = {}
    for day in sorted(targets):
        runs = sorted(by_day.get(day, []), key=lambda r: r.create_timestamp)
        state = _state(targets[day], day, runs, done, given_up)
        if state == "waiting" and backfill.status in ENDED:  # cancelled (or the daemon gave up) before its turn
            state = "not run"
        out[day] = {"state": state, "runs": [r.dagster_run.run_id for r in runs]}
    return out


def _state(want: set, day: str, runs: list, done: set, given_up: set) -> str:
    if want and all((k, day) in done for k in want):
        return "done"
    if not want and runs and runs[-1].dagster_run.is_success:  # job backfill: its latest run
        return "done"
    if any(not r.dagster_run.is_finished for r in runs):
        return "running"
    if day in given_up or any(r.dagster_run.is_failure_or_canceled for r in runs):
        return "failed"
    return "waiting"


def _materialised(instance, rec, seen: dict) -> set:
    """(asset key, day) of every materialisation run ``rec`` recorded."""
    run = rec.dagster_run
    if run.run_id in seen:
        return seen[run.run_id]
    events = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    pairs = {(e.event_log_entry.dagster_event.asset_key, e.event_log_entry.dagster_event.partition)
             for e in events if e.event_log_entry.dagster_event is not None}  # fmt: skip
    if run.is_finished:
        seen[run.run_id] = pairs
    return pairs


def _epoch(when: dt.datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()  # the run storage keeps UTC


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def eta(started: float, finished: int, total: int, now: float) -> str:
    """Time left at the pace so far (days finished per second since the first run started)."""
    if finished == 0 or finished >= total:
        return ""
    return f"ETA {_duration((now - started) / finished * (total - finished))}"


def follow(instance, graph, backfill_id: str, once: bool = False) -> int:
    """Show the backfill's progress per day until it ends (``once``: its state now); exit
    code 0 when every day is done, 1 otherwise.  Ctrl-C stops following only."""
    seen: dict = {}
    shown: dict[str, str] = {}
    try:
        with reporter(console) as rep:
            backfill = instance.get_backfill(backfill_id)
            states = day_states(instance, graph, backfill, seen)
            task = rep.add(f"backfill {backfill_id}", len(states))
            warned, first = False, True
            while True:
                _report(rep, task, instance, backfill, states, shown, line=first)
                first = False
                if backfill.status in ENDED or once:
                    break
                if not warned and not daemon_running(instance):
                    warned = True
                    rep.log(f"waiting: no Dagster daemon runs backfills for DAGSTER_HOME={instance.root_directory} — "
                            "start `didact ui` (Ctrl-C stops following; the backfill stays queued)")  # fmt: skip
                time.sleep(POLL_S)
                backfill = instance.get_backfill(backfill_id)
                states = day_states(instance, graph, backfill, seen)
    except KeyboardInterrupt:
        console.print(f"\nstopped following backfill {backfill_id}. It was NOT cancelled: it goes on in the "
                      f"Dagster daemon. Follow again: didact backfill status {backfill_id}; cancel it: "
                      f"didact backfill status {backfill_id} --cancel")  # fmt: skip
        return 130
    rows = [{"day": d, "state": s["state"], "runs": " ".join(r[:8] for r in s["runs"])} for d, s in states.items()]
    console.print(table(f"backfill {backfill_id}: {backfill.status.value}", rows))
    failed = [d for d, s in states.items() if s["state"] != "done"]
    if failed and backfill.status in ENDED:
        console.print(f"{len(failed)} day(s) not done: {', '.join(failed[:10])} — see the runs in `didact ui` "
                      f"(Overview → Backfills → {backfill_id}); re-run a day: didact backfill --from DAY --to DAY")  # fmt: skip
    return 0 if backfill.status in _SUCCESS and not failed else 1


def _report(rep, task, instance, backfill, states: dict, shown: dict, line: bool = False) -> None:
    """A line per day that finished since the last look; the bar with counts and ETA
    (off a terminal: a line when a day finished, ``line``, or every ``PLAIN_EVERY_S``)."""
    changed = line
    for day, s in states.items():
        if s["state"] != shown.get(day) and s["state"] in ("done", "failed"):
            runs = ", ".join(r[:8] for r in s["runs"]) or "-"
            rep.log(f"{day} {'done' if s['state'] == 'done' else '[red]FAILED[/]'} (runs {runs})")
            changed = True
        shown[day] = s["state"]
    counts = {k: sum(s["state"] == k for s in states.values()) for k in ("done", "failed", "running", "waiting", "not run")}
    finished = counts["done"] + counts["failed"]
    records = instance.get_run_records(filters=dg.RunsFilter.for_backfill(backfill.backfill_id), limit=1,
                                       ascending=True)  # fmt: skip
    started = next((r.start_time or _epoch(r.create_timestamp) for r in records), backfill.backfill_timestamp)
    note = " · ".join(f"{n} {k}" for k, n in counts.items() if n)
    note = " · ".join(x for x in (backfill.status.value.lower(), note, eta(started, finished, len(states), time.time())) if x)
    rep.update(task, completed=finished, note=note, line=changed)
