"""The MLflow model registry, as didact uses it.

One registered model per model family (``settings.model_name``).  Versions carry
aliases, not the deprecated stages:

* ``challenger`` — the newest trained version, waiting for the promotion gate;
* ``champion`` — the version that serving and the next day's training load;
* ``previous_champion`` — what ``champion`` pointed at before its last move, so a
  rollback needs no version number.

Tracking and registry default to sqlite + local artifacts under ``DIDACT_HOME``; set
``DIDACT_MLFLOW_TRACKING_URI`` for a real tracking server.

Why not dagster-mlflow's ``mlflow_tracking`` resource: it opens one MLflow run per
Dagster run at resource initialisation and relies on the ``end_mlflow_on_run_finished``
hook to close it, so a bare ``materialize`` (or any job without the hook) leaves runs
RUNNING.  Here every MLflow run is a context manager around the work itself: it ends
FINISHED, or FAILED on any exception, on every path (UI, CLI, backfill, sensor).

A run records its process (host, pid, start) in tags; the next run ends the runs left
RUNNING by a process that died (``learn.stale_runs``).  HTTP calls to a tracking server
are bounded (:func:`bound_mlflow_http`): a dead server is a RegistryError in seconds.

Models are logged as MLflow pyfunc models (with a signature, servable by
``mlflow models serve``) whose code is a file, not a pickle; didact itself loads only
the detector's ``config.json`` + ``weights.pt`` (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from didact_core.config import Settings
from didact_core.errors import RegistryError
from didact_core.learn.detector import Detector
from didact_core.learn.relocate import relocate_artifacts
from didact_core.learn.stale_runs import end_stale_runs, process_tags, remember_unended

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
EXPERIMENT = "didact"
_PYFUNC_CODE = Path(__file__).resolve().parent / "mlflow_pyfunc.py"
#: MLflow's HTTP defaults (7 retries, backoff ×2, 120 s timeout) make a dead tracking
#: server cost minutes before anything says so; these bound it to about 20 s.  Set only
#: where the environment does not (the one home of both numbers: training and serving)
MLFLOW_HTTP_RETRIES, MLFLOW_HTTP_TIMEOUT_S = "1", "10"
_FIX = "check DIDACT_MLFLOW_TRACKING_URI and that the tracking server is up"


def bound_mlflow_http() -> None:
    """Cap MLflow's HTTP retries and timeout unless the environment sets them already."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_HTTP_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_HTTP_TIMEOUT_S)


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    run_id: str | None
    source: str
    aliases: tuple[str, ...]
    tags: dict


