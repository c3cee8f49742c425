"""The testbed recorder: real, labelled telemetry from this Linux node.

``didact testbed record`` runs labelled **job flavours** (real programs) back to back in
random order while a node exporter is scraped by Prometheus, and writes the labels CSV
``node,start,end,label`` that the ``job_labels`` asset reads (``DIDACT_LABELS_CSV``).

Flavours (label = name)
-----------------------
============  ==============================================================  ===========
label         program                                                         needs
============  ==============================================================  ===========
idle          ``sleep``                                                       coreutils
io_good       ``stress-ng --hdd 1 --hdd-opts wr-seq,direct --hdd-write-size   stress-ng
              4M``: large sequential writes that bypass the page cache
io_bad        ``stress-ng --hdd N --hdd-opts wr-rnd,sync --hdd-write-size     stress-ng
              512``: small random writes, each synced (O_SYNC)
cpu_1         ``stress-ng --cpu 1``                                           stress-ng
cpu_n         ``stress-ng --cpu N`` (N = usable CPU threads)                  stress-ng
memory        ``stress-ng --vm N --vm-bytes B`` (B ≤ 256 MiB and ≤ 1/4 of     stress-ng
              the available memory in total): memory traffic + page faults
ctx_switch    ``stress-ng --switch N``: rapid context switches over pipes     stress-ng
mpi_compute   ``mpirun -np 2 mpi_bench compute``: compute-bound MPI, a 2-D    openmpi
              Jacobi stencil (128 MiB per rank) with a halo exchange per sweep
mpi_comm      ``mpirun -np 2 mpi_bench comm``: 64 KiB ping-pong + allreduce   openmpi
              over TCP on the loopback interface (communication-bound)
============  ==============================================================  ===========

``mpi_bench`` is ``testbed/mpi_bench.c``, compiled with ``mpicc`` on first use into
``$DIDACT_HOME/testbed/bin/`` (cached by source hash).  As root, ``mpirun`` gets
``--allow-run-as-root`` (and the ``OMPI_ALLOW_RUN_AS_ROOT*`` variables); ranks talk over
``lo`` only, through the TCP transport (it stands in for an interconnect; shared memory
would hide the communication from the node's counters).  A flavour whose tool is missing is skipped with a message naming the
package to install (``skipping mpi_comm: mpirun not found — install openmpi-bin``); the
recording goes on with the rest.  Files the IO flavours write go to a temporary folder
under ``$DIDACT_HOME/testbed`` (on the disk, not ``/tmp``, which may be tmpfs), removed at
the end.  Every flavour is bounded in time twice: the recorder stops it, and its own
timeout (``--timeout`` / the MPI program's duration) ends it a little later if the
recorder cannot.

Recording
---------
:func:`record` (``didact testbed record``):

1. Without ``prometheus_url`` it starts a node exporter and a Prometheus on free
   127.0.0.1 ports, scraping every second, with the node's name (default: the host
   name) as the ``instance`` label.  Prometheus keeps its data in
   ``$DIDACT_HOME/testbed/prometheus/``, which persists, so the recording can be
   ingested later (:func:`serve_recording`, :func:`ingest_recording`).  Both services
   stop when the recording ends.  With ``prometheus_url`` (a Prometheus that already
   scrapes this node) the node's name is the ``instance`` (or
   ``DIDACT_PROMETHEUS_NODE_LABEL``) value of the target that scrapes this host, mapped
   the way :class:`~didact_core.ingest.prometheus.source.PrometheusSource` maps it (port
   stripped), unless ``node_name`` is given.
2. Segments of ``segment_seconds`` run back to back; the order is random (seeded) in
   rounds, each round one segment of every flavour, so every flavour runs equally often.
3. Each segment's label covers what the flavour really ran, ``[start + guard, stop −
   guard)``, where ``guard`` (default: one scrape interval, at least 1 s) keeps labels
   off the transitions; MPI segments start when the program reports it is running.
4. The labels CSV is rewritten atomically after every segment (rows already in the file
   are kept, so several recordings can share one CSV).
5. Ctrl-C (SIGINT) or SIGTERM stops cleanly: the running flavour is killed (its process
   group and every process that inherited its ``DIDACT_TESTBED_TAG``, e.g. MPI ranks),
   the part of the segment recorded so far is labelled, the CSV written, the services
   stopped.  A second Ctrl-C while stopping is ignored.

Afterwards
----------
``didact testbed ingest`` (:func:`ingest_recording`) serves the stored TSDB on a free
port for a moment and runs the data spine for the recorded days: ``raw_node_metrics``
(Prometheus source), ``job_labels`` (the CSV) and ``ai_ready_metrics``.  For the Dagster
path, keep the TSDB served (``didact testbed serve --port 9090``,
:func:`serve_recording`) and set ``DIDACT_SOURCE=prometheus``,
``DIDACT_PROMETHEUS_URL=http://127.0.0.1:9090``, ``DIDACT_LABELS_CSV=<csv>``.

:func:`segment_features` and :func:`nearest_centroid_loo` are a model-free baseline:
per labelled segment the mean CPU-mode fractions, classified by leave-one-segment-out
nearest centroid.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import datetime as dt
import hashlib
import logging
import math
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import requests

from didact_core.config import Settings, ensure_home
from didact_core.errors import DidactError, SourceUnavailableError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MPI_BENCH_SOURCE = REPO / "testbed" / "mpi_bench.c"

#: node exporter collectors the recorder's own node exporter runs (CPU modes, plus the
#: node-level rates a richer feature set uses: context switches, interrupts, disk,
#: memory, network, pressure, power)
NODE_EXPORTER_COLLECTORS = (
    "cpu", "stat", "meminfo", "diskstats", "netdev", "vmstat", "loadavg", "pressure", "uname", "rapl", "hwmon",
)  # fmt: skip
NODE_EXPORTER_BINARIES = ("prometheus-node-exporter", "node_exporter")
PROMETHEUS_BINARIES = ("prometheus",)
SERVICE_INSTALL_HINT = (
    "install prometheus and prometheus-node-exporter (sudo scripts/install_system_deps.sh), "
    "or pass --prometheus-url of a Prometheus that scrapes this node"
)
#: a stopped flavour gets this long after SIGTERM before SIGKILL
STOP_GRACE_S = 5.0
#: a flavour's own timeout is the segment plus this (bounded even if the recorder dies)
SELF_TIMEOUT_MARGIN_S = 15.0
#: a label shorter than this (an interrupted segment) is not written
MIN_LABEL_S = 1.0
MPI_READY_MARKER = b"mpi_bench ready"
#: a segment's "done" line warns when anything but the flavour used more of the node
OTHER_LOAD_WARN = 0.15


# -- flavours ------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What a flavour's command line depends on."""

    seconds: float  #: the flavour's own time bound (segment + margin)
    workdir: Path  #: temp folder for files it writes
    cpus: int  #: usable CPU threads
    tools: dict  #: tool name → absolute path
    mpi_bench: Path | None = None
    mem_available: int = 0  #: bytes


