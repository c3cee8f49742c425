"""didact act power-cap: RAPL package limits written and restored, on a writable COPY of a powercap tree.

The tree is a fake (``tests/fixtures/powercap``): RAPL's ``constraint_0_power_limit_uw`` is
not writable on the machines these tests run on (no RAPL driver in the containers, and
root only where there is one), so the tests write the same files in a temp copy of a
tree laid out like ``/sys/class/powercap``.  The "not writable" case is the real check a
non-root user meets: the test runs it as ``nobody`` against a root-owned 0644 tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from didact_core.act import AuditLog, NodeInfo, Observation, PowerCaps, apply, parse_policy, plan
from didact_core.act.metrics import write_textfile
from didact_core.errors import DidactError
from didact_core.procs import default_signals

from .conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "powercap"
ORIGINAL_UW = 165_000_000
PKGS = ("intel-rapl:0", "intel-rapl:1")


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "powercap"
    shutil.copytree(FIXTURE, root)
    return root


def limits(root: Path) -> list[int]:
    return [int((root / z / "constraint_0_power_limit_uw").read_text()) for z in PKGS]


def caps_at(root: Path, tmp_path: Path, **kw) -> PowerCaps:
    return PowerCaps(root, tmp_path / "home" / "act" / "caps.json", node="n1", measure_s=0.01, **kw)


def test_a_cap_writes_every_package_remembers_the_limit_and_restores_it(tree, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    caps = caps_at(tree, tmp_path, audit=audit)
    res = caps.apply(120)
    assert res.applied and limits(tree) == [120_000_000, 120_000_000]
    assert set(res.previous_uw.values()) == {ORIGINAL_UW}
    assert res.watts_before == 0.0 and res.watts_after == 0.0  # the fake's counters stand still
    assert (tree / "intel-rapl:0" / "intel-rapl:0:1" / "constraint_0_power_limit_uw").read_text().strip() == "0"
    caps.apply(100)  # a second cap keeps the limit from before didact
    assert {e["previous_uw"] for e in caps.active().values()} == {ORIGINAL_UW}
    out = caps.restore()
    assert [r["applied"] for r in out] == [True, True] and limits(tree) == [ORIGINAL_UW] * 2
    assert caps.active() == {} and [r["kind"] for r in audit.records()] == ["restore", "restore"]


def test_a_cap_above_the_packages_maximum_is_refused(tree, tmp_path):
    with pytest.raises(DidactError, match="above intel-rapl:0's maximum 165 W"):
        caps_at(tree, tmp_path).apply(400)
    assert limits(tree) == [ORIGINAL_UW] * 2


def test_held_caps_are_restored_on_an_error(tree, tmp_path):
    caps = caps_at(tree, tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with caps.held():
            caps.apply(90)
            assert limits(tree) == [90_000_000] * 2
            raise RuntimeError("boom")
    assert limits(tree) == [ORIGINAL_UW] * 2 and caps.active() == {}


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from didact_core.act import PowerCaps
    root, state, mode = sys.argv[1:4]
    caps = PowerCaps(root, state, node="n1", measure_s=0.01)
    caps.restore_at_exit()
    caps.apply(80)
    print("capped", flush=True)
    if mode == "error":
        raise RuntimeError("the holder failed")
    if mode == "wait":
        time.sleep(120)
""")


@pytest.mark.parametrize("mode", ["exit", "error", "sigterm"])
def test_caps_are_restored_when_the_process_exits_fails_or_is_terminated(tree, tmp_path, mode):
    state = tmp_path / "caps.json"
    argv = [sys.executable, "-c", HOLDER, str(tree), str(state), "wait" if mode == "sigterm" else mode]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=default_signals)  # fmt: skip
    assert proc.stdout.readline().strip() == "capped", proc.stderr.read() if proc.poll() is not None else ""
    if mode == "sigterm":
        assert limits(tree) == [80_000_000] * 2  # held while the process runs
        proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    assert rc == {"exit": 0, "error": 1, "sigterm": 128 + signal.SIGTERM}[mode]
    assert limits(tree) == [ORIGINAL_UW] * 2
    assert json.loads(state.read_text()) == {}


