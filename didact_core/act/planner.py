"""Plan and apply: policies + what didact sees + Slurm's node states → proposals → actions.

``plan`` only reads (``scontrol show node``/``show config``) and records its proposals in
the audit log.  ``apply`` executes a proposal only when it was approved (``--approve ID``)
or its rule is ``auto``, and only if it still holds *now*: the plan is made again from the
current observations and node states, and an approval whose condition has cleared is
refused.  Drains and sheds also pass the rate limits (drains per rolling hour; Slurm's
``SuspendRate`` per minute) and the largest share of each Slurm partition out of service
(:mod:`~didact_core.act.limits`); a node an administrator drained or downed is never touched,
and a node didact drained is not resumed while the rule that drained it still holds.
``job_peer_score`` rules (:mod:`~didact_core.act.peers`) name the job the node straggles in.
``power-cap`` writes RAPL limits on this host (:mod:`~didact_core.act.powercap`), ``notify``
POSTs an Alertmanager-style webhook (:mod:`~didact_core.act.notify`), ``shed`` suspends idle
nodes (:mod:`~didact_core.act.shed`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field

from didact_core.act import notify as webhook
from didact_core.act.audit import AuditLog, now_utc
from didact_core.act.conditions import (
    INCIDENTS,
    PEER_METRIC,
    Observation,
    cluster_metrics,
    in_hours,
    observations_from_events,
)
from didact_core.act.limits import OutOfService
from didact_core.act.nodes import NodeInfo, SlurmNodes
from didact_core.act.peers import straggler
from didact_core.act.policy import Policy, Rule
from didact_core.act.powercap import PowerCaps
from didact_core.act.shed import SHED_PREFIX, SuspendRules, shed, shed_plan, suspend_rules
from didact_core.errors import DidactError

__all__ = ["Context", "Observation", "Proposal", "apply", "observations_from_events", "plan", "propose"]
CLUSTER = "cluster"  # the node name of a cluster-wide notify


@dataclass(frozen=True)
class Proposal:
    id: str
    rule: str
    node: str
    action: str
    reason: str  # what goes to Slurm (drain/shed), the notice (notify), or the cap (power-cap)
    why: str  # the condition that holds, for people
    auto: bool
    event_id: int | None = None
    watts: float | None = None  # power-cap: the package limit
    job: str | None = None  # job_peer_score: the job the node straggles in

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        return (self.rule, self.node, self.action, self.job)


@dataclass
class Context:
    """What a plan needs besides the policy and observations; the defaults fit a plain drain/resume plan."""

    now: dt.datetime = field(default_factory=now_utc)
    suspend: SuspendRules | None = None  # Slurm's power-saving rules (read when a shed rule exists)
    shed_last_minute: int = 0
    capped: frozenset[str] = frozenset()  # nodes with a power cap didact has not restored


def propose(policy: Policy, observations: dict[str, Observation], nodes: dict[str, NodeInfo],
            ctx: Context | None = None):  # fmt: skip
    """(proposals, skipped) — pure: no Slurm, no audit.  ``skipped``: (rule, node, why) left alone."""
    ctx = ctx or Context()
    proposals, skipped, taken = [], [], set()
    cluster = cluster_metrics(observations)
    for rule in policy.rules:
        if not in_hours(rule.hours, ctx.now):
            continue
        if rule.cluster:
            proposals += _cluster_rule(policy, rule, cluster, observations, nodes, ctx, skipped, taken)
            continue
        for name in sorted(set(nodes) | set(observations) - {INCIDENTS}):
            obs = observations.get(name, Observation(name))
            hit = _hit(rule, obs)
            if hit is None:
                continue
            value, why, job = hit
            info = nodes.get(name)
            if rule.action != "notify":
                if info is None and rule.action != "power-cap":
                    skipped.append((rule.name, name, "not a Slurm node"))
                    continue
                if info is not None and info.by_admin:
                    skipped.append((rule.name, name, f"{info.state} by an administrator ({info.reason or 'no reason'})"))
                    continue
                if _done(rule, info, name, ctx):
                    continue
                if rule.action == "resume" and (held := _still_held(policy, info, obs)):
                    skipped.append((rule.name, name, held))
                    continue
                if (name, rule.action == "power-cap") in taken:  # one Slurm action (and one cap) per node and plan
                    continue
                taken.add((name, rule.action == "power-cap"))
            proposals.append(_proposal(rule, name, obs, why, value, job))
    return proposals, skipped


def _hit(rule: Rule, obs: Observation) -> tuple[float, str, str | None] | None:
    """(value, why, job) when ``rule``'s condition holds for the node, else None."""
    if rule.metric == PEER_METRIC:
        s = straggler(obs, rule.op, rule.value, rule.for_intervals)
        if s is None:
            return None
        return s.score, (f"{rule.when} in {rule.for_intervals} interval(s) in a row: straggler in job {s.job}, "
                         f"peer score {s.score:.3g} (newest; {s.intervals} interval(s) so far)" + _in(rule)), s.job  # fmt: skip
    metrics = obs.metrics()
    if not rule.holds(metrics):
        return None
    return metrics[rule.metric], f"{rule.when} holds: {rule.metric} = {metrics[rule.metric]:g}" + _in(rule), None


