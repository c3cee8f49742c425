"""``champion_model``'s training as one job of an executor (``DIDACT_EXECUTOR=slurm``).

The day's step keeps what needs the registry and the catalog: it loads the champion and
the day's rows (review verdicts applied), opens the MLflow run, registers the result and
applies the gate (``learn.continual``).  Only the fit moves: :class:`JobFit` is the
challenger whose :meth:`~JobFit.fit` writes a staging folder under the shared home::

    staging/champion_model/<day>/<run>-<id>/
        manifest.json     inputs, settings (no secrets), where to write (written last, atomically)
        train.parquet     the training rows (+ the labels column, for the fit's label metrics)
        start/            the champion to continue from (absent on a first day: a fresh model)
        out/model/        the trained detector (Detector.save), then
        out/result.json   the fit's history and metrics (written last: its presence = done)

and submits one job (``--gres=gpu:N`` when ``slurm_gpus`` > 0) that runs::

    python -m didact_core.learn.job MANIFEST

then waits, loads the trained state into itself and replays the epochs into the MLflow
run.  A job that fails, is cancelled or exceeds its time limit raises the executor's
:class:`DidactError` (Slurm state, exit code, log path) inside the MLflow run: the run
ends FAILED and nothing is registered.  Dagster's Terminate interrupts the wait and
:func:`~didact_core.engine.submitted` cancels the job (``scancel``).  The staging folder
is removed once the result is read; ``didact prune`` removes those that failed runs left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.data.blocks import executor_for, resources_for, task_settings
from didact_core.engine import JobRequest, submitted, write_json
from didact_core.errors import DidactError
from didact_core.learn import continual
from didact_core.learn.champion import MODEL_ASSET
from didact_core.learn.detector import Detector
from didact_core.learn.models.config import ModelConfig
from didact_core.learn.training import TrainResult

log = logging.getLogger(__name__)

#: the training rows' label column in train.parquet (not a feature name)
LABELS = "__didact_label__"
_RESULT_FIELDS = ("best_epoch", "best_loss", "monitored", "stopped_early", "samples_seen", "seconds",
                  "initial_val_loss", "compiled", "device")  # fmt: skip


# -- the step side ---------------------------------------------------------------------------


class JobFit(Detector):
    """A challenger whose ``fit`` runs as one job of the configured executor (module doc).

    After the fit, :attr:`job` holds the job's metadata (executor, job id, state, node,
    elapsed, log) for the materialisation and the lineage row."""

    settings: Settings
    day: str
    run_id: str | None
    logger: logging.Logger
    job: dict | None

    @classmethod
    def adopt(cls, challenger: Detector, settings: Settings, day: str, run_id: str | None,
              logger: logging.Logger | None = None) -> JobFit:  # fmt: skip
        """``challenger`` (fresh or the champion's copy) with a fit that runs as a job."""
        obj = cls.__new__(cls)
        obj.__dict__.update(challenger.__dict__)
        obj.settings, obj.day, obj.run_id, obj.logger, obj.job = settings, day, run_id, logger or log, None
        return obj

    def fit(self, X, X_val=None, labels=None, on_epoch=None) -> JobFit:
        if X_val is not None:
            raise DidactError("JobFit.fit", "takes no X_val",
                              "the job splits validation rows off as a local fit does")  # fmt: skip
        s = self.settings
        key = f"{self.run_id or 'norun'}-{uuid.uuid4().hex[:8]}"
        stage = s.home_path / "staging" / MODEL_ASSET / self.day / key
        manifest = self._stage(stage, X, labels)
        log_dir = s.home_path / "logs" / s.executor / MODEL_ASSET / self.day
        request = JobRequest(
            name=f"didact-{MODEL_ASSET}-{self.day}", command=(sys.executable, "-m", "didact_core.learn.job",
                                                              str(manifest)),
            log_dir=log_dir, resources=resources_for(s, gpus=s.slurm_gpus), workdir=s.home_path,
        )  # fmt: skip
        executor = executor_for(s)
        with submitted(executor, request) as handle:
            self.logger.info("%s %s: training as %s job %s (%s), log in %s", MODEL_ASSET, self.day, executor.name,
                             handle.job_id, f"{s.slurm_gpus} GPU(s)" if s.slurm_gpus else "CPU", log_dir)  # fmt: skip
            result = executor.wait(handle, timeout_s=s.slurm_wait_timeout_s)
        self.job = {**result.metadata(), "log_dir": str(log_dir), "stage": str(stage), "gpus": s.slurm_gpus}
        result.raise_for_failure(f"{MODEL_ASSET} {self.day} training")
        self._take(stage)
        shutil.rmtree(stage, ignore_errors=True)
        for row in self.fit_result_.history:
            if on_epoch is not None:
                on_epoch(row["epoch"], row["train_loss"], row.get("val_loss"))
        return self

    def _stage(self, stage: Path, X, labels) -> Path:
        """The job's inputs into ``stage``; the manifest's path (written last)."""
        stage.mkdir(parents=True)
        frame = pd.DataFrame(X, columns=list(self.feature_names)).reset_index(drop=True)
        if labels is not None:
            frame[LABELS] = list(labels)
        tmp = stage / ".train.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, stage / "train.parquet")
        start = None
        if self.is_fitted:  # continue from the champion's copy; a fresh model is built by the job
            start = str(self.save(stage / "start"))
        manifest = {"day": self.day, "run_id": self.run_id, "settings": task_settings(self.settings),
                    "model_config": self.config.to_dict(), "features": list(self.feature_names),
                    "train": str(stage / "train.parquet"), "start": start, "out": str(stage / "out")}  # fmt: skip
        write_json(stage / "manifest.json", manifest)
        return stage / "manifest.json"

    def _take(self, stage: Path) -> None:
        """The job's trained state and fit record, into this detector."""
        out = stage / "out"
        try:
            res = json.loads((out / "result.json").read_text())
        except (OSError, ValueError) as e:
            raise DidactError(f"training job result {out / 'result.json'}", f"cannot be read ({e})",
                              "check that DIDACT_HOME is the same shared folder on the compute nodes") from None  # fmt: skip
        trained = Detector.load(out / "model")
        for name in ("config", "model_", "transform_", "threshold_", "n_fits_", "samples_seen_", "fits_"):
            setattr(self, name, getattr(trained, name))
        fit = res["fit_result"]
        self.fit_result_ = TrainResult(history=fit["history"], **{k: fit[k] for k in _RESULT_FIELDS})
        self.fit_metrics_ = res.get("fit_metrics", {})
        if self.job is not None:
            self.job["trained_on"] = {k: res.get(k) for k in ("host", "device", "seconds")}


def train_day_as_job(
    settings: Settings, day: str, run_id: str | None = None, logger: logging.Logger | None = None
) -> tuple[continual.TrainOutcome, dict]:
    """:func:`continual.train_day` with the fit as one executor job (the challenger a
    :class:`JobFit`), plus an ``executed`` lineage row naming the job; also the job's metadata."""
    logger = logger or log
    fitted: list[JobFit] = []

    def wrap(challenger: Detector) -> JobFit:
        fitted.append(JobFit.adopt(challenger, settings, day, run_id, logger))
        return fitted[-1]

    def executed(wh, mv, mlflow_run_id: str) -> None:
        wh.record("executed", MODEL_ASSET, partition=day, version=f"m{mv.version}", model_version=str(mv.version),
                  run_id=run_id, mlflow_run_id=mlflow_run_id, reason=json.dumps(fitted[-1].job or {}, default=str))  # fmt: skip

    out = continual.train_day(settings, day, run_id, logger, wrap=wrap, on_registered=executed)
    return out, fitted[-1].job or {}


# -- the job side ----------------------------------------------------------------------------


def run(manifest_path: Path) -> Path:
    """Train as the manifest says: the detector into ``out/model``, then ``out/result.json``."""
    manifest = json.loads(Path(manifest_path).read_text())
    settings = Settings.from_env(**manifest["settings"])
    features = manifest["features"]
    if manifest["start"]:
        detector = Detector.load(manifest["start"])
    else:
        detector = Detector(ModelConfig.from_dict(manifest["model_config"]), features)
    frame = pd.read_parquet(manifest["train"])
    labels = frame[LABELS].to_numpy() if LABELS in frame else None
    t0 = time.perf_counter()

    def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
        log.info("train %s epoch %d: loss %.5g val %s", manifest["day"], epoch, train_loss, val_loss)

    detector.fit(frame[features], labels=labels, on_epoch=on_epoch)
    out = Path(manifest["out"])
    shutil.rmtree(out, ignore_errors=True)  # a requeued job starts clean
    detector.save(out / "model")
    fit = detector.fit_result_
    write_json(out / "result.json", {
        "fit_result": {**{k: getattr(fit, k) for k in _RESULT_FIELDS}, "history": fit.history},
        "fit_metrics": detector.fit_metrics_, "host": socket.gethostname().split(".")[0],
        "device": fit.device, "seconds": time.perf_counter() - t0, "home": str(settings.home_path),
    })  # fmt: skip
    return out / "result.json"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m didact_core.learn.job MANIFEST\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = run(Path(args[0]))
    log.info("training done: %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
