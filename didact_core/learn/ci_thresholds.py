"""The CI gate's thresholds: what a metric may be, and how far it may move against a baseline.

A thresholds file (TOML) holds one table per metric, or per ``fnmatch`` pattern of metric
names (an exact name wins over a pattern; among patterns the first in the file wins)::

    [metrics.error_mean]
    greater_is_better = false          # required
    threshold = 0.01                   # absolute floor (a ceiling when lower is better)
    max_relative_regression = 0.10     # may be at most 10 % of |baseline| worse than the baseline
    max_absolute_regression = 0.002    # … and at most this much worse in absolute terms

    [metrics."error_by_flavour.*"]
    greater_is_better = false
    max_relative_regression = 0.25

    [metrics.train_samples_per_second]
    greater_is_better = true
    gate = false                       # reported, never fails the gate

``threshold``, ``greater_is_better``, ``min_absolute_change`` and ``min_relative_change`` mean
what they mean in MLflow's ``MetricThreshold`` (the last two *require an improvement*, which
suits a challenger against a champion, not a refactor); ``max_absolute_regression`` and
``max_relative_regression`` are their mirror image, the *allowed worsening* a code change may
bring.  As in MLflow, every condition given must hold.  Metrics without a rule are reported
only.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from didact_core.errors import DidactError

_NUMBERS = ("threshold", "max_absolute_regression", "max_relative_regression",
            "min_absolute_change", "min_relative_change")  # fmt: skip
_KEYS = ("greater_is_better", "gate", *_NUMBERS)
_EXAMPLE = '[metrics.error_mean]\ngreater_is_better = false\nmax_relative_regression = 0.1'


@dataclass(frozen=True)
class Rule:
    """The conditions on one metric (``pattern`` may be an exact name or a glob)."""

    pattern: str
    greater_is_better: bool
    threshold: float | None = None
    max_absolute_regression: float | None = None
    max_relative_regression: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    #: False: the metric is reported with its rule's verdict, but never fails the gate
    gate: bool = True

    def describe(self) -> str:
        """The rule in a few words for the report (``≥ 0.6, −0.03 abs, −10 %``)."""
        worse = "−" if self.greater_is_better else "+"
        better = "+" if self.greater_is_better else "−"
        parts = []
        if self.threshold is not None:
            parts.append(f"{'≥' if self.greater_is_better else '≤'} {self.threshold:g}")
        if self.max_absolute_regression is not None:
            parts.append(f"{worse}{self.max_absolute_regression:g} abs")
        if self.max_relative_regression is not None:
            parts.append(f"{worse}{100 * self.max_relative_regression:g} %")
        if self.min_absolute_change is not None:
            parts.append(f"{better}{self.min_absolute_change:g} abs required")
        if self.min_relative_change is not None:
            parts.append(f"{better}{100 * self.min_relative_change:g} % required")
        text = ", ".join(parts) or "reported"
        return text if self.gate else f"{text} (not gated)"

    def check(self, value: float | None, baseline: float | None) -> list[str]:
        """The conditions ``value`` breaks (empty: it passes).  A missing value breaks every
        rule; a missing baseline leaves only the absolute ``threshold`` to check."""
        if value is None or not math.isfinite(value):
            return [f"value is missing ({value})"]
        sign = 1.0 if self.greater_is_better else -1.0
        broken = []
        if self.threshold is not None and sign * (value - self.threshold) < 0:
            broken.append(f"{value:.4g} is {'below' if sign > 0 else 'above'} the floor {self.threshold:g}")
        if baseline is None or not math.isfinite(baseline):
            return broken
        gain = sign * (value - baseline)  # > 0: better than the baseline
        rel = gain / abs(baseline) if baseline else (0.0 if gain == 0 else math.copysign(math.inf, gain))
        if self.max_absolute_regression is not None and gain < -self.max_absolute_regression:
            broken.append(f"worse by {-gain:.4g} (allowed {self.max_absolute_regression:g})")
        if self.max_relative_regression is not None and rel < -self.max_relative_regression:
            broken.append(f"worse by {-100 * rel:.3g} % (allowed {100 * self.max_relative_regression:g} %)")
        if self.min_absolute_change is not None and gain < self.min_absolute_change:
            broken.append(f"improved by {gain:.4g}, {self.min_absolute_change:g} required")
        if self.min_relative_change is not None and rel < self.min_relative_change:
            broken.append(f"improved by {100 * rel:.3g} %, {100 * self.min_relative_change:g} % required")
        return broken


@dataclass(frozen=True)
class Thresholds:
    """The rules of a thresholds file, in file order."""

    rules: tuple[Rule, ...]
    source: str = "<built-in>"

    def rule_for(self, metric: str) -> Rule | None:
        for r in self.rules:
            if r.pattern == metric:
                return r
        return next((r for r in self.rules if fnmatch.fnmatchcase(metric, r.pattern)), None)


def load_thresholds(path: str | Path) -> Thresholds:
    """Read and validate a thresholds file; any mistake is a :class:`DidactError` that names the
    file, the key and the fix."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DidactError(f"thresholds file {path}", "does not exist",
                          "pass --thresholds FILE, or restore ci/thresholds.toml") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as e:
        raise DidactError(f"thresholds file {path}", f"cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise DidactError(f"thresholds file {path}", f"is not valid TOML ({e})",
                          f"write one table per metric, e.g.\n{_EXAMPLE}") from None  # fmt: skip
    return parse_thresholds(doc, str(path))


