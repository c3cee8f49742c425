"""Telemetry services on 127.0.0.1: a node exporter and a Prometheus for a recording,
and the recorded TSDB served again for ingesting it.

:class:`Service` and :func:`start_service` are the one way didact starts such a child
process (the test suite's helpers in ``tests/services.py`` use them too): a free port
(retried if another process took it meanwhile), a log file, a readiness check, and a
stop — SIGTERM, then SIGKILL — on exit.  The child also gets SIGTERM when its parent
dies, so nothing is left over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from didact_core.config import Settings, ensure_home
from didact_core.errors import DidactError
from didact_core.testbed.processes import service_preexec, stop_service

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
    """A running child process listening on 127.0.0.1:``port``."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    #: what the caller wants to keep beside it (e.g. a Prometheus's storage folder)
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        stop_service(self.proc, grace_s)


def _wait_ready(svc: Service, ready_path: str, ok_status: Sequence[int], deadline: float) -> bool:
    """Poll ``ready_path`` until it answers one of ``ok_status``; False if the process
    ended or the deadline passed first."""
    while time.monotonic() < deadline and svc.proc.poll() is None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(svc.url + ready_path, timeout=2).status_code in ok_status:
                return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def start_service(
    name: str,
    argv_for_port: Callable[[int], list[str]],
    ready_path: str,
    log_dir: Path,
    timeout_s: float = 60.0,
    port: int | None = None,
    *,
    ok_status: Sequence[int] = (200,),
    env: dict | None = None,
    extra: dict | None = None,
) -> Iterator[Service]:
    """Start a service on ``port`` (None: a free one, retried if it was taken meanwhile),
    wait until ``ready_path`` answers one of ``ok_status``, stop it on exit.  Its output
    goes to ``log_dir/<name>.log``; ``env`` is added to the environment."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    last = ""
    fixed = port
    for _attempt in range(1 if fixed else 3):
        port = fixed or free_port()
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                argv_for_port(port), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_dir,
                env={**os.environ, **(env or {})}, process_group=0, preexec_fn=service_preexec,
            )  # fmt: skip
        svc = Service(name, proc, port, log_path, dict(extra or {}))
        try:
            if _wait_ready(svc, ready_path, ok_status, time.monotonic() + timeout_s):
                break
            last = svc.log_tail(30)
            svc.stop()
            if fixed or "address already in use" not in last:
                raise DidactError(
                    f"{name} ({argv_for_port(port)[0]})",
                    f"did not start on 127.0.0.1:{port} within {timeout_s:g} s: {last[-600:] or 'no output'}",
                    "see the log above; " + ("a Prometheus still running on the same storage? stop it"
                                             if name.startswith("prometheus") else SERVICE_INSTALL_HINT),
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


def prometheus_yaml(
    scrape_interval: float | str,
    targets: Sequence[str] = (),
    *,
    job: str = "didact-testbed",
    instance: str | None = None,
) -> str:
    """A Prometheus configuration scraping ``targets`` (host:port) every
    ``scrape_interval`` (seconds, or a duration such as ``"1s"``); ``instance`` sets that
    label on them (the node's name)."""
    every = scrape_interval if isinstance(scrape_interval, str) else f"{scrape_interval:g}s"
    lines = ["global:", f"  scrape_interval: {every}", f"  evaluation_interval: {every}"]
    if targets:
        lines += [
            "scrape_configs:",
            f"  - job_name: {job}",
            "    static_configs:",
            "      - targets: [" + ", ".join(_yaml_str(t) for t in targets) + "]",
        ]
        if instance:
            lines += ["        labels:", f"          instance: {_yaml_str(instance)}"]
    return "\n".join(lines) + "\n"


def _yaml_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def prometheus_argv(binary: str, cfg: Path, storage: Path, port: int, retention: str = "10y") -> list[str]:
    return [
        binary, f"--config.file={cfg}", f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.retention.time={retention}", "--log.level=warn",
    ]  # fmt: skip


def node_exporter_argv(binary: str, port: int, collectors: Sequence[str] = NODE_EXPORTER_COLLECTORS) -> list[str]:
    """A node exporter on 127.0.0.1:``port`` with only ``collectors`` enabled."""
    return [
        binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
        *[f"--collector.{c}" for c in collectors],
    ]  # fmt: skip


def testbed_dir(settings: Settings) -> Path:
    return ensure_home(settings.home_path) / "testbed"


def tsdb_dir(settings: Settings) -> Path:
    """Where the recorder's own Prometheus keeps its data (persists between recordings)."""
    return testbed_dir(settings) / "prometheus"


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
    with start_service("node_exporter", lambda port: node_exporter_argv(ne_bin, port), "/metrics", logs) as ne:
        cfg = base / "prometheus.yml"
        cfg.write_text(prometheus_yaml(scrape_interval_s, [ne.address], instance=node_name))
        argv = lambda port: prometheus_argv(prom_bin, cfg, storage, port)  # noqa: E731
        with start_service("prometheus", argv, "/-/ready", logs) as prom:
            yield Services(ne, prom, node_name)


@contextlib.contextmanager
def serve_recording(settings: Settings, port: int | None = None) -> Iterator[str]:
    """Serve the recorder's stored TSDB (no scraping) on 127.0.0.1 and yield its URL; for
    ingesting a recording after it ended (``didact testbed serve``).  ``port`` None picks
    a free one."""
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
    argv = lambda p: prometheus_argv(prom_bin, cfg, storage, p)  # noqa: E731
    with start_service("prometheus-serve", argv, "/-/ready", base / "logs", port=port) as svc:
        yield svc.url
