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

**Set B** (``WORKLOADS_B``, ``didact testbed record --set B``): the same labels made of
other programs, so that a model tuned on set A can be judged on set B.  The jobs are
``testbed/jobs_b.py`` (run by this Python), ``testbed/ctx_pingpong.c`` (gcc) and
``testbed/mpi_kernels_b.c`` (mpicc), compiled on first use like ``mpi_bench``:

==============  ==============================================================  ================
label           program                                                         needs
==============  ==============================================================  ================
idle            a daemon-like heartbeat: wake every second, write a file         (python)
io_good         ``dd bs=1M oflag=direct`` rewriting a 256 MiB file               coreutils
io_bad          N × ``dd bs=4k oflag=dsync``: small writes, each synced          coreutils
cpu_1           ``xz -T1 -6`` compressing generated log text                     xz-utils
cpu_n           ``make -jN`` over a generated tree of 49 C files (gcc -O2)       make, gcc
memory          N pandas processes: groupby / merge / sort of random-key frames  pandas
ctx_switch      N thread pairs ping-ponging a byte over AF_UNIX socket pairs     gcc
mpi_compute     N ranks of an N-body step + ``MPI_Allgather``, shared memory     openmpi
mpi_comm        2N ranks (more than cores, ``--oversubscribe``) of               openmpi
                ``MPI_Alltoall`` + ``MPI_Bcast`` over shared memory
==============  ==============================================================  ================

MPI in set B runs over Open MPI's shared-memory transport (``--mca btl ^tcp``: vader in
Open MPI 4, sm in 5), the usual path on one node; set A's TCP stands in for an
interconnect.  **Mixed nodes** — two flavours at once — are set B's ``mix_blas_io``
(numpy matmul on N BLAS threads beside one dsync writer) and ``mix_xz_memory`` (``xz``
beside a pandas process).  They are labelled by their own name, so their segments can
be told apart from the pure ones, and are *not* in the default plan: they are no class of
set A, so a classifier trained on set A cannot be right about them; name them with
``--flavours`` to record them for an open-set check (they should look novel), or label
them ``exclude`` to keep them out of training and evaluation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from didact_core.errors import DidactError

REPO = Path(__file__).resolve().parents[2]
MPI_BENCH_SOURCE = REPO / "testbed" / "mpi_bench.c"
MPI_READY_MARKER = b"mpi_bench ready"
JOBS_B = REPO / "testbed" / "jobs_b.py"
#: programs set B compiles on first use: name → (source in testbed/, compiler, extra flags)
PROGRAMS = {
    "ctx_pingpong": ("ctx_pingpong.c", "gcc", ("-pthread",)),
    "mpi_kernels_b": ("mpi_kernels_b.c", "mpicc", ("-lm",)),
}
_COMPILER_PACKAGE = {"gcc": "gcc", "mpicc": "libopenmpi-dev"}


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
    #: programs of :data:`PROGRAMS` it runs (compiled on first use; ``tools[name]`` is the binary)
    builds: tuple[str, ...] = ()
    #: Python modules the job imports, with the package that provides each
    modules: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict:
        mpi = self.needs_mpi_bench or any(t == "mpirun" for t, _ in self.tools)
        if mpi and os.geteuid() == 0:
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


def _jobs_b(ctx: RunContext, job: str) -> list[str]:
    """``testbed/jobs_b.py JOB`` under this Python (the venv's numpy and pandas)."""
    return [ctx.tools["python"], str(JOBS_B), job, f"{ctx.seconds:.0f}", str(ctx.workdir / job), str(ctx.cpus),
            str(ctx.mem_available)]  # fmt: skip


