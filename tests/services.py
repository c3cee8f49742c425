"""Start real telemetry services for tests and benchmarks.

Every helper binds 127.0.0.1 on a free port, keeps its state in a folder the caller
owns (a pytest ``tmp_path``), waits until the service answers, and stops it on exit::

    with start_node_exporter(tmp_path) as ne, start_prometheus(tmp_path, [ne.address]) as prom:
        requests.get(prom.url + "/api/v1/query", params={"query": "up"})

Binaries come from the Debian packages (``scripts/install_system_deps.sh``) or, for
sushy-tools, from the virtualenv next to the running Python.  A missing binary FAILS the
test (it does not skip): the test command installs them first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from didact_core.testbed.recorder import free_port  # noqa: F401  (one helper for tests, bench and the recorder)

INSTALL_HINT = (
    "run `sudo scripts/install_system_deps.sh` (Debian packages prometheus, prometheus-node-exporter)"
)

_BINARIES = {
    "prometheus": ["/usr/bin/prometheus"],
    "promtool": ["/usr/bin/promtool"],
    "node_exporter": ["/usr/bin/prometheus-node-exporter", "/usr/bin/node_exporter"],
}


class MissingBinary(RuntimeError):
    """A service binary is not installed."""


def find_binary(name: str) -> str:
    """Path of a service binary; raises :class:`MissingBinary` naming the install script."""
    candidates = list(_BINARIES.get(name, []))
    which = shutil.which(name) or shutil.which(Path(candidates[0]).name if candidates else name)
    for path in candidates + ([which] if which else []):
        if path and os.path.exists(path) and os.access(path, os.X_OK):
            return path
    if name.startswith("sushy-"):
        venv_bin = Path(sys.executable).parent / name
        if venv_bin.exists():
            return str(venv_bin)
        raise MissingBinary(f"{name} not found next to {sys.executable}: pip install sushy-tools==2.2.0")
    raise MissingBinary(f"{name} not found (looked in {candidates or 'PATH'}): {INSTALL_HINT}")


def require_binary(name: str) -> str:
    """Like :func:`find_binary` but fails the running pytest test with the install hint."""
    try:
        return find_binary(name)
    except MissingBinary as e:
        import pytest

        pytest.fail(str(e), pytrace=False)
        raise  # unreachable; keeps type checkers happy


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll ``GET url`` until it answers 2xx; fail with the process's output if it exits first
    (``proc`` started with ``stdout=PIPE, text=True``) or with a timeout message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:g} s")


@dataclass
class Service:
    """A running child process listening on 127.0.0.1:port."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    workdir: Path
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)


def _wait_ready(svc: Service, path: str, ok_status: Sequence[int] = (200,), timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(
                f"{svc.name} exited with {svc.proc.returncode} before it was ready:\n{svc.log_tail()}"
            )
        try:
            r = requests.get(svc.url + path, timeout=2)
            if r.status_code in ok_status:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.1)
    svc.stop()
    raise RuntimeError(
        f"{svc.name} not ready on {svc.url}{path} after {timeout:.0f}s ({last}):\n{svc.log_tail()}"
    )


@contextlib.contextmanager
def _run(
    name: str,
    argv: list[str],
    port: int,
    workdir: Path,
    ready_path: str,
    ok_status: Sequence[int] = (200,),
    env: dict | None = None,
    timeout: float = 30.0,
    extra: dict | None = None,
) -> Iterator[Service]:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        svc = Service(name, proc, port, log_path, workdir, extra or {})
        try:
            _wait_ready(svc, ready_path, ok_status, timeout)
            yield svc
        finally:
            svc.stop()
    finally:
        log.close()


@contextlib.contextmanager
def start_node_exporter(
    workdir: Path,
    collectors: Sequence[str] = ("cpu", "stat", "meminfo", "rapl", "hwmon"),
    binary: str | None = None,
) -> Iterator[Service]:
    """A real node exporter with only ``collectors`` enabled (fast 1 s scrapes)."""
    binary = binary or require_binary("node_exporter")
    port = free_port()
    argv = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        *[f"--collector.{c}" for c in collectors],
    ]
    with _run("node_exporter", argv, port, Path(workdir) / "node_exporter", "/metrics") as svc:
        yield svc