def _still_held(policy: Policy, info: NodeInfo, obs: Observation) -> str | None:
    """Why a node didact drained stays drained: the rule named in its reason still holds (no flapping
    between a straggler drain and an ``ood_intervals == 0`` resume), or None."""
    m = re.match(r"didact: (\S+) ", info.reason)
    drain = next((r for r in policy.rules if m and r.name == m.group(1) and r.action == "drain"), None)
    if drain is not None and _hit(drain, obs) is not None:
        return f"drained by rule {drain.name}, whose condition still holds"
    return None


def _done(rule: Rule, info: NodeInfo | None, name: str, ctx: Context) -> bool:
    """Nothing to do: drained already / not drained by didact (or shed: ``restore --shed`` brings those
    back) / capped already."""
    if rule.action == "power-cap":
        return name in ctx.capped
    if rule.action == "resume":
        return not info.ours or info.reason.startswith(SHED_PREFIX)
    return rule.action == "drain" and info.out_of_service


def _in(rule: Rule) -> str:
    return f" in {rule.hours} UTC" if rule.hours else ""


def _cluster_rule(policy, rule, cluster, observations, nodes, ctx, skipped, taken) -> list[Proposal]:
    value = cluster[rule.metric]
    if not rule.holds(cluster):
        return []
    why = f"{rule.when} holds: {rule.metric} = {value:g}" + _in(rule)
    incidents = observations.get(INCIDENTS)  # its newest event id tells one incident's notify from the next
    tag = Observation(CLUSTER, event_id=incidents.event_id) if rule.metric == "cluster_incidents" and incidents \
        else Observation(CLUSTER)  # fmt: skip
    if rule.action == "notify":
        return [_proposal(rule, CLUSTER, tag, why, value)]
    if rule.action == "power-cap":
        names = [n for n in sorted(set(nodes) | set(observations) - {INCIDENTS}) if n not in ctx.capped
                 and not (nodes.get(n) and nodes[n].by_admin) and (n, True) not in taken]  # fmt: skip
        taken.update((n, True) for n in names)
        return [_proposal(rule, n, observations.get(n, Observation(n)), why, value) for n in names]
    # shed: idle nodes, most watts first, until the excess is covered or a limit is reached
    free = {n: i for n, i in nodes.items() if (n, False) not in taken}
    excess = value - rule.value if rule.op in (">", ">=") else None
    chosen, left = shed_plan(free, {n: o.watts for n, o in observations.items()}, ctx.suspend or SuspendRules(),
                             excess, rule.max_nodes, ctx.shed_last_minute,
                             out_of_service=OutOfService.of(policy, nodes))  # fmt: skip
    skipped.extend((rule.name, n, w) for n, w in left)
    taken.update((n, False) for n, _ in chosen)
    return [_proposal(rule, n, observations.get(n, Observation(n)), f"{why}; {w}", value) for n, w in chosen]