def _mpirun_shm(ctx: RunContext, ranks: int, mode: str, arg: str) -> list[str]:
    """``mpi_kernels_b`` over Open MPI's shared-memory transport (every BTL but TCP: vader
    in Open MPI 4, sm in 5); ``--oversubscribe`` allows more ranks than CPU threads."""
    argv = [ctx.tools["mpirun"], "-np", str(ranks), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    argv += ["--mca", "oob_tcp_if_include", "lo", "--mca", "btl", "^tcp"]
    return argv + [ctx.tools["mpi_kernels_b"], mode, f"{ctx.seconds:.0f}", arg]


PY = (("python", "python3"),)
JOBS_READY = b"jobs_b ready"

WORKLOADS_B: dict[str, Workload] = {
    f.name: f
    for f in (
        Workload("idle", "a daemon-like heartbeat writing a file every second (testbed/jobs_b.py heartbeat)", PY,
                lambda c: _jobs_b(c, "heartbeat"), ready_marker=JOBS_READY),
        Workload("io_good", "dd bs=1M oflag=direct over a 256 MiB file (testbed/jobs_b.py dd_direct)",
                PY + (("dd", "coreutils"),), lambda c: _jobs_b(c, "dd_direct"), warmup_s=0.5, ready_marker=JOBS_READY),
        Workload("io_bad", "N writers of dd bs=4k oflag=dsync (testbed/jobs_b.py dd_dsync)",
                PY + (("dd", "coreutils"),), lambda c: _jobs_b(c, "dd_dsync"), warmup_s=0.5, ready_marker=JOBS_READY),
        Workload("cpu_1", "xz -T1 -6 over generated log text (testbed/jobs_b.py xz)", PY + (("xz", "xz-utils"),),
                lambda c: _jobs_b(c, "xz"), warmup_s=0.5, ready_marker=JOBS_READY),
        Workload("cpu_n", "make -jN over a generated C tree with gcc -O2 (testbed/jobs_b.py compile)",
                PY + (("make", "make"), ("gcc", "gcc")), lambda c: _jobs_b(c, "compile"), warmup_s=0.5,
                ready_marker=JOBS_READY),
        Workload("memory", "N pandas processes: groupby / merge / sort (testbed/jobs_b.py pandas)", PY,
                lambda c: _jobs_b(c, "pandas"), warmup_s=2.0, ready_marker=JOBS_READY,
                modules=(("numpy", "numpy"), ("pandas", "pandas"))),
        Workload("ctx_switch", "N thread pairs ping-ponging over AF_UNIX sockets (testbed/ctx_pingpong.c)", (),
                lambda c: [c.tools["ctx_pingpong"], str(c.cpus), f"{c.seconds:.0f}"],
                ready_marker=b"ctx_pingpong ready", builds=("ctx_pingpong",)),
        Workload("mpi_compute", "MPI, N ranks over shared memory: N-body steps + MPI_Allgather "
                "(testbed/mpi_kernels_b.c nbody)", MPI,
                lambda c: _mpirun_shm(c, max(2, c.cpus), "nbody", "4096"),
                ready_marker=b"mpi_kernels_b ready", builds=("mpi_kernels_b",)),
        Workload("mpi_comm", "MPI, 2N ranks (oversubscribed) over shared memory: MPI_Alltoall + MPI_Bcast "
                "(testbed/mpi_kernels_b.c alltoall)", MPI,
                lambda c: _mpirun_shm(c, max(4, 2 * c.cpus), "alltoall", "32768"),
                ready_marker=b"mpi_kernels_b ready", builds=("mpi_kernels_b",)),
        Workload("mix_blas_io", "a mixed node: numpy matmul on N BLAS threads beside a dd dsync writer "
                "(testbed/jobs_b.py blas_io)", PY + (("dd", "coreutils"),), lambda c: _jobs_b(c, "blas_io"),
                warmup_s=1.0, ready_marker=JOBS_READY, modules=(("numpy", "numpy"),)),
        Workload("mix_xz_memory", "a mixed node: xz beside one pandas process (testbed/jobs_b.py xz_pandas)",
                PY + (("xz", "xz-utils"),), lambda c: _jobs_b(c, "xz_pandas"), warmup_s=2.0,
                ready_marker=JOBS_READY, modules=(("numpy", "numpy"), ("pandas", "pandas"))),
    )
}  # fmt: skip

#: the workload sets a recording can run (``didact testbed record --set``)
WORKLOAD_SETS: dict[str, dict[str, Workload]] = {"A": WORKLOADS, "B": WORKLOADS_B}
#: what a set runs when no flavours are named: set B leaves its mixed nodes out (no class of set A)
DEFAULT_FLAVOURS = {"A": tuple(WORKLOADS), "B": tuple(n for n in WORKLOADS_B if not n.startswith("mix_"))}


def workloads_of(name: str = "A") -> dict[str, Workload]:
    """The workloads of set ``name`` (``A`` or ``B``, any case): label → :class:`Workload`."""
    key = str(name).strip().upper()
    if key not in WORKLOAD_SETS:
        raise DidactError(f"workload set {name!r}", "does not exist", f"choose from {', '.join(WORKLOAD_SETS)}")
    return WORKLOAD_SETS[key]


def resolve_flavours(names: str | Sequence[str] | None, workload_set: str = "A") -> list[str]:
    """Flavour names of a workload set from a list or a comma list (None: the set's
    default), validated, order kept."""
    workloads = workloads_of(workload_set)
    if names is None:
        return list(DEFAULT_FLAVOURS[workload_set.strip().upper()])
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in workloads]
    if unknown or not names:
        raise DidactError(
            f"flavours {names}",
            f"unknown flavour(s) {unknown}" if unknown else "the list is empty",
            f"choose from {', '.join(workloads)}",
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
    return build_program(home, MPI_BENCH_SOURCE, "mpicc", (), compiler=mpicc, tool_path=tool_path)


def build_program(home: Path, source: Path, compiler_name: str, flags: Sequence[str] = (), *,
                  compiler: str | None = None, tool_path: str | None = None) -> Path:  # fmt: skip
    """Compile a testbed C program into ``home/testbed/bin/<name>-<source hash>`` (cached)."""
    if not source.exists():
        raise DidactError(f"testbed program {source}", "does not exist", "run didact from its source checkout")
    src = source.read_bytes()
    digest = hashlib.sha256(src + " ".join(flags).encode()).hexdigest()[:12]  # no flags: the hash of the source
    out_dir = Path(home) / "testbed" / "bin"
    binary = out_dir / f"{source.stem}-{digest}"
    if binary.exists() and os.access(binary, os.X_OK):
        return binary
    compiler = compiler or shutil.which(compiler_name, path=tool_path)
    package = _COMPILER_PACKAGE.get(compiler_name, compiler_name)
    if not compiler:
        raise DidactError(compiler_name, f"not found, so {source.relative_to(REPO)} cannot be compiled",
                          f"install {package}")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{source.stem}-{digest}.{os.getpid()}.tmp"
    try:
        r = subprocess.run([compiler, "-O2", "-o", str(tmp), str(source), *flags], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        if r.returncode != 0:
            raise DidactError(
                f"{compiler_name} {source}",
                f"failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}",
                f"check the {package} install",
            )
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)
    return binary


def _missing(fl: Workload, home: Path, tool_path: str | None, tools: dict, built: dict) -> list[str]:
    """What ``fl`` lacks here (empty: it can run); found tools and built programs go into
    ``tools`` (``built``: program → its path or the error, shared over the flavours)."""
    missing = []
    for tool, package in fl.tools:
        path = sys.executable if tool == "python" else shutil.which(tool, path=tool_path)
        if path:
            tools[tool] = path
        else:
            missing.append(f"{tool} not found — install {package}")
    for module, package in fl.modules:
        if importlib.util.find_spec(module) is None:
            missing.append(f"Python module {module} not found in {sys.executable} — install {package}")
    for name in fl.builds:
        if name not in built:
            source, compiler, flags = PROGRAMS[name]
            try:
                built[name] = build_program(home, REPO / "testbed" / source, compiler, flags, tool_path=tool_path)
            except DidactError as e:
                built[name] = f"{e.what}: {e.problem}" + (f" — {e.fix}" if e.fix else "")
        if isinstance(built[name], Path):
            tools[name] = str(built[name])
        else:
            missing.append(built[name])
    return missing


def check_flavours(
    names: Sequence[str], home: Path, tool_path: str | None = None, workload_set: str = "A"
) -> tuple[list[Workload], dict[str, str], dict[str, str], Path | None]:
    """Which flavours of a workload set can run here: (runnable, {skipped name: reason},
    tools, mpi_bench).

    ``tool_path`` is the PATH the tools are looked up in (default: the environment's)."""
    workloads = workloads_of(workload_set)
    runnable: list[Workload] = []
    skipped: dict[str, str] = {}
    tools: dict[str, str] = {}
    built: dict[str, Path | str] = {}
    mpi_bench: Path | None = None
    mpi_error: str | None = None
    for name in names:
        fl = workloads[name]
        missing = _missing(fl, home, tool_path, tools, built)
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
