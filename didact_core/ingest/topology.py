"""The cluster's topology: which rack each node sits in.

A :class:`Topology` maps node names to rack names.  It comes from one of (``DIDACT_TOPOLOGY``,
read by :func:`load_topology`):

* a CSV file with the header ``node,rack`` and one node a line (blank lines and lines
  starting with ``#`` are skipped)::

      node,rack
      cn0001,r01
      cn0002,r01

* ``pattern:<regex>``: a regular expression with a named group ``rack`` searched in each
  node name (``pattern:^cn(?P<rack>\\d\\d)\\d\\d$`` puts ``cn0312`` in rack ``03``);
* ``per_rack:<N>``: N nodes per rack in natural name order (``rack-00``, ``rack-01``, ...);
* empty: the simulator's own racks (``DIDACT_SIM_NODES_PER_RACK`` nodes each), one rack
  (``rack-00``) for any other source.

Every bad input is a :class:`~didact_core.errors.DidactError` naming the file and line (or
the pattern and node), the problem and the fix: a bad header, an empty node or rack, a node
listed twice, a node in two racks, a node the cluster does not have, no nodes at all.

Checked against the nodes the data holds (:meth:`Topology.place`): a node the topology does
not place is an error by default; with ``strict=False`` it goes into its own rack
:data:`UNPLACED` (logged as a warning), so a nightly run does not fail on a new node.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from didact_core.errors import DidactError

log = logging.getLogger(__name__)

PATTERN_PREFIX = "pattern:"
PER_RACK_PREFIX = "per_rack:"
#: the rack of nodes the topology does not place (``place(..., strict=False)``)
UNPLACED = "unplaced"
#: the forms of DIDACT_TOPOLOGY, for fixes
FORMS = "a node,rack CSV path, pattern:<regex with a (?P<rack>...) group>, or per_rack:<N>"
_SHOWN = 5

__all__ = ["FORMS", "UNPLACED", "Topology", "load_topology", "natural_key", "rack_names", "topology_for"]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``n2`` before ``n10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def rack_names(count: int) -> list[str]:
    """``rack-00`` .. (wider numbers past 100 racks)."""
    width = max(2, len(str(max(0, count - 1))))
    return [f"rack-{k:0{width}d}" for k in range(count)]


def _first(names: list[str]) -> str:
    """``'a'`` or ``'a' (and 3 more)``."""
    return f"{names[0]!r}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _few(names: Iterable[str]) -> str:
    names = list(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


@dataclass(frozen=True)
class Topology:
    """Node → rack.  ``source`` says where it came from (a file, a pattern, the simulator);
    ``lines`` is the CSV line of each node (for errors), when it came from a file."""

    rack_of: Mapping[str, str]
    source: str = "simulator"
    lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    # -- views -------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return sorted(self.rack_of, key=natural_key)

    @property
    def racks(self) -> list[str]:
        return sorted(set(self.rack_of.values()), key=natural_key)

    def nodes_in(self, rack: str) -> list[str]:
        return sorted((n for n, r in self.rack_of.items() if r == rack), key=natural_key)

    def frame(self) -> pd.DataFrame:
        """``(node, rack)``, one row per node in natural name order."""
        nodes = self.nodes
        return pd.DataFrame({"node": nodes, "rack": [self.rack_of[n] for n in nodes]})

    def __len__(self) -> int:
        return len(self.rack_of)

    def digest(self) -> str:
        """A short content hash of the node → rack map (what a version was built from)."""
        text = "\n".join(f"{n},{self.rack_of[n]}" for n in self.nodes)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    # -- checks ------------------------------------------------------------------------------
    def place(self, nodes: Iterable[str], strict: bool = True, what: str = "the data") -> Topology:
        """The topology of ``nodes`` (nodes the data holds).  A node the topology does not
        place raises a DidactError (``strict``), or goes into rack :data:`UNPLACED` with a
        warning.  Nodes of the topology absent from ``nodes`` (down, drained) are left out."""
        nodes = [str(n) for n in nodes]
        unknown = sorted({n for n in nodes if n not in self.rack_of}, key=natural_key)
        if unknown and strict:
            raise DidactError(f"node {_first(unknown)} of {what}", f"has no rack in the topology ({self.source})",
                              self._fix_unknown(unknown))  # fmt: skip
        if unknown:
            log.warning("topology %s places no rack for %s: put in rack %r", self.source, _few(unknown), UNPLACED)
        rack_of = {n: self.rack_of.get(n, UNPLACED) for n in nodes}
        return Topology(rack_of, self.source, {n: self.lines[n] for n in nodes if n in self.lines})

    def require_only(self, nodes: Iterable[str]) -> None:
        """Raise when the topology names a node that is not one of ``nodes`` (the cluster's
        whole node list, e.g. the simulator's), naming its CSV line."""
        known = set(map(str, nodes))
        extra = sorted((n for n in self.rack_of if n not in known), key=natural_key)
        if extra:
            where = f" (line {self.lines[extra[0]]})" if extra[0] in self.lines else ""
            raise DidactError(
                f"topology {self.source}{where}",
                f"names node {_first(extra)} that the cluster does not have",
                f"remove it or fix its name; the cluster's nodes are {_few(sorted(known, key=natural_key))}",
            )

    def _fix_unknown(self, unknown: list[str]) -> str:
        if self.source.startswith(PATTERN_PREFIX):
            return f"widen the pattern so its (?P<rack>...) group matches {_few(unknown)}"
        if self.lines:
            return f"add a line 'node,rack' for {_few(unknown)} to {self.source}"
        return f"set DIDACT_TOPOLOGY to {FORMS} covering {_few(unknown)}"

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def single_rack(cls, nodes: Iterable[str], rack: str = "rack-00", source: str = "one rack") -> Topology:
        return cls({str(n): rack for n in nodes}, source)

    @classmethod
    def per_rack(cls, nodes: Iterable[str], per_rack: int, source: str | None = None) -> Topology:
        """``per_rack`` nodes a rack in natural name order: ``rack-00``, ``rack-01``, ..."""
        if int(per_rack) < 1:
            raise DidactError(f"nodes per rack {per_rack}", "must be at least 1", "use e.g. 8 or 16 nodes per rack")
        ordered = sorted(map(str, nodes), key=natural_key)
        names = rack_names(-(-len(ordered) // int(per_rack)))
        rack_of = {n: names[k // int(per_rack)] for k, n in enumerate(ordered)}
        return cls(rack_of, source or f"{PER_RACK_PREFIX}{per_rack}")

    @classmethod
    def from_pattern(cls, nodes: Iterable[str], pattern: str, strict: bool = True) -> Topology:
        """Each node's rack is the ``rack`` group of ``pattern`` searched in its name; a node
        it does not match is an error (``strict``) or left out."""
        source = f"{PATTERN_PREFIX}{pattern}"
        try:
            rx = re.compile(pattern)
        except re.error as e:
            example = "pattern:^cn(?P<rack>\\d\\d)\\d\\d$"
            raise DidactError(f"topology {source}", f"is not a regular expression ({e})",
                              f"fix the pattern, e.g. {example}") from None  # fmt: skip
        if "rack" not in rx.groupindex:
            raise DidactError(f"topology {source}", "has no named group 'rack'",
                              "name the part of the node name that is the rack: (?P<rack>...)")  # fmt: skip
        rack_of, bad = {}, []
        for n in map(str, nodes):
            m = rx.search(n)
            rack = m.group("rack") if m else None
            if not rack:
                bad.append(n)
            else:
                rack_of[n] = rack
        if bad and strict:
            raise DidactError(f"node {_first(bad)}", f"does not match the topology {source} (no rack in its name)",
                              "widen the pattern, or give a node,rack CSV file instead")  # fmt: skip
        return cls(rack_of, source)

    @classmethod
    def from_csv(cls, path: str | Path) -> Topology:
        """Read a ``node,rack`` CSV (see the module docstring); every problem names its line."""
        path = Path(path).expanduser()
        what = f"topology file {path}"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DidactError(what, f"cannot be read ({getattr(e, 'strerror', None) or e})",
                              f"point DIDACT_TOPOLOGY at {FORMS}") from None  # fmt: skip
        rows = [(k, r) for k, r in enumerate(csv.reader(text.splitlines()), 1)
                if r and "".join(r).strip() and not r[0].lstrip().startswith("#")]  # fmt: skip
        if not rows or [c.strip().lower() for c in rows[0][1]] != ["node", "rack"]:
            got = ",".join(rows[0][1]) if rows else "nothing"
            line = rows[0][0] if rows else 1
            raise DidactError(f"{what}, line {line}", f"has the header {got!r}, not 'node,rack'",
                              "make the first line exactly: node,rack")  # fmt: skip
        rack_of: dict[str, str] = {}
        lines: dict[str, int] = {}
        for k, row in rows[1:]:
            at = f"{what}, line {k}"
            if len(row) != 2:
                raise DidactError(at, f"has {len(row)} fields ({','.join(row)!r}), not 2",
                                  "write one node and its rack per line: node,rack")  # fmt: skip
            node, rack = row[0].strip(), row[1].strip()
            if not node:
                raise DidactError(at, "has an empty node name", "write the node name before the comma")
            if not rack:
                raise DidactError(at, f"gives node {node!r} an empty rack", "write the rack name after the comma")
            if node in rack_of:
                first = lines[node]
                if rack_of[node] != rack:
                    problem = f"puts node {node!r} in rack {rack!r}, but line {first} put it in rack {rack_of[node]!r}"
                    raise DidactError(at, problem, f"a node sits in one rack: keep line {first} or line {k}")
                raise DidactError(at, f"lists node {node!r} again (first on line {first})", f"remove line {k}")
            rack_of[node], lines[node] = rack, k
        if not rack_of:
            raise DidactError(what, "has a header but no nodes", "add one line per node: node,rack")
        return cls(rack_of, str(path), lines)


def load_topology(spec: str, nodes: Iterable[str], nodes_per_rack: int | None = None,
                  exact: bool = False) -> Topology:  # fmt: skip
    """The topology ``spec`` (``DIDACT_TOPOLOGY``'s forms) for the cluster's ``nodes``.

    Empty: ``nodes_per_rack`` nodes a rack when given (the simulator), else one rack.
    ``exact`` (the simulator, whose node list is the whole cluster): the topology must place
    every node and name no other; otherwise nodes it does not place are an error and extra
    nodes of a CSV (down today) are fine."""
    nodes = [str(n) for n in nodes]
    spec = (spec or "").strip()
    if not spec:
        if nodes_per_rack:
            return Topology.per_rack(nodes, nodes_per_rack, source="simulator")
        return Topology.single_rack(nodes)
    if spec.startswith(PATTERN_PREFIX):
        return Topology.from_pattern(nodes, spec[len(PATTERN_PREFIX) :])
    if spec.startswith(PER_RACK_PREFIX):
        value = spec[len(PER_RACK_PREFIX) :].strip()
        if not value.isdigit() or int(value) < 1:
            raise DidactError(f"topology {spec}", "does not give a whole number of nodes per rack",
                              "write e.g. per_rack:16")  # fmt: skip
        return Topology.per_rack(nodes, int(value))
    topo = Topology.from_csv(spec)
    if exact:
        topo.require_only(nodes)
    return topo.place(nodes, strict=True, what="the cluster")


def topology_for(settings, nodes: Iterable[str], strict: bool = True) -> Topology:
    """The racks of ``nodes`` (the nodes a day's data hold) as the settings say.

    ``DIDACT_TOPOLOGY`` when set; when empty, ``DIDACT_SIM_NODES_PER_RACK`` nodes a rack in
    name order for the simulator source (its own racks: it reports every node), one rack for
    any other.  A node the topology does not place is a DidactError (``strict``), or goes into
    rack :data:`UNPLACED` with a warning; nodes of a CSV absent from ``nodes`` are left out."""
    nodes = [str(n) for n in nodes]
    spec = settings.topology.strip()
    if not spec:
        per_rack = settings.sim_nodes_per_rack if settings.source == "simulator" else None
        return load_topology("", nodes, per_rack)
    if spec.startswith(PATTERN_PREFIX):
        return Topology.from_pattern(nodes, spec[len(PATTERN_PREFIX) :], strict).place(nodes, strict)
    if spec.startswith(PER_RACK_PREFIX):
        return load_topology(spec, nodes)
    return Topology.from_csv(spec).place(nodes, strict)
