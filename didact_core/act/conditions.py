"""What didact sees, as the numbers a policy's ``when`` compares: per node and for the cluster.

Node metrics (each :class:`Observation`):

* ``ood_intervals`` — distinct timestamps among the node's OOD events in the window;
* ``ood_consecutive`` — how many of the newest scoring intervals *in a row* the node was OOD
  in (serving writes one event per interval in which a node is OOD, and one
  ``scoring_stats`` row per interval it scored; an interval the node was not OOD in ends
  the streak);
* ``node_watts`` — the node's power (a day's mean or the live reading);
* ``job_peer_score`` — how unlike its peers in a multi-node job the node is (the cluster model's
  ``didact_job_peer_score``), judged over a rule's ``for_intervals`` (:mod:`~didact_core.act.peers`).

Cluster metrics: ``cluster_watts`` — the sum of ``node_watts``; ``cluster_incidents`` — the
cluster model's incidents in the window (review-queue events on ``cluster`` or ``rack:<rack>``,
which are never a node's OOD events).  A rule's ``hours`` (``"17:00-21:00"`` UTC, may wrap
midnight) limits it to peak hours.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import pandas as pd

from didact_core.errors import DidactError

NODE_METRICS = ("ood_intervals", "ood_consecutive", "node_watts")
CLUSTER_METRICS = ("cluster_watts", "cluster_incidents")
#: a node's robust z against its job's peers (per job and interval: :mod:`didact_core.act.peers`)
PEER_METRIC = "job_peer_score"
#: the observations' key that holds the cluster model's incidents (not a node)
INCIDENTS = "@incidents"


def is_incident_scope(node: str) -> bool:
    """A review-queue event of the cluster model (``cluster``, ``rack:<rack>``), not of a node."""
    return node == "cluster" or node.startswith("rack:")
_HOURS = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-4]):([0-5]\d)\s*$")


@dataclass(frozen=True)
class Observation:
    """What didact sees of one node: OOD intervals (all / newest in a row), newest event id, watts,
    and its peer scores: per job, the newest intervals' scores, newest first (NaN: not scored)."""

    node: str
    ood_intervals: int = 0
    event_id: int | None = None
    ood_consecutive: int = 0
    watts: float | None = None
    peers: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def metrics(self) -> dict[str, float]:
        return {"ood_intervals": self.ood_intervals, "ood_consecutive": self.ood_consecutive,
                "node_watts": self.watts if self.watts is not None else math.nan}  # fmt: skip


def parse_hours(spec: str) -> tuple[int, int]:
    """``"17:00-21:00"`` → (start, end) minutes of the UTC day; ValueError when it is not that form."""
    m = _HOURS.match(spec)
    if not m:
        raise ValueError(f"{spec!r} is not HH:MM-HH:MM")
    start, end = int(m.group(1)) * 60 + int(m.group(2)), int(m.group(3)) * 60 + int(m.group(4))
    if start == end or end > 24 * 60:
        raise ValueError(f"{spec!r} is an empty window")
    return start, end


def in_hours(spec: str | None, now: dt.datetime) -> bool:
    """Whether ``now`` (UTC) falls in the window; no window means always."""
    if not spec:
        return True
    start, end = parse_hours(spec)
    now = now.astimezone(dt.timezone.utc)
    minute = now.hour * 60 + now.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def ood_streaks(events: pd.DataFrame, intervals: Iterable | None = None) -> dict[str, int]:
    """Per node: how many of the newest intervals in a row it has an OOD event in.

    ``intervals``: the timestamps of the scoring intervals (``scoring_stats``); without
    them, the distinct timestamps of all ``events`` stand for the intervals."""
    if events is None or len(events) == 0 or "ts" not in events:
        return {}
    ts = pd.to_datetime(events["ts"], utc=True)
    known = pd.to_datetime(pd.Series(list(intervals)), utc=True) if intervals is not None else pd.Series([], dtype=ts.dtype)
    steps = sorted(set(ts) | set(known), reverse=True)
    seen: dict[str, set] = {}
    for node, t in zip(events["node"].astype(str), ts):
        seen.setdefault(node, set()).add(t)
    out = {}
    for node, have in seen.items():
        n = 0
        for t in steps:
            if t not in have:
                break
            n += 1
        out[node] = n
    return out


