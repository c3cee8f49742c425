"""The data spine as plain functions: source → raw partition → AI-ready partition.

Dagster assets call these (a few lines each); the CLI and the benchmarks call them too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DataQualityError, DidactError
from didact_core.data.blocks import (
    RAW_TABLES,
    BlockRun,
    fetch_and_write,
    make_source,
    plan_item_json,
    preprocess_part,
    report_of,
    run_blocks,
    write_block,
)
from didact_core.data.preprocess import CleaningReport, check_features, feature_columns
from didact_core.data.labels import read_labels
from didact_core.schema import EXCLUDE, NODE_FEATURES
from didact_core.ingest.base import TelemetrySource
from didact_core.versioning import code_version
from didact_core.data.warehouse import VersionInfo, Warehouse

log = logging.getLogger(__name__)

RAW = "raw_node_metrics"
AI_READY = "ai_ready_metrics"
LABELS = "job_labels"

#: code versions of the data-spine assets
RAW_CODE_VERSION = code_version("ingest", "schema", "data/parts", "data/warehouse", "data/spine", "data/blocks")
AI_READY_CODE_VERSION = code_version(
    "data/preprocess", "data/rolling", "schema", "data/parts", "data/warehouse", "data/spine", "data/blocks"
)
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


@dataclass
class IngestResult:
    version: VersionInfo
    nodes: int
    rows: int
    missing_nodes: list[str]
    seconds: float
    meta: dict = field(default_factory=dict)


def _pool(workers: int):
    # spawn, not fork: the parent may hold threads (Dagster, torch) that fork would copy mid-lock
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _raw_pool(source, day, plan, workers, w, counters, collect) -> None:
    """The plan's blocks in worker processes; part i of every table comes from block i."""
    with _pool(workers) as ex:
        futures = [
            ex.submit(fetch_and_write, source, day, item, {t: w.part_path(t, i) for t in RAW_TABLES})
            for i, item in enumerate(plan)
        ]
        for i, f in enumerate(futures):
            res = f.result()
            for t in RAW_TABLES:  # a table the block did not have must not leave a hole
                if t in res["parts"] and counters[t] != i:
                    w.part_path(t, i).rename(w.part_path(t, counters[t]))
            collect(res)


