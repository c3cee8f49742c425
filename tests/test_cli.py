"""The ``didact`` command as a user meets it: help for every action and option, a
version, and bad input answered with a usage message (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from didact_assets.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_version(capsys):
    from importlib.metadata import version

    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"didact {version('didact')}"


@pytest.mark.parametrize(
    "action, options",
    [
        ("record", ["--minutes", "--segments", "--flavours", "--set", "--segment-seconds", "--out", "--prometheus-url",
                    "--node-name", "--seed", "--io-dir"]),
        ("ingest", ["--labels", "--day", "--prometheus-url"]),
        ("export", ["--labels", "--segments", "--out"]),
        ("serve", ["--port"]),
        ("evaluate", ["--days", "--test-days", "--train-labels", "--test-labels", "--cross", "--seeds", "--seed",
                      "--holdout", "--max-train", "--max-test", "--epochs", "--openset-epochs"]),
    ],
)  # fmt: skip
def test_each_testbed_action_has_its_own_options_and_help(capsys, action, options):
    rc, out, _ = run(capsys, "testbed", action, "--help")
    assert rc == 0
    shown = set(re.findall(r"^\s+(--[a-z-]+)", out, re.M)) - {"--help"}
    assert shown == set(options), out
    assert "record:" not in out and "ingest:" not in out


def test_an_option_of_another_action_is_an_error(capsys):
    rc, _, err = run(capsys, "testbed", "ingest", "--node-name", "n1")
    assert rc == 2 and "unrecognized arguments: --node-name" in err
    rc, _, err = run(capsys, "testbed", "serve", "--minutes", "3")
    assert rc == 2 and "unrecognized arguments: --minutes" in err


def _parsers(parser: argparse.ArgumentParser, path: str = "didact"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_argument_has_help():
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_the_parser_loads_no_heavy_library():
    """`didact --help`, a usage error, any command's start: the parser of every command
    loads without torch, pandas, MLflow or Dagster (seconds each on 2 cores); a command
    imports what it needs when it runs."""
    code = ("import sys; from didact_assets.cli import build_parser; build_parser(); "
            "print(' '.join(m for m in ('torch', 'pandas', 'mlflow', 'dagster', 'duckdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == []


def test_bench_help_lists_every_benchmark(capsys):
    rc, out, _ = run(capsys, "bench", "--help")
    names = sorted(p.stem.removeprefix("bench_") for p in (REPO / "bench").glob("bench_*.py"))
    assert rc == 0 and len(names) >= 5
    flat = " ".join(out.split())
    assert all(n in flat for n in names), (names, out)


@pytest.mark.parametrize(
    "argv, option, fix",
    [
        (["rollback", "--asset", "ai_ready_metrics", "--partition", "2026-11-20", "--to", "vX"], "--to", "v2 or 2"),
        (["demo", "--days", "0"], "--days", "--days 3"),
        (["demo", "--days", "three"], "--days", "--days 3"),
        (["rollback", "--partition", "20-11-2026"], "--partition", "YYYY-MM-DD"),
        (["prune", "--keep", "0"], "--keep", "--keep 3"),
        (["review", "list", "--limit", "-1"], "--limit", "--limit 50"),
        (["power", "record", "--interval", "0"], "--interval", "--interval 5"),
        (["testbed", "record", "--segment-seconds", "nan"], "--segment-seconds", "--segment-seconds 60"),
        (["testbed", "serve", "--port", "99999"], "--port", "1 to 65535"),
        (["testbed", "ingest", "--day", "yesterday"], "--day", "YYYY-MM-DD"),
        (["testbed", "evaluate", "--days", "2026-11-20,bad"], "--days", "YYYY-MM-DD"),
        (["serve", "--start", "yesterday"], "--start", "2026-02-11T12:00"),
    ],
)  # fmt: skip
def test_bad_input_is_a_usage_error_naming_the_option_and_the_fix(capsys, argv, option, fix):
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert f"argument {option}" in err and fix in err and "Traceback" not in err, err


def test_evaluate_seed_reaches_the_evaluation_settings(capsys, monkeypatch, tmp_path):
    from didact_core.testbed import evaluation

    seen = []

    def fake_evaluate(settings, days, seeds=None, **kw):
        seen.append((settings.seed, days, seeds))
        return {"runs": [], "seeds": seeds, "features": list(settings.features), "window": 1, "n_params": 1}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setenv("DIDACT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIDACT_SEED", "7")
    assert run(capsys, "testbed", "evaluate", "--days", "2026-11-20")[0] == 0
    rc, out, _ = run(capsys, "testbed", "evaluate", "--days", "2026-11-20,2026-11-21", "--seed", "11")
    assert rc == 0 and "seeds 11" in out
    assert seen == [(7, ["2026-11-20"], [7]), (11, ["2026-11-20", "2026-11-21"], [11])]


@pytest.mark.slow
def test_demo_off_a_terminal_reports_each_asset_of_each_day_in_plain_lines(didact_env):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "didact_assets.cli", "demo", "--job", "data_spine", "--days", "2"],
                       cwd=REPO, env=didact_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "\x1b" not in r.stdout
    lines = r.stdout.splitlines()
    for asset in ("raw_node_metrics", "job_labels", "ai_ready_metrics"):
        assert sum(re.fullmatch(rf"data_spine \d{{4}}-\d\d-\d\d: \d/\d {asset} done", ln) is not None
                   for ln in lines) == 2, r.stdout  # fmt: skip
    assert [ln for ln in lines if ln.startswith("data_spine: days: ")][-1].startswith("data_spine: days: 2/2 ")


def test_serve_start_replays_the_simulator_from_that_instant(capsys, monkeypatch, tmp_path):
    """``didact serve --start``: the simulated feed's clock starts there (naive: UTC); with
    any other feed it is an error naming the option, as --speed is."""
    import datetime as dt

    from didact_core.serve import cli as serve_cli

    monkeypatch.setenv("DIDACT_HOME", str(tmp_path))
    feeds = []
    monkeypatch.setattr(serve_cli, "serve", lambda *a, **kw: feeds.append(a[5]))  # (settings, host, port, …, feed)
    run(capsys, "serve", "--start", "2026-02-11T12:00", "--speed", "60")
    want = dt.datetime(2026, 2, 11, 12, tzinfo=dt.timezone.utc).timestamp()
    assert want <= feeds[0].now() < want + 60 * 30  # 60 simulated s per wall-clock s, well under 30 s in
    rc, out, err = run(capsys, "serve", "--feed", "localhost", "--start", "2026-02-11")
    said = " ".join((out + err).split())  # the console wraps lines
    assert rc == 2 and "--start" in said and "simulator feed only" in said and "Traceback" not in said, said
