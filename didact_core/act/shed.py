"""``shed``: a peak-hour plan of idle nodes to suspend, within Slurm power saving's rules.

Slurm's power saving (``slurm.conf``) already says how fast nodes may be suspended and
which never are; didact's plan keeps to them, read live from ``scontrol show config``:

* ``SuspendRate`` — nodes per minute (0: no limit); didact counts its own sheds of the last
  minute in the audit log;
* ``SuspendExcNodes`` (a hostlist; a ``:N`` count is taken as "all of them") and
  ``SuspendExcParts`` — never suspended;
* ``SuspendProgram`` — when set, a shed is ``scontrol update state=power_down`` (Slurm runs
  the program); when power saving is off (as on the single-node test Slurm) a shed is a
  drain with the reason ``didact: shed …``: the node takes no new jobs, and ``didact act
  restore --shed`` (or a ``resume`` rule) brings it back.

Which nodes: idle ones (Slurm ``IDLE``, not drained, not powered down) — the ones doing no
work now — most power first (the day's or the live watts), until the cluster is back under
its budget or the rate, the rule's ``max_nodes`` or ``limits.max_drained_fraction`` (of each of
the node's partitions, :mod:`~didact_core.act.limits`) stops it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from didact_core.act.limits import OutOfService
from didact_core.act.nodes import NodeInfo, SlurmNodes

SHED_PREFIX = "didact: shed"


@dataclass(frozen=True)
class SuspendRules:
    rate_per_min: int = 60  # 0: no limit (Slurm's meaning)
    exc_nodes: frozenset[str] = frozenset()
    exc_parts: frozenset[str] = frozenset()
    power_save: bool = False  # SuspendProgram set: shed = power_down, else a drain

    @property
    def method(self) -> str:
        return "power_down" if self.power_save else "drain"


def suspend_rules(slurm: SlurmNodes) -> SuspendRules:
    """Slurm's power-saving limits, from ``scontrol show config`` (hostlists expanded by Slurm)."""
    cfg = slurm.config()
    m = re.match(r"\s*(\d+)", cfg.get("SuspendRate", "60"))
    rate = int(m.group(1)) if m else 60
    exc = re.sub(r":\d+", "", cfg.get("SuspendExcNodes", ""))  # node[1-8]:2 keeps 2 up: didact keeps all
    parts = cfg.get("SuspendExcParts", "")
    program = cfg.get("SuspendProgram", "").strip()
    nodes = slurm.hostnames(exc) if _words(exc) else []
    return SuspendRules(rate, frozenset(nodes), frozenset(_words(parts)),
                        bool(program) and program.lower() not in ("(null)", "none"))  # fmt: skip


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", text.strip()) if w and w.lower() not in ("(null)", "none")]


def shed_plan(nodes: Mapping[str, NodeInfo], watts: Mapping[str, float | None], rules: SuspendRules,
              excess_w: float | None = None, max_nodes: int | None = None, shed_last_minute: int = 0,
              room: int | None = None,
              out_of_service: OutOfService | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:  # fmt: skip
    """(chosen, skipped): (node, why) each.  Pure.

    ``excess_w``: watts over the budget (stop once the chosen nodes' watts cover it; None or
    unknown watts: no such stop); ``room``: how many more nodes may leave service;
    ``out_of_service``: the per-partition fraction limit (a node that would overfill one of its
    partitions is skipped; not changed here)."""
    out = out_of_service.copy() if out_of_service is not None else None
    chosen: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    candidates = []
    for name, info in sorted(nodes.items()):
        if name in rules.exc_nodes:
            skipped.append((name, "in SuspendExcNodes"))
        elif set(info.partitions) & rules.exc_parts:
            skipped.append((name, f"in SuspendExcParts ({', '.join(sorted(set(info.partitions) & rules.exc_parts))})"))
        elif info.by_admin:
            skipped.append((name, f"{info.state} by an administrator ({info.reason or 'no reason'})"))
        elif info.idle:
            w = watts.get(name)
            candidates.append((-(w if w is not None and not math.isnan(w) else -1.0), name, w))
    limits = []
    if rules.rate_per_min:
        limits.append((max(rules.rate_per_min - shed_last_minute, 0), f"SuspendRate {rules.rate_per_min}/min"))
    if max_nodes is not None:
        limits.append((max_nodes, f"max_nodes {max_nodes}"))
    if room is not None:
        limits.append((max(room, 0), "limits.max_drained_fraction"))
    cap, by = min(limits) if limits else (len(candidates), "")
    saved = 0.0
    for _, name, w in sorted(candidates):
        if excess_w is not None and not math.isnan(excess_w) and saved >= excess_w:
            skipped.append((name, f"not needed: {saved:g} W of the {excess_w:g} W excess is shed already"))
            continue
        if len(chosen) >= cap:
            skipped.append((name, f"idle, but {by} is reached"))
            continue
        full = out.refuse(name) if out is not None else None
        if full:
            skipped.append((name, f"idle, but {full}"))
            continue
        if out is not None:
            out.add(name)
        shown = f"{w:g} W" if w is not None and not math.isnan(w) else "watts unknown"
        chosen.append((name, f"idle, {shown}"))
        saved += w if w is not None and not math.isnan(w) else 0.0
    return chosen, skipped


def shed(slurm: SlurmNodes, node: str, reason: str, rules: SuspendRules) -> str:
    """Suspend one node the way the cluster allows (power_down, or the drain equivalent)."""
    if rules.power_save:
        return slurm.power_down(node, reason)
    return slurm.drain(node, reason)


def unshed(slurm: SlurmNodes, info: NodeInfo) -> str | None:
    """Bring back a node didact shed (its reason starts ``didact: shed``); None for any other node."""
    if not info.reason.startswith(SHED_PREFIX):
        return None
    if "POWER" in info.state.upper():
        return slurm.power_up(info.name)
    return slurm.resume(info.name)
