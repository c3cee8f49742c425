"""The champion alias by hand, and what the registry holds: rollback and status rows.

``champion_model`` (``learn.continual``) moves the alias by the promotion gate; here an
operator moves it back (``didact rollback``, the rollback job), recorded in lineage with
who, when and why; the status rows are what ``didact status`` prints.
"""

from __future__ import annotations

import getpass
import json

from didact_core.config import Settings
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError
from didact_core.learn.registry import CHAMPION, PREVIOUS, ModelRegistry

#: the asset whose lineage rows record the model versions (register, promote, rollback)
MODEL_ASSET = "champion_model"


def rollback_champion(settings: Settings, to_version=None, actor: str = "", reason: str = "",
                      registry: ModelRegistry | None = None, asset: str = MODEL_ASSET) -> dict:  # fmt: skip
    """Move ``champion`` back (to ``previous_champion``, or to ``to_version``), after
    checking the target's files load.  Recorded in lineage with who, when and why.

    ``registry``/``asset``: another model family's (the cluster model's ``ClusterRegistry``,
    whose ``load`` checks its own files) and the asset its lineage rows go under."""
    registry = registry or ModelRegistry(settings)
    current = registry.alias(CHAMPION)
    if to_version is None:
        target = registry.alias(PREVIOUS)
        if target is None:
            raise DidactError(f"model {registry.name}", "has no previous champion to roll back to",
                              "name a version with --to")  # fmt: skip
    else:
        try:
            target = int(str(to_version).lstrip("v"))
        except ValueError:
            raise DidactError(f"version {to_version!r}", "is not a model version number") from None
        known = [v.version for v in registry.versions()]
        if target not in known:
            raise DidactError(f"model {registry.name} v{target}", "does not exist",
                              f"registered versions: {known or 'none'}")  # fmt: skip
    registry.load(target)  # a version whose files are gone must not become champion
    registry.promote(target)
    wh = Warehouse(settings.home_path, settings.retention_versions)
    wh.record("rollback", asset, version=f"m{target}", model_version=str(target),
              upstream={"from": current}, actor=actor or getpass.getuser(), reason=reason)  # fmt: skip
    return {"from": current, "to": target}


def model_summary_rows(settings: Settings, days: list[str]) -> list[dict]:
    """Per day: the version trained, its parent, the gate's verdict, the champion after."""
    try:
        wh = Warehouse(settings.home_path)
        lin = wh.lineage(MODEL_ASSET)
    except DidactError:
        return []
    rows = []
    for day in days:
        reg = lin[(lin["partition"] == day) & (lin["event"] == "register")]
        if reg.empty:
            continue
        r = reg.iloc[-1]
        up = json.loads(r["upstream"] or "{}")
        promoted = not lin[(lin["partition"] == day) & (lin["event"] == "promote") & (lin["model_version"] == r["model_version"])].empty
        rows.append({"day": day, "version": f"v{r['model_version']}",
                     "parent": f"v{up['parent_model_version']}" if up.get("parent_model_version") else "–",
                     "promoted": "yes" if promoted else "no", "gate": (r["reason"] or "")[:70]})  # fmt: skip
    return rows


def registry_status(settings: Settings) -> list[dict]:
    try:
        reg = ModelRegistry(settings)
    except DidactError:
        return []
    return [{"version": v.version, "aliases": ",".join(v.aliases), "day": v.tags.get("day", ""),
             "parent": v.tags.get("parent_version", ""), "run": (v.run_id or "")[:8]} for v in reg.versions()]  # fmt: skip
