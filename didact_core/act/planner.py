"""Plan and apply: policies + what didact sees + Slurm's node states → proposals → actions.

``plan`` only reads (``scontrol show node``) and records its proposals in the audit log.
``apply`` executes a proposal only when it was approved (``--approve ID``) or its rule is
``auto``, and only if it still holds *now*: the plan is made again from the current
observations and node states, and an approval whose condition has cleared is refused.
Drains also pass the rate limit (drains per rolling hour) and the largest share of nodes
out of service; a node an administrator drained or downed is never touched.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pandas as pd

from didact_core.act.audit import AuditLog, now_utc
from didact_core.act.nodes import NodeInfo, SlurmNodes
from didact_core.act.policy import Policy, Rule
from didact_core.errors import DidactError


@dataclass(frozen=True)
class Observation:
    """What didact sees of one node: OOD intervals in the window and the newest event's id."""

    node: str
    ood_intervals: int = 0
    event_id: int | None = None


@dataclass(frozen=True)
class Proposal:
    id: str
    rule: str
    node: str
    action: str
    reason: str  # what goes to Slurm (drain) or the notice (notify)
    why: str  # the condition that holds, for people
    auto: bool
    event_id: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.node, self.action)


def observations_from_events(events: pd.DataFrame | Iterable[dict]) -> dict[str, Observation]:
    """Per node: distinct OOD event timestamps (intervals) and the newest event id.

    ``events``: rows with ``node`` and ``id`` and ``ts`` (the review queue's ``ood_events``,
    or a JSON list); a row may give ``ood_intervals`` itself instead (then ``ts`` is not needed).
    Pass only the events of the window you mean (the CLI: pending ones of the last minutes)."""
    df = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events))
    if df.empty:
        return {}
    if "node" not in df:
        raise DidactError("OOD events", "have no 'node' field", 'give each event {"node": …, "id": …, "ts": …}')
    out = {}
    for node, g in df.groupby("node"):
        ids = pd.to_numeric(g["id"], errors="coerce").dropna() if "id" in g else pd.Series([], dtype=float)
        if "ood_intervals" in g and g["ood_intervals"].notna().any():
            n = int(g["ood_intervals"].max())
        elif "ts" in g:
            n = int(pd.to_datetime(g["ts"], utc=True).nunique())
        else:
            n = len(g)
        out[str(node)] = Observation(str(node), n, int(ids.max()) if len(ids) else None)
    return out


def propose(policy: Policy, observations: dict[str, Observation], nodes: dict[str, NodeInfo]):
    """(proposals, skipped) — pure: no Slurm, no audit.  ``skipped``: (rule, node, why) left alone."""
    proposals, skipped, taken = [], [], set()
    for rule in policy.rules:
        for name in sorted(set(nodes) | set(observations)):
            obs = observations.get(name, Observation(name))
            if not rule.holds({"ood_intervals": obs.ood_intervals}):
                continue
            info = nodes.get(name)
            why = f"{rule.when} holds: {rule.metric} = {obs.ood_intervals}"
            if rule.action != "notify":
                if info is None:
                    skipped.append((rule.name, name, "not a Slurm node"))
                    continue
                if info.by_admin:
                    skipped.append((rule.name, name, f"{info.state} by an administrator ({info.reason or 'no reason'})"))
                    continue
                if (rule.action == "drain" and info.out_of_service) or (rule.action == "resume" and not info.ours):
                    continue  # nothing to do: drained already / not drained by didact
                if name in taken:  # one Slurm action per node and plan: the first rule wins
                    continue
                taken.add(name)
            proposals.append(_proposal(rule, name, obs, why))
    return proposals, skipped


def _proposal(rule: Rule, node: str, obs: Observation, why: str) -> Proposal:
    event = f" (event {obs.event_id})" if obs.event_id is not None else ""
    reason = f"didact: {rule.name} {rule.metric} {obs.ood_intervals}{event}"
    digest = hashlib.sha1(f"{rule.name}|{node}|{rule.action}|{obs.event_id}".encode()).hexdigest()[:8]
    return Proposal(digest, rule.name, node, rule.action, reason, why, rule.auto, obs.event_id)


