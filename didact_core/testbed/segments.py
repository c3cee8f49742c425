"""Labelled segments of a recording: the unit every testbed split keeps whole.

A segment is one labelled interval of ``job_labels`` (the same ``start, end, label`` on
several nodes is one segment: one job); without a labels table, a run of one label on a
node (``learn.separability.segment_ids``).  :func:`load_segments` reads the labelled
AI-ready samples of some days with their segment and judges each segment (scrapes
against its length and the scrape interval) and each flavour (usable segments and
samples); :func:`split_segments` holds whole segments out per flavour, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.labels import attach_intervals, split_exclude
from didact_core.data.spine import AI_READY, LABELS, RAW
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DataQualityError
from didact_core.learn.separability import segment_ids
from didact_core.learn.split import check_day_features
from didact_core.schema import has_label

__all__ = [
    "MIN_SAMPLES", "MIN_SCRAPE_SHARE", "MIN_SEGMENTS_HOLDOUT", "Segments", "load_segments", "split_segments",
]  # fmt: skip

#: a segment with fewer scrapes than this share of length / scrape interval is starved
MIN_SCRAPE_SHARE = 0.5
#: segments a flavour needs for one to be held out with 2 left to train on
MIN_SEGMENTS_HOLDOUT = 3
#: samples a flavour (or an open-set positive side) needs to count in a mean
MIN_SAMPLES = 20
_NONE = "\x00none"


@dataclass
class Segments:
    """Labelled samples (``segment`` column: an int id) and one row per segment."""

    frame: pd.DataFrame
    table: pd.DataFrame
    interval_s: float
    notes: list[str] = field(default_factory=list)

    def usable(self) -> pd.DataFrame:
        """The samples of segments that are not starved."""
        ok = self.table.loc[self.table["usable"], "segment"]
        return self.frame[self.frame["segment"].isin(ok)]

    def flavours(self) -> pd.DataFrame:
        """Per flavour: segments (all, usable), usable samples."""
        t = self.table
        out = t.groupby("label").agg(segments=("segment", "size"), usable_segments=("usable", "sum"))
        n = self.usable().groupby("label").size()
        out["samples"] = n.reindex(out.index).fillna(0).astype(int)
        return out.astype(int)


def load_segments(
    settings: Settings, days: list[str], features: list[str], only: pd.DataFrame | None = None
) -> Segments:
    """The labelled AI-ready samples of ``days`` with their segments, judged (see module doc).

    ``only``: labels (``node,start,end,label``, e.g. one recording's CSV) whose intervals
    alone count: samples outside them are left out.  Two recordings made on one UTC day
    share its partitions; their labels files tell them apart."""
    wh = Warehouse(settings.home_path)
    frames, intervals, notes = [], [], []
    for d in days:
        check_day_features(wh, d, tuple(features))
        df = wh.read(AI_READY, d, "samples")
        if "label" not in df:
            raise DataQualityError(
                f"{AI_READY}/{d}", "has no job labels",
                "set DIDACT_LABELS_CSV to the recording's labels and re-materialise job_labels and ai_ready_metrics",
            )  # fmt: skip
        frames.append(df[has_label(df["label"])])
        lab = _day_labels(wh, d)
        if lab is not None and len(lab):
            intervals.append(lab)
    frame = pd.concat(frames, ignore_index=True)
    frame["label"], frame["node"] = frame["label"].astype(str), frame["node"].astype(str)
    labels = pd.concat(intervals, ignore_index=True) if intervals else None
    jobs, exclude = split_exclude(labels)
    if only is not None:
        frame, jobs = _restrict(frame, jobs, only, days)
    if frame.empty:
        raise DataQualityError(f"AI-ready samples of {', '.join(days)}", "hold no labelled samples")
    interval_s = _scrape_interval(frame)
    if jobs is None or not len(jobs):
        notes.append("no job_labels table: segments are runs of one label on a node")
        frame["segment"] = segment_ids(frame)
        table = _run_table(frame, interval_s)
    else:
        frame, table = _label_segments(frame, jobs, exclude, days, interval_s)
    share = table["scrapes"] / table["expected"].clip(lower=1e-9)
    table["usable"] = share >= MIN_SCRAPE_SHARE
    table["reason"] = np.where(
        table["usable"], "",
        [f"{s} scrapes of {e:.0f} expected ({length:.0f} s at {interval_s:g} s): under {MIN_SCRAPE_SHARE:.0%}"
         for s, e, length in zip(table["scrapes"], table["expected"], table["seconds"])],
    )  # fmt: skip
    return Segments(frame.reset_index(drop=True), table.reset_index(drop=True), interval_s, notes)


def _restrict(frame: pd.DataFrame, jobs: pd.DataFrame | None, only: pd.DataFrame, days: list[str]):
    """The samples (and job intervals) inside ``only``'s job intervals."""
    keep, _ = split_exclude(only)
    if keep is None or not len(keep):
        raise DataQualityError("the recording's labels", "hold no job intervals", "pass the labels CSV it was recorded with")
    inside = np.asarray(attach_intervals(frame, keep.assign(_in="1"), "_in", default="0")) == "1"
    if not inside.any():
        raise DataQualityError(
            f"AI-ready samples of {', '.join(days)}", "hold no sample inside the recording's labels",
            "ingest the recording (didact testbed ingest --labels CSV) and evaluate the days its labels touch",
        )  # fmt: skip
    if jobs is not None and len(jobs):
        jobs = jobs[_interval_keys(jobs).isin(set(_interval_keys(keep)))]
    return frame[inside].reset_index(drop=True), jobs


def _interval_keys(labels: pd.DataFrame) -> pd.Series:
    """``node|start ms|end ms|label`` per row: one key per labelled interval."""
    ms = {c: pd.to_datetime(labels[c], utc=True).astype("datetime64[ms, UTC]").astype("int64").astype(str)
          for c in ("start", "end")}  # fmt: skip
    return labels["node"].astype(str) + "|" + ms["start"] + "|" + ms["end"] + "|" + labels["label"].astype(str)


def _day_labels(wh: Warehouse, day: str) -> pd.DataFrame | None:
    if wh.head(LABELS, day) is not None:
        return wh.read(LABELS, day, "labels")
    raw = wh.head(RAW, day)
    if raw is not None and "labels" in raw.tables:
        return wh.read(RAW, day, "labels", raw.version)
    return None


def _scrape_interval(frame: pd.DataFrame) -> float:
    """The median interval between scrapes (``dt_s``, else the spacing of one node's times)."""
    if "dt_s" in frame and frame["dt_s"].notna().any():
        return float(frame["dt_s"].median())
    ts = pd.to_datetime(frame["ts"], utc=True).astype("int64") // 10**6
    d = pd.Series(ts.to_numpy()).groupby(frame["node"].to_numpy()).transform(lambda s: s.sort_values().diff())
    return float(np.nanmedian(d) / 1000.0) if d.notna().any() else 1.0


def _label_segments(frame, jobs, exclude, days, interval_s):
    """Each sample's segment = the job interval holding it; the per-segment table (scrapes
    against its length within the evaluated days, less any ``exclude`` stretch on it)."""
    jobs = jobs.drop_duplicates(["node", "start", "end", "label"])
    ms = {c: pd.to_datetime(jobs[c], utc=True).astype("datetime64[ms, UTC]").astype("int64") for c in ("start", "end")}
    key = ms["start"].astype(str) + "|" + ms["end"].astype(str) + "|" + jobs["label"].astype(str)
    seg = attach_intervals(frame, jobs.assign(key=key.to_numpy()), "key", default=_NONE)
    frame = frame.assign(key=np.asarray(seg, dtype=object))
    runs = frame["key"] == _NONE  # a sample no interval holds (labels re-written since): its run
    if runs.any():
        frame.loc[runs, "key"] = "run" + pd.Series(segment_ids(frame[runs]), index=frame.index[runs]).astype(str)
    codes, uniq = pd.factorize(frame["key"])
    frame = frame.assign(segment=codes).drop(columns="key")
    lo = min(pd.Timestamp(d, tz="UTC") for d in days).value // 10**6
    hi = max(pd.Timestamp(d, tz="UTC") for d in days).value // 10**6 + 86_400_000
    iv = pd.DataFrame({"key": key.to_numpy(), "node": jobs["node"].astype(str).to_numpy(),
                       "start": ms["start"].clip(lo, hi).to_numpy(), "end": ms["end"].clip(lo, hi).to_numpy()})  # fmt: skip
    iv["ms"] = (iv["end"] - iv["start"]).clip(lower=0) - _excluded_ms(iv, exclude)
    length = iv.groupby("key")["ms"].sum() / 1000.0
    scrapes = _scrapes(frame)
    table = pd.DataFrame({"segment": np.arange(len(uniq)), "key": uniq})
    table["label"] = frame.groupby("segment")["label"].first().reindex(table["segment"]).to_numpy()
    table["seconds"] = table["key"].map(length).fillna(0).to_numpy()
    runs_tab = table["key"].str.startswith("run")
    if runs_tab.any():  # no interval: its own span is its length
        span = frame.groupby("segment")["ts"].agg(lambda t: (t.max() - t.min()).total_seconds() + interval_s)
        table.loc[runs_tab, "seconds"] = table.loc[runs_tab, "segment"].map(span).to_numpy()
    table["scrapes"] = scrapes.reindex(table["segment"]).fillna(0).astype(int).to_numpy()
    table["expected"] = table["seconds"] / interval_s
    return frame, table.drop(columns="key")


def _excluded_ms(iv: pd.DataFrame, exclude: pd.DataFrame | None) -> np.ndarray:
    """Per interval, the milliseconds an ``exclude`` interval on its node covers."""
    out = np.zeros(len(iv), dtype=np.int64)
    if exclude is None or not len(exclude):
        return out
    ex_node = exclude["node"].astype(str).to_numpy()
    ex_s = pd.to_datetime(exclude["start"], utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    ex_e = pd.to_datetime(exclude["end"], utc=True).astype("datetime64[ms, UTC]").astype("int64").to_numpy()
    for i, (node, s, e) in enumerate(zip(iv["node"], iv["start"], iv["end"])):
        on = ex_node == node
        out[i] = np.clip(np.minimum(ex_e[on], e) - np.maximum(ex_s[on], s), 0, None).sum()
    return out


def _scrapes(frame: pd.DataFrame) -> pd.Series:
    """Per segment, its distinct (node, scrape time) pairs."""
    return frame[["segment", "node", "ts"]].drop_duplicates().groupby("segment").size()


def _run_table(frame: pd.DataFrame, interval_s: float) -> pd.DataFrame:
    g = frame.groupby("segment")
    table = pd.DataFrame({"label": g["label"].first(), "scrapes": _scrapes(frame)})
    table["seconds"] = g["ts"].agg(lambda t: (t.max() - t.min()).total_seconds() + interval_s)
    table["expected"] = table["seconds"] / interval_s
    return table.rename_axis("segment").reset_index()


def split_segments(segments: pd.DataFrame, seed: int, holdout: float) -> tuple[set, set, dict]:
    """(training segment ids, held-out segment ids, {flavour: why not held out}) over the
    usable segments: per flavour with at least :data:`MIN_SEGMENTS_HOLDOUT`, a seeded
    ``holdout`` share of its segments (at least one, leaving at least two) is held out;
    a flavour with fewer stays in training only (the detector and kNN see it; it is not scored)."""
    rng = np.random.default_rng(seed)
    train, test, why = set(), set(), {}
    usable = segments[segments["usable"]]
    for flavour, ids in usable.groupby("label")["segment"]:
        ids = ids.to_numpy().copy()
        if len(ids) < MIN_SEGMENTS_HOLDOUT:
            why[flavour] = f"{len(ids)} usable segment(s) (< {MIN_SEGMENTS_HOLDOUT}: none can be held out and leave 2 to train on)"
            train.update(ids.tolist())
            continue
        rng.shuffle(ids)
        n_test = int(min(len(ids) - 2, max(1, round(holdout * len(ids)))))
        test.update(ids[:n_test].tolist())
        train.update(ids[n_test:].tolist())
    return train, test, why
