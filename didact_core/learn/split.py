"""Each day's AI-ready rows split once into a training pool and a held-out set.

The split of a row depends only on (seed, day, part, row), so the held-out set of an
old day stays the same whenever it is replayed or evaluated.  :func:`load_split` reads
a seeded sample of one split; :func:`earlier_days` names the replay days.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from didact_core.config import Settings
from didact_core.data.parts import read_part
from didact_core.data.preprocess import feature_columns
from didact_core.data.spine import AI_READY
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError, DidactError

#: rows evaluated per set (a seeded sample; metrics are cheap and reproducible)
EVAL_SAMPLES = 20_000


def model_features(settings: Settings) -> tuple[str, ...]:
    """The detector's input columns for the configured features and window."""
    return feature_columns(settings.features, settings.window)


def load_split(
    wh: Warehouse,
    day: str,
    split: str,
    n_max: int | None,
    settings: Settings,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """A seeded sample (at most ``n_max`` rows) of one split ("train" or "holdout") of
    the day's AI-ready head.  The split of a row depends only on (seed, day, part, row)."""
    info = wh.require(AI_READY, day)
    total = info.tables.get("samples", 0)
    frac = settings.holdout_fraction if split == "holdout" else 1 - settings.holdout_fraction
    keep_p = 1.0 if not n_max else min(1.0, n_max / max(1.0, total * frac))
    ordinal = dt.date.fromisoformat(day).toordinal()
    out = []
    for i, path in enumerate(wh.part_paths(AI_READY, day, "samples")):
        part = read_part(path)
        rng = np.random.default_rng([settings.seed, ordinal, i])
        u_split, u_keep = rng.random(len(part)), rng.random(len(part))
        in_split = u_split < settings.holdout_fraction if split == "holdout" else u_split >= settings.holdout_fraction
        sel = in_split & (u_keep < keep_p)
        part = part[sel]
        out.append(part[columns] if columns else part)
    df = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    if n_max and len(df) > n_max:
        df = df.sample(n=n_max, random_state=settings.seed).reset_index(drop=True)
    for col in ("label", "fault", "node"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    return df


def load_days(wh: Warehouse, days: list[str], split: str, n_max: int, settings: Settings, columns: list[str]) -> pd.DataFrame:
    """One split of several days, ``n_max`` rows shared out evenly (at least one per day)."""
    per_day = max(1, n_max // len(days))
    return pd.concat([load_split(wh, d, split, per_day, settings, columns) for d in days], ignore_index=True)


def earlier_days(wh: Warehouse, day: str, n: int) -> list[str]:
    """Up to ``n`` AI-ready partitions before ``day`` (newest last)."""
    return [p for p in wh.partitions(AI_READY) if p < day][-n:] if n > 0 else []


def check_day_features(wh: Warehouse, day: str, features: tuple) -> None:
    """The day's AI-ready head has rows and every model feature; a clear error otherwise."""
    info = wh.require(AI_READY, day)
    have = info.metadata.get("features", [])
    missing = [f for f in features if f not in have]
    if missing:
        raise DidactError(
            f"{AI_READY}/{day} v{info.version}",
            f"lacks the model's feature(s) {missing} (it has {have})",
            "re-materialise ai_ready_metrics with DIDACT_FEATURES including them, or change the model's features",
        )
    if not info.tables.get("samples"):
        raise DataQualityError(f"{AI_READY}/{day} v{info.version}", "is empty", "check the raw partition of that day")


def extra_columns(wh: Warehouse, day: str) -> list[str]:
    """The day's AI-ready columns besides the features that evaluation uses, when present."""
    names = pq.read_schema(wh.part_paths(AI_READY, day, "samples")[0]).names
    return [c for c in ("label", "fault", "node", "cpu", "ts") if c in names]
