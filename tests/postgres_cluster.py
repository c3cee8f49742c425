"""A throwaway PostgreSQL 15 (Debian's package) on a free port, for tests and benchmarks.

    with start_postgres() as pg:
        os.environ["DAGSTER_PG_URL"] = pg.url("dagster")

``initdb`` + ``pg_ctl`` on a data folder of its own (its Unix socket lives there too, so the
system's cluster is neither needed nor touched), trust authentication on 127.0.0.1 only.
PostgreSQL refuses to run as root: as root, every command runs as the ``postgres`` user
(``runuser``), and the folder is a fresh one under ``/tmp`` that this user owns (pytest's
``tmp_path`` is private to root).  On exit the server is stopped and the folder removed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "run `sudo scripts/install_system_deps.sh` (Debian package postgresql)"
RUN_AS = "postgres"


def pg_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<v>/bin`` (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresCluster:
    """A running PostgreSQL: ``url(db)`` for clients, ``stop()``/``start()`` to take it away."""

    data: Path
    port: int
    bin: Path

    def url(self, db: str = "postgres", scheme: str = "postgresql", **params: str) -> str:
        """A libpq URL; ``scheme="postgresql+psycopg2"`` for SQLAlchemy (2.1 picks psycopg 3 otherwise)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{scheme}://{RUN_AS}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def _run(self, *argv: str, timeout: float = 60.0) -> str:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.data / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL test cluster: {' '.join(argv[:2])} failed: {done.stderr}\n{tail}")
        return done.stdout

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", RUN_AS, name)

    def sql(self, query: str, db: str = "postgres") -> list[list[str]]:
        """Rows of ``query`` as text (psql, unaligned)."""
        out = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", RUN_AS, "-d", db,
                        "-At", "-F", "\t", "-c", query)  # fmt: skip
        return [line.split("\t") for line in out.splitlines() if line]


@contextlib.contextmanager
def start_postgres(databases: tuple[str, ...] = ()) -> Iterator[PostgresCluster]:
    """initdb + start a cluster on a free port, create ``databases``; stop and remove it on exit."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL test cluster: initdb not found: {INSTALL_HINT}")
    data = Path(tempfile.mkdtemp(prefix="didact-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, RUN_AS, RUN_AS)
    data.chmod(0o700)
    cluster = PostgresCluster(data, _free_port(), bin_dir)
    try:
        cluster._run("initdb", "-D", str(data), "-U", RUN_AS, "--auth=trust", "-E", "UTF8", "--no-sync")
        cluster.start()
        for db in databases:
            cluster.create_database(db)
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError, OSError):
            if cluster.running():
                cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
