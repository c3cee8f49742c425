"""The testbed's workloads: the real programs ``didact testbed record`` runs, one per
label, and what each needs to run here.

======================  =========================================================  ==========
label (workload name)   program                                                    needs
======================  =========================================================  ==========
idle                    ``sleep``                                                  coreutils
io_good                 ``stress-ng --hdd 1 --hdd-opts wr-seq,direct --hdd-write-  stress-ng
                        size 4M``: large sequential writes that bypass the page
                        cache
io_bad                  ``stress-ng --hdd N --hdd-opts wr-rnd,sync --hdd-write-    stress-ng
                        size 512``: small random writes, each synced (O_SYNC)
cpu_1                   ``stress-ng --cpu 1``                                      stress-ng
cpu_n                   ``stress-ng --cpu N`` (N = usable CPU threads)             stress-ng
memory                  ``stress-ng --vm N --vm-bytes B`` (B ≤ 256 MiB and ≤ 1/4   stress-ng
                        of the available memory in total): memory traffic + page
                        faults
ctx_switch              ``stress-ng --switch N``: rapid context switches over      stress-ng
                        pipes
mpi_compute             ``mpirun -np 2 mpi_bench compute``: compute-bound MPI, a   openmpi
                        2-D Jacobi stencil (128 MiB per rank) with a halo
                        exchange per sweep
mpi_comm                ``mpirun -np 2 mpi_bench comm``: 64 KiB ping-pong +        openmpi
                        allreduce over TCP on the loopback interface
                        (communication-bound)
======================  =========================================================  ==========

The label strings are the job flavours the workloads stand for (the simulator's
:data:`~didact_core.ingest.simulator.SIGNATURES` use ``idle``, ``io_good`` and ``io_bad``
for the same kinds of load).  ``mpi_bench`` is ``testbed/mpi_bench.c``, compiled with
``mpicc`` on first use into ``$DIDACT_HOME/testbed/bin/`` (cached by source hash).  As
root, ``mpirun`` gets ``--allow-run-as-root`` (and the ``OMPI_ALLOW_RUN_AS_ROOT*``
variables); ranks talk over ``lo`` only, through the TCP transport (it stands in for an
interconnect; shared memory would hide the communication from the node's counters).  A
workload whose tool is missing is skipped with a message naming the package to install
(``skipping mpi_comm: mpirun not found — install openmpi-bin``).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from didact_core.errors import DidactError

REPO = Path(__file__).resolve().parents[2]
MPI_BENCH_SOURCE = REPO / "testbed" / "mpi_bench.c"
MPI_READY_MARKER = b"mpi_bench ready"


@dataclass
class RunContext:
    """What a workload's command line depends on."""

    seconds: float  #: the flavour's own time bound (segment + margin)
    workdir: Path  #: temp folder for files it writes
    cpus: int  #: usable CPU threads
    tools: dict  #: tool name → absolute path
    mpi_bench: Path | None = None
    mem_available: int = 0  #: bytes




@dataclass(frozen=True)
class Workload:
    """A labelled workload: a real program, the tools it needs, how to start it; its
    ``name`` is the label its segments get."""

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

WORKLOADS: dict[str, Workload] = {
    f.name: f
    for f in (
        Workload("idle", "nothing runs (sleep)", (("sleep", "coreutils"),),
                lambda c: [c.tools["sleep"], f"{c.seconds:.0f}"]),
        Workload("io_good", "large sequential writes, O_DIRECT (stress-ng --hdd, 4 MiB writes)", STRESS,
                lambda c: _stress(c, "--hdd", "1", "--hdd-opts", "wr-seq,direct", "--hdd-write-size", "4M",
                                  "--hdd-bytes", "1G"), warmup_s=0.2),
        Workload("io_bad", "small random synced writes (stress-ng --hdd, 512 B O_SYNC writes)", STRESS,
                lambda c: _stress(c, "--hdd", str(c.cpus), "--hdd-opts", "wr-rnd,sync", "--hdd-write-size", "512",
                                  "--hdd-bytes", "64M"), warmup_s=0.2),
        Workload("cpu_1", "one CPU-bound thread (stress-ng --cpu 1)", STRESS,
                lambda c: _stress(c, "--cpu", "1"), warmup_s=0.2),
        Workload("cpu_n", "CPU-bound on every thread (stress-ng --cpu N)", STRESS,
                lambda c: _stress(c, "--cpu", str(c.cpus)), warmup_s=0.2),
        Workload("memory", "memory traffic and page faults (stress-ng --vm N)", STRESS,
                lambda c: _stress(c, "--vm", str(c.cpus), "--vm-bytes", _vm_bytes(c)), warmup_s=0.5),
        Workload("ctx_switch", "rapid context switches over pipes (stress-ng --switch N)", STRESS,
                lambda c: _stress(c, "--switch", str(c.cpus)), warmup_s=0.2),
        Workload("mpi_compute", "MPI, 2 ranks, compute-bound: a Jacobi stencil with halo exchange "
                "(testbed/mpi_bench.c compute)", MPI,
                lambda c: _mpirun(c, "compute", _mpi_grid_bytes(c)), ready_marker=MPI_READY_MARKER,
                needs_mpi_bench=True),
        Workload("mpi_comm", "MPI, 2 ranks, ping-pong + allreduce over TCP/lo (testbed/mpi_bench.c comm)", MPI,
                lambda c: _mpirun(c, "comm", "65536"), ready_marker=MPI_READY_MARKER, needs_mpi_bench=True),
    )
}  # fmt: skip


def resolve_flavours(names: str | Sequence[str] | None) -> list[str]:
    """Flavour names from a list or a comma list (None: all), validated, order kept."""
    if names is None:
        return list(WORKLOADS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        raise DidactError(
            f"flavours {names}",
            f"unknown flavour(s) {unknown}" if unknown else "the list is empty",
            f"choose from {', '.join(WORKLOADS)}",
        )
    return list(dict.fromkeys(names))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mem_available() -> int:
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
) -> tuple[list[Workload], dict[str, str], dict[str, str], Path | None]:
    """Which flavours can run here: (runnable, {skipped name: reason}, tools, mpi_bench).

    ``tool_path`` is the PATH the tools are looked up in (default: the environment's)."""
    runnable: list[Workload] = []
    skipped: dict[str, str] = {}
    tools: dict[str, str] = {}
    mpi_bench: Path | None = None
    mpi_error: str | None = None
    for name in names:
        fl = WORKLOADS[name]
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
