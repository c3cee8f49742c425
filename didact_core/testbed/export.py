"""A small, committable slice of a recording: the raw samples (CPU counters and node-level
counters) of its first whole segments, with their labels — what ``ci/fixtures/`` holds for
``didact ci gate`` (``learn.ci_gate.load_fixture`` preprocesses it with the code under test,
so a change to preprocessing is judged on real telemetry too)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.data.labels import read_labels, split_exclude
from didact_core.data.spine import RAW
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError
from didact_core.testbed.ingest import labels_days
from didact_core.testbed.labels_csv import write_rows

__all__ = ["export_fixture"]


def export_fixture(settings: Settings, labels_csv: str | Path, out: str | Path, segments: int) -> dict:
    """Write the raw samples of the first ``segments`` labelled intervals of ``labels_csv``
    (plus the guard gaps between them) into ``out``: ``cpu.parquet``, ``node_metrics.parquet``
    (when recorded), ``labels.csv`` and ``fixture.json`` (source, span, counts).  Returns the
    summary.  The raw partitions of the days the labels touch must be ingested."""
    if segments < 1:
        raise DidactError(f"--segments {segments}", "is not a positive count", "give e.g. --segments 27")
    jobs, _ = split_exclude(read_labels(labels_csv))
    if jobs is None or not len(jobs):
        raise DidactError(f"labels CSV {labels_csv}", "holds no job intervals", "export a recorded labels CSV")
    jobs = jobs.sort_values("start").head(segments).reset_index(drop=True)
    lo, hi = jobs["start"].min(), jobs["end"].max()
    wh = Warehouse(settings.home_path)
    cpu, nm = [], []
    for day in labels_days(labels_csv):
        head = wh.head(RAW, day.isoformat())
        if head is None:
            raise DidactError(f"{RAW}/{day}", "is not ingested", f"run didact testbed ingest --labels {labels_csv}")
        cpu.append(_span(wh.read(RAW, day.isoformat(), "cpu"), jobs, lo, hi))
        if "node_metrics" in head.tables:
            nm.append(_span(wh.read(RAW, day.isoformat(), "node_metrics"), jobs, lo, hi))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"cpu": pd.concat(cpu, ignore_index=True)}
    if nm:
        tables["node_metrics"] = pd.concat(nm, ignore_index=True)
    for name, df in tables.items():
        tmp = out / f".{name}.parquet.tmp"
        df.to_parquet(tmp, index=False, compression="zstd")
        tmp.replace(out / f"{name}.parquet")
    write_rows(out / "labels.csv", [(r.node, _iso(r.start), _iso(r.end), r.label) for r in jobs.itertuples()])
    summary = {"source": Path(labels_csv).name, "start": _iso(lo), "end": _iso(hi), "segments": len(jobs),
               "flavours": sorted(jobs["label"].unique()), "cpu_rows": len(tables["cpu"]),
               "node_metrics_rows": len(tables.get("node_metrics", ()))}  # fmt: skip
    (out / "fixture.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _iso(t: pd.Timestamp) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(df: pd.DataFrame, jobs: pd.DataFrame, lo, hi) -> pd.DataFrame:
    """The rows of the labelled nodes within [lo, hi)."""
    ts = pd.to_datetime(df["ts"], utc=True)
    keep = (ts >= lo) & (ts < hi) & df["node"].astype(str).isin(set(jobs["node"].astype(str)))
    return df[keep.to_numpy()].reset_index(drop=True)
