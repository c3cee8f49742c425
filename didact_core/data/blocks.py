"""A partition's node blocks: the worker functions, and the blocks as tasks of an executor.

Both executors run the same block code: local worker processes (the spine's pool,
the default) call :func:`fetch_and_write` / :func:`preprocess_part` directly; with
``DIDACT_EXECUTOR=slurm`` the spine calls :func:`run_blocks`, which writes a JSON
manifest of the partition's blocks into a staging folder under the shared home and
submits one job array (one task per block) that runs::

    python -m didact_core.data.blocks MANIFEST        # DIDACT_TASK_INDEX=i picks the block

Each task writes its block's parts and then, last, a small result JSON (rows, content
digest, bytes per part; the cleaning counts).  The spine links the parts into its
:class:`~didact_core.data.parts.PartitionWriter` in block order and publishes them
itself: the catalog keeps one writer.  The staging folder is named by a hash of the
asset, partition, code version and the blocks' inputs, so a retry finds the blocks
that already finished and resubmits only the others; it is removed after the publish.

Secrets never go into the manifest: a task reads them from its own ``DIDACT_*``
environment (``sbatch`` exports the submitting environment by default).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from didact_core.config import SECRET_FIELDS, Settings
from didact_core.data.labels import attach_intervals, excluded_mask, split_exclude
from didact_core.data.parts import read_part, write_part
from didact_core.data.preprocess import CleaningReport, check_features, preprocess
from didact_core.engine import TASK_INDEX_ENV, Executor, JobRequest, Resources, make_executor, submitted, write_json
from didact_core.errors import DidactError
from didact_core.ingest.base import TelemetrySource
from didact_core.ingest.prometheus import PrometheusSource
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.schema import NO_LABEL, validate_raw_cpu

log = logging.getLogger(__name__)

RAW_TABLES = ("cpu", "power", "labels", "faults", "node_metrics")
#: settings that say where blocks run, not what they compute (left out of the staging key)
_PLACEMENT = ("executor", "workers", "retention_versions")


# -- the block code, shared by both executors ---------------------------------------------


def make_source(settings: Settings) -> TelemetrySource:
    """The configured telemetry source."""
    if settings.source == "simulator":
        return SimulatedCluster.from_settings(settings)
    if settings.source == "prometheus":
        return PrometheusSource.from_env(settings=settings)
    raise DidactError(f"source {settings.source!r}", "is not a known telemetry source", "use simulator or prometheus")


def fetch_and_write(source: TelemetrySource, day: dt.date, item, paths: dict[str, Path]) -> dict:
    """Worker: fetch one block and write its tables' parts."""
    return write_block(source.fetch_block(day, item), paths)


def write_block(block, paths: dict[str, Path]) -> dict:
    block.cpu = validate_raw_cpu(block.cpu, "raw CPU samples from the source")
    parts = {}
    for name in RAW_TABLES:
        df = getattr(block, name)
        if df is not None and len(df):
            parts[name] = write_part(paths[name], df)
    nodes = [str(n) for n in pd.unique(block.cpu["node"])] if len(block.cpu) else []
    return {"parts": parts, "nodes": nodes, "missing": list(block.missing_nodes), "meta": block.meta}