def test_a_killed_holders_caps_are_restored_by_didact_act_restore(tree, tmp_path, monkeypatch, capsys):
    state_home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tree), str(state_home / "act" / "caps.json"), "wait"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.stdout.readline().strip() == "capped"
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(30)
    assert limits(tree) == [80_000_000] * 2
    monkeypatch.setenv("DIDACT_HOME", str(state_home))
    monkeypatch.setenv("DIDACT_POWERCAP_ROOT", str(tree))
    assert _cli("restore") == 0
    assert "restored" in capsys.readouterr().out and limits(tree) == [ORIGINAL_UW] * 2
    prom = (state_home / "act" / "didact_act.prom").read_text()
    assert _value(prom, "didact_act_restores_total") == 2 and _value(prom, "didact_act_active_caps") == 0


def _cli(*argv) -> int:
    import argparse

    from didact_assets import cli_act
    from didact_core.config import Settings

    parser = argparse.ArgumentParser()
    cli_act.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["act", *argv])
    return args.func(args, Settings.from_env())


def _value(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name}{labels} not in\n{text}")


NOT_WRITABLE = textwrap.dedent("""
    import json, os, sys
    from didact_core.act import PowerCaps
    if os.geteuid() == 0:  # become nobody once everything is imported (the interpreter may be under /root)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    res = PowerCaps(sys.argv[1], sys.argv[2], node="n1", measure_s=0.01).apply(100)
    print(json.dumps({"applied": res.applied, "command": res.command, "why": res.why}))
""")