def _raw_job(settings: Settings, partition: str, plan, w, counters, collect, logger) -> BlockRun:
    """The plan's blocks as one job array (``DIDACT_EXECUTOR=slurm``), linked in block order."""
    blocks = [{"item": plan_item_json(item)} for item in plan]
    job = run_blocks(settings, RAW, partition, RAW_CODE_VERSION, "raw", blocks, {}, logger)
    for i, res in enumerate(job.results):
        for t in res["parts"]:
            job.link(i, t, w.part_path(t, counters[t]))
        collect(res)
    return job


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
    written by ``settings.workers`` processes in parallel, or, with ``DIDACT_EXECUTOR=slurm``
    and the source the settings name, as one Slurm job array (``data.blocks``).
    """
    logger = logger or log
    on_executor = settings.executor != "local" and source is None
    source = source or make_source(settings)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    t0 = time.perf_counter()
    expected = source.nodes(day)
    partition = day.isoformat()
    seen: list[str] = []
    missing: list[str] = []
    data_faults: dict = {}
    rows, job = 0, None
    with wh.writer(RAW, partition) as w:
        counters = {t: 0 for t in RAW_TABLES}

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
        if plan and on_executor:
            job = _raw_job(settings, partition, plan, w, counters, collect, logger)
        elif plan and workers > 1:
            _raw_pool(source, day, plan, workers, w, counters, collect)
        else:
            for block in source.iter_blocks(day, nodes_per_block):
                collect(write_block(block, {t: w.part_path(t, counters[t]) for t in RAW_TABLES}))
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
        if job is not None:
            meta["executor"] = job.meta
        meta["inputs"] = _raw_inputs(source)
        version = w.commit(code_version=RAW_CODE_VERSION, run_id=run_id, metadata=meta)
    _published(wh, version, job)
    return IngestResult(version, len(seen), rows, sorted(set(missing)), time.perf_counter() - t0, meta)


def _published(wh: Warehouse, version: VersionInfo, job: BlockRun | None) -> None:
    """After a publish through an executor: a lineage row naming the job, staging removed."""
    if job is None:
        return
    m = job.meta
    summary = {k: m.get(k) for k in ("executor", "job_id", "states", "nodes", "elapsed_s", "blocks", "blocks_reused",
                                     "log_dir")}  # fmt: skip
    wh.record("executed", version.asset, partition=version.partition, version=f"v{version.version}",
              data_version=version.data_version, run_id=version.run_id, reason=json.dumps(summary))  # fmt: skip
    job.clear()


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
    upstream = {RAW: raw.ref}
    if label_ref:
        upstream[LABELS] = label_ref
    job = None
    with wh.writer(AI_READY, partition) as w:
        jobs = [
            (p, w.part_path("samples", i), features, labels, faults, node_src[i], settings.window)
            for i, p in enumerate(src)
        ]
        workers = min(settings.worker_count, len(jobs))
        if settings.executor != "local":
            job = _ai_ready_job(settings, partition, jobs, upstream, logger)
            results = [(r["parts"]["samples"][0], r["parts"]["samples"][1], report_of(r), r["excluded"])
                       for r in job.results]  # fmt: skip
            for i, j in enumerate(jobs):
                job.link(i, "samples", j[1])
        elif workers > 1:
            with _pool(workers) as ex:
                results = ex.map(preprocess_part, *zip(*jobs))
                results = list(_progress(results, report, logger, partition, len(jobs)))
        else:
            results = list(_progress(map(lambda j: preprocess_part(*j), jobs), report, logger, partition, len(jobs)))
        excluded = 0
        for rows, digest, rep, n_excluded in results:
            w.add_part("samples", rows, digest)
            report = report + rep
            excluded += n_excluded
        meta = {
            "features": list(feature_columns(features, settings.window)),
            "window": settings.window,
            # excluded samples are not unusable: a person asked to leave them out
            "cleaning": {**report.as_dict(), "excluded_samples": excluded},
            "excluded_samples": excluded,
            "max_unusable_fraction": settings.max_unusable_fraction,
            "labelled": labels is not None,
            "inputs": _ai_ready_inputs(settings, upstream),
        }
        if job is not None:
            meta["executor"] = job.meta
        version = w.commit(code_version=AI_READY_CODE_VERSION, upstream=upstream, run_id=run_id, metadata=meta)
    _published(wh, version, job)
    return AiReadyResult(
        version, report, raw, labels is not None, time.perf_counter() - t0, settings.max_unusable_fraction, excluded
    )


def _ai_ready_job(settings: Settings, partition: str, jobs: list[tuple], upstream: dict, logger) -> BlockRun:
    """One job array, a task per raw part (``DIDACT_EXECUTOR=slurm``); the labels and
    faults travel as Parquet files in the staging folder."""
    blocks = [{"src": str(j[0]), "node_src": [str(p) for p in j[5]] if j[5] else None} for j in jobs]
    files = {"labels": jobs[0][3], "faults": jobs[0][4]} if jobs else {}
    return run_blocks(settings, AI_READY, partition, AI_READY_CODE_VERSION, "ai_ready", blocks,
                      {"upstream": upstream}, logger, files=files)  # fmt: skip


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
        labels = read_labels(settings.labels_csv, known_nodes=nodes, allow_overlap=settings.labels_allow_overlap)
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
    meta = {"origin": origin, "inputs": _labels_inputs(settings, raw)}
    version = wh.write(LABELS, partition, tables, code_version=LABELS_CODE_VERSION,
                       upstream={RAW: raw.ref}, run_id=run_id, metadata=meta)  # fmt: skip
    return LabelsResult(version, origin, _label_counts(labels, faults))


def _label_counts(labels: pd.DataFrame, faults: pd.DataFrame | None) -> dict:
    is_ex = labels["label"].astype(str) == EXCLUDE if len(labels) else pd.Series([], dtype=bool)
    counts = {"labelled_intervals": int((~is_ex).sum()), "excluded_intervals": int(is_ex.sum()),
              "flavours": int(labels.loc[~is_ex, "label"].nunique()) if len(labels) else 0}  # fmt: skip
    if faults is not None:
        counts["labelled_faults"] = len(faults)
    return counts


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


# -- what a version was built from: a head can be re-used instead of rebuilt --------------------
# Each version records under metadata "inputs" what shaped it (code version, upstream heads,
# the settings and source that decide its content).  When the head's inputs equal what a
# build would use now, rebuilding gives the same data: the Dagster layer re-emits the head
# instead (a run that published it but failed before Dagster recorded it: issue 15, fault 6).


def _raw_inputs(source: TelemetrySource) -> dict:
    # "api" says which Prometheus API a fetch chose ("auto" before the first): not an input
    return {"code_version": RAW_CODE_VERSION, "source": {k: v for k, v in source.describe().items() if k != "api"}}


def _labels_inputs(settings: Settings, raw: VersionInfo) -> dict:
    csv = None
    if settings.labels_csv:
        path = Path(settings.labels_csv)
        try:
            st = path.stat()
            csv = {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            csv = {"path": str(path), "missing": True}
    return {"code_version": LABELS_CODE_VERSION, "upstream": {RAW: raw.ref}, "labels_csv": csv,
            "allow_overlap": bool(settings.labels_allow_overlap)}  # fmt: skip


def _ai_ready_inputs(settings: Settings, upstream: dict) -> dict:
    features = check_features(settings.features)
    return {"code_version": AI_READY_CODE_VERSION, "upstream": upstream, "window": settings.window,
            "features": list(feature_columns(features, settings.window)),
            "max_unusable_fraction": settings.max_unusable_fraction}  # fmt: skip


def current_inputs(settings: Settings, asset: str, partition: str) -> dict | None:
    """What a build of ``asset/partition`` would start from now (None: its upstream is missing)."""
    if asset == RAW:
        return _raw_inputs(make_source(settings))
    wh = Warehouse(settings.home_path)
    raw = wh.head(RAW, partition)
    if raw is None or asset not in (LABELS, AI_READY):
        return None
    if asset == LABELS:
        return _labels_inputs(settings, raw)
    lab = wh.head(LABELS, partition)
    return _ai_ready_inputs(settings, {RAW: raw.ref, **({LABELS: lab.ref} if lab else {})})


def rebuild_would_repeat(settings: Settings, version: VersionInfo) -> bool:
    """Whether building ``version``'s partition now would start from exactly what it was built
    from (versions written before inputs were recorded: never)."""
    recorded = version.metadata.get("inputs")
    now = current_inputs(settings, version.asset, version.partition)
    # compare as stored: the catalog keeps metadata as JSON (tuples become lists)
    return recorded is not None and now is not None and json.loads(json.dumps(now, default=str)) == recorded


def stored_result(settings: Settings, version: VersionInfo) -> IngestResult | LabelsResult | AiReadyResult:
    """The result a build of ``version`` returned, rebuilt from what the catalog stored."""
    meta, wh = version.metadata, Warehouse(settings.home_path)
    if version.asset == RAW:
        return IngestResult(version, meta.get("nodes", 0), meta.get("rows", 0), meta.get("missing_nodes", []), 0.0, meta)
    if version.asset == LABELS:
        labels = wh.read(LABELS, version.partition, "labels", version.version)
        faults = wh.read(LABELS, version.partition, "faults", version.version) if "faults" in version.tables else None
        return LabelsResult(version, meta.get("origin", ""), _label_counts(labels, faults))
    if version.asset != AI_READY:
        raise DidactError(f"asset {version.asset}", "is not a data-spine asset", f"use one of {RAW}, {LABELS}, {AI_READY}")
    cleaning = meta.get("cleaning", {})
    report = CleaningReport(**{f.name: cleaning.get(f.name, 0) for f in dataclasses.fields(CleaningReport)})
    return AiReadyResult(version, report, wh.require(RAW, version.partition), bool(meta.get("labelled")), 0.0,
                         meta.get("max_unusable_fraction", settings.max_unusable_fraction),
                         meta.get("excluded_samples", 0))  # fmt: skip
