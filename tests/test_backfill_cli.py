"""`didact backfill` as an operator uses it: launch a backfill of days from the terminal (it
lands in the Dagster instance the UI reads), follow its progress per day, cancel it; bad
input is a clear error.  The daemon's part (launching the runs) is played here by runs
tagged with the backfill, as the daemon tags them; one slow test runs a real daemon."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG

from didact_assets import backfill
from didact_assets.assets import telemetry
from didact_assets.cli import main as didact
from didact_assets.definitions import defs
from didact_assets.instance import ensure_instance
from didact_assets.resources import DidactResource
from didact_core.data import spine
from didact_core.data.warehouse import Warehouse
from didact_core.procs import default_signals, terminate_tree

from .days import fixed_days
from .services import dagster_site

REPO = Path(__file__).resolve().parent.parent
D1, D2 = fixed_days(2)
RAW_KEY = dg.AssetKey(spine.RAW)


def run(capsys, *argv) -> tuple[int, str]:
    rc = didact(["backfill", *argv])
    out = capsys.readouterr().out
    return rc, " ".join(out.split())  # the console wraps long lines


def resource(s) -> DidactResource:
    return DidactResource(home=s.home, nodes=s.nodes, cpus=s.cpus, interval_s=s.interval_s, seed=s.seed,
                          workers=s.workers, source=s.source, fault_rate=s.fault_rate)  # fmt: skip


def launch(capsys, *assets) -> str:
    rc, out = run(capsys, "--from", D1, "--to", D2, "--asset", ",".join(assets or [spine.RAW]), "--no-follow")
    assert rc == 0, out
    assert "no Dagster daemon is running" in out and "didact ui" in out
    return out.split("backfill ")[1].split(":")[0]


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--from", D2, "--to", D1], [f"--from {D2} --to {D1}", "ends before it starts", f"--from {D1} --to {D2}"]),
        (["--from", D1, "--to", D2, "--asset", "raw_node_metrics,nope"],
         ["--asset nope", "is not an asset of didact", "choose from", "ai_ready_metrics", "raw_node_metrics"]),
        (["--from", "2020-01-01", "--to", D1], ["partition 2020-01-01", "outside the partition range", "DIDACT_START_DATE"]),
        (["--to", D1], ["needs the days", "--from DAY --to DAY"]),
        (["status", "nosuchid"], ["backfill 'nosuchid'", "is not in the Dagster instance", "newest first: none"]),
        (["status"], ["has no backfill", "didact backfill --from DAY --to DAY"]),
        (["status", "--from", D1], ["takes no --from/--to/--asset"]),
        (["--from", D1, "--to", D2, "--cancel"], ["needs the backfill to cancel", "didact backfill status ID --cancel"]),
        (["status", "--cancel"], ["needs the backfill's ID", "didact backfill status ID --cancel"]),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(settings, didact_env, capsys, argv, said):
    rc, out = run(capsys, *argv)
    assert rc == 2
    for s in said:
        assert s in out, out
    assert not ensure_instance(settings).get_backfills()  # nothing launched


def test_a_bad_day_is_a_usage_error(didact_env, capsys):
    with pytest.raises(SystemExit) as e:
        didact(["backfill", "--from", "2026-02-30", "--to", D2])
    assert e.value.code == 2
    assert "'2026-02-30' is not a day: give it as YYYY-MM-DD" in capsys.readouterr().err


def test_a_backfill_launched_here_is_the_uis_and_cancel_ends_it(settings, didact_env, capsys):
    bid = launch(capsys, spine.RAW, spine.AI_READY)
    instance = ensure_instance(settings)
    [bf] = instance.get_backfills()
    assert bf.backfill_id == bid and bf.status == BulkActionStatus.REQUESTED  # for the daemon, as the UI's
    assert bf.is_asset_backfill and set(bf.asset_selection) == {RAW_KEY, dg.AssetKey(spine.AI_READY)}
    data = bf.get_asset_backfill_data(defs.resolve_asset_graph())
    targets = {(ap.asset_key.to_user_string(), ap.partition_key) for ap in data.target_subset.iterate_asset_partitions()}
    assert targets == {(a, d) for a in (spine.RAW, spine.AI_READY) for d in (D1, D2)}

    rc, out = run(capsys, "status", "--no-follow")  # the newest running backfill, shown once
    assert rc == 1  # not ended
    assert f"backfill {bid}: 0/2 requested · 2 waiting" in out and f"backfill {bid}: REQUESTED" in out

    rc, out = run(capsys, "status", bid, "--cancel")
    assert f"backfill {bid} cancelled" in out and "0/2 canceled · 2 not run" in out
    assert instance.get_backfill(bid).status == BulkActionStatus.CANCELED
    assert rc == 1  # cancelled: its days are not done
    rc, out = run(capsys, "status", bid, "--cancel", "--no-follow")
    assert "already ended (CANCELED): nothing to cancel" in out


def test_status_follows_each_day_to_the_end(settings, didact_env, capsys, monkeypatch):
    bid = launch(capsys)
    instance = ensure_instance(settings)
    # what the daemon does: a run per day, tagged with the backfill; day 2 fails
    ok = dg.materialize([telemetry.raw_node_metrics], partition_key=D1, instance=instance,
                        resources={"didact": resource(settings)}, tags={BACKFILL_ID_TAG: bid})  # fmt: skip
    assert ok.success

    def broken(*a, **k):
        raise OSError("the source went away")

    with monkeypatch.context() as m:
        m.setattr(spine, "ingest_raw", broken)
        bad = dg.materialize([telemetry.raw_node_metrics], partition_key=D2, instance=instance, raise_on_error=False,
                             resources={"didact": resource(settings)}, tags={BACKFILL_ID_TAG: bid})  # fmt: skip
    assert not bad.success
    instance.update_backfill(instance.get_backfill(bid).with_status(BulkActionStatus.COMPLETED_FAILED))

    rc, out = run(capsys, "status", bid)
    assert rc == 1
    assert f"{D1} done (runs {ok.run_id[:8]})" in out
    assert f"{D2} FAILED (runs {bad.run_id[:8]})" in out
    assert f"1 day(s) not done: {D2}" in out and f"Overview → Backfills → {bid}" in out

    # the day re-run in the backfill: every day done, exit 0
    again = dg.materialize([telemetry.raw_node_metrics], partition_key=D2, instance=instance,
                           resources={"didact": resource(settings)}, tags={BACKFILL_ID_TAG: bid})  # fmt: skip
    assert again.success
    instance.update_backfill(instance.get_backfill(bid).with_status(BulkActionStatus.COMPLETED_SUCCESS))
    rc, out = run(capsys, "status", bid)
    assert rc == 0, out
    assert f"{D2} done" in out and "not done" not in out


def test_the_eta_is_the_pace_so_far():
    assert backfill.eta(started=0.0, finished=1, total=3, now=60.0) == "ETA 2m00s"
    assert backfill.eta(started=0.0, finished=0, total=3, now=60.0) == ""
    assert backfill.eta(started=0.0, finished=1, total=40, now=600.0) == "ETA 6h30m"


def test_ctrl_c_stops_following_and_leaves_the_backfill_running(settings, didact_env, capsys):
    bid = launch(capsys)
    proc = subprocess.Popen([sys.executable, "-m", "didact_assets.cli", "backfill", "status", bid], cwd=REPO,
                            env={**didact_env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=default_signals)  # fmt: skip
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "waiting: no Dagster daemon" in line:
            break
    assert any(f"backfill {bid}: 0/2" in x for x in lines), lines
    proc.send_signal(signal.SIGINT)
    out = " ".join((" ".join(lines) + proc.communicate(timeout=60)[0]).split())
    assert proc.returncode == 130, out
    assert f"stopped following backfill {bid}. It was NOT cancelled" in out
    assert f"didact backfill status {bid} --cancel" in out
    assert ensure_instance(settings).get_backfill(bid).status == BulkActionStatus.REQUESTED


@pytest.mark.slow
def test_a_real_daemon_runs_a_backfill_launched_here(settings, didact_env, capsys, tmp_path):
    """`dagster-daemon run` (what `didact ui` starts besides the webserver) runs the backfill;
    `didact backfill` follows it to the end, a line per day.  (Its backfill passes come every
    few seconds, not every 30 s: :func:`tests.services.dagster_site`.)"""
    ensure_instance(settings).dispose()  # the instance exists before the daemon (its migration is not race-safe)
    env = {**didact_env, "PYTHONPATH": f"{dagster_site(tmp_path / 'site')}:{REPO}"}
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not backfill.daemon_running(ensure_instance(settings)):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(1)
        rc, out = run(capsys, "--from", D1, "--to", D2, "--asset", "raw_node_metrics,job_labels,ai_ready_metrics")
    finally:
        terminate_tree(daemon, grace_s=10)
    assert rc == 0, out
    assert "no Dagster daemon" not in out
    assert f"{D1} done" in out and f"{D2} done" in out and "COMPLETED_SUCCESS" in out
    assert Warehouse(settings.home_path).partitions(spine.AI_READY) == [D1, D2]