def plan(policy: Policy, observations: dict[str, Observation], slurm: SlurmNodes, audit: AuditLog | None = None):
    """Propose (reads node states only); record the proposals in ``audit``.  (proposals, skipped)."""
    proposals, skipped = propose(policy, observations, slurm.nodes())
    if audit is not None:
        for p in proposals:
            audit.append("proposal", **asdict(p))
    return proposals, skipped


def apply(
    policy: Policy,
    observations: dict[str, Observation],
    slurm: SlurmNodes,
    audit: AuditLog,
    approve: Iterable[str] = (),
    actor: str | None = None,
    now: dt.datetime | None = None,
) -> list[dict]:
    """Execute approved and ``auto`` proposals that still hold; every outcome is an audit record."""
    actor = actor or getpass.getuser()
    now = now or now_utc()
    nodes = slurm.nodes()
    current, _ = propose(policy, observations, nodes)
    by_key = {p.key: p for p in current}
    todo: list[Proposal] = []
    outcomes: list[dict] = []
    for pid in dict.fromkeys(approve):
        old = audit.proposal(pid)
        if old is None:
            outcomes.append(audit.append("refused", id=pid, by=actor, why="no proposal with this id (`didact act plan`)"))
            continue
        audit.append("approval", id=pid, by=actor, node=old["node"], action=old["action"])
        now_p = by_key.get((old["rule"], old["node"], old["action"]))
        if now_p is None:
            outcomes.append(audit.append("refused", id=pid, node=old["node"], action=old["action"], by=actor,
                                         why="condition no longer holds, or already done (re-checked at apply time)"))  # fmt: skip
            continue
        todo.append(Proposal(**{**asdict(now_p), "id": pid}))
    for p in current:
        if p.auto and p.key not in {t.key for t in todo}:
            audit.append("proposal", **asdict(p))
            todo.append(p)
    return outcomes + _execute(policy, todo, nodes, slurm, audit, actor, now)


def _execute(policy, todo, nodes, slurm, audit, actor, now) -> list[dict]:
    out = []
    drained_hour = audit.drains_since(now - dt.timedelta(hours=1))
    down = {n for n, i in nodes.items() if i.out_of_service}
    for p in todo:
        base = {"id": p.id, "node": p.node, "action": p.action, "rule": p.rule, "by": "auto" if p.auto else actor}
        if p.action == "notify":
            out.append(audit.append("notify", **base, reason=p.reason, why=p.why))
            continue
        if p.action == "drain":
            limit = _drain_limit(policy, drained_hour, down | {p.node}, len(nodes))
            if limit:
                out.append(audit.append("refused", **base, why=limit))
                continue
        try:
            answer = slurm.drain(p.node, p.reason) if p.action == "drain" else slurm.resume(p.node)
        except DidactError as e:
            out.append(audit.append("failed", **base, error=str(e)))
            continue
        out.append(audit.append("action", **base, reason=p.reason, slurm=answer.strip() or "ok"))
        if p.action == "drain":
            drained_hour += 1
            down.add(p.node)
        else:
            down.discard(p.node)
    return out


def _drain_limit(policy: Policy, drained_hour: int, down_after: set[str], total: int) -> str | None:
    """Why a drain must wait, or None."""
    if drained_hour >= policy.drains_per_hour:
        return f"rate limit: {drained_hour} drain(s) in the last hour, limits.drains_per_hour = {policy.drains_per_hour}"
    if total and len(down_after) / total > policy.max_drained_fraction:
        return (f"{len(down_after)} of {total} nodes would be out of service, more than "
                f"limits.max_drained_fraction = {policy.max_drained_fraction}")  # fmt: skip
    return None
