"""``didact ci gate``: train the code under test on a frozen reference set and compare.

A change to the code — features, model, training loop — is judged here by the model it
trains, not only by unit tests (TFX's Evaluator: a candidate is blessed only against an
approved baseline on the same evaluation split).  :func:`run_gate`

1. simulates the profile's days (fixed seed, nodes, CPUs, scrape interval; ``ingest.simulator``)
   and preprocesses them (``data.preprocess``) with the features the code's defaults ask for;
   adds the real labelled fixture in ``ci/fixtures/`` (:func:`load_fixture`: raw slices of a
   ``didact testbed`` recording, preprocessed by the code under test; a third of its segments
   held out and judged as ``real.*``);
2. trains a fresh detector (``learn.detector``) on the training days, seeded, on a fixed number
   of torch threads, on the CPU;
3. evaluates it on the held-out days — whole days, so no neighbouring samples sit on both
   sides: reconstruction error overall and per flavour (rows without a labelled fault), fault
   ROC-AUC, latent kNN accuracy by whole segments, open-set AUC on the profile's flavours,
   training throughput;
4. compares every metric with the baseline — the profile's entry in ``ci/reference.json``
   (recorded for main, written only with ``accept=True``), or the registry's champion scored
   on the same split — under the thresholds file (``learn.ci_thresholds``);
5. records the data versions (hashes of the raw reference set and of its AI-ready frames) and
   the code version it trained, and writes a Markdown report with plots (``learn.ci_report``).

Overrides (``run_gate(overrides={"model_lr": 10.0})``) change a setting (``Settings`` field)
or a model hyperparameter (``ModelConfig`` field) of the candidate: how the tests inject a
degraded model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.data.labels import attach_intervals, read_labels
from didact_core.data.preprocess import feature_columns, preprocess, split_feature_columns
from didact_core.errors import DataQualityError, DidactError
from didact_core.ingest.base import RawBlock
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.learn.ci_report import (
    code_version_info, environment_info, read_reference, reference_entry, write_reference, write_report,
)
from didact_core.learn.ci_thresholds import Thresholds, Verdict, compare, load_thresholds
from didact_core.learn.detector import Detector
from didact_core.learn.evaluation import roc_auc
from didact_core.learn.models.config import ModelConfig, model_config
from didact_core.learn.separability import segment_ids, separability
from didact_core.schema import has_label

__all__ = ["PROFILES", "GateOutcome", "Profile", "ReferenceSet", "load_fixture", "reference_set", "run_gate"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Profile:
    """How big a gate run is.  Everything that decides the data and the metrics is here, so a
    profile's reference metrics are reproducible on any machine (up to float rounding)."""

    name: str
    train_days: tuple[str, ...]
    #: held-out days: whole days, never neighbouring samples of a training day
    test_days: tuple[str, ...]
    nodes: int = 8
    cpus: int = 8
    interval_s: float = 60.0
    seed: int = 20261101
    #: labelled behavioural faults per node-hour (more than the simulator's default, so the
    #: held-out days hold enough of them for a stable ROC-AUC)
    fault_rate: float = 0.2
    max_epochs: int = 10
    #: training rows at most (a seeded sample); None = all
    max_train: int | None = None
    #: held-out rows (without a fault) the latent kNN uses
    eval_samples: int = 5000
    #: flavours left out one at a time for the open-set AUC; () skips it, ("*",) leaves out each
    openset_flavours: tuple[str, ...] = ()
    openset_epochs: int = 4
    openset_train: int = 60_000
    #: torch intra-op threads: fixed, so the same code gives the same floats run to run
    threads: int = 1


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        # the tests' profile: seconds, not minutes; it shows a regression, not fine changes
        Profile("tiny", ("2026-01-05",), ("2026-01-06",), nodes=4, cpus=4, max_epochs=4,
                eval_samples=2000, openset_flavours=("io_bad",), openset_epochs=2, openset_train=15_000),
        # .ci/run: about a minute on two shared cores
        Profile("quick", ("2026-01-05", "2026-01-06", "2026-01-07"), ("2026-01-08",),
                openset_flavours=("io_bad", "mpi_16", "fit_amplitude")),
        # a merge-request pipeline with time to spare: more nodes, days, epochs and open-set flavours.
        # Open set only over flavours that keep every CPU thread busy: the rows of a 1-thread job
        # are mostly idle threads, which no detector can tell from idle (AUC < 0.5, measured)
        Profile("full", ("2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09"),
                ("2026-01-10", "2026-01-11"), nodes=16, max_epochs=15, max_train=500_000, eval_samples=10_000,
                openset_flavours=("io_bad", "io_good", "mpi_16", "fit_amplitude"), openset_train=100_000),
    ]
}  # fmt: skip