@dataclass(frozen=True)
class Flavour:
    """A labelled job flavour: a real program, the tools it needs, how to start it."""

    name: str
    description: str
    #: executables looked up on PATH, with the package that provides each
    tools: tuple[tuple[str, str], ...]
    command: Callable[[RunContext], list[str]]
    #: seconds after start before the load is steady (added to the guard band)
    warmup_s: float = 0.0
    #: bytes the program prints once it runs (the label starts there), or None
    ready_marker: bytes | None = None
    needs_mpi_bench: bool = False

    def env(self) -> dict:
        if self.needs_mpi_bench and os.geteuid() == 0:
            return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        return {}


def _stress(ctx: RunContext, *args: str) -> list[str]:
    secs = max(1, math.ceil(ctx.seconds))
    # --keep-name: no process retitling, which would overwrite the environment that
    # carries DIDACT_TESTBED_TAG (the recorder finds and times the workers by it)
    return [ctx.tools["stress-ng"], *args, "--timeout", f"{secs}s", "--temp-path", str(ctx.workdir), "--keep-name"]


def _vm_bytes(ctx: RunContext) -> str:
    per = 256 << 20
    if ctx.mem_available:
        per = min(per, ctx.mem_available // 4 // ctx.cpus)
    return f"{max(per >> 20, 16)}M"


def _mpirun(ctx: RunContext, mode: str, *extra: str) -> list[str]:
    """Two ranks of ``mpi_bench`` over Open MPI's TCP transport on loopback: a one-node
    testbed has no interconnect, and the TCP path stands in for it (the kernel's network
    stack does the work, as between nodes; shared memory would hide it)."""
    argv = [ctx.tools["mpirun"], "-np", "2", "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    argv += ["--mca", "oob_tcp_if_include", "lo", "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]
    return argv + [str(ctx.mpi_bench), mode, f"{ctx.seconds:.0f}", *extra]


def _mpi_grid_bytes(ctx: RunContext) -> str:
    """Working set per rank of the compute flavour: 128 MiB, less where memory is short."""
    per = 128 << 20
    if ctx.mem_available:
        per = min(per, ctx.mem_available // 8 // 2)
    return str(max(per, 1 << 20))


STRESS = (("stress-ng", "stress-ng"),)
MPI = (("mpirun", "openmpi-bin"),)

FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        Flavour("idle", "nothing runs (sleep)", (("sleep", "coreutils"),),
                lambda c: [c.tools["sleep"], f"{c.seconds:.0f}"]),
        Flavour("io_good", "large sequential writes, O_DIRECT (stress-ng --hdd, 4 MiB writes)", STRESS,
                lambda c: _stress(c, "--hdd", "1", "--hdd-opts", "wr-seq,direct", "--hdd-write-size", "4M",
                                  "--hdd-bytes", "1G"), warmup_s=0.2),
        Flavour("io_bad", "small random synced writes (stress-ng --hdd, 512 B O_SYNC writes)", STRESS,
                lambda c: _stress(c, "--hdd", str(c.cpus), "--hdd-opts", "wr-rnd,sync", "--hdd-write-size", "512",
                                  "--hdd-bytes", "64M"), warmup_s=0.2),
        Flavour("cpu_1", "one CPU-bound thread (stress-ng --cpu 1)", STRESS,
                lambda c: _stress(c, "--cpu", "1"), warmup_s=0.2),
        Flavour("cpu_n", "CPU-bound on every thread (stress-ng --cpu N)", STRESS,
                lambda c: _stress(c, "--cpu", str(c.cpus)), warmup_s=0.2),
        Flavour("memory", "memory traffic and page faults (stress-ng --vm N)", STRESS,
                lambda c: _stress(c, "--vm", str(c.cpus), "--vm-bytes", _vm_bytes(c)), warmup_s=0.5),
        Flavour("ctx_switch", "rapid context switches over pipes (stress-ng --switch N)", STRESS,
                lambda c: _stress(c, "--switch", str(c.cpus)), warmup_s=0.2),
        Flavour("mpi_compute", "MPI, 2 ranks, compute-bound: a Jacobi stencil with halo exchange "
                "(testbed/mpi_bench.c compute)", MPI,
                lambda c: _mpirun(c, "compute", _mpi_grid_bytes(c)), ready_marker=MPI_READY_MARKER,
                needs_mpi_bench=True),
        Flavour("mpi_comm", "MPI, 2 ranks, ping-pong + allreduce over TCP/lo (testbed/mpi_bench.c comm)", MPI,
                lambda c: _mpirun(c, "comm", "65536"), ready_marker=MPI_READY_MARKER, needs_mpi_bench=True),
    )
}  # fmt: skip


