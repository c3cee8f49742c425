"""Cumulative counters → rates.

Energy counters (RAPL ``energy_uj``, node exporter's ``node_rapl_*_joules_total``) become
watts with :func:`counter_to_watts`, which handles the counter wrapping at its range and
tells a wrap from a reset.  It lives in ingest (not power) because the Prometheus source
needs it while reading a day, and ingest never imports power.
"""

from __future__ import annotations

import numpy as np

#: a wrapped delta implying more than this many watts for one zone is a reset instead
DEFAULT_MAX_WATTS = 2000.0


def counter_to_watts(
    ts_ms: np.ndarray,
    energy_j: np.ndarray,
    max_range_j: float | None = None,
    max_watts: float = DEFAULT_MAX_WATTS,
) -> tuple[np.ndarray, int, int]:
    """Watts over each interval of an energy counter: ``(watts[len-1], wraps, resets)``.

    ``watts[i]`` is the mean power over ``(ts[i], ts[i+1]]``.  A negative step is a
    **wrap** when ``max_range_j`` (the counter's range, RAPL's ``max_energy_range_uj``)
    is known and the wrapped step ``range - before + after`` implies at most
    ``max_watts``; otherwise it is a **reset** (reboot, driver reload) and that interval
    has no watts (NaN).  Non-increasing timestamps also give NaN.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    e = np.asarray(energy_j, dtype=np.float64)
    if len(ts) < 2:
        return np.empty(0), 0, 0
    de = np.diff(e)
    dt_s = np.diff(ts) / 1000.0
    neg = de < 0
    wraps = 0
    if neg.any() and max_range_j:
        wrapped = de + max_range_j
        with np.errstate(divide="ignore", invalid="ignore"):
            plausible = (wrapped >= 0) & (wrapped / np.where(dt_s > 0, dt_s, np.nan) <= max_watts)
        fix = neg & plausible
        de = np.where(fix, wrapped, de)
        wraps = int(fix.sum())
        neg = neg & ~fix
    resets = int(neg.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        watts = np.where((dt_s > 0) & ~neg, de / np.where(dt_s > 0, dt_s, 1.0), np.nan)
    return watts, wraps, resets


__all__ = ["DEFAULT_MAX_WATTS", "counter_to_watts"]