def parse_thresholds(doc: dict, source: str) -> Thresholds:
    """Validate a parsed thresholds document (see the module docstring)."""

    def bad(key: str, problem: str, fix: str) -> DidactError:
        return DidactError(f"thresholds file {source}, key {key}", problem, fix)

    extra = sorted(set(doc) - {"metrics"})
    if extra:
        raise bad(extra[0], "is not a known section", f"put every rule under [metrics.<name>], e.g.\n{_EXAMPLE}")
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise bad("metrics", "is missing or empty", f"add one table per metric, e.g.\n{_EXAMPLE}")
    rules = []
    for name, spec in metrics.items():
        where = f"metrics.{name}"
        if not isinstance(spec, dict):
            raise bad(where, f"is {spec!r}, not a table", f"write it as a table, e.g.\n{_EXAMPLE}")
        unknown = sorted(set(spec) - set(_KEYS))
        if unknown:
            raise bad(f"{where}.{unknown[0]}", "is not a known setting", f"use {', '.join(_KEYS)}")
        for key in ("greater_is_better", "gate"):
            if key in spec and not isinstance(spec[key], bool):
                raise bad(f"{where}.{key}", f"is {spec[key]!r}, not a boolean", f"write {key} = true or {key} = false")
        if "greater_is_better" not in spec:
            raise bad(f"{where}.greater_is_better", "is missing",
                      "say which way is better: greater_is_better = true (accuracy, AUC) or false (error)")  # fmt: skip
        for key in _NUMBERS:
            v = spec.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"{where}.{key}", f"is {v!r}, not a number", f"write e.g. {key} = 0.1")
            if key != "threshold" and v < 0:
                raise bad(f"{where}.{key}", f"is {v!r}, a negative change", "give the size of the change (≥ 0)")
        if spec.get("gate", True) and not any(k in spec for k in _NUMBERS):
            raise bad(where, "has no condition", f"give at least one of {', '.join(_NUMBERS)}, or gate = false")
        rules.append(Rule(pattern=str(name), **{k: (float(v) if k in _NUMBERS else v) for k, v in spec.items()}))
    return Thresholds(tuple(rules), source)


@dataclass
class Verdict:
    """One metric of a gate run against its baseline."""

    metric: str
    value: float | None
    baseline: float | None
    rule: Rule | None
    broken: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.broken) and self.rule is not None and self.rule.gate

    @property
    def status(self) -> str:
        if self.rule is None:
            return "info"
        if not self.broken:
            return "pass"
        return "FAIL" if self.rule.gate else "warn"

    def change(self) -> str:
        """``+0.0123 (+4.5 %)`` against the baseline, or ``""``."""
        if self.value is None or self.baseline is None:
            return ""
        d = self.value - self.baseline
        if d == 0:
            return "±0"
        pct = f" ({100 * d / abs(self.baseline):+.3g} %)" if self.baseline else ""
        return f"{d:+.4g}{pct}"


def compare(metrics: dict[str, float | None], baseline: dict[str, float | None] | None,
            thresholds: Thresholds) -> list[Verdict]:  # fmt: skip
    """Every metric of the run (and every gated metric the baseline has but the run lacks)
    against its rule; sorted by name."""
    baseline = baseline or {}
    names = set(metrics) | {m for m in baseline if (r := thresholds.rule_for(m)) is not None and r.gate}
    out = []
    for m in sorted(names):
        rule = thresholds.rule_for(m)
        value, base = metrics.get(m), baseline.get(m)
        out.append(Verdict(m, value, base, rule, rule.check(value, base) if rule else []))
    return out
