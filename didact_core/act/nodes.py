"""Node controls through Slurm (``scontrol``), every call under the engine's watchdog.

Like LBNL's Node Health Check, didact owns only the drains it made: their reason starts
with ``didact:``.  A node an administrator drained or downed (any other reason) is never
drained again nor resumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from didact_core.engine.slurm import SlurmExecutor
from didact_core.engine.slurm_records import parse_record
from didact_core.errors import DidactError

PREFIX = "didact:"
_OUT_OF_SERVICE = ("DRAIN", "DOWN", "FAIL")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # Slurm's state word, e.g. IDLE, MIXED, IDLE+DRAIN, DOWN+DRAIN
    reason: str = ""
    partitions: tuple[str, ...] = ()
    watts: float | None = None  # Slurm's CurrentWatts when an energy plugin reports it

    @property
    def idle(self) -> bool:
        """In service and running nothing (IDLE, not drained, powered down or powering)."""
        words = self.state.upper().split("+")
        return words[0] == "IDLE" and not self.out_of_service and not any("POWER" in w for w in words)

    @property
    def out_of_service(self) -> bool:
        """Drained, draining, down or failed."""
        return any(w in self.state.upper() for w in _OUT_OF_SERVICE)

    @property
    def ours(self) -> bool:
        """Out of service with a ``didact:`` reason (a drain didact made)."""
        return self.out_of_service and self.reason.startswith(PREFIX)

    @property
    def by_admin(self) -> bool:
        """Out of service for a reason that is not didact's: hands off."""
        return self.out_of_service and not self.reason.startswith(PREFIX)


def clean_reason(text: str) -> str:
    """A reason ``scontrol`` keeps whole: no ``=``, quotes or newlines (they would split the field)."""
    return re.sub(r"[=\"'\n\r]+", " ", text).strip()


class SlurmNodes:
    """Read and change node states; ``timeout_s`` bounds every ``scontrol`` call."""

    def __init__(self, conf: str | Path | None = None, timeout_s: float = 20.0, env=None):
        self.slurm = SlurmExecutor(conf=conf, command_timeout_s=timeout_s, env=env)

    def nodes(self) -> dict[str, NodeInfo]:
        out = self.slurm.run(["scontrol", "show", "node", "-o"])
        recs = (parse_record(line) for line in out.splitlines() if "NodeName=" in line)
        return {r["NodeName"]: NodeInfo(r["NodeName"], r.get("State", ""), _reason(r.get("Reason", "")),
                                        _list(r.get("Partitions", "")), _watts(r.get("CurrentWatts", "")))
                for r in recs}  # fmt: skip

    def config(self) -> dict[str, str]:
        """``scontrol show config`` as {key: value} (power saving: SuspendRate, SuspendExcNodes, …)."""
        out = {}
        for line in self.slurm.run(["scontrol", "show", "config"]).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def hostnames(self, hostlist: str) -> list[str]:
        """Slurm's hostlist (``node[01-04],gpu1``) expanded by ``scontrol show hostnames``."""
        if not hostlist.strip() or hostlist.strip().lower() in ("(null)", "none"):
            return []
        return self.slurm.run(["scontrol", "show", "hostnames", hostlist]).split()

    def power_down(self, node: str, reason: str) -> str:
        """Slurm power saving's suspend (``state=power_down``; SuspendProgram runs)."""
        return self.slurm.run(["scontrol", "update", f"nodename={node}", "state=power_down",
                               f"reason={clean_reason(reason)}"])  # fmt: skip

    def power_up(self, node: str) -> str:
        return self.slurm.run(["scontrol", "update", f"nodename={node}", "state=power_up"])

    def show(self, node: str) -> str:
        """``scontrol show node -o <node>`` as it is (dry-run checks compare it)."""
        return self.slurm.run(["scontrol", "show", "node", "-o", node])

    def drain(self, node: str, reason: str) -> str:
        reason = clean_reason(reason)
        if not reason.startswith(PREFIX):
            reason = f"{PREFIX} {reason}"
        return self.slurm.run(["scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason}"])

    def resume(self, node: str) -> str:
        return self.slurm.run(["scontrol", "update", f"nodename={node}", "state=resume"])


class NoSlurm:
    """A host without Slurm (``didact act … --no-slurm``): no nodes to read, nothing to change.

    Power caps and notifications still work; drain/resume/shed rules find no Slurm node."""

    def nodes(self) -> dict[str, NodeInfo]:
        return {}

    def config(self) -> dict[str, str]:
        return {}

    def hostnames(self, hostlist: str) -> list[str]:
        return [h for h in hostlist.split(",") if h.strip()]

    def _refuse(self, *args) -> str:
        raise DidactError("didact act --no-slurm", "cannot change a Slurm node", "run it without --no-slurm")

    drain = resume = power_down = power_up = _refuse


def _list(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p and p.lower() != "(null)")


def _watts(text: str) -> float | None:
    try:
        w = float(text)
    except ValueError:  # n/a, (null): no energy plugin
        return None
    return w if w > 0 else None


def _reason(text: str) -> str:
    """Slurm appends ``[user@time]`` to a shown reason; ``none`` when there is none."""
    text = re.sub(r"\s*\[[^\]]*@[^\]]*\]\s*$", "", text.strip())
    return "" if text.lower() in ("", "none", "(null)") else text