def resolve_flavours(names: str | Sequence[str] | None) -> list[str]:
    """Flavour names from a list or a comma list (None: all), validated, order kept."""
    if names is None:
        return list(FLAVOURS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FLAVOURS]
    if unknown or not names:
        raise DidactError(
            f"flavours {names}",
            f"unknown flavour(s) {unknown}" if unknown else "the list is empty",
            f"choose from {', '.join(FLAVOURS)}",
        )
    return list(dict.fromkeys(names))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def build_mpi_bench(home: Path, mpicc: str | None = None, tool_path: str | None = None) -> Path:
    """Compile ``testbed/mpi_bench.c`` with ``mpicc`` into ``home/testbed/bin`` (cached by
    source hash) and return the binary.  Raises :class:`DidactError` naming what is missing."""
    if not MPI_BENCH_SOURCE.exists():
        raise DidactError(
            f"MPI program {MPI_BENCH_SOURCE}", "does not exist", "run didact from its source checkout"
        )
    src = MPI_BENCH_SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:12]
    out_dir = Path(home) / "testbed" / "bin"
    binary = out_dir / f"mpi_bench-{digest}"
    if binary.exists() and os.access(binary, os.X_OK):
        return binary
    mpicc = mpicc or shutil.which("mpicc", path=tool_path)
    if not mpicc:
        raise DidactError("mpicc", "not found, so testbed/mpi_bench.c cannot be compiled", "install libopenmpi-dev")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".mpi_bench-{digest}.{os.getpid()}.tmp"
    try:
        r = subprocess.run(
            [mpicc, "-O2", "-o", str(tmp), str(MPI_BENCH_SOURCE)], capture_output=True, text=True, timeout=120
        )
        if r.returncode != 0:
            raise DidactError(
                f"mpicc {MPI_BENCH_SOURCE}",
                f"failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}",
                "check the Open MPI development install (libopenmpi-dev)",
            )
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


def check_flavours(
    names: Sequence[str], home: Path, tool_path: str | None = None
) -> tuple[list[Flavour], dict[str, str], dict[str, str], Path | None]:
    """Which flavours can run here: (runnable, {skipped name: reason}, tools, mpi_bench).

    ``tool_path`` is the PATH the tools are looked up in (default: the environment's)."""
    runnable: list[Flavour] = []
    skipped: dict[str, str] = {}
    tools: dict[str, str] = {}
    mpi_bench: Path | None = None
    mpi_error: str | None = None
    for name in names:
        fl = FLAVOURS[name]
        missing = []
        for tool, package in fl.tools:
            path = shutil.which(tool, path=tool_path)
            if path:
                tools[tool] = path
            else:
                missing.append(f"{tool} not found — install {package}")
        if not missing and fl.needs_mpi_bench:
            if mpi_bench is None and mpi_error is None:
                try:
                    mpi_bench = build_mpi_bench(home, tool_path=tool_path)
                except DidactError as e:
                    mpi_error = f"{e.what}: {e.problem}" + (f" — {e.fix}" if e.fix else "")
            if mpi_error:
                missing.append(mpi_error)
        if missing:
            skipped[name] = "; ".join(missing)
        else:
            runnable.append(fl)
    return runnable, skipped, tools, mpi_bench


def plan_segments(flavours: Sequence[str], n_segments: int, seed: int) -> list[str]:
    """``n_segments`` flavour names: shuffled rounds of every flavour (equal counts when
    ``n_segments`` is a multiple of the flavour count, else differing by at most one)."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n_segments:
        rnd = list(flavours)
        rng.shuffle(rnd)
        if out and len(rnd) > 1 and rnd[0] == out[-1]:  # no flavour twice in a row across rounds
            rnd[0], rnd[-1] = rnd[-1], rnd[0]
        out += rnd
    return out[:n_segments]


# -- processes -----------------------------------------------------------------------------


def _load_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


#: looked up once in the parent: the child between fork and exec only calls it
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:  # runs in the child before exec
    """Ask Linux to SIGTERM the child when the recorder dies (so nothing is left over)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


#: the recorder's node exporter and Prometheus run at this nice value when allowed (root):
#: a flavour that loads every CPU must not starve the scrapes.  Negative nice values
#: are still accounted as user/system time, so the telemetry itself is unchanged.
SERVICE_NICE = -5


def _service_preexec() -> None:  # runs in the child before exec
    _pdeathsig()
    with contextlib.suppress(OSError):
        os.nice(SERVICE_NICE)


#: every process a flavour starts inherits this variable (value: the segment's tag), so
#: the recorder finds them all when it stops the segment, also ranks that mpirun put
#: into process groups of their own and processes that lost their parent
TAG_VAR = "DIDACT_TESTBED_TAG"


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds ``DIDACT_TESTBED_TAG=<tag>``."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    out = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours
            continue
        if (env.startswith(needle) or b"\0" + needle in env) and not _is_zombie(entry.path):
            out.append(int(entry.name))
    return out


