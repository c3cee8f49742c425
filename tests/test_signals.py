"""Services under a service manager: SIGTERM (what systemd sends to the main process)
stops each didact service and every process it started within a bound, and frees its
port; a killed didact leaves nothing behind either.  Long work reports progress in plain
lines (no terminal control codes) when stdout is not a terminal."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from rich.console import Console

from didact_assets.cli_output import Reporter, reporter
from didact_assets.cli_services import _RecordProgress
from didact_core.procs import alive, default_signals, terminate_tree, tree
from didact_core.testbed import ProgressEvent, format_event, free_port

from .conftest import REPO

#: SIGTERM → every process of the service gone (the services' grace period is 15 s)
STOP_BOUND_S = 30.0
ANSI = "\x1b"


def _didact(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "didact_assets.cli", *argv], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=default_signals)  # fmt: skip


def _wait_until(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready in {timeout:g} s:\n{log.read_text()[-3000:]}")


def _answers(url: str) -> bool:
    return requests.get(url, timeout=3).status_code < 500


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return "?"


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[float, str]:
    """Send ``sig`` to the service's main process only (systemd's KillMode=mixed does
    the same); return (seconds until it and every process below it were gone, the
    command lines of the processes seen before the signal)."""
    before = tree(proc.pid)
    names = " | ".join(_cmdline(p) for p in sorted(before))
    t0 = time.monotonic()
    proc.send_signal(sig)
    while (left := alive(before)) and time.monotonic() - t0 < STOP_BOUND_S:
        proc.poll()
        time.sleep(0.1)
    took = time.monotonic() - t0
    if left:  # leave nothing behind for the next test, then fail naming what was left
        for pid in left:
            with __import__("contextlib").suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"still running {STOP_BOUND_S:g} s after {signal.Signals(sig).name}: "
                    + "; ".join(f"{p} {_cmdline(p)}" for p in sorted(left)))  # fmt: skip
    proc.wait(timeout=5)
    print(f"{signal.Signals(sig).name}: {len(before)} processes gone in {took:.1f} s: {names}")
    return took, names


# -- didact ui: dagster dev, its webserver, daemon and code server -----------------------------


def _start_ui(didact_env, tmp_path) -> tuple[subprocess.Popen, int, Path]:
    port, log = free_port(), tmp_path / "ui.log"
    proc = _didact(["ui", "--port", str(port)], didact_env, log)
    # the webserver answers, and dagster dev has started its daemon and code server too
    _wait_until(proc, log, lambda: _answers(f"http://127.0.0.1:{port}/server_info") and len(tree(proc.pid)) >= 5,
                "didact ui", timeout=180)  # fmt: skip
    return proc, port, log


@pytest.mark.slow
def test_sigterm_stops_didact_ui_and_every_dagster_process(didact_env, tmp_path):
    proc, port, log = _start_ui(didact_env, tmp_path)
    took, names = _stop(proc, signal.SIGTERM)
    assert "dagster_webserver" in names and "dagster._daemon" in names, names
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert _port_free(port)
    assert took < STOP_BOUND_S


@pytest.mark.slow
def test_a_killed_didact_ui_takes_dagster_with_it(didact_env, tmp_path):
    """SIGKILL leaves didact no time to stop anything: Linux's parent-death signal does."""
    proc, port, _log = _start_ui(didact_env, tmp_path)
    _stop(proc, signal.SIGKILL)
    assert _port_free(port)


# -- didact serve ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_didact_serve(didact_env, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    proc = _didact(["serve", "--port", str(port), "--interval", "1", "--torch-threads", "1"], didact_env, log)
    _wait_until(proc, log, lambda: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=3).ok, "didact serve")
    took, _ = _stop(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert _port_free(port)


# -- didact testbed serve: Prometheus serving a recording --------------------------------------


@pytest.mark.slow
def test_sigterm_stops_didact_testbed_serve_and_its_prometheus(didact_env, tmp_path):
    if not shutil.which("prometheus") and not os.access("/usr/bin/prometheus", os.X_OK):
        pytest.fail("prometheus not installed: sudo scripts/install_system_deps.sh")
    # an (empty) TSDB as a recording leaves it
    (Path(didact_env["DIDACT_HOME"]) / "testbed" / "prometheus" / "wal").mkdir(parents=True)
    port, log = free_port(), tmp_path / "testbed-serve.log"
    proc = _didact(["testbed", "serve", "--port", str(port)], didact_env, log)
    _wait_until(proc, log, lambda: requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=3).ok,
                "didact testbed serve")  # fmt: skip
    took, names = _stop(proc)
    assert "prometheus --config.file" in names, names
    assert proc.returncode == 0 and "stopped (SIGTERM)" in log.read_text(), log.read_text()[-2000:]
    assert _port_free(port)


