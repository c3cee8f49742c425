"""Set B's non-MPI workloads for the didact testbed (``didact testbed record --set B``):
real programs other than set A's stress-ng, one job per flavour label.

    python testbed/jobs_b.py JOB SECONDS WORKDIR CPUS [MEM_BYTES]

=================  ==========================================================================
job                what runs
=================  ==========================================================================
heartbeat          a daemon-like loop: wake every second, write a timestamp file (``idle``)
dd_direct          ``dd bs=1M oflag=direct`` over a 256 MiB file, again and again (``io_good``)
dd_dsync           CPUS × ``dd bs=4k oflag=dsync``: small writes, each synced (``io_bad``)
xz                 ``xz -T1 -6`` over 8 MiB of generated log text (``cpu_1``)
compile            ``make -j CPUS`` over a generated tree of 48 C files with gcc -O2 (``cpu_n``)
pandas             CPUS processes of a pandas data job: groupby, merge, sort on a frame of
                   random keys, rebuilt each round (memory traffic, page faults: ``memory``)
blas_io            numpy matmul on CPUS BLAS threads beside one ``dd_dsync`` writer (a mix)
xz_pandas          ``xz`` beside one ``pandas`` process (a mix)
=================  ==========================================================================

Set-up (generating data, the C tree, the first frame) happens first; then the job prints
``jobs_b ready`` (the recorder labels from there on) and loops until SECONDS have passed
or it is stopped (SIGTERM to its process group, which its children share).  Only the
standard library at the top: numpy and pandas are imported by the jobs that use them.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

READY = "jobs_b ready"


def ready(job: str) -> None:
    print(f"{READY} {job}", flush=True)


def loop(deadline: float, argv_list: list[list[str]], **kw) -> None:
    """Run the command lines in turn until the deadline (a child that fails ends the job)."""
    while time.monotonic() < deadline:
        for argv in argv_list:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                subprocess.run(argv, check=True, timeout=left, **kw)
            except subprocess.TimeoutExpired:
                return


def spawn_self(job: str, seconds: float, workdir: Path, cpus: int, mem: int, n: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, __file__, job, f"{seconds:.1f}", str(workdir / f"{job}-{i}"), str(cpus), str(mem)])
        for i in range(n)
    ]


def heartbeat(deadline: float, workdir: Path, **_) -> None:
    ready("heartbeat")
    beat = workdir / "heartbeat"
    while time.monotonic() < deadline:
        beat.write_text(f"{time.time():.3f}\n")
        time.sleep(1.0)


def dd_direct(deadline: float, workdir: Path, **_) -> None:
    ready("dd_direct")
    loop(deadline, [["dd", "if=/dev/zero", f"of={workdir / 'seq.dat'}", "bs=1M", "count=256", "oflag=direct",
                     "conv=notrunc", "status=none"]])  # fmt: skip


def dd_dsync(deadline: float, workdir: Path, cpus: int, **_) -> None:
    writers = [
        subprocess.Popen([sys.executable, __file__, "dd_dsync1", f"{deadline - time.monotonic():.1f}",
                          str(workdir / f"w{i}"), "1"])  # fmt: skip
        for i in range(cpus)
    ]
    ready("dd_dsync")
    for w in writers:
        w.wait()


def dd_dsync1(deadline: float, workdir: Path, **_) -> None:
    loop(deadline, [["dd", "if=/dev/zero", f"of={workdir / 'small.dat'}", "bs=4k", "count=2048", "oflag=dsync",
                     "conv=notrunc", "status=none"]])  # fmt: skip


def _log_text(path: Path, size: int = 8 << 20) -> None:
    rng = random.Random(1)
    words = ["GET", "POST", "/api/v1/jobs", "/metrics", "200", "404", "500", "node", "slurm", "ok", "retry"]
    with open(path, "w") as f:
        written, t = 0, 1_700_000_000
        while written < size:
            t += rng.randint(0, 3)
            line = f"{t} {' '.join(rng.choices(words, k=6))} {rng.random():.6f} id={rng.getrandbits(40):x}\n"
            written += f.write(line)


def xz(deadline: float, workdir: Path, **_) -> None:
    data = workdir / "log.txt"
    _log_text(data)
    ready("xz")
    loop(deadline, [["xz", "-T1", "-6", "-c", str(data)]], stdout=subprocess.DEVNULL)


_C_FILE = """
static double f{i}_{j}(double x) {{ double s = 0; for (int k = 0; k < {n}; k++) s += (x + k) * {j}.5 / (k + 1.0 + x * x); return s; }}
"""


def compile_tree(root: Path, files: int = 48, funcs: int = 8) -> None:
    root.mkdir(parents=True, exist_ok=True)
    objs = []
    for i in range(files):
        body = "".join(_C_FILE.format(i=i, j=j, n=100 + j) for j in range(funcs))
        calls = " + ".join(f"f{i}_{j}(x)" for j in range(funcs))
        (root / f"m{i}.c").write_text(f"#include <math.h>\n{body}\ndouble entry{i}(double x) {{ return {calls}; }}\n")
        objs.append(f"m{i}.o")
    main = "".join(f"double entry{i}(double);\n" for i in range(files))
    main += "int main(void) { double s = 0; " + " ".join(f"s += entry{i}(1.0);" for i in range(files))
    (root / "main.c").write_text(main + " return s > 0 ? 0 : 1; }\n")
    (root / "Makefile").write_text(
        "CFLAGS = -O2\nOBJS = main.o " + " ".join(objs) + "\n"
        "prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS) -lm\n%.o: %.c\n\t$(CC) $(CFLAGS) -c $< -o $@\n"
        "clean:\n\trm -f prog *.o\n"
    )


def compile(deadline: float, workdir: Path, cpus: int, **_) -> None:
    root = workdir / "tree"
    compile_tree(root)
    ready("compile")
    loop(deadline, [["make", "-s", "-C", str(root), "clean"], ["make", "-s", "-C", str(root), f"-j{cpus}", "prog"]])


def pandas(deadline: float, workdir: Path, cpus: int, mem: int, **_) -> None:
    workers = spawn_self("pandas1", deadline - time.monotonic(), workdir, cpus, mem, cpus)
    ready("pandas")
    for w in workers:
        w.wait()


def pandas1(deadline: float, cpus: int, mem: int, **_) -> None:
    import numpy as np  # the venv's, like the recorder's
    import pandas as pd

    # a frame of ~48 bytes a row, and its copies: at most a quarter of the available memory in all
    rows = int(min(2_000_000, max(100_000, (mem or 8 << 30) // 4 // max(cpus, 1) // 400)))
    rng = np.random.default_rng(os.getpid())
    while time.monotonic() < deadline:
        df = pd.DataFrame({"key": rng.integers(0, rows // 4, rows), "grp": rng.integers(0, 64, rows),
                           "v": rng.random(rows), "w": rng.random(rows)})  # fmt: skip
        agg = df.groupby("key").agg(v=("v", "sum"), w=("w", "mean"))
        df = df.merge(agg, left_on="key", right_index=True, suffixes=("", "_k"))
        df.sort_values(["grp", "v_k"]).groupby("grp")["w_k"].sum()


def blas_io(deadline: float, workdir: Path, cpus: int, **_) -> None:
    writer = subprocess.Popen([sys.executable, __file__, "dd_dsync1", f"{deadline - time.monotonic():.1f}",
                               str(workdir / "w"), "1"])  # fmt: skip
    blas(deadline, cpus)
    writer.wait()


def blas(deadline: float, cpus: int) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(cpus)
    import numpy as np  # after the thread counts: BLAS reads them when it loads

    rng = np.random.default_rng(0)
    a, b = rng.random((1024, 1024)), rng.random((1024, 1024))
    ready("blas_io")
    while time.monotonic() < deadline:
        a = (a @ b) / 1024.0


def xz_pandas(deadline: float, workdir: Path, cpus: int, mem: int, **_) -> None:
    worker = spawn_self("pandas1", deadline - time.monotonic(), workdir, 1, mem, 1)
    data = workdir / "log.txt"
    _log_text(data)
    ready("xz_pandas")
    loop(deadline, [["xz", "-T1", "-6", "-c", str(data)]], stdout=subprocess.DEVNULL)
    worker.wait()


JOBS = {f.__name__: f for f in (heartbeat, dd_direct, dd_dsync, dd_dsync1, xz, compile, pandas, pandas1, blas_io,
                                xz_pandas)}  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] not in JOBS:
        print(f"usage: jobs_b.py {{{','.join(JOBS)}}} SECONDS WORKDIR CPUS [MEM_BYTES]", file=sys.stderr)
        return 2
    job, seconds, workdir, cpus = argv[0], float(argv[1]), Path(argv[2]), max(1, int(argv[3]))
    mem = int(argv[4]) if len(argv) > 4 else 0
    workdir.mkdir(parents=True, exist_ok=True)
    JOBS[job](deadline=time.monotonic() + seconds, workdir=workdir, cpus=cpus, mem=mem)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