def _is_zombie(proc_dir: str) -> bool:
    try:
        stat = Path(proc_dir, "stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] in ("Z", "X")


def stop_tagged(proc: subprocess.Popen, tag: str, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a flavour (its process group, and every process carrying its tag), SIGKILL
    what is left after ``grace_s``; reap it.

    Flavours run in a process group of their own (a terminal's Ctrl-C reaches only the
    recorder, which stops them) but in the recorder's session: a new session is a new
    scheduler autogroup on Linux, and a context-switch storm in one starved the
    recorder and the scrapes for the whole segment."""

    def left() -> list[int]:
        return tagged_pids(tag) if proc.poll() is not None else [proc.pid, *tagged_pids(tag)]

    def signal_all(sig: int, pids: list[int]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    pids = left()
    if pids:
        signal_all(signal.SIGTERM, pids)
    deadline = time.monotonic() + grace_s
    while (pids := left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pids:
        signal_all(signal.SIGKILL, pids)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_service(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM a service, SIGKILL it after ``grace_s``; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_binary(names: Sequence[str], what: str) -> str:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if path:
            return path
    raise DidactError(what, f"not found (looked for {', '.join(names)} on PATH and in /usr/bin)", SERVICE_INSTALL_HINT)


@dataclass
class Service:
    """A service the recorder started (node exporter or Prometheus) on 127.0.0.1."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        stop_service(self.proc)


@contextlib.contextmanager
def _service(name: str, argv_for_port: Callable[[int], list[str]], ready_path: str, log_dir: Path,
             timeout_s: float = 60.0, port: int | None = None) -> Iterator[Service]:  # fmt: skip
    """Start a service on ``port`` (None: a free one, retried if it was taken meanwhile),
    wait until ``ready_path`` answers 200, stop it on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    last = ""
    fixed = port
    for _attempt in range(1 if fixed else 3):
        port = fixed or free_port()
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                argv_for_port(port), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0, preexec_fn=_service_preexec,
            )  # fmt: skip
        svc = Service(name, proc, port, log_path)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if requests.get(svc.url + ready_path, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            if proc.poll() is None and time.monotonic() < deadline:
                break
            last = svc.log_tail()
            svc.stop()
            if fixed or "address already in use" not in last:
                raise DidactError(
                    f"{name} ({argv_for_port(port)[0]})",
                    f"did not start on 127.0.0.1:{port}: {last[-600:] or 'no output'}",
                    "see the log above; " + ("a Prometheus still running on the same storage? stop it"
                                             if name == "prometheus" else SERVICE_INSTALL_HINT),
                )  # fmt: skip
        except BaseException:
            svc.stop()
            raise
    else:
        raise DidactError(name, f"found no free port in 3 tries: {last[-300:]}", "retry")
    try:
        yield svc
    finally:
        svc.stop()


def prometheus_yaml(scrape_interval_s: float, target: str | None = None, node_name: str | None = None) -> str:
    lines = ["global:", f"  scrape_interval: {scrape_interval_s:g}s", f"  evaluation_interval: {scrape_interval_s:g}s"]
    if target:
        lines += [
            "scrape_configs:",
            "  - job_name: didact-testbed",
            "    static_configs:",
            f"      - targets: ['{target}']",
            "        labels:",
            f"          instance: {_yaml_str(node_name or target)}",
        ]
    return "\n".join(lines) + "\n"


def _yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def testbed_dir(settings: Settings) -> Path:
    return ensure_home(settings.home_path) / "testbed"


def tsdb_dir(settings: Settings) -> Path:
    """Where the recorder's own Prometheus keeps its data (persists between recordings)."""
    return testbed_dir(settings) / "prometheus"


def _prometheus_argv(binary: str, cfg: Path, storage: Path, port: int) -> list[str]:
    return [
        binary, f"--config.file={cfg}", f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=10y", "--log.level=warn",
    ]  # fmt: skip


@dataclass
class Services:
    node_exporter: Service
    prometheus: Service
    node: str

    @property
    def pids(self) -> list[int]:
        return [self.node_exporter.pid, self.prometheus.pid]


@contextlib.contextmanager
def start_recording_services(settings: Settings, node_name: str, scrape_interval_s: float = 1.0) -> Iterator[Services]:
    """A node exporter and a Prometheus scraping it every ``scrape_interval_s`` with
    ``instance=node_name``, storage in :func:`tsdb_dir`; both on free 127.0.0.1 ports,
    stopped on exit."""
    ne_bin = _find_binary(NODE_EXPORTER_BINARIES, "node exporter")
    prom_bin = _find_binary(PROMETHEUS_BINARIES, "prometheus")
    base = testbed_dir(settings)
    logs = base / "logs"
    storage = tsdb_dir(settings)
    storage.mkdir(parents=True, exist_ok=True)
    ne_argv = lambda port: [  # noqa: E731
        ne_bin, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
        *[f"--collector.{c}" for c in NODE_EXPORTER_COLLECTORS],
    ]  # fmt: skip
    with _service("node_exporter", ne_argv, "/metrics", logs) as ne:
        cfg = base / "prometheus.yml"
        cfg.write_text(prometheus_yaml(scrape_interval_s, f"127.0.0.1:{ne.port}", node_name))
        with _service("prometheus", lambda port: _prometheus_argv(prom_bin, cfg, storage, port), "/-/ready", logs) as prom:
            yield Services(ne, prom, node_name)


@contextlib.contextmanager
def serve_recording(settings: Settings, port: int | None = None) -> Iterator[str]:
    """Serve the recorder's stored TSDB (no scraping) on 127.0.0.1 and yield its URL; for
    ingesting a recording after it ended.  ``port`` None picks a free one."""
    storage = tsdb_dir(settings)
    if not any(storage.glob("*")):
        raise DidactError(
            f"testbed TSDB {storage}", "is empty: nothing was recorded with this DIDACT_HOME",
            "run `didact testbed record` first (same DIDACT_HOME)",
        )  # fmt: skip
    prom_bin = _find_binary(PROMETHEUS_BINARIES, "prometheus")
    base = testbed_dir(settings)
    cfg = base / "prometheus-serve.yml"
    cfg.write_text(prometheus_yaml(60.0))
    argv = lambda p: _prometheus_argv(prom_bin, cfg, storage, p)  # noqa: E731
    with _service("prometheus-serve", argv, "/-/ready", base / "logs", port=port) as svc:
        yield svc.url


# -- Prometheus checks ---------------------------------------------------------------------


def _source(settings: Settings, url: str):
    from didact_core.ingest.prometheus.source import PrometheusSource

    return PrometheusSource.from_env(settings=settings.replace(prometheus_url=url), retries=1, timeout_s=15.0)


def _parse_duration(s: str) -> float:
    total, n = 0.0, 0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s or ""):
        total += float(value) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit]
        n += 1
    return total if n else 0.0


