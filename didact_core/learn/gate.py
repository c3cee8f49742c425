"""The promotion gate: the challenger may not be worse than the champion.

On every evaluation set (the day's held-out split, the replay days' held-out splits)
the challenger's mean reconstruction error may be at most ``tolerance`` (relative)
above the champion's; the first model passes (there is nothing to compare with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def error_summary(detector, frame: pd.DataFrame) -> dict:
    """Mean and tail reconstruction error of ``frame`` (and per label when present)."""
    if detector is None or frame.empty:
        return {}
    s = detector.score_samples(frame[list(detector.feature_names)])
    out = {"mean_error": float(np.nanmean(s)), "p99_error": float(np.nanquantile(s, 0.99)), "n": int(len(s))}
    out["ood_rate"] = float(np.mean(s > detector.threshold_))
    return out


@dataclass
class GateResult:
    passed: bool
    reason: str
    challenger: dict
    champion: dict
    tolerance: float

    def metadata(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "tolerance": self.tolerance,
                "challenger": self.challenger, "champion": self.champion}  # fmt: skip


def promotion_gate(challenger, champion, sets: dict[str, pd.DataFrame], tolerance: float) -> GateResult:
    """Challenger not worse than champion beyond ``tolerance`` on every evaluation set."""
    ch = {name: error_summary(challenger, df) for name, df in sets.items() if not df.empty}
    if champion is None:
        return GateResult(True, "first model: no champion to compare with", ch, {}, tolerance)
    cp = {name: error_summary(champion, df) for name, df in sets.items() if not df.empty}
    worse = []
    for name in ch:
        a, b = ch[name]["mean_error"], cp[name]["mean_error"]
        if not np.isfinite(a) or a > b * (1 + tolerance):
            worse.append(f"{name}: challenger {a:.4g} > champion {b:.4g} × {1 + tolerance:g}")
    if worse:
        return GateResult(False, "challenger worse than champion — " + "; ".join(worse), ch, cp, tolerance)
    summary = ", ".join(f"{n} {ch[n]['mean_error']:.4g} vs {cp[n]['mean_error']:.4g}" for n in ch)
    return GateResult(True, f"challenger not worse ({summary})", ch, cp, tolerance)
