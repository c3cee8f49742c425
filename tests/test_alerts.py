"""Prometheus alert rules for didact (deploy/prometheus/alerts.yml, loaded by prometheus.yml).

Fast: promtool checks the rules and the config that loads them; every rule has a summary,
a description and a severity; every metric an expression names is one `didact serve`
exports; and promtool's rule unit tests (input series, each alert at chosen times) show
every alert firing when it should — only after its ``for:`` duration — and quiet when it
should not.  ``didact_model_day_timestamp_seconds`` (the nightly-missing alert's metric)
follows the served champion's ``day`` tag.

Slow: a real Prometheus scraping a real `didact serve` on an empty home fires
DidactNoModelLoaded and nothing about the feed.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from didact_core.learn.detector import Detector
from didact_core.learn.models import ModelConfig
from didact_core.learn.registry import ModelRegistry
from didact_core.serve.metrics import ServingMetrics
from didact_core.serve.model import day_timestamp
from didact_core.serve.watcher import ModelWatcher

from .conftest import REPO
from .days import LIVE_START_ARG
from .services import (
    MissingBinary,
    find_binary,
    prometheus_argv,
    prometheus_yaml,
    require_binary,
    start_service,
)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
#: one didact serve, as Prometheus labels it (job "didact" in deploy/prometheus/prometheus.yml)
SERVE = {"instance": "serve:9108", "job": "didact"}


def rules() -> dict[str, dict]:
    """alert name -> rule of deploy/prometheus/alerts.yml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def promtool() -> str:
    try:
        return find_binary("promtool")
    except MissingBinary as e:  # `make test` installs it first
        pytest.skip(str(e))


def run_promtool(*args: str) -> str:
    r = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def exported_names() -> set[str]:
    """Every sample name of a fresh serving exporter (the per-node families aside: no rule uses them)."""
    text = ServingMetrics().text().decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(metrics_text: str, name: str) -> float:
    fams = text_string_to_metric_families(metrics_text)
    hits = [s.value for fam in fams for s in fam.samples if s.name == name]
    assert len(hits) == 1, f"{name}: {hits}"
    return hits[0]


# -- the file: syntax, annotations, metric names ---------------------------------------------------


def test_rules_and_the_config_loading_them_pass_promtool():
    assert "SUCCESS: 7 rules found" in run_promtool("check", "rules", str(ALERTS))
    out = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "1 rule files found" in out and "alerts.yml" in out


def test_every_rule_is_annotated_and_uses_exported_metrics():
    exported = exported_names()
    assert "didact_model_day_timestamp_seconds" in exported
    got = rules()
    assert {"DidactFeedDown", "DidactRegistryUnreachable", "DidactNoModelLoaded", "DidactScoringStale",
            "DidactOODRateHigh", "DidactNightlyMissing"} <= set(got)  # fmt: skip
    for name, rule in got.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        used = set(re.findall(r"\b(didact_[a-z0-9_]+)", rule["expr"]))
        assert used or 'job="didact"' in rule["expr"], f"{name} reads nothing of didact serve's"
        assert used <= exported, f"{name}: {sorted(used - exported)} not exported by didact serve"


# -- promtool rule unit tests: each alert fires after its `for:`, and only when it should ----------


def series(name: str, values: str, **labels) -> dict:
    lab = ",".join(f'{k}="{v}"' for k, v in {**SERVE, **labels}.items())
    return {"series": f"{name}{{{lab}}}", "values": values}


def firing(alert: str, value: str = "", by_instance_only: bool = False, **labels) -> dict:
    """An expected firing alert: its labels (the series', the rule's) and its annotations
    rendered with ``value`` (what ``{{ $value | … }}`` prints)."""
    rule = rules()[alert]
    lab = {**SERVE, **labels}
    if by_instance_only:  # the rule aggregates `by (instance)`
        lab = {"instance": lab["instance"]}
    out = {}
    for key, text in rule["annotations"].items():
        text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: lab.get(m.group(1), ""), text)
        text = re.sub(r"\{\{\s*\$value[^}]*\}\}", value, text)
        assert "{{" not in text, f"{alert}: template the test cannot render: {text}"
        out[key] = text
    return {"exp_labels": {**lab, **rule["labels"]}, "exp_annotations": out}


def at(alert: str, eval_time: str, *expected: dict) -> dict:
    return {"alertname": alert, "eval_time": eval_time, "exp_alerts": list(expected)}


