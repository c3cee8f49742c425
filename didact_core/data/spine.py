"""The data spine as plain functions: source → raw partition → AI-ready partition.

Dagster assets call these (a few lines each); the CLI and the benchmarks call them too.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError, DidactError
from didact_core.data.preprocess import CleaningReport, check_features, feature_columns, preprocess
from didact_core.data.labels import attach_intervals, excluded_mask, read_labels, split_exclude
from didact_core.schema import EXCLUDE, NO_LABEL, NODE_FEATURES, validate_raw_cpu
from didact_core.ingest.base import TelemetrySource
from didact_core.ingest.prometheus.source import PrometheusSource
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.versioning import code_version
from didact_core.data.parts import read_part, write_part
from didact_core.data.warehouse import VersionInfo, Warehouse

log = logging.getLogger(__name__)

RAW = "raw_node_metrics"
AI_READY = "ai_ready_metrics"
LABELS = "job_labels"

#: code versions of the data-spine assets
RAW_CODE_VERSION = code_version("ingest", "schema", "data/parts", "data/warehouse", "data/spine")
AI_READY_CODE_VERSION = code_version("data/preprocess", "schema", "data/parts", "data/warehouse", "data/spine")
LABELS_CODE_VERSION = code_version("data/labels", "data/parts", "data/warehouse", "data/spine")


def parse_day(partition: str) -> dt.date:
    """A daily partition key → date, with a clear error for anything else."""
    try:
        return dt.date.fromisoformat(partition)
    except (TypeError, ValueError):
        raise DidactError(f"partition {partition!r}", "is not a day", "use YYYY-MM-DD (UTC)") from None


def check_partition(settings: Settings, partition: str, today: dt.date | None = None) -> dt.date:
    """The partition's day, if it lies in [start_date, yesterday]; a clear error otherwise."""
    day = parse_day(partition)
    start = dt.date.fromisoformat(settings.start_date)
    last = (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=1)
    if not start <= day <= last:
        raise DidactError(
            f"partition {partition}",
            f"is outside the partition range {start} … {last}",
            "pick a complete UTC day on or after DIDACT_START_DATE",
        )
    return day


def make_source(settings: Settings) -> TelemetrySource:
    """The configured telemetry source."""
    if settings.source == "simulator":
        return SimulatedCluster.from_settings(settings)
    if settings.source == "prometheus":
        return PrometheusSource.from_env(settings=settings)
    raise DidactError(f"source {settings.source!r}", "is not a known telemetry source", "use simulator or prometheus")


@dataclass
class IngestResult:
    version: VersionInfo
    nodes: int
    rows: int
    missing_nodes: list[str]
    seconds: float
    meta: dict = field(default_factory=dict)


RAW_TABLES = ("cpu", "power", "labels", "faults", "node_metrics")


def _pool(workers: int):
    # spawn, not fork: the parent may hold threads (Dagster, torch) that fork would copy mid-lock
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _fetch_and_write(source: TelemetrySource, day: dt.date, item, paths: dict[str, Path]) -> dict:
    """Worker: fetch one block and write its tables' parts."""
    return _write_block(source.fetch_block(day, item), paths)


def _write_block(block, paths: dict[str, Path]) -> dict:
    block.cpu = validate_raw_cpu(block.cpu, "raw CPU samples from the source")
    parts = {}
    for name in RAW_TABLES:
        df = getattr(block, name)
        if df is not None and len(df):
            parts[name] = write_part(paths[name], df)
    nodes = [str(n) for n in pd.unique(block.cpu["node"])] if len(block.cpu) else []
    return {"parts": parts, "nodes": nodes, "missing": list(block.missing_nodes), "meta": block.meta}


