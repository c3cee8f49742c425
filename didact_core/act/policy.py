"""The act policy file (TOML): rules that map what didact sees to node actions, and limits.

::

    [limits]
    drains_per_hour = 2          # didact drains in any rolling hour, all rules together
    max_drained_fraction = 0.25  # never leave more than this share of the nodes drained/down

    [[rule]]
    name = "ood-drain"
    when = "ood_intervals >= 3"  # <metric> <op> <number>; metric: ood_intervals
    action = "drain"             # drain | resume | notify
    auto = false                 # true: applied without an approval

Every error names the file, the line (where the TOML has one) and the key, and the fix.
"""

from __future__ import annotations

import operator
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from didact_core.errors import DidactError

ACTIONS = ("drain", "resume", "notify")
METRICS = ("ood_intervals",)
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_WHEN = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*(\d+)\s*$")
_RULE_KEYS = {"name", "when", "action", "auto"}
_LIMIT_KEYS = {"drains_per_hour", "max_drained_fraction"}


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    op: str
    value: int
    action: str
    auto: bool = False

    @property
    def when(self) -> str:
        return f"{self.metric} {self.op} {self.value}"

    def holds(self, metrics: dict[str, float]) -> bool:
        return OPS[self.op](metrics.get(self.metric, 0), self.value)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    drains_per_hour: int = 2
    max_drained_fraction: float = 0.25
    source: str = "<policy>"


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
    unknown = set(doc) - {"rule", "limits"}
    if unknown:
        key = sorted(unknown)[0]
        raise _err(source, text, key, None, f"unknown section or key {key!r}", "use [limits] and [[rule]] only")
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
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not raw:
        raise _err(source, text, "rule", None, "has no [[rule]]", "add at least one [[rule]] with when and action")
    rules = tuple(_rule(source, text, i, r) for i, r in enumerate(raw))
    names = [r.name for r in rules]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise _err(source, text, "name", i, f"rule name {n!r} is used twice", "give every rule its own name")
    return Policy(rules, int(per_hour), float(frac), source)


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
                   f'write "<metric> <op> <whole number>", metric one of {", ".join(METRICS)}, op one of '
                   f'{" ".join(OPS)} (e.g. "ood_intervals >= 3")')  # fmt: skip
    auto = raw.get("auto", False)
    if not isinstance(auto, bool):
        raise _err(source, text, "auto", i, f"auto = {auto!r} is not true or false", "write auto = true or auto = false")
    name = str(raw.get("name") or f"rule{i + 1}")
    if not re.fullmatch(r"[\w.-]+", name):
        raise _err(source, text, "name", i, f"rule name {name!r} has spaces or symbols", "use letters, digits, - _ .")
    return Rule(name, m.group(1), m.group(2), int(m.group(3)), action, auto)


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