@dataclass
class ReferenceSet:
    """The AI-ready training and held-out frames of a profile, and their versions."""

    train: pd.DataFrame
    test: pd.DataFrame
    features: list[str]
    versions: dict
    #: held-out rows of the real labelled fixture (empty without one)
    real_test: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class GateOutcome:
    passed: bool
    profile: str
    metrics: dict
    baseline: dict | None
    baseline_source: str
    verdicts: list[Verdict]
    #: the record ``--accept`` writes into the reference file
    record: dict
    accepted: bool = False
    warnings: list[str] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.failed]


# -- the reference set ---------------------------------------------------------------------------
def _frame_hash(h, df: pd.DataFrame | None) -> None:
    if df is None:
        h.update(b"none")
        return
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())


def simulate(profile: Profile) -> tuple[dict, str]:
    """The profile's raw days ({day: RawBlock}) and the hash of all of them (the data version)."""
    sim = SimulatedCluster(nodes_count=profile.nodes, cpus=profile.cpus, interval_s=profile.interval_s,
                           seed=profile.seed, fault_rate=profile.fault_rate)  # fmt: skip
    h = hashlib.blake2b(json.dumps(sim.describe(), sort_keys=True).encode(), digest_size=8)
    days = {}
    for day in (*profile.train_days, *profile.test_days):
        block = sim.fetch_day(dt.date.fromisoformat(day))
        for table in (block.cpu, block.labels, block.faults, block.node_metrics):
            _frame_hash(h, table)
        days[day] = block
    return days, h.hexdigest()


def _ai_ready(block, base: tuple[str, ...], window: int, interval_s: float) -> pd.DataFrame:
    samples, _ = preprocess(block.cpu, base, interval_s, node_metrics=block.node_metrics, window=window)
    samples["label"] = attach_intervals(samples, block.labels, "label", default="unknown").astype(str)
    samples["fault"] = ("" if block.faults is None else
                        attach_intervals(samples, block.faults, "fault", default="").astype(str))  # fmt: skip
    samples["node"] = samples["node"].astype(str)
    return samples


def reference_set(profile: Profile, columns: list[str], raw: tuple[dict, str] | None = None,
                  fixture: Path | None = None) -> ReferenceSet:  # fmt: skip
    """The profile's days preprocessed into the model's ``columns`` (``feature_columns``), split
    by whole days; the real fixture's rows (when given) split by whole segments."""
    days, raw_hash = raw or simulate(profile)
    base, window = split_feature_columns(columns)
    frames = {d: _ai_ready(b, base, window, profile.interval_s) for d, b in days.items()}
    train = pd.concat([frames[d] for d in profile.train_days], ignore_index=True)
    test = pd.concat([frames[d] for d in profile.test_days], ignore_index=True)
    if profile.max_train and len(train) > profile.max_train:
        train = train.sample(n=profile.max_train, random_state=profile.seed).reset_index(drop=True)
    h = hashlib.blake2b(digest_size=8)
    for df in (train, test):
        _frame_hash(h, df[[*columns, "label", "fault"]])
    versions = {"reference_set": raw_hash, "ai_ready": h.hexdigest(), "train_rows": len(train), "test_rows": len(test)}
    real_test = pd.DataFrame()
    if fixture is not None:
        fx, fx_version = load_fixture(fixture, columns)
        if len(fx):
            versions["fixture"] = fx_version
            fx_train, real_test = split_segments(fx, 0.5, profile.seed)  # 3 segments a flavour: 2 judged, by segment
            train = pd.concat([train, fx_train[train.columns.intersection(fx_train.columns)]], ignore_index=True)
    return ReferenceSet(train, test, list(columns), versions, real_test)


