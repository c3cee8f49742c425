"""The act policy file (TOML): rules that map what didact sees to node actions, and limits.

::

    [limits]
    drains_per_hour = 2          # didact drains in any rolling hour, all rules together
    max_drained_fraction = 0.25  # never leave more than this share of a Slurm partition drained/down
    partitions = { gpu = 0.1 }   # optional: a partition's own fraction (limits.py)

    [notify]
    url = "http://127.0.0.1:9095/hook"   # Alertmanager-style webhook (else DIDACT_ACT_WEBHOOK_URL)
    timeout_s = 5

    [[rule]]
    name = "ood-drain"
    when = "ood_consecutive >= 3"  # <metric> <op> <number> (conditions.py lists the metrics)
    action = "drain"               # drain | resume | notify | power-cap | shed
    auto = false                   # true: applied without an approval

    [[rule]]
    name = "peak-shed"
    when = "cluster_watts > 40000"
    hours = "17:00-21:00"          # UTC; only then does the rule hold
    action = "shed"                # idle nodes, within Slurm's SuspendRate and exclusions
    max_nodes = 4                  # shed: at most this many per plan (optional)

    [[rule]]
    name = "hot-node"
    when = "node_watts > 450"
    action = "power-cap"
    watts = 300                    # power-cap: the RAPL limit of each package, in watts

    [[rule]]
    name = "peer-drain"
    when = "job_peer_score >= 8"   # the cluster model's peer score of the node in one job (peers.py)
    for_intervals = 3              # ... in each of the newest 3 scoring intervals
    action = "drain"               # drain | notify

Every error names the file, the line (where the TOML has one) and the key, and the fix.
"""

from __future__ import annotations

import operator
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from didact_core.act.conditions import CLUSTER_METRICS, NODE_METRICS, PEER_METRIC, parse_hours
from didact_core.errors import DidactError

