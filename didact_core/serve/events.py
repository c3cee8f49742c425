"""OOD events: each interval's out-of-distribution nodes in the review queue's shape, and
the sink that sends them (with the interval's totals) to the queue."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.errors import DidactError
from didact_core.serve.model import LoadedModel
from didact_core.serve.scoring import IntervalScores

log = logging.getLogger(__name__)


def ood_events(scores: IntervalScores, model: LoadedModel) -> pd.DataFrame:
    """The interval's OOD events in the review queue's shape: one per OOD node, its worst CPU's sample."""
    bad = scores.nodes[scores.nodes["ood"]]
    cols = [
        "ts",
        "node",
        "cpu",
        "score",
        "threshold",
        "model_version",
        "features",
        "latent_0",
        "latent_1",
        "nearest_flavour",
    ]
    if bad.empty:
        return pd.DataFrame(columns=cols)
    rows = scores.samples.iloc[bad["worst"].to_numpy()]
    feats = rows[list(model.features)].to_numpy(dtype=np.float64)
    zcols = [c for c in rows.columns if c.startswith("latent_")]
    Z = rows[zcols].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(),
            "node": rows["node"].astype(str).to_numpy(),
            "cpu": rows["cpu"].astype(int).to_numpy(),
            "score": rows["error"].to_numpy(dtype=np.float64),
            "threshold": scores.threshold,
            "model_version": int(scores.model_version),
            "features": [{f: round(float(v), 6) for f, v in zip(model.features, r)} for r in feats],
            "latent_0": Z[:, 0] if Z.shape[1] > 0 else np.nan,
            "latent_1": Z[:, 1] if Z.shape[1] > 1 else np.nan,
            "nearest_flavour": model.nearest_flavour(Z),
        }
    )


class ReviewSink:
    """Sends each interval's OOD events and totals to :class:`didact_core.data.review.ReviewQueue`
    in one batch; what fails is kept (bounded) and retried with the next interval."""

    def __init__(self, settings: Settings, max_pending: int = 10_000):
        self.settings = settings
        self.max_pending = max_pending
        self._queue = None
        self._events: list[pd.DataFrame] = []
        self._stats: list[tuple] = []
        self.dropped = 0

    def submit(self, events: pd.DataFrame, stats: tuple | None) -> int:
        """Queue ``events`` and one ``(ts, samples, ood, model_version)`` row; write all pending.
        Returns the number of events written (raises nothing: failures are logged and counted)."""
        if len(events):
            self._events.append(events)
        if stats is not None:
            self._stats.append(stats)
        n_pending = sum(len(e) for e in self._events)
        if n_pending > self.max_pending:
            drop = n_pending - self.max_pending
            batch = pd.concat(self._events, ignore_index=True)
            self._events = [batch.iloc[drop:]]
            self.dropped += drop
            log.warning("review queue unreachable: dropped the %d oldest pending OOD events", drop)
        self._stats = self._stats[-self.max_pending :]
        if not self._events and not self._stats:
            return 0
        try:
            if self._queue is None:
                self._queue = ReviewQueue(self.settings)
            batch = pd.concat(self._events, ignore_index=True) if self._events else None
            if batch is not None and len(batch):
                self._queue.add_events(batch)
            self._events = []
            for ts, samples, ood, version in self._stats:
                self._queue.record_scoring(ts, samples, ood, version)
            self._stats = []
            return 0 if batch is None else len(batch)
        except (DidactError, OSError, duckdb.Error) as e:
            self._queue = None
            raise ReviewFailed(str(e)[:300]) from None


class ReviewFailed(Exception):
    """A write to the review queue failed (the events stay pending in the sink)."""