def _local_hosts() -> set[str]:
    names = {"localhost", "127.0.0.1", "::1", "[::1]", socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return {n.lower() for n in names if n}


def discover_node(settings: Settings, url: str) -> tuple[str, float]:
    """(node name, scrape interval s) of the target of Prometheus ``url`` that scrapes
    this host's node exporter, named the way PrometheusSource names nodes."""
    src = _source(settings, url)
    try:
        deadline = time.monotonic() + 15  # a Prometheus that just started lists its targets after ~5 s
        while True:
            try:
                r = src.session.get(url.rstrip("/") + "/api/v1/targets", params={"state": "active"}, timeout=15)
                targets = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
            except (requests.RequestException, ValueError, KeyError, TypeError) as e:
                raise SourceUnavailableError(
                    f"Prometheus {url}", f"its targets cannot be read ({type(e).__name__})",
                    "check the URL, or pass --node-name",
                ) from None  # fmt: skip
            if targets or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        local = _local_hosts()
        found = []
        for t in targets:
            host = (urlsplit(t.get("scrapeUrl", "")).hostname or "").lower()
            raw = (t.get("labels") or {}).get(src.node_label)
            if host in local and raw and t.get("scrapeUrl", "").rstrip("/").endswith("/metrics"):
                found.append((src._node_of(raw), _parse_duration(t.get("scrapeInterval", "")), t.get("scrapeUrl")))
        nodes = sorted({f[0] for f in found})
        if len(nodes) != 1:
            raise DidactError(
                f"Prometheus {url}",
                f"{'no target scrapes' if not nodes else f'several targets ({nodes}) scrape'} this host "
                f"({sorted(local)[:4]}…) with a '{src.node_label}' label",
                "pass --node-name with the name Prometheus gives this node",
            )  # fmt: skip
        return nodes[0], max((f[1] for f in found if f[0] == nodes[0]), default=0.0)
    finally:
        src.close()


def _recent_points(settings: Settings, url: str, node: str, window_s: int = 60) -> tuple[int, list[str]]:
    """Most node_cpu_seconds_total points in the last ``window_s`` of any CPU series that
    maps to ``node``, and the raw label values seen."""
    from didact_core.ingest.prometheus.source import _promql_str, regex_union

    src = _source(settings, url)
    try:
        label = src.node_label
        value = regex_union([node]) + ("(:[0-9]+)?" if src.strip_port else "")
        data = src.query_json(
            "/api/v1/query",
            {"query": f'count_over_time(node_cpu_seconds_total{{mode="idle",{label}=~{_promql_str(value)}}}[{window_s}s])'},
        )
        best, raws = 0, []
        for r in (data or {}).get("result", []):
            raw = r["metric"].get(label, "")
            if src._node_of(raw) == node:
                raws.append(raw)
                best = max(best, int(float(r["value"][1])))
        return best, sorted(set(raws))
    finally:
        src.close()


def wait_for_scrapes(settings: Settings, url: str, node: str, points: int = 3, timeout_s: float = 60.0) -> None:
    """Wait until Prometheus holds ``points`` recent CPU samples of ``node``."""
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        got, _ = _recent_points(settings, url, node)
        if got >= points:
            return
        time.sleep(0.25)
    raise DidactError(
        f"Prometheus {url}",
        f"has {got} node_cpu_seconds_total samples of node {node!r} in the last minute (wanted {points})",
        "check the node exporter is scraped and the node name (--node-name) matches its instance label",
    )


# -- labels CSV ----------------------------------------------------------------------------


def _iso(t: float, up: bool = False) -> str:
    """Epoch seconds → ISO 8601 UTC with milliseconds, rounded down (``up``: up), so a
    label written for [start, end) never grows past what was recorded."""
    ms = math.ceil(round(t * 1000, 3)) if up else math.floor(round(t * 1000, 3))
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LabelsWriter:
    """Rewrites a labels CSV atomically: rows already in it, then this recording's."""

    HEADER = "node,start,end,label"

    def __init__(self, path: Path):
        from didact_core.data.labels import read_labels

        self.path = Path(path)
        self.kept: list[tuple] = []
        if self.path.exists() and self.path.stat().st_size:
            old = read_labels(self.path)  # validates; DidactError names the file and lines
            self.kept = [(r.node, _iso(r.start.timestamp(), up=True), _iso(r.end.timestamp()), r.label)
                         for r in old.itertuples()]  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, segments: Sequence["Segment"]) -> None:
        rows = self.kept + [
            (s.node, _iso(s.label_start, up=True), _iso(s.label_end), s.flavour) for s in segments if s.labelled
        ]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.HEADER.split(","))
        w.writerows(rows)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


