"""The ``didact`` commands that run for long: the services (``ui``, ``serve``, ``power
record``, ``testbed serve``) and the testbed's recording, ingest and evaluation.

A service stops cleanly on SIGTERM (what systemd sends), SIGINT and SIGHUP, and takes
every process it started with it (:mod:`didact_core.procs`); long work shows progress
(:mod:`didact_assets.cli_output`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from didact_assets.cli_output import console, reporter, table
from didact_core.config import Settings
from didact_core.procs import stop_on_signals, supervise

REPO = Path(__file__).resolve().parent.parent
#: `dagster dev` gets this long to stop its webserver, daemon and code servers
UI_GRACE_S = 15.0


def cmd_power(args, settings: Settings) -> int:
    """Poll this host's RAPL and NVIDIA GPUs, and the BMCs of DIDACT_REDFISH_BMCS, into the spool."""
    from didact_core.power import NvmlReader, RaplReader, RedfishReader
    from didact_core.power.spool import record, spool_dir

    readers = [RaplReader(), NvmlReader(), *RedfishReader.from_env()]
    for r in readers:
        ok, why = r.available()
        console.print(f"  {r.source:<8} {getattr(r, 'node', ''):<20} {'ok' if ok else 'not available'}: {why}")
    console.print(f"recording every {args.interval:g} s into {spool_dir(settings.home_path)} "
                  "(Ctrl-C or SIGTERM stops; the samples so far are written)")  # fmt: skip
    stop = threading.Event()
    # a signal handler must not take the Event's lock, which the interrupted main thread may hold
    on_signal = lambda signum: threading.Thread(target=stop.set, daemon=True).start()  # noqa: E731
    with reporter(console) as rep, stop_on_signals(on_signal=on_signal), _spool_progress(rep, settings, args.seconds):
        n = record(settings.home_path, readers, interval_s=args.interval, flush_every_s=args.flush,
                   max_seconds=args.seconds, stop=stop)  # fmt: skip
    console.print(f"{n} samples recorded" + (" (stopped by a signal)" if stop.is_set() else ""))
    return 0


@contextlib.contextmanager
def _spool_progress(rep, settings: Settings, seconds: float | None):
    """Watch the spool files this process writes (``<ts>-<pid>.parquet``): samples and files so far."""
    import pyarrow.parquet as pq  # lazy: only the power recorder reads parquet metadata here

    from didact_core.power.spool import spool_dir

    task, t0, done, seen = rep.add("power record", seconds), time.monotonic(), threading.Event(), {}

    def scan(line: bool) -> None:
        for f in spool_dir(settings.home_path).glob(f"*/*-{os.getpid()}.parquet"):
            if f not in seen:
                with contextlib.suppress(OSError, ValueError):
                    seen[f], line = pq.read_metadata(f).num_rows, True
        rep.update(task, completed=round(time.monotonic() - t0), line=line,
                   note=f"s, {sum(seen.values())} samples in {len(seen)} spool file(s)")  # fmt: skip

    th = threading.Thread(target=lambda: [scan(False) for _ in iter(lambda: done.wait(1.0), True)],
                          name="didact-power-progress", daemon=True)  # fmt: skip
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join(timeout=5)
        scan(False)  # the last flush


def cmd_testbed_record(args, settings: Settings) -> int:
    from didact_core import testbed

    with reporter(console) as rep:
        rec = testbed.record(
            args.minutes, flavours=args.flavours, segment_seconds=args.segment_seconds, out_csv=args.out,
            prometheus_url=args.prometheus_url, node_name=args.node_name, seed=args.seed,
            progress=_RecordProgress(rep, testbed.format_event),
            segments=args.segments, settings=settings, io_dir=args.io_dir, workload_set=args.workload_set,
        )  # fmt: skip
    console.print(f"{sum(s.labelled for s in rec.segments)} labelled segments of {rec.node} in {rec.labels_csv}; "
                  "next: didact testbed ingest")  # fmt: skip
    return 130 if rec.interrupted else 0


class _RecordProgress:
    """The recorder's events → a bar of segments and one of the running segment (its
    per-second ticks); the other events as lines."""

    def __init__(self, rep, format_event):
        self.rep, self.format_event = rep, format_event
        self.all = self.seg = None
        self.seg_s = 0

    def __call__(self, ev) -> None:
        if ev.kind not in ("start", "tick", "done", "failed") or not ev.total:
            self.rep.log(self.format_event(ev))
            return
        if self.all is None:
            self.all = self.rep.add("segments", ev.total)
            self.seg = self.rep.add("segment", None)
        name = f"[{ev.index}/{ev.total}] {ev.flavour}"
        left = f"{int(ev.total_left_s // 60):d}:{int(ev.total_left_s % 60):02d} left in total"
        if ev.kind == "start":
            self.rep.log(self.format_event(ev))
            self.seg_s = round(ev.segment_left_s)
            self.rep.update(self.seg, completed=0, total=self.seg_s, description=name, note=left, line=False)
        elif ev.kind == "tick":
            self.rep.update(self.seg, completed=self.seg_s - round(ev.segment_left_s), note=f"s, {left}", line=False)
        else:
            self.rep.log(self.format_event(ev))
            self.rep.update(self.all, advance=1, note=left, line=False)


def cmd_testbed_ingest(args, settings: Settings) -> int:
    from didact_core import testbed

    days = [dt.date.fromisoformat(d) for d in args.day] if args.day else None
    console.print(table("ingested", testbed.ingest_recording(settings, args.labels, days, args.prometheus_url)))
    return 0


def cmd_testbed_export(args, settings: Settings) -> int:
    from didact_core.testbed.export import export_fixture

    summary = export_fixture(settings, args.labels, args.out, args.segments)
    console.print(f"exported {summary['segments']} segments ({', '.join(summary['flavours'])}), "
                  f"{summary['cpu_rows']} CPU rows, {summary['start']} – {summary['end']} → {args.out}")  # fmt: skip
    return 0


def cmd_testbed_serve(args, settings: Settings) -> int:
    from didact_core import testbed

    # SIGTERM/SIGINT/SIGHUP leave the `with`: Prometheus is stopped (SIGTERM, then SIGKILL)
    with stop_on_signals(), testbed.serve_recording(settings, port=args.port) as url:
        console.print(f"serving {testbed.tsdb_dir(settings)} on {url}: "
                      f"DIDACT_SOURCE=prometheus DIDACT_PROMETHEUS_URL={url}")  # fmt: skip
        while True:
            time.sleep(3600)


def cmd_serve(args, settings: Settings) -> int:
    from didact_core.serve.cli import serve_from_args  # lazy: torch

    return serve_from_args(args, settings)


def cmd_ui(args, settings: Settings) -> int:
    from didact_assets.instance import ensure_instance

    ensure_instance(settings).dispose()
    cmd = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
           "-h", args.host, "-p", str(args.port)]  # fmt: skip
    console.print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    # dagster dev's webserver, daemon and code servers share its process group: a stop
    # signal goes to all of them, and what is left after the grace period is killed
    rc, sig = supervise(cmd, grace_s=UI_GRACE_S, cwd=REPO, stdin=subprocess.DEVNULL)
    if sig is not None:
        console.print(f"{signal.Signals(sig).name}: Dagster UI stopped")
        return 0 if sig != signal.SIGINT else 130
    return rc