def rule_tests() -> list[dict]:
    """(interval, input series, alerts at times) for every rule; instance ``a`` is the one in
    trouble, the others are the look-alikes that must stay quiet."""
    day1 = 86400  # 1970-01-02: promtool's clock starts at the epoch
    return [
        {  # feed down for 2 m; a one-poll blip is not an outage
            "interval": "1m",
            "input_series": [series("didact_feed_up", "1x4 0x20", instance="a"),
                             series("didact_feed_up", "1x3 0 1x20", instance="b")],
            "alert_rule_test": [at("DidactFeedDown", "6m"),
                                at("DidactFeedDown", "10m", firing("DidactFeedDown", instance="a"))],
        },
        {  # no champion for 10 m; a model loaded late, or loaded all along, is fine
            "interval": "1m",
            "input_series": [series("didact_champion_version", "0x30", instance="a"),
                             series("didact_champion_version", "2x30", instance="b"),
                             series("didact_champion_version", "0x5 3x25", instance="c")],
            "alert_rule_test": [at("DidactNoModelLoaded", "9m"),
                                at("DidactNoModelLoaded", "12m",
                                   firing("DidactNoModelLoaded", instance="a"))],
        },
        {  # a's last successful poll stays at 300 s: stale from 11 m, firing at 12 m
            "interval": "1m",
            "input_series": [series("didact_last_poll_timestamp_seconds", "0+60x5 300x30", instance="a"),
                             series("didact_last_poll_timestamp_seconds", "0+60x35", instance="b")],
            "alert_rule_test": [at("DidactScoringStale", "11m"),
                                at("DidactScoringStale", "14m",
                                   firing("DidactScoringStale", "9m 0s", instance="a"))],
        },
        {  # 10 % of samples OOD on a, 1 % on b, nothing scored on c
            "interval": "1m",
            "input_series": [series("didact_ood_samples_total", "0+10x60", instance="a"),
                             series("didact_samples_scored_total", "0+100x60", instance="a"),
                             series("didact_ood_samples_total", "0+1x60", instance="b"),
                             series("didact_samples_scored_total", "0+100x60", instance="b"),
                             series("didact_ood_samples_total", "0x60", instance="c"),
                             series("didact_samples_scored_total", "0x60", instance="c")],
            "alert_rule_test": [at("DidactOODRateHigh", "10m"),
                                at("DidactOODRateHigh", "25m",
                                   firing("DidactOODRateHigh", "10%", by_instance_only=True, instance="a"))],
        },
        {  # a serves day 1 for ever; b has no model (day 0); c gets day 3's model at 72 h
            "interval": "1m",  # not longer: an instant query looks back only 5 m for a sample
            "input_series": [series("didact_model_day_timestamp_seconds", f"{day1}x6000", instance="a"),
                             series("didact_model_day_timestamp_seconds", "0x6000", instance="b"),
                             series("didact_model_day_timestamp_seconds", f"{day1}x4319 {3 * day1}x1700",
                                    instance="c")],
            "alert_rule_test": [at("DidactNightlyMissing", "80h"),
                                at("DidactNightlyMissing", "96h",
                                   firing("DidactNightlyMissing", "3d 0h 0m 0s", instance="a"))],
        },
        {  # a's registry stops answering at 5 m; b never had one (nothing trained); c's loads fail
            "interval": "1m",
            "input_series": [series("didact_registry_up", "1x4 0x30", instance="a"),
                             series("didact_registry_errors_total", "0x4 1+1x30", instance="a"),
                             series("didact_registry_up", "0x35", instance="b"),
                             series("didact_registry_errors_total", "0x35", instance="b"),
                             series("didact_registry_up", "1x35", instance="c"),
                             series("didact_registry_errors_total", "0+1x35", instance="c")],
            "alert_rule_test": [at("DidactRegistryUnreachable", "8m"),
                                at("DidactRegistryUnreachable", "15m",
                                   firing("DidactRegistryUnreachable", instance="a"))],
        },
        {  # Prometheus cannot scrape a for 2 m
            "interval": "1m",
            "input_series": [series("up", "1 0x10", instance="a"), series("up", "1x10", instance="b")],
            "alert_rule_test": [at("DidactServingDown", "2m"),
                                at("DidactServingDown", "5m", firing("DidactServingDown", instance="a"))],
        },
    ]  # fmt: skip


def test_promtool_unit_tests_of_every_rule(tmp_path):
    tests = rule_tests()
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"]}
    assert tested == set(rules()), f"rules without a unit test: {set(rules()) - tested}"
    for case in tests:  # each rule both quiet (before its `for:`, or look-alike series) and firing
        assert any(not t["exp_alerts"] for t in case["alert_rule_test"])
        assert any(t["exp_alerts"] for t in case["alert_rule_test"])
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests})
    )
    assert "SUCCESS" in run_promtool("test", "rules", str(spec))


# -- the metric behind DidactNightlyMissing ------------------------------------------------------


def test_day_timestamp_is_the_utc_midnight_of_the_day_tag():
    assert day_timestamp("2026-11-20") == calendar.timegm((2026, 11, 20, 0, 0, 0)) == 1795132800
    assert day_timestamp("") == day_timestamp(None) == day_timestamp("yesterday") == 0.0


