"""The power reader interface and the helpers every reader shares.

A :class:`PowerReader` says whether it can work here (``available() -> (ok, reason)``,
never raising) and returns power as ``RAW_POWER_COLUMNS`` rows (``ts, node, source,
watts``) for a time range.  Readers that *sample* the present (local RAPL, NVML, a
Redfish BMC) are :class:`SamplingPowerReader`\\ s: ``sample()`` returns the current watts,
``record()`` stores one timestamped sample, ``read(start, end)`` returns the recorded
ones, and :func:`poll` / :class:`Poller` drive them on an interval.

Energy counters (RAPL ``energy_uj``, node exporter ``node_rapl_*_joules_total``) become
watts with :func:`~didact_core.ingest.counters.counter_to_watts` (it lives in ingest, which the
Prometheus source shares; re-exported here), which handles the counter wrapping at its
range and tells a wrap from a reset.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from didact_core.schema import RAW_POWER_COLUMNS, TS_DTYPE

log = logging.getLogger(__name__)


def power_frame(ts, node, source, watts) -> pd.DataFrame:
    """A ``RAW_POWER_COLUMNS`` frame with the contract's dtypes (scalars broadcast)."""
    watts = np.atleast_1d(np.asarray(watts, dtype=np.float64))
    n = len(watts)
    ts = pd.to_datetime(
        pd.Series(np.broadcast_to(np.asarray(ts), (n,)) if np.ndim(ts) == 0 else ts), utc=True
    )
    return pd.DataFrame(
        {
            "ts": ts.astype(TS_DTYPE).reset_index(drop=True),
            "node": pd.Series(np.broadcast_to(np.asarray(node, dtype=object), (n,)), dtype="string"),
            "source": pd.Series(np.broadcast_to(np.asarray(source, dtype=object), (n,)), dtype="string"),
            "watts": watts,
        },
        columns=list(RAW_POWER_COLUMNS),
    )


def _utc(ts) -> pd.Timestamp:
    """A timestamp in UTC (naive ones are taken as UTC)."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def empty_power() -> pd.DataFrame:
    return power_frame(
        pd.Series([], dtype="datetime64[ns, UTC]"),
        np.array([], dtype=object),
        np.array([], dtype=object),
        np.array([], dtype=np.float64),
    )


class PowerReader(abc.ABC):
    """Where node power comes from."""

    #: the ``source`` value of the rows this reader returns
    source: str = "power"

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, what) if the reader can read here, else (False, why not). Never raises."""

    @abc.abstractmethod
    def read(self, start, end) -> pd.DataFrame:
        """``RAW_POWER_COLUMNS`` rows with start ≤ ts < end."""

    def describe(self) -> dict:
        ok, why = self.available()
        return {"source": self.source, "available": ok, "reason": why}


class SamplingPowerReader(PowerReader):
    """A reader of the present: ``sample()`` now, ``record()`` into a bounded buffer."""

    #: node the samples are attributed to
    node: str = ""
    #: most samples kept in memory (oldest dropped first)
    max_samples: int = 1_000_000

    def __init__(self) -> None:
        self._ts: list[pd.Timestamp] = []
        self._watts: list[float] = []
        self._lock = threading.Lock()

    @abc.abstractmethod
    def sample(self) -> float:
        """Current power draw of ``node`` in watts (NaN if momentarily unknown)."""

    def record(self, now: pd.Timestamp | None = None) -> float:
        """Take one sample and keep it with its timestamp (UTC now by default)."""
        w = float(self.sample())
        ts = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
        with self._lock:
            self._ts.append(ts)
            self._watts.append(w)
            if len(self._ts) > self.max_samples:
                drop = len(self._ts) - self.max_samples
                del self._ts[:drop], self._watts[:drop]
        return w

    def read(self, start=None, end=None) -> pd.DataFrame:
        with self._lock:
            ts, w = list(self._ts), list(self._watts)
        if not ts:
            return empty_power()
        df = power_frame(pd.Series(ts), self.node, self.source, np.array(w))
        keep = np.ones(len(df), dtype=bool)
        if start is not None:  # rows hold ms; a ns start must not hide its own millisecond
            keep &= (df["ts"] >= _utc(start).floor("ms")).to_numpy()
        if end is not None:
            keep &= (df["ts"] < _utc(end)).to_numpy()
        return df.loc[keep].reset_index(drop=True)


def poll(
    readers: Sequence[SamplingPowerReader],
    interval_s: float = 1.0,
    count: int = 10,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
) -> pd.DataFrame:
    """Record ``count`` samples from each reader every ``interval_s`` seconds; return them.

    Bounded by ``count`` (and ``stop``, if set); a reader that raises is logged and
    recorded as NaN for that tick, so one flaky BMC does not stop the others.
    """
    if count < 1:
        raise ValueError("count must be ≥ 1")
    start = pd.Timestamp.now(tz="UTC")
    t0 = clock()
    for i in range(count):
        if stop is not None and stop.is_set():
            break
        now = pd.Timestamp.now(tz="UTC")
        for r in readers:
            try:
                r.record(now)
            except Exception as e:  # noqa: BLE001 — one reader's failure must not stop the poll
                log.warning("power reader %s (%s) failed: %s", r.source, r.node, e)
                with r._lock:
                    r._ts.append(now)
                    r._watts.append(float("nan"))
        if i + 1 < count:
            delay = t0 + (i + 1) * interval_s - clock()
            if delay > 0:
                if stop is not None:
                    stop.wait(delay)
                else:
                    sleep(delay)
    end = pd.Timestamp.now(tz="UTC") + pd.Timedelta(milliseconds=1)
    frames = [r.read(start, end) for r in readers]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_power()


class Poller:
    """Poll readers in a background thread until :meth:`stop` (bounded by ``max_count``)."""

    def __init__(
        self, readers: Sequence[SamplingPowerReader], interval_s: float = 1.0, max_count: int = 86_400
    ):
        self.readers = list(readers)
        self.interval_s = interval_s
        self.max_count = max_count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: pd.DataFrame | None = None

    def start(self) -> Poller:
        def run():
            self._result = poll(self.readers, self.interval_s, self.max_count, stop=self._stop)

        self._thread = threading.Thread(target=run, name="didact-power-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> pd.DataFrame:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._result if self._result is not None else empty_power()

    def __enter__(self) -> Poller:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
