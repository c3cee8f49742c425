"""The one settings object: the only reader of DIDACT_* variables, one parser per form,
every bad value reported at once, secrets masked, and a code location that loads whatever
the environment holds."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

from didact_core.config import SECRET_FIELDS, Settings, SettingsError
from didact_core.errors import DidactError
from didact_core.power.redfish import RedfishReader

from .conftest import REPO

# read outside config.py on purpose: a marker the testbed recorder puts into its children's
# environment, the task index an executor gives each task of an array (engine/base.py), and a
# Python constant that names a metric (not a variable)
ALLOWED = {"DIDACT_TESTBED_TAG", "DIDACT_POWER_METRIC", "DIDACT_TASK_INDEX"}
VAR_NAME = re.compile(r"^DIDACT_[A-Z0-9_]*$")


def _var_name(node: ast.AST) -> str | None:
    """The DIDACT_* variable a string names when it is nothing but a name (``"DIDACT_X"``,
    ``f"DIDACT_PROMETHEUS_{key.upper()}"``); messages such as "set DIDACT_X" are not names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and VAR_NAME.match(node.value):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        parts = [str(v.value) for v in node.values if isinstance(v, ast.Constant)]
        first = node.values[0]
        if isinstance(first, ast.Constant) and parts[0].startswith("DIDACT_"):
            if all(re.fullmatch(r"[A-Z0-9_]*", p) for p in parts):
                return f"{first.value}{{…}}"
    return None


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"
    )


