"""``didact_act_*`` Prometheus metrics from the audit log and the active caps, as a textfile.

``didact act`` runs as short commands, so its counts live in the audit log; after every
``plan``/``apply``/``restore`` the CLI renders them into a node exporter textfile
(``DIDACT_ACT_METRICS_TEXTFILE``, default ``$DIDACT_HOME/act/didact_act.prom``; point it
into node exporter's ``--collector.textfile.directory``)::

    didact_act_proposals_total                 proposals made (plan, and auto ones at apply)
    didact_act_approvals_total                 approvals given (--approve)
    didact_act_actions_total{action}           actions Slurm or the powercap tree accepted
    didact_act_notifications_total             notify records (sent to the webhook or not)
    didact_act_refused_total                   approved proposals refused (stale, limits)
    didact_act_failures_total{action}          actions that failed (Slurm, webhook, sysfs)
    didact_act_not_applied_total               power caps that could not be written here
    didact_act_restores_total                  cap limits written back
    didact_act_active_caps                     package zones capped now (not yet restored)
    didact_act_power_cap_watts{node}           the active cap of a node's packages
    didact_act_last_record_timestamp_seconds   when the newest audit record was written
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import prometheus_client as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from didact_core.act.audit import AuditLog

ACTIONS = ("drain", "resume", "notify", "power-cap", "shed")


class ActCollector:
    """A collector: reads ``audit`` and ``caps`` (a :class:`~didact_core.act.powercap.PowerCaps`) when scraped."""

    def __init__(self, audit: AuditLog, caps=None):
        self.audit = audit
        self.caps = caps

    def collect(self):
        recs = self.audit.records()
        kinds = Counter(r["kind"] for r in recs)
        for name, kind, text in (
            ("didact_act_proposals", "proposal", "Proposals made (plan, and auto ones at apply)"),
            ("didact_act_approvals", "approval", "Approvals given"),
            ("didact_act_notifications", "notify", "Notify records (sent to the webhook or not)"),
            ("didact_act_refused", "refused", "Approved proposals refused (stale condition, limits)"),
            ("didact_act_not_applied", "not_applied", "Power caps that could not be written on this host"),
            ("didact_act_restores", "restore", "Power-cap limits written back"),
        ):
            c = CounterMetricFamily(name, text)
            c.add_metric([], kinds.get(kind, 0))
            yield c
        for name, kind, text in (("didact_act_actions", "action", "Actions Slurm or the powercap tree accepted"),
                                 ("didact_act_failures", "failed", "Actions that failed")):  # fmt: skip
            by = Counter(r.get("action", "") for r in recs if r["kind"] == kind)
            c = CounterMetricFamily(name, text, labels=["action"])
            for a in ACTIONS:
                c.add_metric([a], by.get(a, 0))
            yield c
        active = self.caps.active() if self.caps is not None else {}
        g = GaugeMetricFamily("didact_act_active_caps", "RAPL package zones capped by didact, not yet restored")
        g.add_metric([], len(active))
        yield g
        w = GaugeMetricFamily("didact_act_power_cap_watts", "Active power cap of a node's packages", labels=["node"])
        for node, uw in sorted({e.get("node", ""): e.get("cap_uw", 0) for e in active.values()}.items()):
            w.add_metric([node], uw / 1e6)
        yield w
        last = GaugeMetricFamily("didact_act_last_record_timestamp_seconds", "Time of the newest act audit record")
        last.add_metric([], dt.datetime.fromisoformat(recs[-1]["ts"]).timestamp() if recs else 0.0)
        yield last


def registry(audit: AuditLog, caps=None) -> pc.CollectorRegistry:
    r = pc.CollectorRegistry(auto_describe=False)
    r.register(ActCollector(audit, caps))
    return r


def write_textfile(path: str | Path, audit: AuditLog, caps=None) -> Path:
    """Render the metrics into ``path`` (atomically: a temp file renamed, as node exporter wants)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pc.write_to_textfile(str(path), registry(audit, caps))
    return path


def textfile_path(settings) -> Path:
    """``DIDACT_ACT_METRICS_TEXTFILE``, default ``$DIDACT_HOME/act/didact_act.prom``."""
    return Path(settings.act_metrics_textfile) if settings.act_metrics_textfile else (
        settings.home_path / "act" / "didact_act.prom")  # fmt: skip
