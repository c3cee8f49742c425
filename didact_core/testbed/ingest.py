"""A finished recording into a didact home: its stored TSDB served for a moment, and the
data spine (``raw_node_metrics`` → ``job_labels`` → ``ai_ready_metrics``) run for the
days its labels touch."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.data import spine
from didact_core.data.labels import read_labels
from didact_core.errors import DidactError
from didact_core.testbed.labels_csv import merge_labels
from didact_core.testbed.services import serve_recording, testbed_dir


def labels_days(labels_csv: str | Path, node: str | None = None) -> list[dt.date]:
    """The UTC days the labels of a CSV touch (optionally one node's)."""
    lab = read_labels(labels_csv)
    if node is not None:
        lab = lab[lab["node"] == node]
    days: set[dt.date] = set()
    for r in lab.itertuples():
        d0, d1 = r.start.date(), (r.end - pd.Timedelta(milliseconds=1)).date()
        days.update(d0 + dt.timedelta(days=i) for i in range((d1 - d0).days + 1))
    return sorted(days)


def ingest_recording(
    settings: Settings,
    labels_csv: str | Path | Sequence[str | Path] | None = None,
    days: Sequence[dt.date] | None = None,
    prometheus_url: str | None = None,
    logger: logging.Logger | None = None,
) -> list[dict]:
    """Run the data spine (``raw_node_metrics`` from Prometheus → ``job_labels`` from the
    CSV → ``ai_ready_metrics``) for the recorded days.

    ``prometheus_url`` None serves the recorder's stored TSDB for the duration.  ``days``
    default: the days the CSV's labels touch.  Several CSVs (recordings that share a UTC
    day) are merged into ``testbed/labels_ingested.csv`` first.  Returns one summary dict per day."""
    paths = [labels_csv] if isinstance(labels_csv, (str, Path)) else list(labels_csv or [])
    paths = [Path(p) for p in paths] or [testbed_dir(settings) / "labels.csv"]
    for p in paths:
        if not p.exists():
            raise DidactError(f"labels CSV {p}", "does not exist", "record first, or pass the CSV you recorded")
    labels_csv = paths[0] if len(paths) == 1 else merge_labels(paths, testbed_dir(settings) / "labels_ingested.csv")
    days = list(days) if days else labels_days(labels_csv)
    if not days:
        raise DidactError(f"labels CSV {labels_csv}", "holds no labels", "record at least one segment")
    with contextlib.ExitStack() as stack:
        url = prometheus_url or stack.enter_context(serve_recording(settings))
        s = settings.replace(source="prometheus", prometheus_url=url, labels_csv=str(labels_csv))
        out = []
        for day in days:
            raw = spine.ingest_raw(s, day, logger=logger)
            lab = spine.build_job_labels(s, day)
            ai = spine.build_ai_ready(s, day, logger=logger)
            out.append({
                "day": day.isoformat(), "nodes": raw.nodes, "raw_rows": raw.rows,
                "labelled_intervals": lab.counts.get("labelled_intervals", 0),
                "ai_ready_rows": ai.report.rows_out, "unusable_fraction": round(ai.report.unusable_fraction, 5),
                "raw_version": raw.version.version, "ai_ready_version": ai.version.version,
            })  # fmt: skip
    return out


