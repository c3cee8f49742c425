"""Job-peer stragglers: the cluster model's peer scores as a policy condition (``job_peer_score``).

The cluster model in serving (:mod:`didact_core.serve.cluster`) exports, each scoring interval
and for each member of a running multi-node job, how unlike its peers that member behaves — a
robust z: ``didact_job_peer_score{job,node}``.  That exported series is all act reads of the
cluster model (nothing of it is imported):

* live (``didact act plan|apply``, the sensor): from Prometheus, which scrapes serving
  (``deploy/prometheus/prometheus.yml``, scrape job ``didact``) — one ``query_range`` over the
  rules' intervals, step ``DIDACT_INTERVAL_S``.  The exporter's ``job`` label is the Slurm job;
  Prometheus renames it ``exported_job`` unless the scrape sets ``honor_labels`` (its own
  ``job`` is then the scrape job's name): both forms are read;
* a file (``--peers FILE.json``): ``[{"job", "node", "score", "ts"}, …]`` (``ts`` optional:
  without it the rows are one interval).

A rule ``when = "job_peer_score >= 8"`` with ``for_intervals = 3`` holds for a node that scored
at least 8 against the peers of one job in each of the newest 3 intervals: an interval in which
that job was not scored (it ended, had too few members, or serving stopped) ends the streak.
A node in several jobs is judged by the job it straggles most in (the newest score).
"""

from __future__ import annotations

import datetime as dt
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import pandas as pd

from didact_core.act.conditions import PEER_METRIC, Observation
from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.ingest.prometheus.client import PrometheusClient

#: the cluster model's exported series (didact_core/serve/cluster.py), labels job and node
PEER_SERIES = "didact_job_peer_score"
COLUMNS = ["ts", "job", "node", "score"]
_OPS = {">=": operator.ge, ">": operator.gt}
_FIX = 'write a JSON list like [{"job": "4242", "node": "n1", "score": 9.5, "ts": "2026-02-10T12:00:00Z"}]'


@dataclass(frozen=True)
class Straggler:
    job: str
    score: float  # the newest interval's peer score
    intervals: int  # the newest intervals in a row the condition held in


def straggler(obs: Observation, op: str, value: float, for_intervals: int = 1) -> Straggler | None:
    """The job ``obs.node`` straggles in: ``score <op> value`` in each of the newest ``for_intervals``
    intervals (the highest newest score when several jobs qualify), or None."""
    cmp, best = _OPS[op], None
    for job, scores in obs.peers:
        n = 0
        for s in scores:
            if math.isnan(s) or not cmp(s, value):
                break
            n += 1
        if n >= for_intervals and (best is None or scores[0] > best.score):
            best = Straggler(job, scores[0], n)
    return best


def with_peers(observations: Mapping[str, Observation], peers: pd.DataFrame | None,
               intervals: Iterable | None = None) -> dict[str, Observation]:  # fmt: skip
    """``observations`` with each node's peer scores per job, newest interval first (NaN: the job was
    not scored then); nodes that only have peer scores join them.  ``intervals``: the timestamps
    of the intervals looked at (Prometheus' steps); without them the scores' own timestamps."""
    out = dict(observations)
    if peers is None or len(peers) == 0:
        return out
    ts = pd.to_datetime(peers["ts"], utc=True)
    known = pd.to_datetime(pd.Series(list(intervals)), utc=True) if intervals is not None else ()
    pos = {t: i for i, t in enumerate(sorted(set(ts) | set(known), reverse=True))}
    hist: dict[str, dict[str, list[float]]] = {}
    for t, job, node, s in zip(ts, peers["job"].astype(str), peers["node"].astype(str), peers["score"].astype(float)):
        row = hist.setdefault(node, {}).setdefault(job, [math.nan] * len(pos))
        if not math.isnan(s) and not s <= row[pos[t]]:  # a duplicate keeps the higher score
            row[pos[t]] = s
    for node, jobs in hist.items():
        out[node] = replace(out.get(node, Observation(node)), peers=tuple((j, tuple(v)) for j, v in sorted(jobs.items())))
    return out


def peer_frame(rows, source: str) -> pd.DataFrame:
    """Validated peer scores (ts UTC, job, node, score) from a JSON list or a frame."""
    if not isinstance(rows, (list, pd.DataFrame)) or not all(isinstance(r, dict) for r in (rows if isinstance(rows, list) else ())):
        raise DidactError(f"peer scores {source}", "are not a list of objects", _FIX)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    missing = [c for c in ("job", "node", "score") if c not in df]
    if missing:
        raise DidactError(f"peer scores {source}", f"have no {', '.join(repr(c) for c in missing)} field", _FIX)
    score = pd.to_numeric(df["score"], errors="coerce")
    if score.isna().any() or df["job"].isna().any() or df["node"].isna().any():
        bad = int((score.isna() | df["job"].isna() | df["node"].isna()).to_numpy().argmax())
        raise DidactError(f"peer scores {source}", f"entry {bad + 1} has no job, node or numeric score", _FIX)
    if "ts" in df:
        ts = pd.to_datetime(df["ts"], utc=True, errors="coerce")
        if ts.isna().any():
            bad = int(ts.isna().to_numpy().argmax())
            raise DidactError(f"peer scores {source}", f"entry {bad + 1} has a ts that is not a time", _FIX)
    else:  # one interval
        ts = pd.Series(pd.Timestamp(0, tz="UTC"), index=df.index)
    return pd.DataFrame({"ts": ts, "job": df["job"].astype(str), "node": df["node"].astype(str), "score": score})


def peers_from_prometheus(client: PrometheusClient, until: dt.datetime, intervals: int,
                          step_s: float) -> tuple[pd.DataFrame, list[pd.Timestamp]]:  # fmt: skip
    """``didact_job_peer_score`` at the ``intervals + 1`` steps ending at ``until``: (scores, the steps)."""
    step_ms = max(int(round(step_s * 1000)), 1)
    end_ms = int(until.timestamp() * 1000)
    start_ms = end_ms - intervals * step_ms
    params = {"query": PEER_SERIES, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}",
              "step": f"{step_ms / 1000:.3f}"}  # fmt: skip
    rows = []
    for item in client.query_json("/api/v1/query_range", params, "matrix")["result"]:
        labels = item.get("metric", {})
        job, node = labels.get("exported_job") or labels.get("job"), labels.get("node")
        for t, v in item.get("values", []) if job and node else ():
            rows.append((_ms(round(float(t) * 1000)), str(job), str(node), float(v)))
    steps = [_ms(start_ms + k * step_ms) for k in range(intervals + 1)]
    return pd.DataFrame(rows, columns=COLUMNS), steps


def _ms(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def peer_intervals(policy) -> int:
    """How many intervals the policy's ``job_peer_score`` rules look back (0: it has none)."""
    return max((r.for_intervals for r in policy.rules if r.metric == PEER_METRIC), default=0)


def live_peers(settings: Settings, policy, until: dt.datetime) -> tuple[pd.DataFrame | None, list | None]:
    """The peer scores the policy needs, from the Prometheus of ``settings`` (DIDACT_PROMETHEUS_*);
    (None, None) when no rule reads them.  Prometheus down or odd: a DidactError naming it."""
    n = peer_intervals(policy)
    if not n:
        return None, None
    retries = 1 if settings.prometheus_retries is None else min(settings.prometheus_retries, 1)  # a sensor tick waits
    client = PrometheusClient.from_settings(settings, retries=retries, timeout_s=settings.prometheus_timeout_s or 10.0)
    try:
        return peers_from_prometheus(client, until, n, settings.interval_s)
    finally:
        client.close()