def _proposal(rule: Rule, node: str, obs: Observation, why: str, value: float, job: str | None = None) -> Proposal:
    event = f" (event {obs.event_id})" if obs.event_id is not None else ""
    head = "didact: shed" if rule.action == "shed" else "didact:"
    reason = f"{head} {rule.name} {rule.metric} {value:g}{event}"
    if rule.action == "power-cap":
        reason += f" cap {rule.watts:g} W"
    if job is not None:  # a straggler: its event is the node's newest OOD event, if it has one
        reason = f"didact: {rule.name} straggler in job {job}, peer score {value:.3g}{event}"
    # a straggler's proposal is one per (node, job): a new OOD event of the node is not a new one
    tag = f"job:{job}" if job is not None else obs.event_id
    digest = hashlib.sha1(f"{rule.name}|{node}|{rule.action}|{tag}".encode()).hexdigest()[:8]
    return Proposal(digest, rule.name, node, rule.action, reason, why, rule.auto, obs.event_id, rule.watts, job)


def context(policy: Policy, slurm: SlurmNodes, audit: AuditLog | None, caps: PowerCaps | None,
            now: dt.datetime | None = None) -> Context:  # fmt: skip
    """The live context: Slurm's suspend rules (only when a shed rule exists), recent sheds, active caps."""
    now = now or now_utc()
    ctx = Context(now=now)
    if any(r.action == "shed" for r in policy.rules):
        ctx.suspend = suspend_rules(slurm)
        ctx.shed_last_minute = audit.actions_since("shed", now - dt.timedelta(minutes=1)) if audit else 0
    if caps is not None:
        ctx.capped = frozenset(e.get("node", caps.node) for e in caps.active().values())
    return ctx


def plan(policy: Policy, observations: dict[str, Observation], slurm: SlurmNodes, audit: AuditLog | None = None,
         caps: PowerCaps | None = None, now: dt.datetime | None = None):  # fmt: skip
    """Propose (reads node states only); record the proposals in ``audit``.  (proposals, skipped)."""
    proposals, skipped = propose(policy, observations, slurm.nodes(), context(policy, slurm, audit, caps, now))
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
    caps: PowerCaps | None = None,
    webhook_url: str = "",
    approvals: Mapping[str, dict] | None = None,
    skip_auto: Collection[str] = (),
) -> list[dict]:
    """Execute approved and ``auto`` proposals that still hold; every outcome is an audit record.

    ``approve``: proposal ids ``actor`` approves; ``approvals``: more, each with who approved
    it and where (``{"by": …, "review": item}``, the review queue's accepted items);
    ``skip_auto``: ``auto`` proposal ids not to run again (the sensor's, already done)."""
    actor = actor or getpass.getuser()
    approvals = dict(approvals or {})
    now = now or now_utc()
    nodes = slurm.nodes()
    ctx = context(policy, slurm, audit, caps, now)
    current, _ = propose(policy, observations, nodes, ctx)
    by_key = {p.key: p for p in current}
    todo: list[Proposal] = []
    outcomes: list[dict] = []
    by: dict[str, dict] = {}
    for pid in dict.fromkeys([*approve, *approvals]):
        who = {"by": actor, **approvals.get(pid, {})}
        old = audit.proposal(pid)
        if old is None:
            outcomes.append(audit.append("refused", id=pid, **who, why="no proposal with this id (`didact act plan`)"))
            continue
        audit.append("approval", id=pid, **who, node=old["node"], action=old["action"])
        now_p = by_key.get((old["rule"], old["node"], old["action"], old.get("job")))
        if now_p is None:
            outcomes.append(audit.append("refused", id=pid, node=old["node"], action=old["action"], **who,
                                         why="condition no longer holds, or already done (re-checked at apply time)"))  # fmt: skip
            continue
        todo.append(Proposal(**{**asdict(now_p), "id": pid}))
        by[pid] = who
    for p in current:
        if p.auto and p.key not in {t.key for t in todo} and p.id not in skip_auto:
            audit.append("proposal", **asdict(p))
            todo.append(p)
    run = _Runner(policy, nodes, slurm, audit, actor, now, ctx, caps, webhook_url or policy.notify_url)
    return outcomes + [run(p, by.get(p.id)) for p in todo]