def ingest_raw(
    settings: Settings,
    day: dt.date,
    source: TelemetrySource | None = None,
    run_id: str | None = None,
    nodes_per_block: int = 64,
    logger: logging.Logger | None = None,
) -> IngestResult:
    """Save one day of raw samples as a new version of ``raw_node_metrics/<day>``.

    Sources whose blocks can be fetched independently (the simulator) are fetched and
    written by ``settings.workers`` processes in parallel.
    """
    logger = logger or log
    source = source or make_source(settings)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    t0 = time.perf_counter()
    expected = source.nodes(day)
    partition = day.isoformat()
    seen: list[str] = []
    missing: list[str] = []
    data_faults: dict = {}
    rows = 0
    with wh.writer(RAW, partition) as w:
        counters = {t: 0 for t in RAW_TABLES}

        def paths() -> dict[str, Path]:
            return {t: w.part_path(t, counters[t]) for t in RAW_TABLES}

        def collect(res: dict) -> None:
            nonlocal rows
            for t, (n, digest) in res["parts"].items():
                w.add_part(t, n, digest)
                counters[t] += 1
            rows += res["parts"].get("cpu", (0, ""))[0]
            seen.extend(res["nodes"])
            missing.extend(res["missing"])
            for k, v in res["meta"].get("data_faults", {}).items():
                data_faults[k] = data_faults.get(k, 0) + v
            logger.info("%s %s: %d/%d nodes, %d rows", RAW, partition, len(seen), len(expected), rows)

        plan = source.plan_blocks(day, nodes_per_block)
        workers = min(settings.worker_count, len(plan or []))
        if plan and workers > 1:
            # part i of every table comes from block i: give each block its own part numbers
            with _pool(workers) as ex:
                futures = []
                for i, item in enumerate(plan):
                    futures.append(ex.submit(_fetch_and_write, source, day, item, {t: w.part_path(t, i) for t in RAW_TABLES}))
                for i, f in enumerate(futures):
                    res = f.result()
                    for t in RAW_TABLES:  # a table the block did not have must not leave a hole
                        if t in res["parts"] and counters[t] != i:
                            w.part_path(t, i).rename(w.part_path(t, counters[t]))
                    collect(res)
        else:
            for block in source.iter_blocks(day, nodes_per_block):
                collect(_write_block(block, paths()))
        if rows == 0:
            raise DataQualityError(
                f"{source.name} for {partition}",
                "returned no samples",
                "check the source is scraping the nodes for that day",
            )
        meta = {
            **source.describe(),
            "nodes": len(seen),
            "rows": rows,
            "missing_nodes": sorted(set(missing)),
            "node_list": sorted(set(seen)),
        }
        if data_faults:
            meta["injected_data_faults"] = data_faults
        version = w.commit(code_version=RAW_CODE_VERSION, run_id=run_id, metadata=meta)
    return IngestResult(version, len(seen), rows, sorted(set(missing)), time.perf_counter() - t0, meta)


@dataclass
class AiReadyResult:
    version: VersionInfo
    report: CleaningReport
    upstream: VersionInfo
    labelled: bool
    seconds: float
    max_unusable_fraction: float
    #: samples inside an ``exclude`` label, dropped (not in the partition, not unusable)
    excluded_samples: int = 0

    @property
    def passed(self) -> bool:
        """Whether the partition meets the quality bar (unusable fraction at most the max)."""
        return self.report.unusable_fraction <= self.max_unusable_fraction


def _preprocess_part(
    src: Path, dst: Path, features, labels, faults, node_src: list[Path] | None = None, window: int = 1
) -> tuple[int, str, CleaningReport, int]:
    """Worker: one raw part (+ its node-level metrics) → one AI-ready part, and how many
    samples an ``exclude`` label left out of it."""
    raw = read_part(src)
    node_metrics = None
    if node_src:
        nodes = set(raw["node"].astype(str).unique())
        frames = [read_part(p) for p in node_src]
        node_metrics = pd.concat([f[f["node"].astype(str).isin(nodes)] for f in frames], ignore_index=True)
    samples, rep = preprocess(raw, features, interval_s=None, node_metrics=node_metrics, window=window)
    jobs, exclude = split_exclude(labels)
    # windows are built before: a sample after an excluded stretch keeps its real context
    drop = excluded_mask(samples, exclude)
    if drop.any():
        samples = samples[~drop].reset_index(drop=True)
    if jobs is not None:
        samples["label"] = attach_intervals(samples, jobs, "label", default=NO_LABEL)
    if faults is not None:
        samples["fault"] = attach_intervals(samples, faults, "fault", default="")
    rows, digest = write_part(dst, samples)
    return rows, digest, rep, int(drop.sum())


