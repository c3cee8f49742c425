"""The testbed recorder: real, labelled telemetry from this Linux node.

``didact testbed record`` (:func:`record`) runs labelled workloads (real programs, see
:mod:`didact_core.testbed.workloads`) back to back in random order while a node exporter
is scraped by Prometheus, and writes the labels CSV ``node,start,end,label`` that the
``job_labels`` asset reads (``DIDACT_LABELS_CSV``).

1. Without ``prometheus_url`` it starts a node exporter and a Prometheus on free
   127.0.0.1 ports, scraping every second, with the node's name (default: the host
   name) as the ``instance`` label.  Prometheus keeps its data in
   ``$DIDACT_HOME/testbed/prometheus/``, which persists, so the recording can be
   ingested later (:mod:`didact_core.testbed.ingest`).  Both services stop when the
   recording ends.  With ``prometheus_url`` (a Prometheus that already scrapes this
   node) the node's name is the ``instance`` (or ``DIDACT_PROMETHEUS_NODE_LABEL``) value
   of the target that scrapes this host, mapped the way
   :class:`~didact_core.ingest.prometheus.PrometheusSource` maps it (port stripped),
   unless ``node_name`` is given.
2. Segments of ``segment_seconds`` run back to back; the order is random (seeded) in
   rounds, each round one segment of every workload, so every one runs equally often.
3. Each segment's label covers what the workload really ran, ``[start + guard, stop −
   guard)``, where ``guard`` (default: one scrape interval, at least 1 s) keeps labels
   off the transitions; MPI segments start when the program reports it is running.
4. The labels CSV is rewritten atomically after every segment (rows already in the file
   are kept, so several recordings can share one CSV).
5. Ctrl-C (SIGINT) or SIGTERM stops cleanly: the running workload is killed (its process
   group and every process that inherited its ``DIDACT_TESTBED_TAG``, e.g. MPI ranks),
   the part of the segment recorded so far is labelled, the CSV written, the services
   stopped.  A second Ctrl-C while stopping is ignored.

Files the IO workloads write go to a temporary folder under ``$DIDACT_HOME/testbed`` (on
the disk, not ``/tmp``, which may be tmpfs), removed at the end.  Every workload is
bounded in time twice: the recorder stops it, and its own timeout (``--timeout`` / the
MPI program's duration) ends it a little later if the recorder cannot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import random
import secrets
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.procs import pdeathsig
from didact_core.testbed.labels_csv import LabelsWriter
from didact_core.testbed.processes import (
    TAG_VAR, cpu_ticks, node_busy_s, reaped_children_cpu_s, sample_cpu, stop_tagged,
)  # fmt: skip
from didact_core.testbed.progress import Interrupts, ProgressEvent
from didact_core.testbed.scrapes import discover_node, wait_for_scrapes
from didact_core.testbed.services import start_recording_services, testbed_dir, tsdb_dir
from didact_core.testbed.workloads import (
    RunContext, Workload, check_flavours, workloads_of, mem_available, plan_segments, resolve_flavours, usable_cpus,
)  # fmt: skip

log = logging.getLogger(__name__)

#: a workload's own timeout is the segment plus this (bounded even if the recorder dies)
SELF_TIMEOUT_MARGIN_S = 15.0
#: a label shorter than this (an interrupted segment) is not written
MIN_LABEL_S = 1.0
#: a segment's "done" line warns when anything but the workload used more of the node
OTHER_LOAD_WARN = 0.15


@dataclass
class Segment:
    index: int
    flavour: str
    node: str
    start: float  #: epoch s, process started
    stop: float = 0.0  #: epoch s, stop requested (or the process ended)
    ready: float | None = None  #: epoch s the load was steady
    label_start: float = 0.0
    label_end: float = 0.0
    status: str = "running"  #: ok | failed | interrupted
    message: str = ""
    pgid: int = 0  #: the flavour's process group
    tag: str = ""  #: DIDACT_TESTBED_TAG of its processes
    #: CPU seconds the flavour's processes used (user + system): the larger of its tagged processes
    #: sampled every second and its process tree once reaped (short-lived children the sampling
    #: misses; a process that left the tree, e.g. a daemonised MPI helper, only the sampling sees)
    cpu_s: float = 0.0
    #: CPU seconds the whole node was busy from the start until the stop (/proc/stat)
    node_busy_s: float = 0.0
    #: CPU seconds the recorder's own node exporter + Prometheus used meanwhile
    services_cpu_s: float = 0.0
    cpus: int = 1

    @property
    def labelled(self) -> bool:
        return self.status in ("ok", "interrupted") and self.label_end - self.label_start >= MIN_LABEL_S

    @property
    def other_load(self) -> float:
        """Fraction of the node's CPU capacity used by anything but the flavour and the
        recorder's own services during the segment (other jobs; also kernel threads
        working for the flavour, e.g. writeback): near 0 on a quiet node."""
        wall = max(self.stop - self.start, 1e-9)
        return max(0.0, self.node_busy_s - self.cpu_s - self.services_cpu_s) / (self.cpus * wall)


@dataclass
class Recording:
    labels_csv: Path
    node: str
    prometheus_url: str | None  #: the URL used (None: own services, stopped now)
    own_services: bool
    tsdb: Path | None
    seed: int
    segment_seconds: float
    guard_seconds: float
    planned: list[str]
    segments: list[Segment] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    interrupted: bool = False
    service_pids: list[int] = field(default_factory=list)
    #: the workload set recorded ("A" or "B": other programs for the same flavours)
    workload_set: str = "A"

    @property
    def days(self) -> list[dt.date]:
        """UTC days the labelled segments touch."""
        out: set[dt.date] = set()
        for s in self.segments:
            if s.labelled:
                d0 = dt.datetime.fromtimestamp(s.label_start, dt.timezone.utc).date()
                d1 = dt.datetime.fromtimestamp(s.label_end, dt.timezone.utc).date()
                out.update(d0 + dt.timedelta(days=i) for i in range((d1 - d0).days + 1))
        return sorted(out)

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for s in self.segments:
            if s.labelled:
                c[s.flavour] = c.get(s.flavour, 0) + 1
        return c

    def as_dict(self) -> dict:
        d = asdict(self)
        d["labels_csv"] = str(self.labels_csv)
        d["tsdb"] = str(self.tsdb) if self.tsdb else None
        d["days"] = [x.isoformat() for x in self.days]
        return d



@dataclass
class _Plan:
    """What :func:`record` checked before anything starts."""

    runnable: list[Workload]
    tools: dict
    mpi_bench: Path | None
    longest_warmup: float


def _plan(settings: Settings, flavours, minutes, segments, segment_seconds, seed, tool_path, emit,
          workload_set: str = "A") -> tuple[_Plan, Recording]:  # fmt: skip
    names = resolve_flavours(flavours, workload_set)
    if not segment_seconds > 0:
        raise DidactError(f"segment_seconds={segment_seconds}", "must be positive")
    runnable, skipped, tools, mpi_bench = check_flavours(names, settings.home_path, tool_path, workload_set)
    for name, why in skipped.items():
        log.warning("skipping %s: %s", name, why)
        emit(ProgressEvent("skip", f"skipping {name}: {why}", flavour=name))
    if not runnable:
        raise DidactError(
            f"flavours {names}", "none can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
            "install the tools named (sudo scripts/install_system_deps.sh)",
        )  # fmt: skip
    k = len(runnable)
    if segments is None:
        if minutes is None or not minutes > 0:
            raise DidactError(f"minutes={minutes}", "give a positive recording length (or segments)")
        segments = max(1, round(minutes * 60 / segment_seconds / k)) * k
    if segments < 1:
        raise DidactError(f"segments={segments}", "must be at least 1")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    planned = plan_segments([w.name for w in runnable], segments, seed)
    rec = Recording(Path(), "", None, True, None, seed, segment_seconds, 0.0, planned, skipped=skipped)
    return _Plan(runnable, tools, mpi_bench, max(w.warmup_s for w in runnable)), rec


def record(
    minutes: float | None = None,
    flavours: str | Sequence[str] | None = None,
    segment_seconds: float = 60.0,
    out_csv: str | Path | None = None,
    prometheus_url: str | None = None,
    node_name: str | None = None,
    seed: int | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    *,
    segments: int | None = None,
    settings: Settings | None = None,
    guard_seconds: float | None = None,
    tool_path: str | None = None,
    io_dir: str | Path | None = None,
    scrape_interval_s: float = 1.0,
    workload_set: str = "A",
) -> Recording:
    """Record labelled telemetry on this node (see the module doc).

    ``flavours`` names the workloads (labels; None: all).  ``minutes`` sets the length in
    whole rounds (every workload once per round, at least one round); ``segments`` sets
    the number of segments instead.  ``out_csv`` defaults to
    ``$DIDACT_HOME/testbed/labels.csv``; rows already in it are kept.  ``tool_path`` is
    the PATH workload tools are looked up in; ``io_dir`` where IO workloads write
    (default ``$DIDACT_HOME/testbed``).  Returns the :class:`Recording`, also when
    interrupted (``interrupted=True``).  ``workload_set`` picks the programs: ``"A"`` (stress-ng,
    MPI over TCP) or ``"B"`` (other programs for the same flavours, MPI over shared memory).
    """
    settings = settings or Settings.from_env()
    emit = progress or (lambda ev: None)
    plan, rec = _plan(settings, flavours, minutes, segments, segment_seconds, seed, tool_path, emit, workload_set)
    rec.workload_set = workload_set
    rec.labels_csv = Path(out_csv) if out_csv else testbed_dir(settings) / "labels.csv"
    writer = LabelsWriter(rec.labels_csv)
    rec.node, rec.prometheus_url, rec.own_services = node_name or "", prometheus_url, prometheus_url is None
    if prometheus_url is None:  # check before anything starts
        _check_segment_length(segment_seconds, guard_seconds, scrape_interval_s, plan.longest_warmup)
    active: list[tuple[subprocess.Popen, str]] = []
    interval = 0.0
    with Interrupts(emit) as ints, contextlib.ExitStack() as stack:
        try:
            url, interval = _connect(settings, rec, stack, node_name, scrape_interval_s, emit)
            guard = rec.guard_seconds = _check_segment_length(segment_seconds, guard_seconds, interval,
                                                              plan.longest_warmup)  # fmt: skip
            emit(ProgressEvent("info", f"waiting for Prometheus {url} to hold samples of {rec.node!r}"))
            wait_for_scrapes(settings, url, rec.node, points=2 if rec.own_services else 1,
                             timeout_s=max(60.0, 4 * interval))  # fmt: skip
            workdir = _workdir(Path(io_dir) if io_dir else testbed_dir(settings), stack, emit)
            ctx = RunContext(segment_seconds + SELF_TIMEOUT_MARGIN_S, workdir, usable_cpus(), plan.tools,
                             plan.mpi_bench, mem_available())  # fmt: skip
            emit(ProgressEvent("info", f"{len(rec.planned)} segments of {segment_seconds:g} s over "
                                       f"{len(plan.runnable)} flavours (seed {rec.seed}, guard {guard:g} s); "
                                       f"labels → {rec.labels_csv}"))  # fmt: skip
            _run_segments(rec, ctx, guard, emit, ints, active, writer)
            # the last segment's final samples must be scraped before Prometheus stops
            time.sleep(interval + 0.5)
        except KeyboardInterrupt:
            rec.interrupted = True
            emit(ProgressEvent("interrupted", "stopping: labels so far are written, services stopped"))
            ints.stopping()
            for proc, tag in active:
                stop_tagged(proc, tag)
            if rec.own_services and rec.segments and interval:
                time.sleep(interval + 0.5)  # one more scrape of the interrupted segment
        finally:
            ints.stopping()
            for proc, tag in active:  # normally stopped already; this covers an interrupt mid-stop
                stop_tagged(proc, tag)
            if rec.segments:
                writer.write(rec.segments)
            if rec.own_services:
                emit(ProgressEvent("info", "stopping node exporter and Prometheus"))
    rec.prometheus_url = prometheus_url
    emit(ProgressEvent("end", f"{sum(s.labelled for s in rec.segments)} labelled segments in {rec.labels_csv}"))
    return rec


def _connect(settings: Settings, rec: Recording, stack: contextlib.ExitStack, node_name: str | None,
             scrape_interval_s: float, emit) -> tuple[str, float]:  # fmt: skip
    """Start the recording's own services, or find this node in the given Prometheus:
    (Prometheus URL, scrape interval s)."""
    if rec.own_services:
        rec.node = node_name or socket.gethostname()
        emit(ProgressEvent("info", f"starting node exporter + Prometheus (1 scrape / {scrape_interval_s:g} s) "
                                   f"for node {rec.node!r}; data in {tsdb_dir(settings)}"))  # fmt: skip
        svc = stack.enter_context(start_recording_services(settings, rec.node, scrape_interval_s))
        rec.service_pids = svc.pids
        rec.tsdb = tsdb_dir(settings)
        return svc.prometheus.url, scrape_interval_s
    url = rec.prometheus_url.rstrip("/")
    if node_name:
        rec.node, interval = node_name, 0.0
        with contextlib.suppress(DidactError):
            interval = discover_node(settings, url)[1]
    else:
        rec.node, interval = discover_node(settings, url)
    return url, interval or 15.0


def _workdir(io_base: Path, stack: contextlib.ExitStack, emit) -> Path:
    """A temporary folder for the IO workloads' files, removed when the recording ends."""
    io_base.mkdir(parents=True, exist_ok=True)
    if _fs_type(io_base) in ("tmpfs", "ramfs"):
        emit(ProgressEvent("info", f"warning: {io_base} is in memory ({_fs_type(io_base)}): the IO flavours "
                                   "will not touch a disk — pass io_dir on a disk"))  # fmt: skip
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="run-", dir=io_base)))