# -- the recorder --------------------------------------------------------------------------


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
    #: CPU seconds the flavour's processes used (user + system; sampled every second)
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
class ProgressEvent:
    """What :func:`record` reports to its ``progress`` callback.

    ``kind``: ``info`` (setup), ``skip`` (a flavour cannot run), ``start`` / ``tick``
    (about once a second) / ``done`` / ``failed`` (a segment), ``interrupted``, ``end``."""

    kind: str
    message: str = ""
    index: int = 0  #: 1-based segment number
    total: int = 0
    flavour: str = ""
    segment_left_s: float = 0.0
    total_left_s: float = 0.0


def format_event(ev: ProgressEvent) -> str:
    """One line for a terminal."""
    if ev.kind in ("start", "tick", "done", "failed"):
        left = f"{int(ev.total_left_s // 60):d}:{int(ev.total_left_s % 60):02d}"
        head = f"[{ev.index}/{ev.total}] {ev.flavour:<11}"
        if ev.kind == "tick":
            return f"{head} {ev.segment_left_s:4.0f} s left in segment, {left} in total"
        return f"{head} {ev.kind}{': ' + ev.message if ev.message else ''} ({left} left)"
    return f"{ev.kind}: {ev.message}" if ev.kind != "info" else ev.message


class _Interrupts:
    """SIGINT/SIGTERM → one KeyboardInterrupt; later ones while stopping are reported, not
    raised.  Inside :meth:`shield` (stopping a flavour, writing the CSV) the interrupt
    waits until the shielded work is done."""

    def __init__(self, emit: Callable[[ProgressEvent], None]):
        self.emit = emit
        self.fired = False
        self.shielded = 0
        self.pending = False
        self.old: dict = {}

    def _handler(self, signum, frame):
        if self.fired or self.shielded:
            self.pending = self.pending or not self.fired
            self.emit(ProgressEvent("info", "stopping — please wait while processes stop and the labels are saved"))
            return
        self.fired = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self):
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        if not self.shielded and self.pending and not self.fired:
            self.pending = False
            self.fired = True
            raise KeyboardInterrupt

    def stopping(self) -> None:
        """From now on signals are only reported (cleanup runs to its end)."""
        self.fired = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False


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
) -> Recording:
    """Record labelled telemetry on this node (see the module doc).

    ``minutes`` sets the length in whole rounds (every flavour once per round, at least
    one round); ``segments`` sets the number of segments instead.  ``out_csv`` defaults
    to ``$DIDACT_HOME/testbed/labels.csv``; rows already in it are kept.  ``tool_path``
    is the PATH flavour tools are looked up in; ``io_dir`` where IO flavours write
    (default ``$DIDACT_HOME/testbed``).  Returns the :class:`Recording`, also when
    interrupted (``interrupted=True``).
    """
    settings = settings or Settings.from_env()
    emit = progress or (lambda ev: None)
    names = resolve_flavours(flavours)
    if not segment_seconds > 0:
        raise DidactError(f"segment_seconds={segment_seconds}", "must be positive")
    base = testbed_dir(settings)
    runnable, skipped, tools, mpi_bench = check_flavours(names, settings.home_path, tool_path)
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
    plan = plan_segments([f.name for f in runnable], segments, seed)
    out_csv = Path(out_csv) if out_csv else base / "labels.csv"
    writer = LabelsWriter(out_csv)

    rec = Recording(out_csv, node_name or "", prometheus_url, prometheus_url is None, None, seed,
                    segment_seconds, 0.0, plan, skipped=skipped)  # fmt: skip
    active: list[tuple[subprocess.Popen, str]] = []
    longest_warmup = max(f.warmup_s for f in runnable)
    if prometheus_url is None:  # check before anything starts
        _check_segment_length(segment_seconds, guard_seconds, scrape_interval_s, longest_warmup)
    interval = 0.0
    with _Interrupts(emit) as ints, contextlib.ExitStack() as stack:
        try:
            if prometheus_url is None:
                rec.node = node_name or socket.gethostname()
                emit(ProgressEvent("info", f"starting node exporter + Prometheus (1 scrape / {scrape_interval_s:g} s) "
                                           f"for node {rec.node!r}; data in {tsdb_dir(settings)}"))  # fmt: skip
                svc = stack.enter_context(start_recording_services(settings, rec.node, scrape_interval_s))
                rec.service_pids = svc.pids
                rec.tsdb = tsdb_dir(settings)
                url, interval = svc.prometheus.url, scrape_interval_s
            else:
                url = prometheus_url.rstrip("/")
                if node_name:
                    rec.node, interval = node_name, 0.0
                    with contextlib.suppress(DidactError):
                        interval = discover_node(settings, url)[1]
                else:
                    rec.node, interval = discover_node(settings, url)
                interval = interval or 15.0
            guard = rec.guard_seconds = _check_segment_length(segment_seconds, guard_seconds, interval, longest_warmup)
            emit(ProgressEvent("info", f"waiting for Prometheus {url} to hold samples of {rec.node!r}"))
            wait_for_scrapes(settings, url, rec.node, points=2 if rec.own_services else 1,
                             timeout_s=max(60.0, 4 * interval))  # fmt: skip
            io_base = Path(io_dir) if io_dir else base
            io_base.mkdir(parents=True, exist_ok=True)
            if _fs_type(io_base) in ("tmpfs", "ramfs"):
                emit(ProgressEvent("info", f"warning: {io_base} is in memory ({_fs_type(io_base)}): the IO flavours "
                                           "will not touch a disk — pass io_dir on a disk"))  # fmt: skip
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="run-", dir=io_base)))
            ctx = RunContext(segment_seconds + SELF_TIMEOUT_MARGIN_S, workdir, usable_cpus(), tools, mpi_bench,
                             _mem_available())  # fmt: skip
            emit(ProgressEvent("info", f"{len(plan)} segments of {segment_seconds:g} s over {k} flavours "
                                       f"(seed {seed}, guard {guard:g} s); labels → {out_csv}"))  # fmt: skip
            disabled: dict[str, str] = {}
            for i, name in enumerate(plan, 1):
                if name in disabled:
                    continue
                seg = _run_segment(FLAVOURS[name], i, rec, ctx, guard, emit, ints, active)
                if seg.status == "failed":
                    disabled[name] = seg.message
                    emit(ProgressEvent("failed", f"{seg.message} — {name} is left out from now on",
                                       index=i, total=len(plan), flavour=name))  # fmt: skip
                with ints.shield():
                    writer.write(rec.segments)
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
    emit(ProgressEvent("end", f"{sum(s.labelled for s in rec.segments)} labelled segments in {out_csv}"))
    return rec


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