class _Runner:
    """Executes one proposal at a time, keeping the limits' counts current between them."""

    def __init__(self, policy, nodes, slurm, audit, actor, now, ctx, caps, url):
        self.policy, self.nodes, self.slurm, self.audit, self.actor = policy, nodes, slurm, audit, actor
        self.ctx, self.caps, self.url = ctx, caps, url
        self.drained_hour = audit.actions_since("drain", now - dt.timedelta(hours=1))
        self.shed_minute = ctx.shed_last_minute
        self.out = OutOfService.of(policy, nodes)

    def __call__(self, p: Proposal, who: dict | None = None) -> dict:
        who = who or {"by": "auto" if p.auto else self.actor}
        base = {"id": p.id, "node": p.node, "action": p.action, "rule": p.rule, **who}
        if p.job is not None:  # a straggler's job, in every record of what became of it
            base["job"] = p.job
        if p.action == "notify":
            return self._notify(p, base)
        if p.action == "power-cap":
            return self._cap(p, base)
        limit = self._limit(p)
        if limit:
            return self.audit.append("refused", **base, why=limit)
        try:
            if p.action == "shed":
                answer = shed(self.slurm, p.node, p.reason, self.ctx.suspend or SuspendRules())
            else:
                answer = self.slurm.drain(p.node, p.reason) if p.action == "drain" else self.slurm.resume(p.node)
        except DidactError as e:
            return self.audit.append("failed", **base, error=str(e))
        if p.action == "resume":
            self.out.discard(p.node)
        else:
            self.out.add(p.node)
            self.drained_hour += p.action == "drain"
            self.shed_minute += p.action == "shed"
        extra = {"method": (self.ctx.suspend or SuspendRules()).method} if p.action == "shed" else {}
        return self.audit.append("action", **base, reason=p.reason, slurm=answer.strip() or "ok", **extra)

    def _limit(self, p: Proposal) -> str | None:
        """Why a drain or shed must wait, or None."""
        pol = self.policy
        if p.action == "drain" and self.drained_hour >= pol.drains_per_hour:
            return f"rate limit: {self.drained_hour} drain(s) in the last hour, limits.drains_per_hour = {pol.drains_per_hour}"
        rate = (self.ctx.suspend or SuspendRules()).rate_per_min
        if p.action == "shed" and rate and self.shed_minute >= rate:
            return f"rate limit: {self.shed_minute} shed(s) in the last minute, Slurm's SuspendRate = {rate}/min"
        return self.out.refuse(p.node) if p.action in ("drain", "shed") else None

    def _notify(self, p: Proposal, base: dict) -> dict:
        if not self.url:
            return self.audit.append("notify", **base, reason=p.reason, why=p.why, sent_to="")
        body = webhook.payload([webhook.alert(p.node, p.rule, p.action, p.reason, p.why, self.ctx.now)])
        try:
            status = webhook.post(self.url, body, self.policy.notify_timeout_s)
        except DidactError as e:
            return self.audit.append("failed", **base, error=str(e))
        return self.audit.append("notify", **base, reason=p.reason, why=p.why, sent_to=self.url, http=status)

    def _cap(self, p: Proposal, base: dict) -> dict:
        if self.caps is None:
            return self.audit.append("failed", **base, error="no powercap tree configured (DIDACT_POWERCAP_ROOT)")
        if p.node != self.caps.node:  # sysfs is local: another node's cap is run there
            cmd = self.caps.command(dict.fromkeys(self.caps.zones(), int(round(p.watts * 1e6))))
            return self.audit.append("not_applied", **base, watts=p.watts, command=f"on {p.node}: {cmd}",
                                     why=f"{p.node} is not this host ({self.caps.node}); run the command there")  # fmt: skip
        try:
            res = self.caps.apply(p.watts)
        except (DidactError, OSError) as e:
            return self.audit.append("failed", **base, error=str(e))
        rec = {k: v for k, v in asdict(res).items() if k not in ("node", "applied")}
        return self.audit.append("action" if res.applied else "not_applied", **base, **rec)


def shed_nodes(nodes: dict[str, NodeInfo]) -> list[NodeInfo]:
    """Nodes out of service by a didact shed (what ``didact act restore --shed`` brings back)."""
    return [i for i in nodes.values() if i.reason.startswith(SHED_PREFIX)]