def test_where_the_tree_is_not_writable_the_exact_command_is_printed_and_nothing_applied():
    """As a non-root user (``nobody`` when the suite runs as root), as on every real host: the tree
    is root's, mode 0644, and the kernel says it is not writable."""
    base = Path(tempfile.mkdtemp(prefix="didact-powercap-"))
    try:
        base.chmod(0o755)
        root = base / "powercap"
        shutil.copytree(FIXTURE, root)
        for p in root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        out = subprocess.run([sys.executable, "-c", NOT_WRITABLE, str(root), str(base / "caps.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        files = " ".join(str(root / z / "constraint_0_power_limit_uw") for z in PKGS)
        assert not res["applied"] and res["command"] == f"echo 100000000 | sudo tee {files} > /dev/null"
        assert "not writable" in res["why"] and limits(root) == [ORIGINAL_UW] * 2
        assert not (base / "caps.json").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


POLICY = """
[[rule]]
name = "hot"
when = "node_watts > 300"
hours = "17:00-21:00"
action = "power-cap"
watts = 150
"""


class FakeSlurm:
    def __init__(self, *names):
        self.state = {n: NodeInfo(n, "IDLE") for n in names}

    def nodes(self):
        return dict(self.state)


def test_power_cap_proposals_apply_here_print_the_command_for_other_nodes_and_go_stale(tree, tmp_path):
    import datetime as dt

    policy = parse_policy(POLICY, "act.toml")
    audit, slurm = AuditLog(tmp_path / "audit.jsonl"), FakeSlurm("n1", "n2")
    caps = caps_at(tree, tmp_path, audit=audit)
    peak = dt.datetime(2026, 11, 20, 18, 0, tzinfo=dt.timezone.utc)
    hot = {"n1": Observation("n1", watts=410.0), "n2": Observation("n2", watts=420.0)}
    props, _ = plan(policy, hot, slurm, audit, caps, now=peak)
    assert [(p.node, p.action, p.watts) for p in props] == [("n1", "power-cap", 150.0), ("n2", "power-cap", 150.0)]
    assert "node_watts > 300 holds: node_watts = 410 in 17:00-21:00 UTC" == props[0].why
    assert limits(tree) == [ORIGINAL_UW] * 2  # the plan changed nothing
    # the approval arrives after the peak: the condition cleared, nothing is applied
    late = apply(policy, hot, slurm, audit, approve=[props[0].id], caps=caps, now=peak.replace(hour=22))
    assert [(r["kind"], "no longer holds" in r["why"]) for r in late] == [("refused", True)]
    out = apply(policy, hot, slurm, audit, approve=[p.id for p in props], caps=caps, now=peak)
    assert [r["kind"] for r in out] == ["action", "not_applied"]
    assert out[0]["watts_before"] == 0.0 and out[0]["previous_uw"] and limits(tree) == [150_000_000] * 2
    assert out[1]["command"].startswith("on n2: echo 150000000 | sudo tee ")
    # capped already: not proposed again
    assert [p.node for p in plan(policy, hot, slurm, audit, caps, now=peak)[0]] == ["n2"]
    prom = write_textfile(tmp_path / "act.prom", audit, caps).read_text()
    assert _value(prom, "didact_act_actions_total", action="power-cap") == 1
    assert _value(prom, "didact_act_not_applied_total") == 1 and _value(prom, "didact_act_refused_total") == 1
    assert _value(prom, "didact_act_active_caps") == 2
    assert _value(prom, "didact_act_power_cap_watts", node="n1") == 150
    assert _value(prom, "didact_act_proposals_total") == 3 and _value(prom, "didact_act_approvals_total") == 3
    caps.restore()
    assert limits(tree) == [ORIGINAL_UW] * 2


@pytest.mark.slow
def test_the_metrics_textfile_reaches_node_exporter(tmp_path):
    """A real prometheus-node-exporter reads the textfile from its textfile directory."""
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if exe is None:
        pytest.skip("prometheus-node-exporter not installed (Debian package prometheus-node-exporter)")
    import socket
    import urllib.request

    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("proposal", id="abc", node="n1", action="drain")
    audit.append("failed", id="abc", node="n1", action="drain", error="x")
    write_textfile(tmp_path / "tf" / "didact_act.prom", audit)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={tmp_path / 'tf'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert _value(text, "didact_act_proposals_total") == 1
        assert _value(text, "didact_act_failures_total", action="drain") == 1
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_didact_act_apply_holds_the_cap_and_restores_it_on_sigterm(tree, tmp_path):
    """The CLI end to end on a host without Slurm: an auto power-cap rule, held until SIGTERM."""
    import socket

    host = socket.gethostname().split(".")[0]
    (tmp_path / "cap.toml").write_text('[[rule]]\nname = "hot"\nwhen = "node_watts > 300"\naction = "power-cap"\n'
                                       'watts = 110\nauto = true\n')  # fmt: skip
    (tmp_path / "power.json").write_text(json.dumps({host: 420}))
    (tmp_path / "none.json").write_text("[]")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "DIDACT_HOME": str(tmp_path / "home"),
           "DIDACT_POWERCAP_ROOT": str(tree)}  # fmt: skip
    argv = [sys.executable, "-m", "didact_assets.cli", "act", "apply", "--no-slurm", "--policy", str(tmp_path / "cap.toml"),
            "--events", str(tmp_path / "none.json"), "--power", str(tmp_path / "power.json"), "--hold", "10"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_signals)  # a signal the runner's shell ignores or blocks reaches it
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("holding the power caps"):
            break
    assert any(s.startswith("action") and "power-cap" in s for s in seen), "".join(seen) + proc.stdout.read()
    assert limits(tree) == [110_000_000] * 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert limits(tree) == [ORIGINAL_UW] * 2
    recs = AuditLog.under(tmp_path / "home").records()
    assert [r["kind"] for r in recs] == ["proposal", "action", "restore", "restore"]
    assert recs[1]["watts_before"] == 0.0 and recs[1]["previous_uw"]