def env_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) of every DIDACT_* variable name in the code — a lookup, whatever reads it
    (``env.get``, ``os.getenv``, ``env[...]``, ``in env``, a helper like ``_env_bool(env, name)``)
    — and of every ``os.environ``/``os.getenv`` read by a computed name (it could be a DIDACT_*
    one).  Not flagged: messages that mention a variable, keys of dict displays (an
    environment written for a child process), the two allowed names, WSGI ``environ`` dicts
    and reads of other variables by constant name (DAGSTER_HOME, MLFLOW_*)."""
    tree = ast.parse(source)
    skip = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys if k is not None}
    skip |= {id(n.key) for n in ast.walk(tree) if isinstance(n, ast.DictComp)}
    skip |= {
        id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
    }  # parts of f-strings
    out = []
    for node in ast.walk(tree):
        name = _var_name(node)
        if name and id(node) not in skip and name not in ALLOWED:
            out.append((node.lineno, name))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            target, key = node.func.value, node.args[0]
            reads_env = (node.func.attr in ("get", "pop", "setdefault") and _is_os_environ(target)) or (
                node.func.attr == "getenv" and getattr(target, "id", "") == "os"
            )
            if reads_env and not isinstance(key, ast.Constant):
                out.append((node.lineno, f"os.environ.{node.func.attr}(<computed name>)"))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if _is_os_environ(node.value) and not isinstance(node.slice, ast.Constant):
                out.append((node.lineno, "os.environ[<computed name>]"))
    return sorted(out)


def test_only_settings_reads_didact_variables():
    offenders = []
    for package in ("didact_core", "didact_assets"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "didact_core" / "config.py":
                continue
            for line, what in env_reads(path.read_text()):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not offenders, "DIDACT_* variables read outside didact_core/config.py:\n" + "\n".join(offenders)


def test_the_env_read_check_catches_each_form():
    """The check above is only as good as what it recognises."""
    code = (
        'import os\nos.environ.get("DIDACT_X")\nos.getenv("DIDACT_Y", "1")\nenv["DIDACT_Z"]\n'
        '"DIDACT_W" in env\n_env_num(env, f"DIDACT_PROMETHEUS_{k.upper()}", int)\nos.environ[name]\n'
        "os.getenv(var)\n"
        # not reads of DIDACT_* variables:
        'environ.get("PATH_INFO")\nos.environ["DAGSTER_HOME"]\nos.environ.setdefault("MLFLOW_X", "1")\n'
        'TAG_VAR = "DIDACT_TESTBED_TAG"\nraise DidactError(f"DIDACT_HOME {path}", "is not writable")\n'
        'os.environ.update({f"DIDACT_{k.upper()}": str(v) for k, v in o.items()})\n'
        'child = {**os.environ, "DIDACT_HOME": h}\n'
        'raise DidactError(f"DIDACT_PROMETHEUS_NODES={nodes}", "cannot be read")\n'
    )
    assert [line for line, _ in env_reads(code)] == [2, 3, 4, 5, 6, 7, 8]


def test_every_bad_value_is_reported_at_once():
    env = {
        "DIDACT_DRIFT_THRESHOLD": "abc",
        "DIDACT_DRIFT_WINDOW_MINUTES": "1.5",
        "DIDACT_NODES": "0",
        "DIDACT_SCHEDULE_ENABLED": "maybe",
        "DIDACT_NIGHTLY_AT": "25:00",
        "DIDACT_SOURCE": "carrier-pigeon",
        "DIDACT_PROMETHEUS_API": "grpc",
        "DIDACT_CPUS": "4",  # good values are not reported
    }
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    msg = str(err.value)
    assert sorted(i.var for i in err.value.issues) == sorted(k for k in env if k != "DIDACT_CPUS")
    assert "7 values are invalid" in msg and "DIDACT_CPUS" not in msg
    # each line: the setting and its value, the problem, the variable and the expected form
    assert "drift_threshold=abc: is not a number — set DIDACT_DRIFT_THRESHOLD to a number" in msg
    assert "drift_window_minutes=1.5: is not a whole number — set DIDACT_DRIFT_WINDOW_MINUTES" in msg
    assert "nodes=0: must be at least 1 — set DIDACT_NODES to 1 or more" in msg
    assert "schedule_enabled=maybe: is not a boolean — set DIDACT_SCHEDULE_ENABLED to 1/0, true/false" in msg
    assert "nightly_at=25:00: is not a time of day — set DIDACT_NIGHTLY_AT to HH:MM (UTC)" in msg
    assert "source 'carrier-pigeon': is not a known telemetry source" in msg
    assert "DIDACT_PROMETHEUS_API" in msg
    assert isinstance(err.value, DidactError)
    # overrides and replace() are checked the same way
    with pytest.raises(SettingsError, match="holdout_fraction=1.5: must be strictly between 0 and 1"):
        Settings().replace(holdout_fraction=1.5)
    with pytest.raises(SettingsError, match="nodez=3: is not a setting"):
        Settings.from_env({}, nodez=3)


def test_a_lenient_read_falls_back_to_the_defaults():
    env = {"DIDACT_DRIFT_THRESHOLD": "abc", "DIDACT_NODES": "3", "DIDACT_NIGHTLY_AT": "noon"}
    s = Settings.from_env_lenient(env)
    assert (s.drift_threshold, s.nodes, s.nightly_hour_minute) == (0.05, 3, (2, 30))
    assert [i.var for i in Settings.env_issues(env)] == ["DIDACT_DRIFT_THRESHOLD", "DIDACT_NIGHTLY_AT"]


@pytest.mark.parametrize(
    "field", ["schedule_enabled", "sensors_enabled", "model_warm_start", "prometheus_strip_port"]
)
def test_booleans_take_the_same_words_everywhere(field):
    var = f"DIDACT_{field.upper()}"
    for words, value in ((("1", "true", "yes", "on"), True), (("0", "false", "no", "off"), False)):
        for word in words:
            for spelled in (word, word.upper(), word.capitalize()):
                assert getattr(Settings.from_env({var: spelled}), field) is value, spelled
    for bad in ("maybe", "2", "y", "disabled"):
        with pytest.raises(SettingsError, match=f"{field}={bad}: is not a boolean — set {var} to 1/0"):
            Settings.from_env({var: bad})


def test_off_and_no_stop_the_schedule_and_the_sensors():
    s = Settings.from_env({"DIDACT_SCHEDULE_ENABLED": "off", "DIDACT_SENSORS_ENABLED": "NO"})
    assert s.schedule_enabled is False and s.sensors_enabled is False
    code = (
        "from didact_assets.schedules import nightly_schedule as s;"
        "from didact_assets.sensors import drift_sensor as d;"
        "print(s.default_status.value, d.default_status.value)"
    )
    env = {
        **os.environ,
        "DIDACT_SCHEDULE_ENABLED": "off",
        "DIDACT_SENSORS_ENABLED": "NO",
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["STOPPED", "STOPPED"]


def test_the_launchpad_offers_every_setting_but_the_secrets(tmp_path, monkeypatch):
    from didact_assets.resources import DidactResource

    public = [f for f in Settings.model_fields if f not in SECRET_FIELDS]
    assert list(DidactResource.model_fields) == public
    for f in ("labels_csv", "prometheus_url", "prometheus_node_label", "drift_threshold", "nightly_at"):
        assert f in DidactResource.model_fields
    # a value set on the resource reaches the run's settings, whatever its type
    changed = {
        "home": str(tmp_path),
        "labels_csv": str(tmp_path / "labels.csv"),
        "prometheus_url": "http://prom:9090",
        "prometheus_node_label": "nodename",
        "prometheus_nodes": ["n1", "n2"],
        "prometheus_tls_verify": "no",
        "prometheus_timeout_s": 12.5,
        "model_hidden": [64, 32],
        "schedule_enabled": False,
        "drift_threshold": 0.2,
        "redfish_bmcs": ["n1=https://bmc1"],
        "topology": "pattern:node(?P<rack>\\d\\d)",
        "sim_straggler_rate": 0.5,
        "act_policy": str(tmp_path / "act.toml"),
        "eval_recordings": f"{tmp_path / 'rec-a'}{os.pathsep}{tmp_path / 'rec-b'}",
    }
    s = DidactResource(**changed).settings()
    assert (
        s.prometheus_nodes == ("n1", "n2") and s.model_hidden == (64, 32) and s.prometheus_tls_verify is False
    )
    keys = ("labels_csv", "prometheus_url", "prometheus_node_label", "prometheus_timeout_s", "schedule_enabled",
            "drift_threshold", "topology", "sim_straggler_rate", "act_policy", "eval_recordings")  # fmt: skip
    assert {k: getattr(s, k) for k in keys} == {k: changed[k] for k in keys}
    # the secrets come from the environment, read in the run
    monkeypatch.setenv("DIDACT_PROMETHEUS_PASSWORD", "s3cret")
    assert DidactResource(home=str(tmp_path)).settings().prometheus_password.get_secret_value() == "s3cret"
    # a Settings object converts into a resource field by field (tuples, booleans as text)
    back = DidactResource(**{k: getattr(s, k) for k in DidactResource.model_fields}).settings()
    assert back.model_dump(exclude=set(SECRET_FIELDS)) == s.model_dump(exclude=set(SECRET_FIELDS))


def test_a_bad_variable_fails_the_run_not_the_code_location(tmp_path, monkeypatch):
    from didact_assets.resources import DidactResource
    from didact_assets.sensors import drift_sensor

    env = {
        **os.environ,
        "DIDACT_DRIFT_THRESHOLD": "abc",
        "DIDACT_NIGHTLY_AT": "noon",
        "PYTHONPATH": str(REPO),
    }
    code = (
        "from didact_assets.definitions import defs; import dagster as dg;"
        "defs.get_repository_def().load_all_definitions();"
        "print(defs.get_schedule_def('nightly_schedule').cron_schedule)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "30 2 * * *"  # the default time until DIDACT_NIGHTLY_AT is fixed

    # evaluated, the drift sensor and the schedule report the variable
    monkeypatch.setenv("DIDACT_DRIFT_THRESHOLD", "abc")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ctx = dg.build_sensor_context(
            instance=instance, resources={"didact": DidactResource(home=str(tmp_path))}
        )
        with pytest.raises(Exception) as err:
            drift_sensor.evaluate_tick(ctx)
        assert "drift_threshold=abc: is not a number — set DIDACT_DRIFT_THRESHOLD" in _chain(err.value)

        from didact_assets.schedules import nightly_schedule

        monkeypatch.setenv("DIDACT_DRIFT_THRESHOLD", "0.1")
        monkeypatch.setenv("DIDACT_NIGHTLY_AT", "noon")
        with pytest.raises(Exception) as err:
            nightly_schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert "nightly_at=noon: is not a time of day" in _chain(err.value)


def _chain(e: BaseException | None) -> str:
    """The messages of an exception and its causes (Dagster wraps user-code errors)."""
    out = []
    while e is not None:
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def test_secrets_never_show(tmp_path):
    env = {
        "DIDACT_PROMETHEUS_PASSWORD": "hunter2",
        "DIDACT_PROMETHEUS_BEARER_TOKEN": "tok-123",
        "DIDACT_REDFISH_PASSWORD": "bmc-pw",
        "DIDACT_PROMETHEUS_USERNAME": "ana",
    }
    s = Settings.from_env(env)
    for shown in (repr(s), str(s), str(s.model_dump())):
        assert not {"hunter2", "tok-123", "bmc-pw"} & set(shown.replace("'", " ").split()), shown
        assert "hunter2" not in shown and "tok-123" not in shown and "bmc-pw" not in shown
    assert s.prometheus_password.get_secret_value() == "hunter2"
    assert s.prometheus_bearer_token.get_secret_value() == "tok-123"
    assert s.redfish_password.get_secret_value() == "bmc-pw"
    # a secret of the wrong type, next to another bad value: named, never shown
    with pytest.raises(SettingsError) as err:
        Settings(prometheus_password=12345678, nodes="many")
    assert "prometheus_password=**********" in str(err.value) and "12345678" not in str(err.value)
    # secrets are not launchpad fields (they would be shown and stored in run config)
    from didact_assets.resources import DidactResource

    assert not set(SECRET_FIELDS) & set(DidactResource.model_fields)


def test_node_list_and_token_from_files(tmp_path):
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("# rack 1\nn01\n  n02  \n\n# rack 2\nn03\n")
    token = tmp_path / "token"
    token.write_text("abc.def\n")
    s = Settings.from_env({
        "DIDACT_PROMETHEUS_NODES": f"@{nodes}",
        "DIDACT_PROMETHEUS_BEARER_TOKEN_FILE": str(token),
    })  # fmt: skip
    assert s.prometheus_nodes == ("n01", "n02", "n03")
    assert s.prometheus_bearer_token.get_secret_value() == "abc.def"
    assert Settings.from_env({"DIDACT_PROMETHEUS_NODES": "a, b,,c"}).prometheus_nodes == ("a", "b", "c")
    # the token itself wins over its file
    s = Settings.from_env(
        {"DIDACT_PROMETHEUS_BEARER_TOKEN": "direct", "DIDACT_PROMETHEUS_BEARER_TOKEN_FILE": "/nope"}
    )
    assert s.prometheus_bearer_token.get_secret_value() == "direct"
    with pytest.raises(SettingsError) as err:
        Settings.from_env({
            "DIDACT_PROMETHEUS_NODES": f"@{tmp_path / 'missing.txt'}",
            "DIDACT_PROMETHEUS_BEARER_TOKEN_FILE": str(tmp_path / "no-token"),
        })  # fmt: skip
    msg = str(err.value)
    assert "2 values are invalid" in msg
    assert f"prometheus_nodes=@{tmp_path / 'missing.txt'}: file" in msg and "cannot be read" in msg
    assert f"DIDACT_PROMETHEUS_BEARER_TOKEN_FILE={tmp_path / 'no-token'}: cannot be read" in msg


def test_tls_verify_is_a_boolean_or_a_ca_bundle(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"DIDACT_PROMETHEUS_TLS_VERIFY": str(ca)}).prometheus_tls_verify == str(ca)
    assert Settings.from_env({"DIDACT_REDFISH_TLS_VERIFY": "Off"}).redfish_tls_verify is False
    assert Settings().prometheus_tls_verify is True
    with pytest.raises(SettingsError, match="is neither a boolean nor an existing CA bundle file"):
        Settings.from_env({"DIDACT_REDFISH_TLS_VERIFY": str(tmp_path / "missing.pem")})


def test_redfish_readers_come_from_the_settings(tmp_path):
    bmcs = tmp_path / "bmcs"
    bmcs.write_text("# one a line\nn1=https://bmc1\nn2=http://10.0.0.2:8000\n")
    env = {
        "DIDACT_REDFISH_BMCS": f"@{bmcs}",
        "DIDACT_REDFISH_TLS_VERIFY": "yes",
        "DIDACT_REDFISH_PASSWORD": "pw",
        "DIDACT_REDFISH_USERNAME": "u",
    }
    readers = RedfishReader.from_env(env)
    assert [(r.node, r.url, r.session.verify, r.session.auth, r.timeout_s) for r in readers] == [
        ("n1", "https://bmc1", True, ("u", "pw"), 5.0),
        ("n2", "http://10.0.0.2:8000", True, ("u", "pw"), 5.0),
    ]
    assert len(RedfishReader.from_env(settings=Settings(redfish_bmcs="n9=http://127.0.0.1:1"))) == 1
    with pytest.raises(SettingsError, match="entry 2 'n2:bmc2' is not node=http"):
        RedfishReader.from_env({"DIDACT_REDFISH_BMCS": "n1=https://bmc1,n2:bmc2"})
    with pytest.raises(SettingsError, match="redfish_timeout_s=0.0: must be a positive number of seconds"):
        RedfishReader.from_env({"DIDACT_REDFISH_BMCS": "n1=https://bmc1", "DIDACT_REDFISH_TIMEOUT_S": "0"})


def test_settings_stay_a_value():
    """Frozen, comparable, hashable and picklable (worker processes get a copy)."""
    import pickle

    s = Settings(home="/tmp/h", nodes=4, prometheus_password="x")
    assert s == pickle.loads(pickle.dumps(s)) and hash(s) == hash(
        Settings(home="/tmp/h", nodes=4, prometheus_password="x")
    )
    with pytest.raises(ValidationError, match="frozen"):
        s.nodes = 5
    assert s.replace(nodes=5).nodes == 5 and s.nodes == 4
    assert Settings(home=Path("/tmp/h")).home == "/tmp/h"
    assert Settings(features=["cpu", "node"]).features == ("cpu", "node")