def _run_segments(rec: Recording, ctx: RunContext, guard: float, emit, ints: Interrupts,
                  active: list[tuple[subprocess.Popen, str]], writer: LabelsWriter) -> None:  # fmt: skip
    """The planned segments in order; a workload that fails is left out from then on."""
    disabled: dict[str, str] = {}
    for i, name in enumerate(rec.planned, 1):
        if name in disabled:
            continue
        seg = _run_segment(workloads_of(rec.workload_set)[name], i, rec, ctx, guard, emit, ints, active)
        if seg.status == "failed":
            disabled[name] = seg.message
            emit(ProgressEvent("failed", f"{seg.message} — {name} is left out from now on",
                               index=i, total=len(rec.planned), flavour=name))  # fmt: skip
        with ints.shield():
            writer.write(rec.segments)


def _check_segment_length(segment_s: float, guard_s: float | None, interval_s: float, warmup_s: float) -> float:
    """The guard band (default: one scrape interval, at least 1 s); an error if the
    segments leave too little labelled time."""
    guard = guard_s if guard_s is not None else max(1.0, interval_s)
    need = 2 * guard + warmup_s + 2 * interval_s
    if segment_s < need:
        raise DidactError(
            f"segment_seconds={segment_s:g}",
            f"leaves too little labelled time with a {guard:g} s guard band and {interval_s:g} s scrapes",
            f"use at least {math.ceil(need)} s segments",
        )
    return guard