def prometheus_config(targets: Sequence[str] = (), scrape_interval: str = "1s", job: str = "node") -> str:
    lines = ["global:", f"  scrape_interval: {scrape_interval}", f"  evaluation_interval: {scrape_interval}"]
    if targets:
        lines += [
            "scrape_configs:",
            f"  - job_name: {job}",
            "    static_configs:",
            "      - targets: [" + ", ".join(f"'{t}'" for t in targets) + "]",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def start_prometheus(
    workdir: Path,
    targets: Sequence[str] = (),
    scrape_interval: str = "1s",
    storage: Path | None = None,
    retention: str = "100y",
    extra_args: Sequence[str] = (),
    binary: str | None = None,
    timeout: float = 60.0,
) -> Iterator[Service]:
    """A real Prometheus scraping ``targets`` (host:port) every ``scrape_interval``.

    ``storage`` is the TSDB folder (default ``workdir/prometheus/data``); point it at a
    folder of promtool-backfilled blocks to serve them.  ``retention`` is long so that
    backfilled days are not deleted at start.
    """
    binary = binary or require_binary("prometheus")
    port = free_port()
    wd = Path(workdir) / f"prometheus-{port}"
    wd.mkdir(parents=True, exist_ok=True)
    cfg = wd / "prometheus.yml"
    cfg.write_text(prometheus_config(targets, scrape_interval))
    storage = Path(storage) if storage else wd / "data"
    argv = [
        binary,
        f"--config.file={cfg}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={retention}",
        "--log.level=warn",
        *extra_args,
    ]
    with _run("prometheus", argv, port, wd, "/-/ready", timeout=timeout, extra={"storage": storage}) as svc:
        yield svc


def wait_for_samples(prom: Service, query: str, min_points: int, timeout: float = 30.0) -> None:
    """Wait until ``query`` (an instant query) returns a value ≥ ``min_points``."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        r = requests.get(prom.url + "/api/v1/query", params={"query": query}, timeout=5)
        res = r.json().get("data", {}).get("result", [])
        if res:
            got = min(float(s["value"][1]) for s in res)
            if got >= min_points:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{query} stayed below {min_points} for {timeout:.0f}s (last {got})")


def promtool_backfill(
    openmetrics_path: Path, out_dir: Path, binary: str | None = None, timeout: float = 600.0
) -> None:
    """``promtool tsdb create-blocks-from openmetrics FILE OUT`` (raises with its output on failure)."""
    binary = binary or require_binary("promtool")
    out_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [binary, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(openmetrics_path), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"promtool backfill of {openmetrics_path} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )


@contextlib.contextmanager
def start_sushy_static(mockup_dir: Path, workdir: Path) -> Iterator[Service]:
    """sushy-tools' static Redfish emulator serving ``mockup_dir`` as /redfish/v1 (no auth)."""
    binary = require_binary("sushy-static")
    port = free_port()
    argv = [binary, "-m", str(Path(mockup_dir).resolve()), "-i", "127.0.0.1", "-p", str(port)]
    with _run("sushy-static", argv, port, Path(workdir) / f"sushy-static-{port}", "/redfish/v1") as svc:
        yield svc


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """An Apache htpasswd file with one bcrypt entry (the only digest sushy-tools accepts)."""
    import bcrypt

    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{digest}\n")
    return path


@contextlib.contextmanager
def start_sushy_emulator(workdir: Path, htpasswd: Path | None = None) -> Iterator[Service]:
    """sushy-tools' dynamic Redfish emulator (fake driver), with basic auth if ``htpasswd``.

    ``sushy-static`` has no authentication, so auth is exercised against this one; it has
    Chassis but no power resources.
    """
    binary = require_binary("sushy-emulator")
    port = free_port()
    wd = Path(workdir) / f"sushy-emulator-{port}"
    wd.mkdir(parents=True, exist_ok=True)
    cfg = wd / "emulator.conf"
    lines = [
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
    ]
    if htpasswd:
        lines.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(Path(htpasswd).resolve())!r}")
    cfg.write_text("\n".join(lines) + "\n")
    argv = [binary, "--config", str(cfg), "--fake"]
    with _run("sushy-emulator", argv, port, wd, "/redfish/v1", ok_status=(200, 401)) as svc:
        yield svc
