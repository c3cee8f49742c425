"""A day's training outcome as it was stored, for re-emitting instead of training again.

When the disk fills between ``train_day``'s commit (the version registered in MLflow, its
``register`` lineage row, the promotion) and the orchestrator's event write, the step fails
while the registry has moved.  The next run of the day must not train a second version
from the same inputs: the orchestrator layer asks

1. :func:`last_registration` — the day's last ``register`` lineage row (which run
   registered which version from which data, its parent, whether it was promoted);
2. whether that run failed before recording it (the orchestrator's own question);
3. :func:`changed_since` — whether a training now would start from anything else: the
   code version, the data versions (the day's and the replay days' AI-ready heads), the
   settings and review verdicts recorded on the run (``continual.INPUTS_TAG``), the
   champion it would continue from; and whether the stored outcome is complete (the
   version in the registry, its run FINISHED, a passed gate's promotion recorded);
4. :func:`stored_outcome` — the ``TrainOutcome`` that run returned, rebuilt from the
   lineage row and MLflow (version, run, gate, fit, sample counts, plots).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.data.spine import AI_READY
from didact_core.data.warehouse import Warehouse
from didact_core.errors import RegistryError
from didact_core.learn.champion import MODEL_ASSET
from didact_core.learn.code_versions import TRAIN_CODE_VERSION
from didact_core.learn.continual import INPUTS_TAG, TrainOutcome, training_inputs
from didact_core.learn.gate import GateResult
from didact_core.learn.registry import CHAMPION, ModelRegistry
from didact_core.learn.split import earlier_days

#: the plots a training run logs (``plots/<name>.png``), in the order the UI shows them
PLOTS = ("latent", "losses", "error_hist")


@dataclass(frozen=True)
class Registration:
    """A day's ``register`` lineage row, with the rows that belong to it."""

    day: str
    model_version: int
    #: the orchestrator's run that registered it (None: trained outside one)
    run_id: str | None
    mlflow_run_id: str | None
    code_version: str | None
    #: ``ai_ready_metrics/<day>`` → the version ref it trained on (the day and the replay days)
    data_versions: dict
    parent_version: int | None
    promoted: bool
    #: the executor job's metadata (``executed`` row, DIDACT_EXECUTOR=slurm), else None
    job: dict | None = None


def _text(value) -> str | None:
    """A lineage cell as text (DuckDB's NULLs come back as None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value) or None


def last_registration(settings: Settings, day: str) -> Registration | None:
    """The day's last ``register`` lineage row of ``champion_model`` (None: never trained)."""
    lin = Warehouse(settings.home_path).lineage(MODEL_ASSET, partition=day)
    registered = lin[lin["event"] == "register"]
    if registered.empty:
        return None
    row = registered.iloc[-1]
    version = str(row["model_version"])
    later = lin[(lin["id"] > row["id"]) & (lin["model_version"] == version)]
    upstream = json.loads(_text(row["upstream"]) or "{}")
    parent = upstream.pop("parent_model_version", None)
    executed = lin[(lin["event"] == "executed") & (lin["model_version"] == version)]
    job = json.loads(_text(executed.iloc[-1]["reason"]) or "{}") if not executed.empty else None
    return Registration(
        day=day, model_version=int(version), run_id=_text(row["run_id"]), mlflow_run_id=_text(row["mlflow_run_id"]),
        code_version=_text(row["code_version"]), data_versions=upstream,
        parent_version=int(parent) if parent is not None else None,
        promoted=bool((later["event"] == "promote").any()), job=job,
    )  # fmt: skip


def current_data_versions(settings: Settings, day: str) -> dict | None:
    """The AI-ready versions a training of ``day`` would read now (None: the day has none)."""
    wh = Warehouse(settings.home_path)
    days = [day, *earlier_days(wh, day, settings.replay_days)]
    heads = {d: wh.head(AI_READY, d) for d in days}
    if any(h is None for h in heads.values()):
        return None
    return {f"{AI_READY}/{d}": h.ref for d, h in heads.items()}


def inputs_now(settings: Settings, model_version: int) -> dict:
    """``continual.training_inputs`` as a training now would record them: the review's
    accepted events count as not trained yet when ``model_version`` trained on them."""
    decided = ReviewQueue(settings).decided()
    rejected = decided[decided["status"] == "rejected"]
    trained_in = decided["trained_in_version"]
    accepted = decided[(decided["status"] == "accepted") & (trained_in.isna() | (trained_in == model_version))]
    return training_inputs(settings, rejected["id"].tolist(), accepted["id"].tolist())


