"""``model_evaluation`` on real recordings: each alone, and each judging the others.

``DIDACT_EVAL_RECORDINGS`` names folders (``os.pathsep``-separated) of labelled recording
slices as ``didact testbed export`` writes them (``cpu.parquet``, ``node_metrics.parquet``,
``labels.csv``, ``fixture.json``): a folder is one slice, or holds slices in its
sub-folders (like ``ci/fixtures``), all of one recording; its name names the recording.
Each is preprocessed into a model's own feature columns by ``learn.ci_gate.load_fixture``
(the code under test, as the CI gate does) and encoded by the model, then judged in its
2-D latent by kNN (k = 5) over whole segments (``separability.segment_ids``):

* ``<A>``: within recording A, leave-one-segment-out (``separability.separability``);
* ``<A>_to_<B>``: kNN fitted on A's segments judging B's (``separability.knn_transfer``),
  over the flavours both hold (each with :data:`MIN_KNN_SAMPLES`+ samples on both sides);
* ``cross_latent_knn_by_segment``: the mean over every ordered pair (the headline), and
  ``within_latent_knn_by_segment``: the mean over recordings.

Every figure comes with its per-flavour figures and counts (segments, samples), and a
flavour left out is named with the reason; a figure that cannot be taken is None with
``why``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError, DidactError
from didact_core.learn.ci_gate import load_fixture
from didact_core.learn.separability import MIN_KNN_SAMPLES, knn_transfer, segment_ids, separability
from didact_core.schema import EXCLUDE

__all__ = ["RECORDING_SAMPLES", "Recording", "flat_metrics", "recording_folders", "recordings_metrics"]

log = logging.getLogger(__name__)

#: the files of one slice (``didact testbed export``); node_metrics.parquet is optional
SLICE_FILES = ("cpu.parquet", "labels.csv")
#: samples of one recording judged at most (a seeded sample; segments stay whole)
RECORDING_SAMPLES = 20_000
_EXPORT = "export one with didact testbed export --labels CSV --segments N --out FOLDER"
#: characters a recording's name keeps in metric names (MLflow's); others become _
_NOT_IN_NAME = re.compile(r"[^\w.\-]")


@dataclass(frozen=True)
class Recording:
    """One folder of ``DIDACT_EVAL_RECORDINGS``: its name (the folder's) and its slices."""

    name: str
    folder: Path
    #: the folder is one slice itself (else its sub-folders are the slices)
    is_slice: bool
    slices: int


# -- the setting -----------------------------------------------------------------------------------
def recording_folders(settings: Settings) -> list[Recording]:
    """The recordings ``settings.eval_recordings`` names, checked: each folder exists and holds
    slices, no two share a name.  Empty setting: []."""
    parts = [p.strip() for p in settings.eval_recordings.split(os.pathsep) if p.strip()]
    out: list[Recording] = []
    for p in parts:
        folder = Path(p).expanduser()
        what = f"DIDACT_EVAL_RECORDINGS folder {folder}"
        if not folder.is_dir():
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DidactError(what, problem, f"{_EXPORT}, or drop the folder from DIDACT_EVAL_RECORDINGS")
        if _is_slice(folder):
            out.append(Recording(_name(folder), folder, True, 1))
            continue
        slices = [d for d in sorted(folder.iterdir()) if d.is_dir() and _is_slice(d)]
        if not slices:
            raise DidactError(
                what, f"holds no recording slice ({' and '.join(SLICE_FILES)}, in it or in its sub-folders)",
                f"{_EXPORT}, or drop the folder from DIDACT_EVAL_RECORDINGS",
            )  # fmt: skip
        out.append(Recording(_name(folder), folder, False, len(slices)))
    names = pd.Series([r.name for r in out])
    twice = sorted(set(names[names.duplicated()]))
    if twice:
        raise DidactError(
            f"DIDACT_EVAL_RECORDINGS {settings.eval_recordings}",
            f"names two recordings alike ({', '.join(twice)})",
            "give each recording folder its own name (the metrics are named after it)",
        )  # fmt: skip
    return out


def _name(folder: Path) -> str:
    return _NOT_IN_NAME.sub("_", folder.resolve().name)


def _is_slice(folder: Path) -> bool:
    return all((folder / f).is_file() for f in SLICE_FILES)


# -- loading ---------------------------------------------------------------------------------------
def load_recording(rec: Recording, columns: list[str], seed: int) -> pd.DataFrame:
    """``rec``'s labelled samples in the model's ``columns``, with a ``segment`` id each
    (``exclude`` intervals dropped), at most :data:`RECORDING_SAMPLES` (seeded)."""
    what = f"DIDACT_EVAL_RECORDINGS recording {rec.folder}"
    try:
        frame, _ = load_fixture(rec.folder, list(columns))
    except DidactError as e:  # e.g. a slice without the node-level metrics the model reads
        fix = f"{e.fix}; or drop the folder from DIDACT_EVAL_RECORDINGS"
        raise DidactError(what, e.problem, fix) from None
    if len(frame):
        frame = frame[frame["label"].astype(str) != EXCLUDE]
    if frame.empty:
        raise DataQualityError(what, "holds no sample inside a job label of its labels.csv",
                               f"export it again with its labels ({_EXPORT})")  # fmt: skip
    frame = frame.reset_index(drop=True)
    frame["label"] = frame["label"].astype(str)
    frame["segment"] = segment_ids(frame)
    if len(frame) > RECORDING_SAMPLES:
        frame = frame.sample(n=RECORDING_SAMPLES, random_state=seed).reset_index(drop=True)
    return frame


# -- the figures -----------------------------------------------------------------------------------
def recordings_metrics(settings: Settings, recordings: list[Recording], models: dict,
                       logger: logging.Logger | None = None) -> dict[str, dict]:  # fmt: skip
    """``{who: section}`` for ``models`` (``{who: (detector, version)}``): each recording
    within itself, every ordered pair across, their means (see the module doc)."""
    say = logger or log
    frames: dict[tuple, dict[str, pd.DataFrame]] = {}  # per feature columns: the same rows for every model
    out = {}
    for who, (det, version) in models.items():
        columns = tuple(det.feature_names)
        if columns not in frames:
            frames[columns] = {}
            for rec in recordings:
                say.info("recordings: loading %s (%d slice(s)) into %d feature columns", rec.name, rec.slices,
                         len(columns))  # fmt: skip
                frames[columns][rec.name] = load_recording(rec, list(columns), settings.seed)
        out[who] = _section(det, f"{who} v{version}", frames[columns], settings.seed, say)
    return out


def _section(det, model: str, frames: dict[str, pd.DataFrame], seed: int, say) -> dict:
    features = list(det.feature_names)
    latents = {name: det.embed(df[features]) for name, df in frames.items()}
    section: dict = {}
    for name, df in frames.items():
        section[name] = within(det, df, features, seed)
        one = section[name]
        say.info("recordings: %s within %s: latent kNN by segment %s (%d segments, %d samples)", model, name,
                 _fmt(one["latent_knn_by_segment"]), one["segments"], len(df))  # fmt: skip
    for a in frames:
        for b in frames:
            if a != b:
                pair = across(frames[a], latents[a], frames[b], latents[b], a, b)
                section[f"{a}_to_{b}"] = pair
                say.info("recordings: %s %s → %s: latent kNN by segment %s (%d flavours)", model, a, b,
                         _fmt(pair["latent_knn_by_segment"]), len(pair["flavours"]))  # fmt: skip
    pairs = [v["latent_knn_by_segment"] for k, v in section.items() if k not in frames]
    alone = [section[n]["latent_knn_by_segment"] for n in frames]
    head = {"cross_latent_knn_by_segment": _mean(pairs), "within_latent_knn_by_segment": _mean(alone),
            "n_recordings": len(frames), "n_pairs": len(pairs)}  # fmt: skip
    if len(frames) < 2:
        head["why"] = "one recording: cross-recording figures need two or more in DIDACT_EVAL_RECORDINGS"
    return {**head, **section}


def within(det, df: pd.DataFrame, features: list[str], seed: int) -> dict:
    """Latent (and PCA-2, raw) kNN of one recording, leave-one-segment-out, with its counts."""
    out: dict = {"latent_knn_by_segment": None, **_counts(df)}
    try:
        sep = separability(det, df, features, seed)
    except DataQualityError as e:
        out["why"] = e.problem
        return out
    for space in ("latent", "pca2", "raw"):
        out[f"{space}_knn_by_segment"] = sep.get(f"{space}_knn_accuracy_by_segment")
    out["latent_knn_per_sample"] = sep.get("latent_knn_accuracy")
    out["latent_knn_by_segment_by_flavour"] = sep.get("latent_knn_by_segment_by_flavour", {})
    out["left_out"] = {**sep.get("knn_left_out", {}), **sep.get("knn_by_segment_left_out", {})}
    out["knn_scheme"] = sep.get("knn_scheme", "")
    if out["latent_knn_by_segment"] is None:
        out["why"] = "fewer than two flavours with 2+ segments (a segment is judged by others of its flavour)"
    return out


def across(fa: pd.DataFrame, za: np.ndarray, fb: pd.DataFrame, zb: np.ndarray, a: str, b: str) -> dict:
    """kNN fitted on recording ``a``'s latents judging ``b``'s, over the flavours both hold."""
    ya, yb = fa["label"].to_numpy(), fb["label"].to_numpy()
    na, nb = pd.Series(ya).value_counts(), pd.Series(yb).value_counts()
    left = {f: f"not in {b}" for f in na.index.difference(nb.index)}
    unseen = f"not in {a} (kNN cannot name a flavour it was never shown)"
    left.update(dict.fromkeys(nb.index.difference(na.index), unseen))
    for f in na.index.intersection(nb.index):
        if min(na[f], nb[f]) < MIN_KNN_SAMPLES:
            left[f] = f"{na[f]} samples in {a}, {nb[f]} in {b} (needs {MIN_KNN_SAMPLES}+ on both sides)"
    scored = sorted(set(na.index) & set(nb.index) - set(left))
    ma, mb = np.isin(ya, scored), np.isin(yb, scored)
    out: dict = {"latent_knn_by_segment": None, "flavours": scored,
                 "train_segments": int(fa.loc[ma, "segment"].nunique()), "train_samples": int(ma.sum()),
                 "test_segments": int(fb.loc[mb, "segment"].nunique()), "test_samples": int(mb.sum()),
                 "test_by_flavour": _counts(fb[mb])["by_flavour"],
                 "left_out": dict(sorted(left.items()))}  # fmt: skip
    if len(scored) < 2:
        out["why"] = f"{len(scored)} flavour(s) usable in both {a} and {b}: kNN needs two or more"
        return out
    acc, per = knn_transfer(za[ma], ya[ma], zb[mb], yb[mb])
    out["latent_knn_by_segment"], out["latent_knn_by_segment_by_flavour"] = acc, per
    return out


def _counts(df: pd.DataFrame) -> dict:
    by = {str(f): {"segments": int(g["segment"].nunique()), "samples": len(g)}
          for f, g in df.groupby("label")}  # fmt: skip
    return {"segments": int(df["segment"].nunique()), "samples": len(df), "by_flavour": by}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def flat_metrics(prefix: str, tree: dict) -> dict[str, float]:
    """Every number of a nested section as ``prefix.key.subkey`` (MLflow metrics); text and None left out."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(key, v))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[key] = float(v)
    return out