def test_served_model_day_follows_the_champion(settings):
    """0 before any model; the champion's ``day`` tag once loaded; 0 again after a switch
    to a version without one (registered by hand)."""
    metrics = ServingMetrics()
    watcher = ModelWatcher(settings, metrics, reload_s=0.01)
    assert sample(metrics.text().decode(), "didact_model_day_timestamp_seconds") == 0

    reg = ModelRegistry(settings)
    X = np.random.default_rng(0).dirichlet(np.ones(5), 2000).astype(np.float32)
    det = Detector(ModelConfig(max_epochs=1, batch_size=512, seed=0)).fit(X)
    with reg.run("day"):
        v1 = reg.log_and_register(det, X[:64], tags={"day": "2026-11-20"}).version
    with reg.run("no day"):
        v2 = reg.log_and_register(det, X[:64]).version
    reg.promote(v1)
    assert watcher.check() and watcher.current.version == v1
    text = metrics.text().decode()
    midnight = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
    assert sample(text, "didact_model_day_timestamp_seconds") == midnight
    assert sample(text, "didact_champion_version") == v1

    reg.promote(v2)
    time.sleep(0.02)
    assert watcher.check() and watcher.current.version == v2
    assert sample(metrics.text().decode(), "didact_model_day_timestamp_seconds") == 0


# -- a real Prometheus scraping a real didact serve -------------------------------------------------


def zero_durations(rules_text: str) -> tuple[str, int]:
    return re.subn(r"^(\s*for:\s*)\S+", r"\g<1>0s", rules_text, flags=re.MULTILINE)


@pytest.mark.slow
def test_no_model_alert_fires_on_a_real_prometheus(tmp_path):
    """`didact serve` (python -m didact_core.serve.cli, simulated feed) on an EMPTY home —
    nothing trained, so ``didact_champion_version`` is 0 — scraped every second by a real
    Prometheus that evaluates the rules every second.  The rules are a copy of alerts.yml
    whose ``for:`` durations are rewritten to 0s: the expressions are what is tested on the
    real stack, the durations by promtool's unit tests above.  DidactNoModelLoaded fires
    within a minute; DidactFeedDown (the feed answers) and the rules that must stay quiet on
    a healthy empty home never even go pending.  DidactServingDown is not asserted: with 1 s
    scrapes on a busy machine one scrape may time out."""
    binary = require_binary("prometheus")
    rules_copy = tmp_path / "alerts.yml"
    text, n = zero_durations(ALERTS.read_text())
    assert n == len(rules())
    rules_copy.write_text(text)

    env = {"PYTHONPATH": str(REPO), "DIDACT_HOME": str(tmp_path / "empty-home"), "DIDACT_NODES": "3",
           "DIDACT_CPUS": "2", "DIDACT_INTERVAL_S": "60", "DIDACT_SEED": "7"}  # fmt: skip
    argv = lambda port: [sys.executable, "-m", "didact_core.serve.cli", "--port", str(port),  # noqa: E731
                         "--interval", "1", "--reload", "1", "--speed", "60", "--no-review", "--start", LIVE_START_ARG]  # fmt: skip
    with start_service("didact-serve", argv, "/metrics", tmp_path / "serve", timeout_s=120, env=env) as serve:
        # the feed answered once (didact_feed_up starts at 0 until the first poll)
        deadline = time.monotonic() + 60
        while sample(requests.get(serve.url + "/metrics", timeout=5).text, "didact_feed_up") != 1:
            assert time.monotonic() < deadline, f"didact serve never polled its feed:\n{serve.log_tail(30)}"
            time.sleep(0.25)
        assert sample(requests.get(serve.url + "/metrics", timeout=5).text, "didact_champion_version") == 0

        wd = tmp_path / "prometheus"
        wd.mkdir()
        cfg = wd / "prometheus.yml"
        # prometheus_yaml has no rule files: the top-level key goes after its scrape config
        yml = prometheus_yaml(1.0, [serve.address], job="didact")
        cfg.write_text(yml + f"rule_files: ['{rules_copy}']\n")
        prom_argv = lambda port: prometheus_argv(binary, cfg, wd / "data", port)  # noqa: E731
        with start_service("prometheus", prom_argv, "/-/ready", wd, timeout_s=60) as prom:
            seen: dict[str, set[str]] = {}  # alert -> states seen
            fired_at = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (fired_at is None or time.monotonic() < fired_at + 5):
                body = requests.get(prom.url + "/api/v1/alerts", timeout=5).json()
                assert body["status"] == "success", body
                for a in body["data"]["alerts"]:
                    seen.setdefault(a["labels"]["alertname"], set()).add(a["state"])
                if fired_at is None and "firing" in seen.get("DidactNoModelLoaded", ()):
                    fired_at = time.monotonic()
                time.sleep(0.5)
            assert fired_at is not None, f"DidactNoModelLoaded not firing in 60 s: {seen}\n{prom.log_tail()}"

            groups = requests.get(prom.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
            health = {r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]}
            assert set(health) == set(rules())
            assert all(h == "ok" for h, _ in health.values()), health
        quiet = {"DidactFeedDown", "DidactRegistryUnreachable", "DidactScoringStale", "DidactOODRateHigh",
                 "DidactNightlyMissing"}  # fmt: skip
        assert not quiet & set(seen), f"alerts that must stay quiet on an empty home: {seen}"
        assert "Traceback" not in serve.log_path.read_text(errors="replace"), serve.log_tail(40)