class ModelRegistry:
    """Thin wrapper over ``MlflowClient`` for didact's aliases and model files."""

    def __init__(self, settings: Settings):
        import mlflow  # lazy: mlflow takes seconds to import
        from mlflow import MlflowClient  # lazy: mlflow takes seconds to import

        self.settings = settings
        self.name = settings.model_name
        self.tracking_uri = settings.tracking_uri
        if self.tracking_uri.startswith("sqlite:///"):
            settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
            relocate_artifacts(settings)  # a moved or restored home: its artifact paths follow it
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        bound_mlflow_http()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.experiment_id = self._experiment()

    def call(self, what: str, fn, *args, **kwargs):
        """Run an MLflow client call (``what`` names it in errors); connection problems become a RegistryError."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            raise RegistryError(f"MLflow at {self.tracking_uri}", f"{what} failed: {e.message[:300]}", _FIX) from None
        except OSError as e:
            raise RegistryError(f"MLflow at {self.tracking_uri}", f"{what} failed: {e}", _FIX) from None

    def _experiment(self) -> str:
        exp = self.call("looking up the experiment", self.client.get_experiment_by_name, EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        location = self.settings.artifact_uri if self.tracking_uri.startswith("sqlite:") else None
        return self.call("creating the experiment", self.client.create_experiment, EXPERIMENT, location)

    # -- runs ---------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict | None = None):
        """An MLflow run that always ends: FINISHED, or FAILED when the block raises.

        First ends the experiment's runs that a dead process left RUNNING; the run's own
        tags record this process, so a later run can tell when it dies."""
        import mlflow  # lazy: mlflow takes seconds to import

        if mlflow.active_run() is not None:  # never nest into a stray run of the process
            self._end(mlflow.active_run().info.run_id, "FAILED")
        self.call("ending stale runs", end_stale_runs, self.client, self.experiment_id)
        run = self.call("starting a run", mlflow.start_run, experiment_id=self.experiment_id, run_name=run_name,
                         tags={**(tags or {}), **process_tags()})  # fmt: skip
        try:
            yield run
        except BaseException:
            self._end(run.info.run_id, "FAILED")  # the block's error is the one to see
            raise
        if not self._end(run.info.run_id, "FINISHED"):
            raise RegistryError(f"MLflow at {self.tracking_uri}",
                                f"run {run.info.run_id} finished, but ending it failed", _FIX)  # fmt: skip

    def _end(self, run_id: str, status: str) -> bool:
        """End the active run; False (and the next run ends it) when the server cannot be reached."""
        import mlflow  # lazy: mlflow takes seconds to import
        from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

        try:
            mlflow.end_run(status)
            return True
        except (MlflowException, OSError) as e:
            remember_unended(run_id)
            log.warning("MLflow run %s: ending it %s failed (%s); the next run ends it", run_id, status, e)
            return False

    def runs(self, status: str | None = None) -> list:
        """Runs of the didact experiment (for tests and ``didact status``)."""
        flt = f"attributes.status = '{status}'" if status else ""
        return self.client.search_runs([self.experiment_id], filter_string=flt, max_results=10_000)

    # -- versions and aliases ---------------------------------------------------------
    def log_and_register(self, detector, example, tags: dict | None = None) -> ModelVersionInfo:
        """Log ``detector`` in the active run as a pyfunc model with a signature and
        register it as a new version (alias ``challenger``)."""
        import mlflow  # lazy: mlflow takes seconds to import
        from mlflow.models import infer_signature  # lazy: mlflow takes seconds to import

        with tempfile.TemporaryDirectory(prefix="didact-model-") as tmp, _quiet_log_model():
            det_dir = detector.save(Path(tmp) / "detector")
            example = pd.DataFrame(example, columns=list(detector.feature_names)).head(64)
            signature = infer_signature(example, predict_frame(detector, example))
            info = self.call(
                "logging the model",
                mlflow.pyfunc.log_model,
                name="model",
                python_model=str(_PYFUNC_CODE),
                artifacts={"detector": str(det_dir)},
                signature=signature,
                pip_requirements=[f"torch=={_version('torch')}", f"mlflow=={_version('mlflow')}", "pandas", "numpy"],
            )
        self._ensure_registered()
        with _quiet_register_model():
            mv = self.call(
                "registering the model", mlflow.register_model, info.model_uri, self.name,
                tags={k: str(v) for k, v in (tags or {}).items()},
            )  # fmt: skip
        version = int(mv.version)
        self.set_alias(CHALLENGER, version)
        return self.version(version)

    def _ensure_registered(self) -> None:
        from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.call("creating the registered model", self.client.create_registered_model, self.name,
                       description="didact detector: trained day by day; aliases champion/challenger")  # fmt: skip

    def version(self, version: int) -> ModelVersionInfo:
        mv = self.call(f"reading version {version}", self.client.get_model_version, self.name, str(version))
        return _info(mv)

    def versions(self) -> list[ModelVersionInfo]:
        """All registered versions, oldest first, with their aliases."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
            aliases = dict(self.client.get_registered_model(self.name).aliases or {})
        except MlflowException:
            return []
        by_version: dict[int, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(int(v), []).append(a)
        out = []
        for mv in found:
            info = _info(mv)
            out.append(ModelVersionInfo(**{**info.__dict__, "aliases": tuple(sorted(by_version.get(info.version, [])))}))
        return sorted(out, key=lambda v: v.version)

    def alias(self, alias: str) -> int | None:
        """The version an alias points at, or None."""
        from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

        try:
            return int(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as e:
            # no registered model yet, or no such alias: "not set"; anything else is a real failure
            missing_model = e.error_code == "RESOURCE_DOES_NOT_EXIST"
            missing_alias = e.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(e)
            if missing_model or missing_alias:
                return None
            raise RegistryError(f"MLflow at {self.tracking_uri}", f"reading alias {alias} failed: {e.message}") from None
        except OSError as e:
            raise RegistryError(f"MLflow at {self.tracking_uri}", f"reading alias {alias} failed: {e}") from None

    def set_alias(self, alias: str, version: int) -> None:
        self.call(f"setting alias {alias}", self.client.set_registered_model_alias, self.name, alias, str(version))

    def promote(self, version: int) -> int | None:
        """Move ``champion`` to ``version``; the old champion becomes ``previous_champion``.
        Returns the old champion (None on the first promotion)."""
        old = self.alias(CHAMPION)
        if old is not None and old != version:
            self.set_alias(PREVIOUS, old)
        self.set_alias(CHAMPION, version)
        log.info("%s: champion v%s → v%d", self.name, old, version)
        return old

    # -- model files ----------------------------------------------------------------
    def load(self, version: int):
        """The detector of a registered version (config.json + weights, never a pickle)."""
        import mlflow  # lazy: mlflow takes seconds to import

        info = self.version(version)
        tmp = tempfile.mkdtemp(prefix="didact-load-")
        try:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp)
            except Exception as e:  # noqa: BLE001 — MLflow raises many types for a missing artifact
                raise RegistryError(
                    f"model {self.name} v{version} (artifacts at {info.source})",
                    f"cannot be downloaded: {str(e)[:300]}",
                    "restore the artifact store, or roll the champion back to a version whose files exist",
                ) from None
            det_dir = Path(local) / "artifacts" / "detector"
            if not (det_dir / "config.json").is_file():
                raise RegistryError(
                    f"model {self.name} v{version} (artifacts at {info.source})",
                    "cannot be downloaded: its files are missing from the artifact store",
                    "restore the artifact store, or roll the champion back to a version whose files exist",
                )
            return Detector.load(det_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_alias(self, alias: str = CHAMPION):
        """(detector, version) for an alias, or (None, None) when it is not set."""
        v = self.alias(alias)
        if v is None:
            return None, None
        return self.load(v), v


#: MLflow's warnings that say nothing to a didact user, each day again: the pyfunc code
#: has no type hints and the model no input example on purpose (the signature is given)
_LOG_MODEL_NOISE = (
    "Add type hints to the `predict` method",
    "An input example was not provided when logging the model",
    "Hint: Inferred schema contains integer column",
)


@contextlib.contextmanager
def _quiet_log_model():
    """Drop exactly :data:`_LOG_MODEL_NOISE` while logging a model.  A filter would not do:
    ``log_model`` resets the filters itself (``filter_user_warnings_once``), so the
    warnings are dropped where they are shown; any other warning is shown as usual."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if not any(n in str(message) for n in _LOG_MODEL_NOISE):
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield


@contextlib.contextmanager
def _quiet_register_model():
    """``register_model`` prints "Registered model … already exists. Creating a new
    version…" and "Created version …" to stderr (``eprint``, not a logger) every day: send
    exactly those prints to this module's debug log while it runs."""
    from mlflow.tracking._model_registry import fluent  # lazy: mlflow takes seconds to import

    if not callable(getattr(fluent, "eprint", None)):
        yield
        return
    original = fluent.eprint
    fluent.eprint = lambda *args, **kwargs: log.debug(" ".join(str(a) for a in args))
    try:
        yield
    finally:
        fluent.eprint = original


def predict_frame(detector, frame):
    """What the logged pyfunc model answers: reconstruction error, latent coordinates, OOD flag."""
    scores = detector.score_samples(frame)
    z = detector.embed(frame)
    out = pd.DataFrame({"reconstruction_error": scores})
    for i in range(z.shape[1]):
        out[f"latent_{i}"] = z[:, i].astype("float64")
    out["ood"] = (scores > detector.threshold_).astype("float64")
    return out


def log_png(png: bytes, name: str) -> None:
    """Log PNG bytes as ``plots/<name>`` in the active MLflow run."""
    # lazy: mlflow takes seconds to import
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(png)
        mlflow.log_artifact(str(path), artifact_path="plots")


def _info(mv) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        run_id=mv.run_id,
        source=mv.source,
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
        tags=dict(mv.tags or {}),
    )


def _version(pkg: str) -> str:
    return importlib.metadata.version(pkg)