ACTIONS = ("drain", "resume", "notify", "power-cap", "shed")
METRICS = NODE_METRICS + (PEER_METRIC,) + CLUSTER_METRICS
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_WHEN = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*(\d+(?:\.\d+)?)\s*$")
_RULE_KEYS = {"name", "when", "action", "auto", "hours", "watts", "max_nodes", "for_intervals"}
_LIMIT_KEYS = {"drains_per_hour", "max_drained_fraction", "partitions"}
_NOTIFY_KEYS = {"url", "timeout_s"}


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    op: str
    value: float
    action: str
    auto: bool = False
    hours: str | None = None  # UTC window "HH:MM-HH:MM" the rule holds in
    watts: float | None = None  # power-cap: the package limit
    max_nodes: int | None = None  # shed: at most this many nodes per plan
    for_intervals: int = 1  # job_peer_score: in each of this many newest intervals

    @property
    def when(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    @property
    def cluster(self) -> bool:
        """The condition is on the whole cluster (``cluster_watts``), not one node."""
        return self.metric in CLUSTER_METRICS

    def holds(self, metrics: dict[str, float]) -> bool:
        return OPS[self.op](metrics.get(self.metric, 0), self.value)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    drains_per_hour: int = 2
    max_drained_fraction: float = 0.25
    source: str = "<policy>"
    notify_url: str = ""
    notify_timeout_s: float = 5.0
    #: (partition, fraction) pairs: partitions with a max_drained_fraction of their own
    partition_fractions: tuple[tuple[str, float], ...] = ()


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DidactError(f"policy file {path}", f"cannot be read ({e.strerror})",
                          "pass --policy with an existing TOML file (docs/act.md has an example)") from None  # fmt: skip
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy; a :class:`DidactError` naming line, key and fix otherwise."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        at = f" line {m.group(1)}" if m else ""
        raise DidactError(f"policy file {source}{at}", f"is not valid TOML: {e}",
                          "fix the syntax at that line (strings in double quotes, one key = value a line)") from None  # fmt: skip
    unknown = set(doc) - {"rule", "limits", "notify"}
    if unknown:
        key = sorted(unknown)[0]
        raise _err(source, text, key, None, f"unknown section or key {key!r}", "use [limits], [notify] and [[rule]] only")
    url, timeout = _notify(source, text, doc.get("notify", {}))
    limits = doc.get("limits", {})
    if not isinstance(limits, dict):
        raise _err(source, text, "limits", None, "must be a table", "write it as a [limits] section")
    for key in sorted(set(limits) - _LIMIT_KEYS):
        raise _err(source, text, key, "limits", f"unknown key limits.{key}", f"use {', '.join(sorted(_LIMIT_KEYS))}")
    per_hour = limits.get("drains_per_hour", 2)
    if isinstance(per_hour, bool) or not isinstance(per_hour, int) or per_hour < 0:
        raise _err(source, text, "drains_per_hour", "limits", f"limits.drains_per_hour = {per_hour!r} is not a "
                   "whole number ≥ 0", "e.g. drains_per_hour = 2")  # fmt: skip
    frac = limits.get("max_drained_fraction", 0.25)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise _err(source, text, "max_drained_fraction", "limits", f"limits.max_drained_fraction = {frac!r} is "
                   "not a fraction between 0 and 1", "e.g. max_drained_fraction = 0.25")  # fmt: skip
    own = _partition_fractions(source, text, limits.get("partitions", {}))
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not raw:
        raise _err(source, text, "rule", None, "has no [[rule]]", "add at least one [[rule]] with when and action")
    rules = tuple(_rule(source, text, i, r) for i, r in enumerate(raw))
    names = [r.name for r in rules]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise _err(source, text, "name", i, f"rule name {n!r} is used twice", "give every rule its own name")
    return Policy(rules, int(per_hour), float(frac), source, url, timeout, own)


def _partition_fractions(source: str, text: str, sec) -> tuple[tuple[str, float], ...]:
    if not isinstance(sec, dict):
        raise _err(source, text, "partitions", "limits", "limits.partitions must be a table of partition = fraction",
                   "write partitions = { gpu = 0.1 } under [limits], or a [limits.partitions] section")  # fmt: skip
    for part, f in sec.items():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            inline = not _section(text, "limits.partitions")  # partitions = { … } under [limits]
            raise _err(source, text, "partitions" if inline else part, "limits" if inline else "limits.partitions",
                       f"limits.partitions.{part} = {f!r} is not a fraction between 0 and 1",
                       f"e.g. {part} = 0.1 (the largest share of partition {part} drained)")  # fmt: skip
    return tuple(sorted((str(p), float(f)) for p, f in sec.items()))


def _section(text: str, name: str) -> bool:
    return any(s.strip().startswith(f"[{name}]") for s in text.splitlines())


def _notify(source: str, text: str, sec) -> tuple[str, float]:
    if not isinstance(sec, dict):
        raise _err(source, text, "notify", None, "must be a table", "write it as a [notify] section")
    for key in sorted(set(sec) - _NOTIFY_KEYS):
        raise _err(source, text, key, "notify", f"unknown key notify.{key}", f"use {', '.join(sorted(_NOTIFY_KEYS))}")
    url = sec.get("url", "")
    if not isinstance(url, str) or (url and not re.match(r"^https?://[^\s/]+", url)):
        raise _err(source, text, "url", "notify", f"notify.url = {url!r} is not an http(s) URL",
                   'e.g. url = "http://127.0.0.1:9095/hook" (an Alertmanager-style webhook receiver)')  # fmt: skip
    timeout = sec.get("timeout_s", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise _err(source, text, "timeout_s", "notify", f"notify.timeout_s = {timeout!r} is not a positive "
                   "number of seconds", "e.g. timeout_s = 5")  # fmt: skip
    return url, float(timeout)


def _rule(source: str, text: str, i: int, raw: dict) -> Rule:
    for key in sorted(set(raw) - _RULE_KEYS):
        raise _err(source, text, key, i, f"unknown key {key!r} in rule {i + 1}", f"use {', '.join(sorted(_RULE_KEYS))}")
    for key in ("when", "action"):
        if key not in raw:
            raise _err(source, text, None, i, f"rule {i + 1} has no {key!r}",
                       'add e.g. when = "ood_intervals >= 3"' if key == "when" else 'add e.g. action = "drain"')  # fmt: skip
    action = raw["action"]
    if action not in ACTIONS:
        raise _err(source, text, "action", i, f"action {action!r} is not known", f"use one of {', '.join(ACTIONS)}")
    m = _WHEN.match(str(raw["when"]))
    if not m or m.group(1) not in METRICS:
        raise _err(source, text, "when", i, f"condition {raw['when']!r} cannot be read",
                   f'write "<metric> <op> <number>", metric one of {", ".join(METRICS)}, op one of '
                   f'{" ".join(OPS)} (e.g. "ood_consecutive >= 3")')  # fmt: skip
    metric = m.group(1)
    if metric == PEER_METRIC:
        _peer_rule(source, text, i, m.group(2), action)
    if metric == "cluster_incidents" and action != "notify":
        raise _err(source, text, "action", i, f"{action} on cluster_incidents has no node to act on",
                   'use action = "notify" for incidents (or a node metric for node actions)')  # fmt: skip
    if action == "shed" and metric not in CLUSTER_METRICS:
        raise _err(source, text, "when", i, f"shed plans for the whole cluster, but {metric} is a node's",
                   'write the condition on cluster_watts, e.g. when = "cluster_watts > 40000"')  # fmt: skip
    if action in ("drain", "resume") and metric in CLUSTER_METRICS:
        raise _err(source, text, "when", i, f"{action} acts on one node, but {metric} is the cluster's",
                   f"use a node metric ({', '.join(NODE_METRICS)}), or action = \"shed\"")  # fmt: skip
    auto = raw.get("auto", False)
    if not isinstance(auto, bool):
        raise _err(source, text, "auto", i, f"auto = {auto!r} is not true or false", "write auto = true or auto = false")
    name = str(raw.get("name") or f"rule{i + 1}")
    if not re.fullmatch(r"[\w.-]+", name):
        raise _err(source, text, "name", i, f"rule name {name!r} has spaces or symbols", "use letters, digits, - _ .")
    hours = raw.get("hours")
    if hours is not None:
        try:
            parse_hours(hours if isinstance(hours, str) else "")
        except ValueError:
            raise _err(source, text, "hours", i, f"hours = {hours!r} is not a window of the day",
                       'write hours = "17:00-21:00" (UTC, HH:MM-HH:MM; may wrap midnight)') from None  # fmt: skip
    return Rule(name, metric, m.group(2), float(m.group(3)), action, auto, hours, _watts(source, text, i, raw, action),
                _max_nodes(source, text, i, raw, action), _for_intervals(source, text, i, raw, metric))  # fmt: skip


def _peer_rule(source: str, text: str, i: int, op: str, action: str) -> None:
    if op not in (">=", ">"):
        raise _err(source, text, "when", i, f"{PEER_METRIC} {op} … picks the members like their peers, not stragglers",
                   f'a straggler scores high: write "{PEER_METRIC} >= 8" (or >)')  # fmt: skip
    if action not in ("drain", "notify"):
        raise _err(source, text, "action", i, f"{action} on {PEER_METRIC} is not offered",
                   'use action = "drain" (the straggling node) or action = "notify"')  # fmt: skip


def _for_intervals(source: str, text: str, i: int, raw: dict, metric: str) -> int:
    n = raw.get("for_intervals")
    if n is None:
        return 1
    if metric != PEER_METRIC:
        raise _err(source, text, "for_intervals", i, f"for_intervals is for {PEER_METRIC} rules, this one is on {metric}",
                   'remove for_intervals (an OOD streak is when = "ood_consecutive >= N")')  # fmt: skip
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise _err(source, text, "for_intervals", i, f"for_intervals = {n!r} is not a whole number from 1 to 1000",
                   "e.g. for_intervals = 3 (the newest 3 scoring intervals in a row)")  # fmt: skip
    return n


def _watts(source: str, text: str, i: int, raw: dict, action: str) -> float | None:
    w = raw.get("watts")
    if action != "power-cap":
        if w is not None:
            raise _err(source, text, "watts", i, f"watts is for power-cap rules, this one is {action}",
                       "remove watts, or set action = \"power-cap\"")  # fmt: skip
        return None
    if w is None:
        raise _err(source, text, None, i, f"power-cap rule {i + 1} has no 'watts'",
                   "add e.g. watts = 150 (the RAPL limit of each CPU package, in watts)")  # fmt: skip
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 10_000:
        raise _err(source, text, "watts", i, f"watts = {w!r} is not a package limit in watts",
                   "a number of watts between 1 and 10000, e.g. watts = 150")  # fmt: skip
    return float(w)


def _max_nodes(source: str, text: str, i: int, raw: dict, action: str) -> int | None:
    n = raw.get("max_nodes")
    if n is None:
        return None
    if action != "shed":
        raise _err(source, text, "max_nodes", i, f"max_nodes is for shed rules, this one is {action}",
                   "remove max_nodes, or set action = \"shed\"")  # fmt: skip
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _err(source, text, "max_nodes", i, f"max_nodes = {n!r} is not a whole number ≥ 1", "e.g. max_nodes = 4")
    return n


def _err(source: str, text: str, key: str | None, where: int | str | None, problem: str, fix: str) -> DidactError:
    line = _line_of(text, key, where)
    at = f" line {line}" if line else ""
    return DidactError(f"policy file {source}{at}", problem, fix)


def _line_of(text: str, key: str | None, where: int | str | None) -> int | None:
    """The line of ``key`` in the ``where``-th ``[[rule]]`` (int) or a ``[section]`` (str), or top level."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if isinstance(where, int):
        heads = [n for n, s in enumerate(lines) if s.strip().startswith("[[rule]]")]
        if where >= len(heads):
            return None
        start = heads[where]
        end = heads[where + 1] if where + 1 < len(heads) else len(lines)
    elif isinstance(where, str):
        heads = [n for n, s in enumerate(lines) if s.strip().startswith(f"[{where}]")]
        if not heads:
            return None
        start = heads[0]
        end = next((n for n in range(start + 1, len(lines)) if lines[n].lstrip().startswith("[")), len(lines))
    if key is None:
        return start + 1 if where is not None else None
    pat = re.compile(rf"^\s*(\[+\s*)?{re.escape(key)}\b")
    for n in range(start, end):
        if pat.match(lines[n]):
            return n + 1
    return start + 1 if where is not None else None