def load_fixture(folder: Path, columns: list[str]) -> tuple[pd.DataFrame, str | None]:
    """The real labelled fixture: ``folder`` itself or every sub-folder of it holding a raw recording slice
    (``cpu.parquet``, optional ``node_metrics.parquet``, ``labels.csv``: what ``didact testbed
    export`` writes), preprocessed here into the model's ``columns`` by the code under test,
    labelled; and the hash of the raw tables.  No folder, or no slice: empty."""
    folder = Path(folder)
    if (folder / "cpu.parquet").is_file():  # the folder is one slice itself
        slices = [folder]
    else:
        slices = sorted(p.parent for p in folder.glob("*/cpu.parquet")) if folder.is_dir() else []
    if not slices:
        return pd.DataFrame(), None
    base, window = split_feature_columns(columns)
    h = hashlib.blake2b(digest_size=8)
    frames = []
    for d in slices:
        try:
            cpu = pd.read_parquet(d / "cpu.parquet")
            nm = pd.read_parquet(d / "node_metrics.parquet") if (d / "node_metrics.parquet").exists() else None
            labels = read_labels(d / "labels.csv")
        except (OSError, ValueError) as e:
            raise DataQualityError(f"CI fixture {d}", f"cannot be read ({e})",
                                   "export it again with didact testbed export")  # fmt: skip
        for df in (cpu, nm, labels):
            _frame_hash(h, df)
        ts = pd.to_datetime(cpu["ts"], utc=True)
        interval_s = float(ts.groupby([cpu["node"], cpu["cpu"]], observed=True).diff().dt.total_seconds().median())
        frame = _ai_ready(RawBlock(cpu=cpu, labels=labels, node_metrics=nm), base, window, interval_s)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataQualityError(f"CI fixture {d}", f"gives no {missing} (features the model reads)",
                                   "export the slice from a recording that has node-level metrics")  # fmt: skip
        frames.append(frame.assign(fixture=d.name))
    df = pd.concat(frames, ignore_index=True)
    return df[has_label(df["label"])].reset_index(drop=True), h.hexdigest()


def split_segments(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) of whole segments (``segment_ids``), stratified: per label a seeded
    ``test_fraction`` of its segments (at least one, leaving one to train on) is held out,
    so no two neighbouring samples of one segment sit on both sides and every flavour with
    two or more segments is judged."""
    seg = segment_ids(frame)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    by_label = pd.Series(seg).groupby(frame["label"].to_numpy()).unique()
    for label in sorted(by_label.index):
        ids = np.sort(by_label[label])
        if len(ids) < 2:
            continue
        n = int(min(len(ids) - 1, max(1, round(test_fraction * len(ids)))))
        held.extend(rng.choice(ids, size=n, replace=False).tolist())
    test = np.isin(seg, held)
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)


# -- the candidate ---------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int):
    """torch on exactly ``n`` intra-op threads inside, as before outside."""
    import torch  # lazy: torch takes seconds to import

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def candidate_config(settings: Settings, profile: Profile, overrides: dict | None) -> tuple[Settings, ModelConfig]:
    """The settings and model config the code under test trains with in ``profile``, with
    ``overrides`` (``Settings`` or ``ModelConfig`` field names) applied."""
    overrides = dict(overrides or {})
    cfg_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(k for k in overrides if k not in Settings.model_fields and k not in cfg_fields)
    if unknown:
        raise DidactError(f"CI gate overrides {unknown}", "are neither settings nor model hyperparameters",
                          "use Settings fields (features, window, model_lr …) or ModelConfig fields (lr, hidden …)")  # fmt: skip
    to_settings = {k: v for k, v in overrides.items() if k in Settings.model_fields}
    settings = settings.replace(**{"seed": profile.seed, **to_settings})
    columns = feature_columns(settings.features, settings.window)
    # the CPU always: a CUDA runner would otherwise train different floats than the reference's
    cfg = model_config(settings, len(columns)).replace(max_epochs=profile.max_epochs, device="cpu", compile="off")
    return settings, cfg.replace(**{k: v for k, v in overrides.items() if k in cfg_fields and k not in to_settings})


def train_candidate(cfg: ModelConfig, ref: ReferenceSet) -> tuple[Detector, dict]:
    """A fresh detector trained on the reference set's training rows; its training facts."""
    t0 = time.perf_counter()
    det = Detector(cfg, ref.features).fit(ref.train[ref.features])
    r = det.fit_result_
    facts = {"train_samples_per_second": r.samples_per_second, "train_seconds": time.perf_counter() - t0,
             "train_epochs": float(r.epochs), "train_best_loss": r.best_loss}  # fmt: skip
    return det, facts


