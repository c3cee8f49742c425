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
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests

# one Service class and one way of starting one, for tests, bench and the recorder
from didact_core.testbed.services import (  # noqa: F401  (free_port and Service: for the tests)
    Service,
    free_port,
    node_exporter_argv,
    prometheus_argv,
    prometheus_yaml,
    start_service,
)

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


def answers(url: str) -> bool:
    """``url`` answers 2xx now (a service that is not up yet is False, not an error)."""
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


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


@contextlib.contextmanager
def start_node_exporter(
    workdir: Path,
    collectors: Sequence[str] = ("cpu", "stat", "meminfo", "rapl", "hwmon"),
    binary: str | None = None,
) -> Iterator[Service]:
    """A real node exporter with only ``collectors`` enabled (fast 1 s scrapes)."""
    binary = binary or require_binary("node_exporter")
    argv = lambda port: node_exporter_argv(binary, port, collectors)  # noqa: E731
    with start_service("node_exporter", argv, "/metrics", Path(workdir) / "node_exporter", timeout_s=30) as svc:
        yield svc


def prometheus_config(targets: Sequence[str] = (), scrape_interval: str = "1s", job: str = "node") -> str:
    return prometheus_yaml(scrape_interval, targets, job=job)


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
    wd = Path(tempfile.mkdtemp(prefix="prometheus-", dir=Path(workdir)))
    cfg = wd / "prometheus.yml"
    cfg.write_text(prometheus_config(targets, scrape_interval))
    storage = Path(storage) if storage else wd / "data"
    argv = lambda port: [*prometheus_argv(binary, cfg, storage, port, retention), *extra_args]  # noqa: E731
    with start_service("prometheus", argv, "/-/ready", wd, timeout, extra={"storage": storage}) as svc:
        yield svc


#: seconds between the backfill passes of a test's Dagster daemon (Dagster's own: 30)
DAEMON_PASS_S = 5

#: ``sitecustomize.py`` for a test's Dagster processes.  Dagster's backfill daemon sleeps a
#: fixed 30 s between passes (``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``,
#: no setting): a 2-day backfill whose second model day waits for the first spends three or
#: four passes — minutes — only waiting.  In the daemon's process (``dagster-daemon run`` or
#: ``dagster dev``'s ``python -m dagster._daemon``) a pass comes every few seconds; what a
#: pass does is unchanged, and every other process is left alone.
DAEMON_SITE = """\
import sys

if any("dagster._daemon" in a or a.endswith("dagster-daemon") for a in getattr(sys, "orig_argv", sys.argv)):
    try:
        import dagster._daemon.controller as _controller
    except ImportError:
        pass
    else:
        _controller.DEFAULT_DAEMON_INTERVAL_SECONDS = {seconds}
"""


def dagster_site(folder: Path, extra: str = "", pass_s: int = DAEMON_PASS_S) -> Path:
    """``folder`` with a ``sitecustomize.py`` (:data:`DAEMON_SITE`, then ``extra``): put it
    first on the PYTHONPATH of ``dagster dev`` / ``dagster-daemon`` and its runs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(DAEMON_SITE.format(seconds=int(pass_s)) + extra)
    return folder


def utc_day_with_room(minutes: float = 5.0) -> dt.date:
    """Today (UTC), after waiting out midnight when it is less than ``minutes`` away.

    For tests that ingest the day a real Prometheus is scraping now: started before it, they
    read a day all of whose samples fall on it, whenever the suite runs."""
    now = dt.datetime.now(dt.timezone.utc)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    if midnight - now < dt.timedelta(minutes=minutes):
        time.sleep((midnight - now).total_seconds() + 1.0)
    return dt.datetime.now(dt.timezone.utc).date()


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
    argv = lambda port: [binary, "-m", str(Path(mockup_dir).resolve()), "-i", "127.0.0.1", "-p", str(port)]  # noqa: E731
    wd = Path(tempfile.mkdtemp(prefix="sushy-static-", dir=Path(workdir)))
    with start_service("sushy-static", argv, "/redfish/v1", wd, timeout_s=30) as svc:
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
    wd = Path(tempfile.mkdtemp(prefix="sushy-emulator-", dir=Path(workdir)))

    def argv(port: int) -> list[str]:
        cfg = wd / "emulator.conf"
        lines = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
        ]
        if htpasswd:
            lines.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(Path(htpasswd).resolve())!r}")
        cfg.write_text("\n".join(lines) + "\n")
        return [binary, "--config", str(cfg), "--fake"]

    with start_service("sushy-emulator", argv, "/redfish/v1", wd, timeout_s=30, ok_status=(200, 401)) as svc:
        yield svc
