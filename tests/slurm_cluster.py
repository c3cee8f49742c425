"""A real single-node Slurm (Debian's 22.05 packages) started in a temporary folder.

For the Slurm executor tests and, later, node drain/resume tests and ``didact bench slurm``::

    with start_slurm(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)   # SLURM_CONF points at it
        cluster.drain("maintenance"); cluster.resume()

Everything lives under the given folder: ``slurm.conf``, a munge key and socket of its own
(``AuthInfo=socket=…``, so the system's munged is neither needed nor touched), state, spool,
logs and the ``jobcomp/filetxt`` record of finished jobs.  Both daemons listen on free ports
of their own.  It runs as root (``SlurmUser=root``): ``ProctrackType=proctrack/linuxproc`` and
``TaskPlugin=task/none`` need no cgroups.  On exit the jobs are cancelled and munged,
slurmd and slurmctld are stopped (SIGTERM, then SIGKILL), only the processes started here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = {
    "munged": "/usr/sbin/munged",
    "slurmctld": "/usr/sbin/slurmctld",
    "slurmd": "/usr/sbin/slurmd",
    "sbatch": "/usr/bin/sbatch",
    "scontrol": "/usr/bin/scontrol",
}
INSTALL_HINT = (
    "run `sudo scripts/install_system_deps.sh` (Debian packages slurmctld slurmd munge slurm-client)"
)


def missing_binaries() -> list[str]:
    """The Slurm/munge programs that are not installed (empty when all are there)."""
    return [name for name, path in BINARIES.items() if not (shutil.which(name) or os.access(path, os.X_OK))]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    """Node memory to declare: what the machine has, less 1 GiB (Slurm rejects more than it finds)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return max(512, int(line.split()[1]) // 1024 - 1024)
    return 1024


def slurm_conf(root: Path, node: str, cpus: int, ctld_port: int, slurmd_port: int, mem_mb: int) -> str:
    """``slurm.conf`` for one node that is also the controller, all paths under ``root``."""
    return f"""\
ClusterName=didacttest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# quick answers and quick kills: a test waits on them
MessageTimeout=5
KillWait=2
SchedulerParameters=sched_interval=2
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running single-node Slurm; :attr:`env` points Slurm's commands at it."""

    root: Path
    conf: Path
    node: str
    ctld_port: int
    slurmd_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def jobcomp_log(self) -> Path:
        return self.root / "jobcomp.log"

    def scontrol(self, *args: str, timeout: float = 20.0) -> str:
        out = subprocess.run(
            ["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=True
        )
        return out.stdout

    def node_state(self) -> str:
        """The node's state word (``IDLE``, ``ALLOCATED``, ``MIXED``, ``DRAINED``, ``IDLE+DRAIN`` …)."""
        line = self.scontrol("show", "node", self.node, "-o")
        return _field(line, "State")

    def drain(self, reason: str) -> None:
        self.scontrol("update", f"nodename={self.node}", "state=drain", f"reason={reason}")

    def resume(self) -> None:
        self.scontrol("update", f"nodename={self.node}", "state=resume")

    def stop_controller(self) -> None:
        """Stop slurmctld (its state stays on disk): Slurm's commands now find no controller."""
        _stop(self.procs.pop("slurmctld", None))

    def start_controller(self, timeout: float = 60.0) -> None:
        """(Re)start slurmctld on the saved state and wait until it answers."""
        self.procs["slurmctld"] = _spawn(
            ["slurmctld", "-D", "-f", str(self.conf)], self.root / "log" / "slurmctld.out"
        )
        self._wait(self._controller_up, timeout, "slurmctld", "slurmctld.log")
        if "slurmd" in self.procs:  # a restart: wait until the node has registered again
            self._wait(self._node_idle, timeout, "slurmd", "slurmd.log")

    def cancel_all(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=15)

    def _controller_up(self) -> bool:
        try:
            return " is UP" in self.scontrol("ping", timeout=10)
        except (subprocess.SubprocessError, OSError):
            return False

    def _node_idle(self) -> bool:
        try:
            return self.node_state().split("+")[0] in ("IDLE", "MIXED", "ALLOCATED")
        except (subprocess.SubprocessError, OSError):
            return False

    def _wait(self, ready, timeout: float, what: str, log: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                out = self.root / "log" / f"{dead[0]}.out" if dead else None
                tail = _tail(self.root / "log" / log) + _tail(out)
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"Slurm test cluster: {what} {why}\n{tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            self.cancel_all()
            time.sleep(0.5)  # let slurmd kill the job steps before it goes
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(self.procs.pop(name, None))


def _field(line: str, key: str) -> str:
    for token in line.split():
        if token.startswith(key + "="):
            return token.split("=", 1)[1]
    return ""


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        # own session: a Ctrl-C of pytest does not hit the daemons before the fixture stops them
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    return f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start_munge(root: Path) -> subprocess.Popen:
    mdir = root / "munge"
    mdir.mkdir(mode=0o700)
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = mdir / "munge.socket"
    proc = _spawn(
        ["munged", "--force", "--foreground", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={mdir / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
         f"--seed-file={mdir / 'munged.seed'}"],
        root / "log" / "munged.out",
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            tail = _tail(root / "log" / "munged.log")
            raise RuntimeError("Slurm test cluster: munged did not start\n" + tail)
        time.sleep(0.1)
    return proc


@contextlib.contextmanager
def start_slurm(root: Path, timeout: float = 60.0) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root`` (a new or empty folder); stop them on exit."""
    if missing := missing_binaries():
        raise RuntimeError(f"Slurm test cluster: {', '.join(missing)} not installed: {INSTALL_HINT}")
    root = Path(root).resolve()
    for sub in ("log", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "plugstack.conf").write_text("")
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root, root / "slurm.conf", node, _free_port(), _free_port())
    cluster.conf.write_text(
        slurm_conf(root, node, os.cpu_count() or 1, cluster.ctld_port, cluster.slurmd_port, _mem_mb())
    )
    try:
        cluster.procs["munged"] = _start_munge(root)
        cluster.start_controller(timeout)
        cluster.procs["slurmd"] = _spawn(
            ["slurmd", "-D", "-f", str(cluster.conf), "-N", node], root / "log" / "slurmd.out"
        )
        cluster._wait(cluster._node_idle, timeout, "slurmd", "slurmd.log")
        yield cluster
    finally:
        cluster.stop()
