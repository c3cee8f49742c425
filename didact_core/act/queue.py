"""Approval through the review queue: proposals wait there, ``apply`` takes the accepted ones.

A proposal that needs approval (its rule is not ``auto``) becomes an item of the review
queue (:meth:`~didact_core.data.review.ReviewQueue.add_act_item`; one open item per
proposal id).  A person accepts or rejects it with ``didact review accept|reject ID``.
``didact act apply`` then applies the accepted items — re-checked like ``--approve``: an
item accepted after its condition cleared is refused — and closes each item with what
became of it.  A rejected proposal is never applied, not even with ``--approve``.
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Iterable
from dataclasses import asdict

from didact_core.act.audit import AuditLog
from didact_core.act.planner import Proposal, apply

__all__ = ["apply_reviewed", "queue_proposals"]


def queue_proposals(queue, proposals: Iterable[Proposal], audit: AuditLog | None = None) -> dict[str, tuple[int, bool]]:
    """Put the proposals that need approval into the review queue: {proposal id: (item id, new?)}.

    ``audit``: record a ``proposal`` for each new item (the sensor: one record per proposal,
    not one per tick)."""
    out = {}
    for p in proposals:
        if p.auto:
            continue
        item, new = queue.add_act_item(asdict(p))
        out[p.id] = (item, new)
        if new and audit is not None:
            audit.append("proposal", **asdict(p), review=item)
    return out


def apply_reviewed(policy, observations, slurm, audit: AuditLog, queue, approve: Iterable[str] = (),
                   actor: str | None = None, now: dt.datetime | None = None, **kw) -> list[dict]:  # fmt: skip
    """:func:`~didact_core.act.planner.apply` with the review queue's accepted items approved too.

    ``--approve`` ids whose item was rejected are refused; every accepted item that was
    tried is closed with its outcome (action, refused, failed, notify, not_applied)."""
    actor = actor or getpass.getuser()
    accepted = queue.act_items("accepted", open_only=True)
    rejected = queue.act_items("rejected")
    no = {r["proposal"]: r for r in rejected.to_dict("records")}
    refused = []
    for pid in dict.fromkeys(approve):
        if pid in no:
            r = no[pid]
            refused.append(audit.append(
                "refused", id=pid, node=r["node"], action=r["action"], by=actor, review=int(r["id"]),
                why=f"rejected in the review queue by {r['verdict_by']} ({r['reason']})"))  # fmt: skip
    approvals = {}
    for r in accepted.to_dict("records"):
        if r["proposal"] not in no:
            approvals.setdefault(r["proposal"], {"by": r["verdict_by"], "review": int(r["id"])})
    todo = [pid for pid in dict.fromkeys(approve) if pid not in no]
    outcomes = apply(policy, observations, slurm, audit, approve=todo, actor=actor, now=now, approvals=approvals, **kw)
    for r in accepted.to_dict("records"):
        done = [o for o in outcomes if o.get("id") == r["proposal"]]
        if done:
            queue.act_outcome(int(r["id"]), done[-1]["kind"])
    return refused + outcomes