def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` ('' if unknown)."""
    path = Path(path).resolve()
    best, kind = None, ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = Path(parts[1])
            if (mnt == path or mnt in path.parents) and (best is None or len(mnt.parts) >= len(best.parts)):
                best, kind = mnt, parts[2]
    return kind


def _run_segment(fl: Workload, i: int, rec: Recording, ctx: RunContext, guard: float,
                 emit: Callable[[ProgressEvent], None], ints: Interrupts,
                 active: list[tuple[subprocess.Popen, str]]) -> Segment:  # fmt: skip
    """Run one segment of ``fl``; append it to ``rec.segments``; stop all it started."""
    seconds, total = rec.segment_seconds, len(rec.planned)
    log_path = ctx.workdir / f"{i:04d}-{fl.name}.log"
    argv = fl.command(ctx)
    seg = Segment(i, fl.name, rec.node, start=time.time(), tag=f"{os.getpid()}-{secrets.token_hex(6)}-{i}")
    rec.segments.append(seg)
    deadline = time.monotonic() + seconds
    proc = None
    seg.cpus = ctx.cpus
    busy0, ticks, svc0, reaped0 = node_busy_s(), {}, cpu_ticks(rec.service_pids), reaped_children_cpu_s()

    def left_total(left: float) -> float:
        return max(0.0, left) + (total - i) * seconds

    try:
        with ints.shield():  # a process that starts is also registered for stopping
            with open(log_path, "wb") as logf:
                proc = subprocess.Popen(
                    argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ctx.workdir,
                    env={**os.environ, **fl.env(), TAG_VAR: seg.tag}, process_group=0, preexec_fn=pdeathsig,
                )  # fmt: skip
            active.append((proc, seg.tag))
            seg.pgid = proc.pid
        emit(ProgressEvent("start", shlex.join([Path(argv[0]).name, *argv[1:]]), i, total, fl.name, seconds,
                           left_total(seconds)))  # fmt: skip
        last_tick = int(seconds)
        while (left := deadline - time.monotonic()) > 0:
            if proc.poll() is not None:
                seg.status = "failed"
                break
            if fl.ready_marker and seg.ready is None:
                with contextlib.suppress(OSError):
                    if fl.ready_marker in log_path.read_bytes():
                        seg.ready = time.time()
            if int(left) < last_tick:
                last_tick = int(left)
                sample_cpu(seg.tag, ticks)
                emit(ProgressEvent("tick", "", i, total, fl.name, left, left_total(left)))
            time.sleep(min(0.2, left))
    except KeyboardInterrupt:
        seg.status = "interrupted"
        raise
    finally:
        seg.stop = time.time()
        with ints.shield():
            if proc is not None:
                sample_cpu(seg.tag, ticks)
                seg.node_busy_s = node_busy_s() - busy0
                seg.services_cpu_s = (cpu_ticks(rec.service_pids) - svc0) / os.sysconf("SC_CLK_TCK")
                stop_tagged(proc, seg.tag)
                active.remove((proc, seg.tag))
            seg.cpu_s = max(sum(ticks.values()) / os.sysconf("SC_CLK_TCK"), reaped_children_cpu_s() - reaped0)
            _finish_segment(seg, fl, proc, argv, log_path, guard)
    if seg.status == "ok":
        note = f"other load {100 * seg.other_load:.0f}% of the node's CPU"
        if seg.other_load > OTHER_LOAD_WARN:
            note += " — other work is running here: its CPU time lands in this segment's counters"
        emit(ProgressEvent("done", note, i, total, fl.name, 0.0, left_total(0.0)))
    return seg


def _finish_segment(seg: Segment, fl: Workload, proc, argv: list[str], log_path: Path, guard: float) -> None:
    if seg.status == "running":
        seg.status = "ok"
    if fl.ready_marker and seg.ready is None and seg.status == "ok":
        seg.status = "failed"
        seg.message = f"{fl.name} never reported that it runs"
    if seg.status == "failed" and not seg.message:
        rc = proc.returncode if proc is not None else None
        seg.message = f"{Path(argv[0]).name} ended after {seg.stop - seg.start:.1f} s with exit code {rc}"
    if seg.status == "failed":
        with contextlib.suppress(OSError):
            seg.message += ": " + log_path.read_text(errors="replace").strip()[-400:].replace("\n", " | ")
    begin = seg.ready if seg.ready is not None else seg.start + fl.warmup_s
    seg.label_start = begin + guard
    seg.label_end = seg.stop - guard