def observations_from_events(
    events: pd.DataFrame | Iterable[dict], intervals: Iterable | None = None
) -> dict[str, Observation]:
    """Per node: distinct OOD event timestamps (intervals), the newest streak, the newest event id.

    ``events``: rows with ``node`` and ``id`` and ``ts`` (the review queue's ``ood_events``,
    or a JSON list); a row may give ``ood_intervals`` (and ``ood_consecutive``) itself instead
    (then ``ts`` is not needed).  Pass only the events of the window you mean (the CLI: pending
    ones of the last minutes) and, for streaks, the window's scoring ``intervals``."""
    df = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events))
    if df.empty:
        return {}
    if "node" not in df:
        raise DidactError("OOD events", "have no 'node' field", 'give each event {"node": …, "id": …, "ts": …}')
    incident = df["node"].astype(str).map(is_incident_scope).to_numpy(dtype=bool)
    out = {}
    if incident.any():
        ids = pd.to_numeric(df.loc[incident, "id"], errors="coerce").dropna() if "id" in df else pd.Series([], dtype=float)
        out[INCIDENTS] = Observation(INCIDENTS, int(incident.sum()), int(ids.max()) if len(ids) else None)
        df = df[~incident]
    streaks = ood_streaks(df.dropna(subset=["ts"]), intervals) if "ts" in df else {}
    for node, g in df.groupby("node"):
        ids = pd.to_numeric(g["id"], errors="coerce").dropna() if "id" in g else pd.Series([], dtype=float)
        if "ood_intervals" in g and g["ood_intervals"].notna().any():
            n = int(g["ood_intervals"].max())
        elif "ts" in g:
            n = int(pd.to_datetime(g["ts"], utc=True).nunique())
        else:
            n = len(g)
        given = g["ood_consecutive"].dropna() if "ood_consecutive" in g else ()
        streak = int(max(given)) if len(given) else streaks.get(str(node), 0)
        out[str(node)] = Observation(str(node), n, int(ids.max()) if len(ids) else None, streak)
    return out


def with_power(observations: Mapping[str, Observation], watts: Mapping[str, float]) -> dict[str, Observation]:
    """``observations`` with each node's watts (nodes that only have power join them)."""
    out = dict(observations)
    for node, w in watts.items():
        out[node] = replace(out.get(node, Observation(node)), watts=float(w))
    return out


def cluster_metrics(observations: Mapping[str, Observation]) -> dict[str, float]:
    """``cluster_watts``: the sum over nodes that have power (NaN when none has);
    ``cluster_incidents``: the cluster model's incidents among the events."""
    ws = [o.watts for o in observations.values() if o.watts is not None and not math.isnan(o.watts)]
    incidents = observations.get(INCIDENTS)
    return {"cluster_watts": float(sum(ws)) if ws else math.nan,
            "cluster_incidents": float(incidents.ood_intervals if incidents else 0)}  # fmt: skip


def power_from_json(doc, source: str) -> dict[str, float]:
    """``{"n1": 310.5, …}`` or ``[{"node": "n1", "watts": 310.5}, …]`` → {node: watts}."""
    fix = 'write {"node01": 310.5, …} or [{"node": "node01", "watts": 310.5}, …]'
    try:
        if isinstance(doc, dict):
            return {str(k): float(v) for k, v in doc.items()}
        if isinstance(doc, list):
            return {str(r["node"]): float(r["watts"]) for r in doc}
    except (KeyError, TypeError, ValueError) as e:
        raise DidactError(f"power file {source}", f"has an entry without a node or a number ({e})", fix) from None
    raise DidactError(f"power file {source}", "is neither an object nor a list", fix)


def scoring_intervals(queue, since: dt.datetime, until: dt.datetime | None = None) -> list[pd.Timestamp]:
    """The timestamps (UTC) of the scoring intervals in [since, until) (the review queue's ``scoring_stats``)."""
    until = until or dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)
    with queue.wh.catalog() as con:
        rows = con.execute("select distinct ts from scoring_stats where ts >= ? and ts < ? order by ts",
                           [since, until]).fetchall()  # fmt: skip
    return [_utc(r[0]) for r in rows]


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
