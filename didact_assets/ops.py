"""Operator actions as jobs, launchable from the UI's launchpad."""

import dagster as dg

from .resources import DidactResource


class RollbackConfig(dg.Config):
    """Which version becomes champion again (empty: the previous champion)."""

    to_version: int | None = None
    reason: str = ""
    actor: str = "dagster-ui"


@dg.op(description="Move the champion alias back; recorded in lineage with who, when and why.")
def rollback_champion_op(context: dg.OpExecutionContext, config: RollbackConfig, didact: DidactResource) -> dict:
    # lazy: the registry loads models with torch (2 s); every step process loads these definitions
    from didact_core.learn import champion

    res = champion.rollback_champion(
        didact.settings(), to_version=config.to_version, actor=config.actor, reason=config.reason
    )
    context.log.info(f"champion v{res['from']} → v{res['to']}")
    context.add_output_metadata({"from": res["from"], "to": res["to"]})
    return res


@dg.job(description="Roll the champion model back (config: to_version, reason).")
def rollback_champion():
    rollback_champion_op()