# -- didact power record ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_didact_power_record_and_keeps_its_samples(didact_env, tmp_path):
    from tests.services import start_sushy_static

    with start_sushy_static(REPO / "tests" / "fixtures" / "redfish", tmp_path) as bmc:
        env = {**didact_env, "DIDACT_REDFISH_BMCS": f"node0001={bmc.url}"}
        log = tmp_path / "power.log"
        spool = Path(didact_env["DIDACT_HOME"]) / "spool" / "power"
        proc = _didact(["power", "record", "--interval", "0.2", "--flush", "600"], env, log)
        _wait_until(proc, log, lambda: "recording every" in log.read_text(), "didact power record")
        time.sleep(2)  # some samples, no flush yet (every 600 s)
        took, _ = _stop(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    files = list(spool.glob("*/*.parquet"))
    assert files, f"the samples of the interrupted window were not written:\n{out}"
    assert "samples recorded (stopped by a signal)" in out


@pytest.mark.slow
def test_power_record_progress_off_a_terminal_is_plain_lines(didact_env, tmp_path):
    from tests.services import start_sushy_static

    with start_sushy_static(REPO / "tests" / "fixtures" / "redfish", tmp_path) as bmc:
        env = {**didact_env, "DIDACT_REDFISH_BMCS": f"node0001={bmc.url}"}
        r = subprocess.run([sys.executable, "-m", "didact_assets.cli", "power", "record", "--interval", "0.2",
                            "--flush", "1", "--seconds", "3"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert ANSI not in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("power record: ")]
    assert len(lines) >= 2 and "spool file(s)" in lines[-1], r.stdout


# -- the stop itself ---------------------------------------------------------------------------


def test_terminate_tree_kills_what_ignores_sigterm_after_the_grace_period():
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & setsid sleep 61 & wait"], process_group=0)
    deadline = time.monotonic() + 10
    while len(tree(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = tree(proc.pid)
    assert len(before) == 3  # bash, a sleep in its group, a sleep in a session of its own
    took = terminate_tree(proc, grace_s=1.0)
    assert alive(before) == set() and 1.0 <= took < 5.0


# -- progress off a terminal -------------------------------------------------------------------


def _plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=160), buf


def test_progress_off_a_terminal_prints_steps_as_plain_lines():
    console, buf = _plain_console()
    with reporter(console) as rep:
        assert isinstance(rep, Reporter) and rep.bars is None
        day = rep.add("nightly 2026-03-10", 3)
        rep.update(day, note="running raw_node_metrics", line=False)  # a tick: no line
        rep.update(day, advance=1, note="raw_node_metrics done")
        rep.update(day, advance=1, note="[bold]job_labels[/] done")  # printed as is, not as markup
    out = buf.getvalue()
    assert ANSI not in out
    assert out.splitlines() == ["nightly 2026-03-10: 1/3 raw_node_metrics done",
                                "nightly 2026-03-10: 2/3 [bold]job_labels[/] done"]  # fmt: skip


def test_recorder_progress_off_a_terminal_reports_segments_and_some_ticks(monkeypatch):
    import didact_assets.cli_output as out_mod

    console, buf = _plain_console()
    now = [0.0]
    monkeypatch.setattr(out_mod.time, "monotonic", lambda: now[0])
    with reporter(console) as rep:
        emit = _RecordProgress(rep, format_event)
        emit(ProgressEvent("info", "starting node exporter + Prometheus"))
        for i in (1, 2):
            emit(ProgressEvent("start", "stress-ng --cpu 1", i, 2, "cpu_1", 60, (3 - i) * 60))
            for left in range(59, 0, -1):  # a tick a second
                now[0] += 1
                emit(ProgressEvent("tick", "", i, 2, "cpu_1", left, (2 - i) * 60 + left))
            emit(ProgressEvent("done", "other load 1% of the node's CPU", i, 2, "cpu_1", 0, (2 - i) * 60))
    lines = buf.getvalue().splitlines()
    assert ANSI not in buf.getvalue()
    assert lines[0] == "starting node exporter + Prometheus"
    assert sum(" start: " in ln for ln in lines) == 2 and sum(" done: " in ln for ln in lines) == 2
    ticks = [ln for ln in lines if ln.startswith("[1/2] cpu_1: ") or ln.startswith("[2/2] cpu_1: ")]
    assert 2 <= len(ticks) <= 6, lines  # a tick line every 30 s, not one a second
    assert any("left in total" in ln for ln in ticks)


def test_a_services_child_obeys_stop_signals_its_parent_ignored_or_blocked():
    """Started from a shell's ``cmd &`` (SIGINT ignored) or a thread that blocks signals,
    didact would otherwise hand that deafness on to dagster, Prometheus and the rest."""
    script = ("import signal, subprocess, sys\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
              "from didact_core.procs import pdeathsig\n"
              "kw = {'preexec_fn': pdeathsig} if sys.argv[1] == 'fixed' else {}\n"
              "print(subprocess.run(['grep', '-E', '^Sig(Blk|Ign)', '/proc/self/status'], capture_output=True, "
              "text=True, **kw).stdout)\n")  # fmt: skip
    masks = {}
    for how in ("plain", "fixed"):
        out = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, cwd=REPO, check=True)
        masks[how] = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in out.stdout.split("\n") if ":\t" in ln)}
    bit = lambda sig: 1 << (int(sig) - 1)  # noqa: E731
    assert masks["plain"]["SigIgn"] & bit(signal.SIGINT) and masks["plain"]["SigBlk"] & bit(signal.SIGTERM)
    assert not masks["fixed"]["SigIgn"] & (bit(signal.SIGINT) | bit(signal.SIGTERM))
    assert not masks["fixed"]["SigBlk"] & (bit(signal.SIGINT) | bit(signal.SIGTERM))