def build_ai_ready(
    settings: Settings,
    day: dt.date,
    run_id: str | None = None,
    logger: logging.Logger | None = None,
) -> AiReadyResult:
    """Preprocess the raw partition's head into a new version of ``ai_ready_metrics/<day>``.

    Job labels and labelled faults, when the raw partition (or ``job_labels``) has
    them, become ``label`` / ``fault`` columns.  The cleaning report goes into the
    version's metadata.  Raw parts are processed by ``settings.workers`` processes.
    """
    logger = logger or log
    features = check_features(settings.features)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    partition = day.isoformat()
    raw = wh.require(RAW, partition)
    if "cpu" not in raw.tables:
        raise DataQualityError(f"{RAW}/{partition} v{raw.version}", "has no CPU samples", "re-materialise it")
    labels, faults, label_ref = intervals_for(wh, partition, raw)
    t0 = time.perf_counter()
    report = CleaningReport()
    src = wh.part_paths(RAW, partition, "cpu", raw.version)
    node_src: list[list[Path] | None] = [None] * len(src)
    if any(f in NODE_FEATURES for f in features):
        if "node_metrics" not in raw.tables:
            raise DataQualityError(
                f"{RAW}/{partition} v{raw.version}",
                "has no node-level metrics, but DIDACT_FEATURES asks for node-level features",
                "ingest from a source with node exporter metrics, or use CPU features only",
            )
        nm = wh.part_paths(RAW, partition, "node_metrics", raw.version)
        # parts are written block by block: part i of both tables holds the same nodes
        node_src = [[nm[i]] for i in range(len(src))] if len(nm) == len(src) else [nm] * len(src)
    with wh.writer(AI_READY, partition) as w:
        jobs = [
            (p, w.part_path("samples", i), features, labels, faults, node_src[i], settings.window)
            for i, p in enumerate(src)
        ]
        workers = min(settings.worker_count, len(jobs))
        if workers > 1:
            with _pool(workers) as ex:
                results = ex.map(_preprocess_part, *zip(*jobs))
                results = list(_progress(results, report, logger, partition, len(jobs)))
        else:
            results = list(_progress(map(lambda j: _preprocess_part(*j), jobs), report, logger, partition, len(jobs)))
        excluded = 0
        for rows, digest, rep, n_excluded in results:
            w.add_part("samples", rows, digest)
            report = report + rep
            excluded += n_excluded
        upstream = {RAW: raw.ref}
        if label_ref:
            upstream[LABELS] = label_ref
        meta = {
            "features": list(feature_columns(features, settings.window)),
            "window": settings.window,
            # excluded samples are not unusable: a person asked to leave them out
            "cleaning": {**report.as_dict(), "excluded_samples": excluded},
            "excluded_samples": excluded,
            "max_unusable_fraction": settings.max_unusable_fraction,
            "labelled": labels is not None,
        }
        version = w.commit(code_version=AI_READY_CODE_VERSION, upstream=upstream, run_id=run_id, metadata=meta)
    return AiReadyResult(
        version, report, raw, labels is not None, time.perf_counter() - t0, settings.max_unusable_fraction, excluded
    )


def _progress(results, report, logger, partition, total):
    rows = 0
    for i, r in enumerate(results, 1):
        rows += r[0]
        logger.info("%s %s: part %d/%d, %d rows out", AI_READY, partition, i, total, rows)
        yield r


@dataclass
class LabelsResult:
    version: VersionInfo
    origin: str
    counts: dict