def changed_since(settings: Settings, reg: Registration) -> str | None:
    """Why a training of ``reg.day`` now would not repeat ``reg``'s (or why its stored outcome
    is incomplete); None when re-emitting it is right."""
    if reg.code_version != TRAIN_CODE_VERSION:
        return f"the training code changed (version {reg.code_version} → {TRAIN_CODE_VERSION})"
    now = current_data_versions(settings, reg.day) or {}
    if now != reg.data_versions:
        return f"its data changed ({', '.join(_differ(reg.data_versions, now))})"
    registry = ModelRegistry(settings)
    mv = next((v for v in registry.versions() if v.version == reg.model_version), None)
    if mv is None or mv.tags.get("day") != reg.day or not reg.mlflow_run_id or mv.run_id != reg.mlflow_run_id:
        return (f"model {settings.model_name} holds no v{reg.model_version} of {reg.day} from MLflow run "
                f"{reg.mlflow_run_id} (another DIDACT_MODEL_NAME or tracking server?)")  # fmt: skip
    run = registry.call("reading the training run", registry.client.get_run, reg.mlflow_run_id)
    if run.info.status != "FINISHED":
        return f"its MLflow run {reg.mlflow_run_id} is {run.info.status}"
    recorded = run.data.tags.get(INPUTS_TAG)
    if recorded is None:
        return "its run recorded no training inputs (trained by an older didact)"
    then, inputs = json.loads(recorded), inputs_now(settings, reg.model_version)
    if then != inputs:
        return f"its settings or review verdicts changed ({', '.join(_differ(then, inputs))})"
    gate = _gate(registry, reg.mlflow_run_id)
    if gate is None:
        return f"its run {reg.mlflow_run_id} has no promotion_gate.json"
    if gate.passed and not reg.promoted:
        return f"its gate passed but the promotion of v{reg.model_version} was not recorded"
    champion, expected = registry.alias(CHAMPION), reg.model_version if reg.promoted else reg.parent_version
    if champion != expected:
        return f"the champion is v{champion} now, not v{expected} as that run left it"
    return None


def _differ(a: dict, b: dict) -> list[str]:
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def stored_outcome(settings: Settings, reg: Registration) -> TrainOutcome:
    """The ``TrainOutcome`` that ``reg``'s training returned, rebuilt from the lineage row and
    MLflow: the version, the run's sample counts, the gate, the fit record, the plots
    (``seconds``: the run's duration)."""
    registry = ModelRegistry(settings)
    run = registry.call("reading the training run", registry.client.get_run, reg.mlflow_run_id)
    gate = _gate(registry, reg.mlflow_run_id)
    if gate is None:
        raise RegistryError(f"MLflow run {reg.mlflow_run_id}", "has no promotion_gate.json",
                            f"re-materialise {MODEL_ASSET} for {reg.day}")  # fmt: skip
    fits = registry.load(reg.model_version).fits_
    params, info = run.data.params, run.info
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else 0.0
    return TrainOutcome(
        day=reg.day, version=registry.version(reg.model_version), parent_version=reg.parent_version,
        mlflow_run_id=reg.mlflow_run_id, gate=gate, promoted=reg.promoted, champion_version=registry.alias(CHAMPION),
        n_train=int(params.get("data.n_today", 0)), n_replay=int(params.get("data.n_replay", 0)), seconds=seconds,
        data_versions=dict(reg.data_versions), fit=dict(fits[-1]) if fits else {},
        excluded_by_review=int(params.get("data.excluded_by_review", 0)),
        added_from_review=int(params.get("data.added_from_review", 0)), plots=_plots(registry, reg.mlflow_run_id),
    )  # fmt: skip


def _download(registry: ModelRegistry, run_id: str, path: str, dst: str) -> Path | None:
    """An artifact of the run, downloaded into ``dst``; None when it is missing."""
    # lazy: mlflow takes seconds to import
    import mlflow

    try:
        return Path(registry.call(f"downloading {path}", mlflow.artifacts.download_artifacts,
                                   run_id=run_id, artifact_path=path, dst_path=dst))  # fmt: skip
    except RegistryError:
        return None


def _gate(registry: ModelRegistry, run_id: str) -> GateResult | None:
    """The promotion gate's result as the run logged it (``promotion_gate.json``)."""
    with tempfile.TemporaryDirectory(prefix="didact-gate-") as tmp:
        path = _download(registry, run_id, "promotion_gate.json", tmp)
        if path is None or not path.is_file():
            return None
        g = json.loads(path.read_text())
    return GateResult(passed=bool(g["passed"]), reason=g["reason"], challenger=g.get("challenger", {}),
                      champion=g.get("champion", {}), tolerance=float(g["tolerance"]))  # fmt: skip


def _plots(registry: ModelRegistry, run_id: str) -> dict[str, bytes]:
    """The run's plots (``plots/<name>.png``) as PNG bytes; those missing are left out."""
    with tempfile.TemporaryDirectory(prefix="didact-plots-") as tmp:
        folder = _download(registry, run_id, "plots", tmp)
        if folder is None:
            return {}
        return {name: (folder / f"{name}.png").read_bytes() for name in PLOTS if (folder / f"{name}.png").is_file()}