def _node_busy_s() -> float:
    """CPU seconds all threads of the node have been busy since boot (not idle, not iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pids: Sequence[int]) -> int:
    """user + system ticks of processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            f = stat[stat.rfind(")") + 2 :].split()
            total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _sample_cpu(tag: str, acc: dict) -> None:
    """Add the CPU ticks (user + system) of every process carrying ``tag`` to ``acc``
    (pid → the most seen; a process's own time only, so parents and children don't count twice)."""
    for pid in tagged_pids(tag):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            f = stat[stat.rfind(")") + 2 :].split()
            acc[pid] = max(acc.get(pid, 0), int(f[11]) + int(f[12]))
        except (OSError, ValueError, IndexError):
            continue


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


def _run_segment(fl: Flavour, i: int, rec: Recording, ctx: RunContext, guard: float,
                 emit: Callable[[ProgressEvent], None], ints: _Interrupts,
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
    busy0, cpu_ticks, svc0 = _node_busy_s(), {}, _cpu_ticks(rec.service_pids)

    def left_total(left: float) -> float:
        return max(0.0, left) + (total - i) * seconds

    try:
        with ints.shield():  # a process that starts is also registered for stopping
            with open(log_path, "wb") as logf:
                proc = subprocess.Popen(
                    argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ctx.workdir,
                    env={**os.environ, **fl.env(), TAG_VAR: seg.tag}, process_group=0, preexec_fn=_pdeathsig,
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
                _sample_cpu(seg.tag, cpu_ticks)
                emit(ProgressEvent("tick", "", i, total, fl.name, left, left_total(left)))
            time.sleep(min(0.2, left))
    except KeyboardInterrupt:
        seg.status = "interrupted"
        raise
    finally:
        seg.stop = time.time()
        with ints.shield():
            if proc is not None:
                _sample_cpu(seg.tag, cpu_ticks)
                seg.node_busy_s = _node_busy_s() - busy0
                seg.services_cpu_s = (_cpu_ticks(rec.service_pids) - svc0) / os.sysconf("SC_CLK_TCK")
                stop_tagged(proc, seg.tag)
                active.remove((proc, seg.tag))
            seg.cpu_s = sum(cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")
            _finish_segment(seg, fl, proc, argv, log_path, guard)
    if seg.status == "ok":
        note = f"other load {100 * seg.other_load:.0f}% of the node's CPU"
        if seg.other_load > OTHER_LOAD_WARN:
            note += " — other work is running here: its CPU time lands in this segment's counters"
        emit(ProgressEvent("done", note, i, total, fl.name, 0.0, left_total(0.0)))
    return seg


def _finish_segment(seg: Segment, fl: Flavour, proc, argv: list[str], log_path: Path, guard: float) -> None:
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


# -- after the recording ---------------------------------------------------------------------


def labels_days(labels_csv: str | Path, node: str | None = None) -> list[dt.date]:
    """The UTC days the labels of a CSV touch (optionally one node's)."""
    from didact_core.data.labels import read_labels

    lab = read_labels(labels_csv)
    if node is not None:
        lab = lab[lab["node"] == node]
    days: set[dt.date] = set()
    for r in lab.itertuples():
        d0, d1 = r.start.date(), (r.end - pd.Timedelta(milliseconds=1)).date()
        days.update(d0 + dt.timedelta(days=i) for i in range((d1 - d0).days + 1))
    return sorted(days)


def ingest_recording(
    settings: Settings,
    labels_csv: str | Path | None = None,
    days: Sequence[dt.date] | None = None,
    prometheus_url: str | None = None,
    logger: logging.Logger | None = None,
) -> list[dict]:
    """Run the data spine (``raw_node_metrics`` from Prometheus → ``job_labels`` from the
    CSV → ``ai_ready_metrics``) for the recorded days.

    ``prometheus_url`` None serves the recorder's stored TSDB for the duration.  ``days``
    default: the days the CSV's labels touch.  Returns one summary dict per day."""
    from didact_core.data import spine as pipeline

    labels_csv = Path(labels_csv) if labels_csv else testbed_dir(settings) / "labels.csv"
    if not labels_csv.exists():
        raise DidactError(f"labels CSV {labels_csv}", "does not exist", "record first, or pass the CSV you recorded")
    days = list(days) if days else labels_days(labels_csv)
    if not days:
        raise DidactError(f"labels CSV {labels_csv}", "holds no labels", "record at least one segment")
    with contextlib.ExitStack() as stack:
        url = prometheus_url or stack.enter_context(serve_recording(settings))
        s = settings.replace(source="prometheus", prometheus_url=url, labels_csv=str(labels_csv))
        out = []
        for day in days:
            raw = pipeline.ingest_raw(s, day, logger=logger)
            lab = pipeline.build_job_labels(s, day)
            ai = pipeline.build_ai_ready(s, day, logger=logger)
            out.append({
                "day": day.isoformat(), "nodes": raw.nodes, "raw_rows": raw.rows,
                "labelled_intervals": lab.counts.get("labelled_intervals", 0),
                "ai_ready_rows": ai.report.rows_out, "unusable_fraction": round(ai.report.unusable_fraction, 5),
                "raw_version": raw.version.version, "ai_ready_version": ai.version.version,
            })  # fmt: skip
    return out


# -- a model-free baseline: per-segment features, nearest centroid ---------------------------

FRACTIONS = ("idle", "iowait", "system", "user", "other")


def segment_features(samples: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled segment: ``node, start, end, label, n`` (samples inside) and
    the mean of each CPU-mode fraction over the segment's samples (all CPUs), plus
    ``busy_spread``: the mean over timestamps of max − min busy fraction across CPUs
    (one busy thread vs all busy).  ``samples`` are AI-ready samples (``ts``, ``node``,
    ``cpu``, ``dt_s``, fractions); ``labels`` a labels frame."""
    from didact_core.data.labels import attach_intervals

    cols = [c for c in FRACTIONS if c in samples.columns]
    lab = labels.reset_index(drop=True).copy()
    lab["segment"] = [f"s{i}" for i in range(len(lab))]
    seg = attach_intervals(samples[["ts", "node", *(["dt_s"] if "dt_s" in samples else [])]], lab, "segment", "")
    df = samples[["ts", "cpu", *cols]].copy()
    df["segment"] = np.asarray(seg, dtype=object)
    df = df[df["segment"] != ""]
    for c in cols:
        df[c] = df[c].astype(float)
    busy = 1.0 - df.get("idle", 0.0) - df.get("iowait", 0.0)
    df["busy"] = busy
    means = df.groupby("segment")[cols].mean()
    g = df.groupby(["segment", "ts"])["busy"]
    spread = (g.max() - g.min()).groupby("segment").mean()
    n = df.groupby("segment").size()
    out = lab.set_index("segment")[["node", "start", "end", "label"]].join(means, how="inner")
    out["busy_spread"] = spread
    out["n"] = n
    return out.reset_index(drop=True)


FEATURES_FOR_BASELINE = (*FRACTIONS, "busy_spread")


def nearest_centroid_loo(features: pd.DataFrame, columns: Sequence[str] | None = None) -> dict:
    """Leave-one-segment-out nearest-centroid classification of the segments' flavours.

    For every segment, each flavour's centroid is the mean of the *other* segments of
    that flavour; the segment is predicted as the flavour with the nearest centroid
    (Euclidean).  Returns accuracy, chance (1 / flavours), per-flavour accuracy and
    the confusion counts."""
    cols = [c for c in (columns or FEATURES_FOR_BASELINE) if c in features.columns]
    X = features[cols].to_numpy(float)
    y = features["label"].astype(str).to_numpy()
    classes = sorted(set(y))
    pred = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        best, best_d = None, np.inf
        for c in classes:
            m = keep & (y == c)
            if not m.any():
                continue
            d = float(np.linalg.norm(X[i] - X[m].mean(axis=0)))
            if d < best_d:
                best, best_d = c, d
        pred.append(best)
    pred = np.array(pred, dtype=object)
    ok = pred == y
    per = {c: float(ok[y == c].mean()) for c in classes}
    confusion = pd.crosstab(pd.Series(y, name="true"), pd.Series(pred, name="predicted"))
    return {
        "accuracy": float(ok.mean()) if len(y) else float("nan"),
        "chance": 1.0 / len(classes) if classes else float("nan"),
        "segments": int(len(y)),
        "flavours": len(classes),
        "per_flavour": per,
        "confusion": confusion,
        "columns": cols,
    }


def recorded_segment_features(settings: Settings, day: dt.date, labels_csv: str | Path) -> pd.DataFrame:
    """:func:`segment_features` of a stored ``ai_ready_metrics`` day and the CSV's labels."""
    from didact_core.data.labels import read_labels
    from didact_core.data.warehouse import Warehouse

    wh = Warehouse(settings.home_path)
    samples = wh.read("ai_ready_metrics", day.isoformat(), "samples")
    samples = samples.assign(node=samples["node"].astype(str))
    lab = read_labels(labels_csv)
    lo = pd.Timestamp(day, tz="UTC")
    lab = lab[(lab["end"] > lo) & (lab["start"] < lo + pd.Timedelta(days=1))]
    return segment_features(samples, lab.assign(node=lab["node"].astype(str), label=lab["label"].astype(str)))