# -- metrics ---------------------------------------------------------------------------------------
def evaluate(det: Detector, test: pd.DataFrame, profile: Profile, prefix: str = "") -> dict[str, float | None]:
    """Error (overall, per flavour, on rows without a labelled fault), fault ROC-AUC and latent
    kNN accuracy by whole segments of ``test``, as flat ``name → value``."""
    features = list(det.feature_names)
    s = det.score_samples(test[features])
    fault = (test["fault"] != "").to_numpy()
    labelled = has_label(test["label"])
    normal = ~fault
    out: dict[str, float | None] = {
        "error_mean": float(np.nanmean(s[normal])),
        "error_p99": float(np.nanquantile(s[normal], 0.99)),
        "ood_rate": float(np.mean(s[normal] > det.threshold_)),
        "fault_roc_auc": roc_auc(s, fault) if fault.any() else None,
    }
    per = pd.Series(s[normal & labelled]).groupby(test["label"].to_numpy()[normal & labelled]).mean()
    out.update({f"error_by_flavour.{k}": float(v) for k, v in per.items()})
    sample = test[normal & labelled]
    if len(sample) > profile.eval_samples:
        sample = sample.sample(n=profile.eval_samples, random_state=profile.seed)
    try:
        sep = separability(det, sample, features, profile.seed)
    except DataQualityError as e:
        log.warning("no latent kNN on %s: %s", prefix or "the held-out days", e)
        sep = {}
    for space in ("latent", "pca2", "raw"):
        out[f"{space}_knn"] = sep.get(f"{space}_knn_accuracy")
        out[f"{space}_knn_by_segment"] = sep.get(f"{space}_knn_accuracy_by_segment")
    for k, v in sep.get("latent_knn_by_segment_by_flavour", {}).items():
        out[f"latent_knn_by_segment_by_flavour.{k}"] = v
    return {f"{prefix}{k}": v for k, v in out.items()}


def openset_metrics(cfg: ModelConfig, ref: ReferenceSet, profile: Profile) -> dict[str, float | None]:
    """For each of the profile's flavours F: a fresh detector trained without F; the ROC-AUC of
    its error for F's held-out rows against the other flavours' (rows without a fault)."""
    flavours = sorted(ref.train["label"].unique()) if profile.openset_flavours == ("*",) else profile.openset_flavours
    if not flavours:
        return {}
    test = ref.test[(ref.test["fault"] == "") & has_label(ref.test["label"])]
    if len(test) > 4 * profile.eval_samples:
        test = test.sample(n=4 * profile.eval_samples, random_state=profile.seed)
    cfg = cfg.replace(max_epochs=profile.openset_epochs)
    out: dict[str, float | None] = {}
    for f in flavours:
        train = ref.train[(ref.train["label"] != f) & (ref.train["fault"] == "")]
        if len(train) > profile.openset_train:
            train = train.sample(n=profile.openset_train, random_state=profile.seed)
        det = Detector(cfg, ref.features).fit(train[ref.features])
        out[f"openset_auc_by_flavour.{f}"] = roc_auc(det.score_samples(test[ref.features]), (test["label"] == f).to_numpy())
    aucs = [v for v in out.values() if v is not None]
    out["openset_auc"] = float(np.mean(aucs)) if aucs else None
    return out