def preprocess_part(
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


# -- the parent side: a partition's blocks as one job array ---------------------------------


def executor_for(settings: Settings) -> Executor:
    """The executor ``settings.executor`` names, configured from the settings."""
    if settings.executor == "slurm" and settings.slurm_conf and not Path(settings.slurm_conf).is_file():
        raise DidactError(f"DIDACT_SLURM_CONF={settings.slurm_conf}", "is not a file on this host",
                          "point it at the cluster's slurm.conf, or unset it for Slurm's default")  # fmt: skip
    return make_executor(
        settings.executor, workers=settings.worker_count, slurm_conf=settings.slurm_conf or None,
        command_timeout_s=settings.slurm_command_timeout_s,
    )  # fmt: skip


def resources_for(settings: Settings, gpus: int = 0) -> Resources:
    """What each task asks Slurm for (``gpus`` only for training jobs)."""
    return Resources(
        partition=settings.slurm_partition or None, account=settings.slurm_account or None,
        qos=settings.slurm_qos or None, time_limit=settings.slurm_time_limit or None,
        mem=settings.slurm_mem or None, gpus=gpus, cpus_per_task=settings.slurm_cpus_per_task,
    )  # fmt: skip


def task_settings(settings: Settings) -> dict:
    """The settings a task rebuilds (no secrets; the home as an absolute path)."""
    values = {k: v for k, v in settings.model_dump(mode="json").items() if k not in SECRET_FIELDS}
    return {**values, "home": str(settings.home_path), "executor": "local"}


@dataclass
class BlockRun:
    """The finished blocks of a partition: results in block order, where their parts lie."""

    stage: Path
    results: list[dict]
    meta: dict

    def part(self, index: int, table: str) -> Path:
        return block_dir(self.stage, index) / f"{table}.parquet"

    def link(self, index: int, table: str, dst: Path) -> None:
        """Put block ``index``'s part of ``table`` at ``dst`` (a hard link; a copy across disks)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.part(index, table), dst)
        except OSError:
            shutil.copyfile(self.part(index, table), dst)

    def clear(self) -> None:
        """Remove the staging folder (after the publish; the logs stay in their own folder)."""
        shutil.rmtree(self.stage, ignore_errors=True)


def block_dir(stage: Path, index: int) -> Path:
    return stage / "blocks" / f"block-{index:05d}"


def result_path(stage: Path, index: int) -> Path:
    return stage / "results" / f"block-{index:05d}.json"


def staging_key(asset: str, partition: str, code_version: str, settings: dict, inputs: dict) -> str:
    """What a block's output depends on, hashed: equal keys may reuse each other's blocks."""
    what = {k: v for k, v in settings.items() if k not in _PLACEMENT and not k.startswith("slurm_")}
    text = json.dumps([asset, partition, code_version, what, inputs], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def finished(stage: Path, index: int) -> dict | None:
    """Block ``index``'s result when it finished and all its parts are still there."""
    try:
        res = json.loads(result_path(stage, index).read_text())
    except (OSError, ValueError):
        return None
    for table, size in res.get("bytes", {}).items():
        part = block_dir(stage, index) / f"{table}.parquet"
        if not part.is_file() or part.stat().st_size != size:
            return None
    return res


def run_blocks(
    settings: Settings, asset: str, partition: str, code_version: str, kind: str,
    blocks: list[dict], inputs: dict, logger: logging.Logger | None = None, files: dict | None = None,
) -> BlockRun:  # fmt: skip
    """Run the blocks that have no finished result as one job array; all results, in order.

    ``blocks``: what each task needs (JSON); ``inputs``: what every task shares, hashed into
    the staging key with the settings; ``files``: frames the tasks read (labels, faults),
    written as Parquet into the staging folder.  A task that did not complete raises the
    executor's :class:`DidactError` (state, exit code, log); its finished siblings stay staged.
    """
    logger = logger or log
    values = task_settings(settings)
    key = staging_key(asset, partition, code_version, values, {"kind": kind, "blocks": blocks, **inputs})
    stage = settings.home_path / "staging" / asset / partition / key
    log_dir = settings.home_path / "logs" / settings.executor / asset / partition
    manifest = {"kind": kind, "asset": asset, "partition": partition, "stage": str(stage),
                "settings": values, "inputs": inputs, "blocks": blocks, "files": {}}  # fmt: skip
    for name, frame in (files or {}).items():
        if frame is not None:
            write_part(stage / f"{name}.parquet", frame)
            manifest["files"][name] = str(stage / f"{name}.parquet")
    write_json(stage / "manifest.json", manifest)
    todo = [i for i in range(len(blocks)) if finished(stage, i) is None]
    meta: dict = {"executor": settings.executor, "job_id": None, "blocks": len(blocks),
                  "blocks_reused": len(blocks) - len(todo), "log_dir": str(log_dir), "stage": str(stage)}  # fmt: skip
    if todo:
        logger.info("%s %s: %d of %d blocks as one %s job array", asset, partition, len(todo), len(blocks),
                    settings.executor)  # fmt: skip
        request = JobRequest(
            name=f"didact-{asset}-{partition}", command=(sys.executable, "-m", "didact_core.data.blocks",
                                                         str(stage / "manifest.json")),
            log_dir=log_dir, tasks=tuple(todo), resources=resources_for(settings), workdir=settings.home_path,
            max_parallel=settings.slurm_max_parallel or None,
        )  # fmt: skip
        executor = executor_for(settings)
        with submitted(executor, request) as handle:
            logger.info("%s %s: %s job %s submitted, logs in %s", asset, partition, executor.name,
                        handle.job_id, log_dir)  # fmt: skip
            result = executor.wait(handle, timeout_s=settings.slurm_wait_timeout_s)
        meta.update(result.metadata())
        result.raise_for_failure(f"{asset} {partition}")
    results = [finished(stage, i) for i in range(len(blocks))]
    if lost := [i for i, r in enumerate(results) if r is None]:
        raise DidactError(f"{asset} {partition} blocks {lost}", "completed but left no result in " + str(stage),
                          "check that DIDACT_HOME is the same shared folder on the compute nodes")  # fmt: skip
    return BlockRun(stage, results, meta)


# -- the task side -------------------------------------------------------------------------


def _plan_item(item):
    return range(*item["range"]) if isinstance(item, dict) and "range" in item else item


def plan_item_json(item):
    """A source's plan item as JSON (the simulator's are ranges of node indices)."""
    return {"range": [item.start, item.stop]} if isinstance(item, range) else item


def _raw_block(settings: Settings, manifest: dict, block: dict, out: Path) -> dict:
    day = dt.date.fromisoformat(manifest["partition"])
    res = fetch_and_write(make_source(settings), day, _plan_item(block["item"]),
                          {t: out / f"{t}.parquet" for t in RAW_TABLES})  # fmt: skip
    return {**res, "parts": {t: list(p) for t, p in res["parts"].items()}}


def _ai_ready_block(settings: Settings, manifest: dict, block: dict, out: Path) -> dict:
    files = {n: read_part(Path(p)) for n, p in manifest["files"].items()}
    node_src = [Path(p) for p in block["node_src"]] if block["node_src"] else None
    rows, digest, rep, excluded = preprocess_part(
        Path(block["src"]), out / "samples.parquet", check_features(settings.features), files.get("labels"),
        files.get("faults"), node_src, settings.window,
    )  # fmt: skip
    return {"parts": {"samples": [rows, digest]}, "report": dataclasses.asdict(rep), "excluded": excluded}


_RUNNERS = {"raw": _raw_block, "ai_ready": _ai_ready_block}


def report_of(result: dict) -> CleaningReport:
    """The cleaning counts of an AI-ready block's result."""
    return CleaningReport(**result["report"])


def run_task(manifest_path: Path, index: int) -> Path:
    """Run block ``index`` of a manifest: its parts, then its result JSON (returned)."""
    manifest = json.loads(Path(manifest_path).read_text())
    stage = Path(manifest["stage"])
    out = block_dir(stage, index)
    # fresh files (new inodes): a part linked into a published version is never rewritten
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    settings = Settings.from_env(**manifest["settings"])
    res = _RUNNERS[manifest["kind"]](settings, manifest, manifest["blocks"][index], out)
    res["bytes"] = {t: (out / f"{t}.parquet").stat().st_size for t in res["parts"]}
    write_json(result_path(stage, index), res)
    return result_path(stage, index)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    index = os.environ.get("DIDACT_TASK_INDEX", "")  # engine.TASK_INDEX_ENV: set by either executor
    if len(args) != 1 or not index.isdigit():
        sys.stderr.write(f"usage: {TASK_INDEX_ENV}=i python -m didact_core.data.blocks MANIFEST\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = int(index)
    path = run_task(Path(args[0]), index)
    log.info("block %d done: %s", index, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
