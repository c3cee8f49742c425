"""The testbed's workload sets: set B has set A's labels made of other programs, every
command line is well formed, tools are found (or the flavour is skipped with the package
to install), and a few set-B workloads really load the node and stop cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from didact_core.errors import DidactError
from didact_core.procs import pdeathsig
from didact_core.testbed import workloads as wl
from didact_core.testbed.processes import TAG_VAR, sample_cpu, stop_tagged, tagged_pids


def ctx_for(tmp_path: Path, tools: dict, seconds: float = 30.0) -> wl.RunContext:
    return wl.RunContext(seconds, tmp_path, 2, tools, None, 8 << 30)


def test_set_b_has_set_a_labels_plus_documented_mixes():
    a, b = wl.workloads_of("A"), wl.workloads_of("b")
    assert wl.workloads_of("A") is wl.WORKLOADS and b is wl.WORKLOADS_B
    assert set(wl.resolve_flavours(None, "B")) == set(a)  # the default plan: exactly set A's classes
    assert {n for n in b if n not in a} == {"mix_blas_io", "mix_xz_memory"}
    assert wl.resolve_flavours(None) == list(a)  # set A unchanged
    assert wl.resolve_flavours("mix_blas_io, idle", workload_set="B") == ["mix_blas_io", "idle"]
    with pytest.raises(DidactError, match="unknown flavour"):
        wl.resolve_flavours("mix_blas_io")  # not a set-A flavour
    with pytest.raises(DidactError, match="workload set 'C'"):
        wl.workloads_of("C")
    # different programs: no set-B command line is set A's for the same label
    ctx = ctx_for(Path("/w"), {t: f"/bin/{t}" for t in ("stress-ng", "mpirun", "sleep", "python", "dd", "xz", "make",
                                                          "gcc", "ctx_pingpong", "mpi_kernels_b")})  # fmt: skip
    ctx.mpi_bench = Path("/bin/mpi_bench")
    def programs(argv):
        return {Path(x).name for x in argv if x.startswith("/")}

    for name in a:
        assert programs(b[name].command(ctx)).isdisjoint(programs(a[name].command(ctx)) - {"mpirun"}), name


def test_set_b_command_lines_are_well_formed(tmp_path):
    runnable, skipped, tools, _ = wl.check_flavours(list(wl.WORKLOADS_B), tmp_path, workload_set="B")
    assert not skipped, skipped  # this machine has gcc, make, xz, dd, Open MPI, numpy, pandas
    ctx = ctx_for(tmp_path, tools, 75.0)
    for w in runnable:
        argv = w.command(ctx)
        assert all(isinstance(x, str) and x for x in argv), (w.name, argv)
        exe = argv[0]
        assert os.path.isabs(exe) and os.access(exe, os.X_OK), (w.name, exe)
        assert w.ready_marker, w.name  # labelled from when the program says it runs
        assert "75" in argv, (w.name, argv)  # bounded by its own time limit too
        if exe.endswith("python") or "python" in Path(exe).name:
            assert argv[1] == str(wl.JOBS_B) and argv[2] in _jobs(), argv
    mpi = {w.name: w.command(ctx) for w in runnable if w.name.startswith("mpi_")}
    for argv in mpi.values():  # shared memory, not TCP; more ranks than cores allowed
        assert argv[argv.index("btl") + 1] == "^tcp" and "--oversubscribe" in argv
    assert int(mpi["mpi_comm"][2]) > ctx.cpus  # oversubscribed
    assert {"ctx_pingpong", "mpi_kernels_b", "python"} <= set(tools)


def _jobs() -> set[str]:
    import runpy

    return set(runpy.run_path(str(wl.JOBS_B))["JOBS"])


def test_missing_tools_skip_set_b_flavours_with_the_package(tmp_path):
    path = tmp_path / "bin"
    path.mkdir()
    (path / "dd").symlink_to(shutil.which("dd"))
    runnable, skipped, _, _ = wl.check_flavours(["io_bad", "cpu_1", "cpu_n", "ctx_switch", "mpi_comm"], tmp_path / "h",
                                               tool_path=str(path), workload_set="B")  # fmt: skip
    assert [w.name for w in runnable] == ["io_bad"]
    assert skipped["cpu_1"] == "xz not found — install xz-utils"
    assert "make not found — install make" in skipped["cpu_n"] and "gcc not found — install gcc" in skipped["cpu_n"]
    assert "gcc: not found" in skipped["ctx_switch"] and "install gcc" in skipped["ctx_switch"]
    assert "mpirun not found — install openmpi-bin" in skipped["mpi_comm"]
    assert "mpicc" in skipped["mpi_comm"]


def test_programs_are_compiled_once_per_source(tmp_path):
    a = wl.build_program(tmp_path, wl.REPO / "testbed" / "ctx_pingpong.c", "gcc", ("-pthread",))
    assert wl.build_program(tmp_path, wl.REPO / "testbed" / "ctx_pingpong.c", "gcc", ("-pthread",)) == a
    out = subprocess.run([str(a), "1", "0.2"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "ctx_pingpong ready" in out.stdout and "round_trips_per_s" in out.stdout


def _run(w: wl.Workload, ctx: wl.RunContext, seconds: float) -> tuple[float, float, str]:
    """Start ``w`` as the recorder does (own process group, tagged), let it run ``seconds``
    after it reports ready, stop it: (user s, system s of its processes, its log)."""
    tag = f"test-{os.getpid()}-{w.name}"
    log = ctx.workdir / f"{w.name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(w.command(ctx), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=ctx.workdir, env={**os.environ, **w.env(), TAG_VAR: tag}, process_group=0,
                                preexec_fn=pdeathsig)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while w.ready_marker not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        before: dict = {}
        sample_cpu(tag, before)
        user0, sys0 = _times(tagged_pids(tag))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        user1, sys1 = _times(tagged_pids(tag))
    finally:
        stop_tagged(proc, tag, grace_s=3)
    assert tagged_pids(tag) == [], "processes left over"
    assert proc.returncode is not None
    return user1 - user0, sys1 - sys0, log.read_text(errors="replace")


def _times(pids) -> tuple[float, float]:
    """user and system seconds of live processes, their threads and their waited-for children."""
    u = s = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2 :].split()
        u, s = u + int(f[11]) + int(f[13]), s + int(f[12]) + int(f[14])
    hz = os.sysconf("SC_CLK_TCK")
    return u / hz, s / hz


@pytest.mark.slow
def test_a_few_set_b_workloads_load_the_node_and_stop_cleanly(tmp_path):
    names = ["cpu_n", "ctx_switch", "io_bad", "mpi_compute"]
    runnable, skipped, tools, _ = wl.check_flavours(names, tmp_path / "home", workload_set="B")
    assert not skipped, skipped
    work = tmp_path / "work"  # on the disk (tmp_path), as the recorder's io_dir
    work.mkdir()
    ctx = ctx_for(work, tools, 20.0)
    got = {w.name: _run(w, ctx, 2.5) for w in runnable}
    # a shared 2-core machine: loose bounds, but each shows its kind of load
    user, system, _ = got["cpu_n"]
    assert user > 0.5 and user > 2 * system, got["cpu_n"]  # compilers: user time
    user, system, _ = got["ctx_switch"]
    assert system > 0.3, got["ctx_switch"]  # socket hand-overs: kernel time
    assert any((work / "dd_dsync").rglob("small.dat"))  # small synced writes happened
    assert got["mpi_compute"][0] > 0.5, got["mpi_compute"]