def score_model(det: Detector, cfg: ModelConfig, ref: ReferenceSet, profile: Profile) -> dict[str, float | None]:
    """Every held-out metric of a trained detector (open set with ``cfg``, real fixture too)."""
    metrics = evaluate(det, ref.test, profile)
    metrics.update(openset_metrics(cfg, ref, profile))
    if len(ref.real_test):
        metrics.update(evaluate(det, ref.real_test, profile, prefix="real."))
    return metrics


# -- the gate --------------------------------------------------------------------------------------
def _profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise DidactError(f"CI profile {profile!r}", "is not a known profile", f"use one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def _champion_metrics(champion: Detector, profile: Profile, raw, fixture, say: Progress) -> dict:
    """The registry's champion scored on the same held-out split (its own feature columns)."""
    say(f"scoring the champion ({', '.join(champion.feature_names)})")
    ref = reference_set(profile, list(champion.feature_names), raw, fixture)
    cfg = champion.config.replace(device="cpu", compile="off", seed=profile.seed)
    return score_model(champion, cfg, ref, profile)


def run_gate(
    profile: str | Profile = "quick",
    *,
    thresholds: Thresholds | str | Path,
    reference: str | Path | None = None,
    accept: bool = False,
    champion: Detector | None = None,
    champion_label: str = "registry champion",
    report_dir: str | Path | None = None,
    settings: Settings | None = None,
    overrides: dict | None = None,
    fixture: Path | None = None,
    progress: Progress | None = None,
) -> GateOutcome:
    """Train the code under test in ``profile`` and compare it with its baseline (see the module
    docstring).  ``settings`` defaults to the code's own defaults (``Settings()``), so the
    environment of a CI runner does not change what is measured."""
    say = progress or (lambda msg: log.info("ci gate: %s", msg))
    t0 = time.perf_counter()
    prof = _profile(profile)
    rules = thresholds if isinstance(thresholds, Thresholds) else load_thresholds(thresholds)
    baseline_entry = None
    if champion is None:
        try:  # a missing reference fails before training; --accept may record the first one
            baseline_entry = read_reference(reference, prof.name)
        except DidactError:
            if not accept:
                raise
    settings, cfg = candidate_config(settings or Settings(), prof, overrides)
    columns = list(feature_columns(settings.features, settings.window))
    say(f"simulating {len(prof.train_days)}+{len(prof.test_days)} days ({prof.nodes} nodes × {prof.cpus} CPUs)")
    raw = simulate(prof)
    ref = reference_set(prof, columns, raw, fixture)
    with torch_threads(prof.threads):
        say(f"training on {len(ref.train):,} rows ({cfg.max_epochs} epochs, {prof.threads} thread(s))")
        det, facts = train_candidate(cfg, ref)
        say("evaluating on the held-out days")
        metrics = {**score_model(det, cfg, ref, prof), **facts}
        baseline = _champion_metrics(champion, prof, raw, fixture, say) if champion is not None else None
    warnings = []
    if baseline is None and baseline_entry is not None:
        baseline = baseline_entry["metrics"]
        if baseline_entry.get("data_version", {}).get("reference_set") != ref.versions["reference_set"]:
            warnings.append("the reference set's data version differs from the reference's: the simulator or the "
                            "profile changed; if that is intended, record the new reference with --accept")  # fmt: skip
    verdicts = compare(metrics, baseline, rules)
    passed = not any(v.failed for v in verdicts)
    record = reference_entry(prof, metrics, ref.versions, cfg, settings, code_version_info(), environment_info())
    source = champion_label if champion is not None else (
        f"{reference} ({baseline_entry.get('code_version', {}).get('git', '?')})" if baseline_entry else "none (--accept)")
    outcome = GateOutcome(passed, prof.name, metrics, baseline, source, verdicts, record, warnings=warnings)
    if accept:
        write_reference(reference, prof.name, record)
        outcome.accepted = True
    outcome.seconds = time.perf_counter() - t0
    if report_dir is not None:
        outcome.report = write_report(Path(report_dir), outcome, det, ref, prof)
    return outcome
