"""The largest share of a Slurm partition out of service (``limits.max_drained_fraction``).

Counted per partition, from each node's ``Partitions`` in ``scontrol show node`` (the same
membership ``scontrol show partition`` lists): a node in several partitions counts against each
of them, and a drain or shed is refused when any of its partitions would then have more than
its fraction out of service (drained, draining, down or failed — an administrator's too).  Nodes
in no partition are one group of their own.  ``[limits.partitions]`` gives a partition a
fraction of its own (``gpu = 0.1``); the others take ``max_drained_fraction``.
"""

from __future__ import annotations

from collections.abc import Mapping

from didact_core.act.nodes import NodeInfo
from didact_core.errors import DidactError

#: the group of the nodes Slurm puts in no partition
NO_PARTITION = ""


class OutOfService:
    """Which nodes are out of service, by partition; whether one more may leave (:meth:`refuse`)."""

    def __init__(self, nodes: Mapping[str, NodeInfo], fraction: float, own: Mapping[str, float] | None = None):
        self.fraction, self.own = float(fraction), dict(own or {})
        self.parts = {n: i.partitions or (NO_PARTITION,) for n, i in nodes.items()}
        self.members: dict[str, set[str]] = {}
        for n, parts in self.parts.items():
            for part in parts:
                self.members.setdefault(part, set()).add(n)
        self.down = {n for n, i in nodes.items() if i.out_of_service}
        unknown = sorted(set(self.own) - set(self.members)) if self.members else []
        if unknown:  # a typo would silently leave the partition at max_drained_fraction
            raise DidactError(
                f"policy [limits.partitions] {', '.join(unknown)}",
                f"Slurm has no such partition (it has {', '.join(p for p in sorted(self.members) if p) or 'none'})",
                "name a partition of `scontrol show partition`, or remove the entry",
            )

    @classmethod
    def of(cls, policy, nodes: Mapping[str, NodeInfo]) -> OutOfService:
        return cls(nodes, policy.max_drained_fraction, dict(policy.partition_fractions))

    def copy(self) -> OutOfService:
        new = object.__new__(OutOfService)
        new.fraction, new.own, new.parts, new.members, new.down = self.fraction, self.own, self.parts, self.members, set(self.down)
        return new

    def limit(self, part: str) -> tuple[float, str]:
        """(the partition's fraction, the policy key that sets it)."""
        if part in self.own:
            return self.own[part], f"limits.partitions.{part} = {self.own[part]:g}"
        return self.fraction, f"limits.max_drained_fraction = {self.fraction:g}"

    def refuse(self, node: str) -> str | None:
        """Why ``node`` may not leave service now (the first partition it would overfill), or None."""
        after = self.down | {node}
        for part in sorted(self.parts.get(node, ())):
            members = self.members[part]
            out = len(after & members)
            frac, key = self.limit(part)
            if out / len(members) > frac:
                where = f"nodes of partition {part}" if part != NO_PARTITION else "nodes"
                return f"{out} of {len(members)} {where} would be out of service, more than {key}"
        return None

    def add(self, node: str) -> None:
        self.down.add(node)

    def discard(self, node: str) -> None:
        self.down.discard(node)

    def shares(self) -> dict[str, tuple[int, int]]:
        """{partition: (out of service, nodes)} now."""
        return {p: (len(self.down & m), len(m)) for p, m in sorted(self.members.items())}