def build_job_labels(settings: Settings, day: dt.date, run_id: str | None = None) -> LabelsResult:
    """Save the day's job labels (and labelled faults) as ``job_labels/<day>``.

    From ``settings.labels_csv`` when set (a CSV or scheduler export, validated against
    the raw partition's nodes), else from the raw partition (the simulator's truth).
    A day without any labels is stored as an empty table, so "no labels" is explicit.
    """
    wh = Warehouse(settings.home_path, settings.retention_versions)
    partition = day.isoformat()
    raw = wh.require(RAW, partition)
    start, end = pd.Timestamp(day, tz="UTC"), pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    faults = None
    if settings.labels_csv:
        nodes = raw.metadata.get("node_list", [])
        labels = read_labels(settings.labels_csv, known_nodes=nodes)
        labels = labels[(labels["end"] > start) & (labels["start"] < end)]
        origin = f"file {settings.labels_csv}"
    elif "labels" in raw.tables:
        labels = wh.read(RAW, partition, "labels", raw.version)
        faults = wh.read(RAW, partition, "faults", raw.version) if "faults" in raw.tables else None
        origin = f"source ({raw.metadata.get('source', '?')})"
    else:
        labels = pd.DataFrame({"node": pd.Series([], dtype=str), "start": pd.Series([], dtype="datetime64[ms, UTC]"),
                               "end": pd.Series([], dtype="datetime64[ms, UTC]"), "label": pd.Series([], dtype=str)})  # fmt: skip
        origin = "none: the source has no labels and DIDACT_LABELS_CSV is not set"
    tables = {"labels": labels}
    if faults is not None:
        tables["faults"] = faults
    version = wh.write(LABELS, partition, tables, code_version=LABELS_CODE_VERSION,
                       upstream={RAW: raw.ref}, run_id=run_id, metadata={"origin": origin})  # fmt: skip
    is_ex = labels["label"].astype(str) == EXCLUDE if len(labels) else pd.Series([], dtype=bool)
    counts = {"labelled_intervals": int((~is_ex).sum()), "excluded_intervals": int(is_ex.sum()),
              "flavours": int(labels.loc[~is_ex, "label"].nunique()) if len(labels) else 0}  # fmt: skip
    if faults is not None:
        counts["labelled_faults"] = len(faults)
    return LabelsResult(version, origin, counts)


def intervals_for(wh: Warehouse, partition: str, raw: VersionInfo):
    """(labels, faults, job_labels ref or None).  Labels and faults for a day: the job_labels partition if any, else the raw partition's."""
    lab = wh.head(LABELS, partition)
    if lab is not None:
        labels = wh.read(LABELS, partition, "labels") if "labels" in lab.tables else None
        faults = wh.read(LABELS, partition, "faults") if "faults" in lab.tables else None
        return labels, faults, lab.ref
    labels = wh.read(RAW, partition, "labels", raw.version) if "labels" in raw.tables else None
    faults = wh.read(RAW, partition, "faults", raw.version) if "faults" in raw.tables else None
    if faults is None and labels is not None:
        faults = pd.DataFrame({"node": [], "start": [], "end": [], "fault": []})
    return labels, faults, None


def summary_row(wh: Warehouse, partition: str) -> dict:
    """Per-day facts for the demo's closing table."""
    raw = wh.head(RAW, partition)
    ai = wh.head(AI_READY, partition)
    row = {"day": partition}
    if raw:
        row.update(nodes=raw.metadata.get("nodes"), raw_rows=raw.tables.get("cpu"), raw_version=f"v{raw.version}")
    if ai:
        c = ai.metadata.get("cleaning", {})
        row.update(
            samples=ai.tables.get("samples"),
            resets=c.get("counter_resets"),
            gaps=c.get("gaps"),
            dups=c.get("duplicates"),
            nan=c.get("nan_rows"),
            unusable=f"{100 * c.get('unusable_fraction', 0):.3f}%",
            data_version=f"v{ai.version}:{ai.data_version}",
        )
    return row
