"""One look at the live state (the Dagster act sensor's body, ``didact_assets/sensors_act.py``).

Reads the policy (``DIDACT_ACT_POLICY``), the review queue's pending OOD events of the last
``LIVE_WINDOW_MIN`` minutes with their scoring intervals, Slurm's node states and watts, and —
when a rule reads ``job_peer_score`` — the cluster model's peer scores from Prometheus
(:func:`~didact_core.act.peers.live_peers`; Prometheus down: those rules hold for no node and
the message says so, the other rules go on);
plans; puts each proposal that needs approval into the review queue (recorded once, when
its item is new); applies the ``auto`` rules' proposals that still hold — never anything
else: accepted review items wait for ``didact act apply``.  Returns the message the sensor
shows.  A missing or bad policy, a dead Slurm controller: a :class:`DidactError` (the
sensor's tick fails with it).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping

from didact_core.act.audit import AuditLog, now_utc, summary
from didact_core.act.conditions import observations_from_events, scoring_intervals, with_power
from didact_core.act.metrics import textfile_path, write_textfile
from didact_core.act.nodes import NoSlurm, SlurmNodes
from didact_core.act.peers import live_peers, with_peers
from didact_core.act.planner import apply, context, propose
from didact_core.act.policy import load_policy
from didact_core.act.powercap import PowerCaps
from didact_core.act.queue import queue_proposals
from didact_core.config import Settings
from didact_core.data.review import ReviewQueue
from didact_core.errors import DidactError

LIVE_WINDOW_MIN = 30.0  # minutes of pending OOD events that count (``didact act plan``'s default --window)
NO_POLICY = "no act policy: set DIDACT_ACT_POLICY (or the resource's act_policy) to a policy TOML (docs/act.md)"
#: an auto notify is sent again at most this often while its condition holds (drain, resume,
#: shed and power-cap need no such memory: the node's state or the cap says they are done)
NOTIFY_REPEAT = dt.timedelta(hours=1)


def live_events(queue: ReviewQueue, minutes: float, now: dt.datetime | None = None):
    """(pending OOD events of the last ``minutes``, the scoring intervals since then)."""
    since = (now or now_utc()) - dt.timedelta(minutes=minutes)
    df = queue.list(status="pending", limit=1_000_000)
    return (df[df["ts"] >= since] if not df.empty else df), scoring_intervals(queue, since)


def slurm_for(policy, settings: Settings):
    """Slurm's nodes; a host without ``scontrol`` whose rules need no Slurm (notify, power-cap): none."""
    if shutil.which("scontrol") is None and all(r.action in ("notify", "power-cap") for r in policy.rules):
        return NoSlurm()
    return SlurmNodes(conf=settings.slurm_conf or None, timeout_s=settings.slurm_command_timeout_s)


def tick(settings: Settings, notified: Mapping[str, str] | None = None,
         now: dt.datetime | None = None) -> tuple[str, dict[str, str]]:  # fmt: skip
    """(message, ``notified``: {auto notify proposal id: when sent} of the last NOTIFY_REPEAT — pass it back)."""
    at = now or now_utc()
    notified = {k: v for k, v in (notified or {}).items() if at - dt.datetime.fromisoformat(v) < NOTIFY_REPEAT}
    if not settings.act_policy:
        return NO_POLICY, notified
    policy = load_policy(settings.act_policy)
    peers_note = ""
    queue = ReviewQueue(settings)
    audit = AuditLog.under(settings.home_path, queue.wh)
    caps = PowerCaps.under(settings.home_path, settings.powercap_root, audit=audit)
    slurm = slurm_for(policy, settings)
    try:
        nodes = slurm.nodes()
        events, intervals = live_events(queue, LIVE_WINDOW_MIN, now)
        watts = {n: i.watts for n, i in nodes.items() if i.watts is not None}
        observations = with_power(observations_from_events(events, intervals), watts)
        try:
            observations = with_peers(observations, *live_peers(settings, policy, at))
        except DidactError as e:
            peers_note = f"job peer scores unavailable, job_peer_score rules hold for no node: {e}"
        proposals, skipped = propose(policy, observations, nodes, context(policy, slurm, audit, caps, now))
        queued = queue_proposals(queue, proposals, audit)
        outcomes = apply(policy, observations, slurm, audit, actor="sensor", now=now, caps=caps,
                         webhook_url=policy.notify_url or settings.act_webhook_url, skip_auto=notified)  # fmt: skip
    finally:
        write_textfile(textfile_path(settings), audit, caps)
    parts = [peers_note] if peers_note else []
    if outcomes:
        parts.append("auto: " + "; ".join(summary(o) for o in outcomes))
    waiting = sorted(queue.act_items("pending")[["id", "action", "node"]].itertuples(index=False))
    if waiting:
        new = sum(1 for _, n in queued.values() if n)
        items = ", ".join(f"{i} ({a} {n})" for i, a, n in waiting[:10]) + (", …" if len(waiting) > 10 else "")
        parts.append(f"{len(waiting)} proposal(s) wait for approval ({new} new): review items {items} — "
                     "`didact review accept ID --reason …`, then `didact act apply`")  # fmt: skip
    if skipped:
        parts.append("left alone: " + "; ".join(f"{n} ({r}): {w}" for r, n, w in skipped))
    if not parts:
        parts.append(f"nothing to propose: {len(policy.rules)} rule(s) of {policy.source} hold for none of "
                     f"{len(observations)} node(s) seen ({len(events)} pending OOD event(s) in {LIVE_WINDOW_MIN:g} min)")  # fmt: skip
    notified |= {o["id"]: at.isoformat() for o in outcomes if o["kind"] == "notify" and o.get("by") == "auto"}
    return " | ".join(parts), notified


