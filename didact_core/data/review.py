"""The OOD review queue: unusual behaviour waits for a person before it becomes "normal".

Serving adds an event whenever a node's reconstruction error crosses the champion's
threshold.  An operator vets it (``didact review list`` / ``accept`` / ``reject``):

* **accepted** — the behaviour is legitimate: the event's samples join the next
  training run as normal data (repeated ``ACCEPTED_WEIGHT`` times, so the model learns
  them), once;
* **rejected** — it is a real anomaly: matching samples are excluded from training and
  kept as labelled anomalies for evaluation.

The queue lives in the warehouse's DuckDB file (table ``ood_events``, plus
``scoring_stats`` for the live OOD rate).  Act proposals that need a person's approval
(docs/act.md) wait in ``act_reviews``, numbered from the same sequence, so ``accept`` and
``reject`` take either kind of id; they never reach training.  Every access takes the warehouse lock for a
few milliseconds, so serving can write events while Dagster runs.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from didact_core.config import Settings
from didact_core.errors import DidactError
from didact_core.data.warehouse import Warehouse

log = logging.getLogger(__name__)

STATUSES = ("pending", "accepted", "rejected")
VERDICTS = {"accept": "accepted", "reject": "rejected"}
#: how many times an accepted event's sample is repeated in the next training set
ACCEPTED_WEIGHT = 20

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS ood_event_id;
CREATE TABLE IF NOT EXISTS ood_events (
    id BIGINT DEFAULT nextval('ood_event_id') PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    node VARCHAR NOT NULL,
    cpu INTEGER NOT NULL,
    score DOUBLE NOT NULL,
    threshold DOUBLE NOT NULL,
    model_version INTEGER,
    nearest_flavour VARCHAR,
    latent_0 DOUBLE,
    latent_1 DOUBLE,
    features JSON,
    status VARCHAR NOT NULL DEFAULT 'pending',
    verdict_by VARCHAR,
    verdict_at TIMESTAMPTZ,
    reason VARCHAR,
    trained_in_version INTEGER
);
-- act proposals waiting for a person (didact_core.act.queue); ids from the events' sequence,
-- so `didact review accept ID` names one item whichever kind it is
CREATE TABLE IF NOT EXISTS act_reviews (
    id BIGINT DEFAULT nextval('ood_event_id') PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    proposal VARCHAR NOT NULL,
    node VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    why VARCHAR,
    detail VARCHAR,
    status VARCHAR NOT NULL DEFAULT 'pending',
    verdict_by VARCHAR,
    verdict_at TIMESTAMPTZ,
    reason VARCHAR,
    outcome VARCHAR,
    outcome_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS scoring_stats (
    ts TIMESTAMPTZ NOT NULL,
    samples BIGINT NOT NULL,
    ood BIGINT NOT NULL,
    model_version INTEGER
);
"""


#: ``lookup(model_version, latent point)`` -> the nearest job flavour, or None; e.g.
#: :class:`didact_core.learn.centroids.FlavourLookup` (injected: data imports nothing from learn)
FlavourLookupFn = Callable[[int, Sequence[float]], str | None]


class ReviewQueue:
    """``nearest_flavour``: how :meth:`add_events` names the nearest job flavour of an event
    that comes without one (from its model version and latent point); without it such events
    keep an empty ``nearest_flavour`` (serving's events always carry theirs)."""

    def __init__(self, settings: Settings, nearest_flavour: FlavourLookupFn | None = None):
        self.settings = settings
        self.wh = Warehouse(settings.home_path, settings.retention_versions)
        self.nearest_flavour = nearest_flavour
        with self.wh.catalog(write=True) as con:
            con.execute(_SCHEMA)

    # -- serving side ---------------------------------------------------------------
    def add_events(self, events: pd.DataFrame) -> list[int]:
        """Store OOD events (columns ts, node, cpu, score, threshold, model_version,
        features, latent_0, latent_1; ``nearest_flavour`` is filled in when missing and the
        queue has a lookup).
        Returns their ids."""
        if events is None or events.empty:
            return []
        missing = [c for c in ("ts", "node", "cpu", "score", "threshold") if c not in events]
        if missing:
            raise DidactError("OOD events", f"lack column(s) {missing}")
        ev = events.copy()
        if "nearest_flavour" not in ev:
            ev["nearest_flavour"] = [self._nearest(r) for r in ev.to_dict("records")]
        rows = [
            (pd.Timestamp(r["ts"]).to_pydatetime(), str(r["node"]), int(r["cpu"]), float(r["score"]),
             float(r["threshold"]), _int(r.get("model_version")), r.get("nearest_flavour"),
             _float(r.get("latent_0")), _float(r.get("latent_1")), json.dumps(r.get("features") or {}, default=float))
            for r in ev.to_dict("records")
        ]  # fmt: skip
        with self.wh.catalog(write=True) as con:
            ids = []
            for row in rows:
                ids.append(con.execute(
                    """insert into ood_events (ts, node, cpu, score, threshold, model_version, nearest_flavour,
                       latent_0, latent_1, features) values (?,?,?,?,?,?,?,?,?,?) returning id""", list(row),
                ).fetchone()[0])  # fmt: skip
        return ids

    def record_scoring(self, ts, samples: int, ood: int, model_version: int | None) -> None:
        """One scoring interval's totals (the drift sensor's OOD rate is built from them)."""
        with self.wh.catalog(write=True) as con:
            con.execute("insert into scoring_stats values (?,?,?,?)",
                        [pd.Timestamp(ts).to_pydatetime(), int(samples), int(ood), _int(model_version)])  # fmt: skip

    def ood_rate(self, since: dt.datetime) -> tuple[float, int]:
        """(OOD fraction, samples scored) since ``since``."""
        with self.wh.catalog() as con:
            n, k = con.execute("select coalesce(sum(samples),0), coalesce(sum(ood),0) from scoring_stats where ts >= ?",
                               [since]).fetchone()  # fmt: skip
        return (k / n if n else 0.0), int(n)

    def _nearest(self, event: dict) -> str | None:
        """The job flavour whose latent centroid (stored with the model version) is nearest."""
        v = _int(event.get("model_version"))
        z = (_float(event.get("latent_0")), _float(event.get("latent_1")))
        if self.nearest_flavour is None or v is None or None in z:
            return None
        return self.nearest_flavour(v, z)

    # -- operator side ----------------------------------------------------------------
    def list(self, status: str | None = "pending", limit: int = 100, day: str | None = None) -> pd.DataFrame:
        if status is not None and status not in STATUSES:
            raise DidactError(f"status {status!r}", "is not a review status", f"use one of {', '.join(STATUSES)}")
        q, args = "select * from ood_events where true", []
        if status:
            q += " and status = ?"
            args.append(status)
        if day:
            q += " and ts >= ?::DATE and ts < ?::DATE + INTERVAL 1 DAY"
            args += [day, day]
        with self.wh.catalog() as con:
            return con.execute(q + f" order by id limit {int(limit)}", args).df()

    def get(self, event_id: int) -> dict:
        with self.wh.catalog() as con:
            df = con.execute("select * from ood_events where id = ?", [int(event_id)]).df()
        if df.empty:
            with self.wh.catalog() as con:
                n = con.execute("select count(*), max(id) from ood_events").fetchone()
            raise DidactError(f"OOD event {event_id}", "does not exist",
                              f"`didact review list` shows the pending ones (ids 1…{n[1] or 0})")  # fmt: skip
        return df.iloc[0].to_dict()

    def verdict(self, event_id: int, verdict: str, reason: str, actor: str | None = None) -> dict:
        """Accept or reject a pending event; who and when are recorded (also in lineage)."""
        if verdict not in VERDICTS:
            raise DidactError(f"verdict {verdict!r}", "is not a verdict", "use accept or reject")
        if not reason or not reason.strip():
            raise DidactError(f"{verdict} of event {event_id}", "needs a reason", "pass --reason '...'")
        if self.act_item(event_id) is not None:
            return self._act_verdict(int(event_id), VERDICTS[verdict], reason, actor or getpass.getuser())
        event = self.get(event_id)
        if event["status"] != "pending":
            raise DidactError(
                f"OOD event {event_id}",
                f"was already {event['status']} by {event['verdict_by']} at {str(event['verdict_at'])[:19]}",
                "verdicts are final; add a note in a new event if it recurs",
            )
        actor = actor or getpass.getuser()
        now = dt.datetime.now(dt.timezone.utc)
        status = VERDICTS[verdict]
        with self.wh.catalog(write=True) as con:
            changed = con.execute(
                "update ood_events set status=?, verdict_by=?, verdict_at=?, reason=? where id=? and status='pending' returning id",
                [status, actor, now, reason, int(event_id)],
            ).fetchall()  # fmt: skip
        if not changed:  # someone else decided in between
            return self.verdict(event_id, verdict, reason, actor)
        self.wh.record("review", "ood_review", partition=str(pd.Timestamp(event["ts"]).date()),
                       version=f"event{event_id}", actor=actor, reason=f"{status}: {reason}")  # fmt: skip
        return self.get(event_id)

    # -- act proposals (didact_core.act.queue) -------------------------------------------
    def add_act_item(self, proposal: dict) -> tuple[int, bool]:
        """The review item of an act proposal (id, rule, node, action, why, reason): (item id, new?).

        A proposal id keeps its open item (pending, or accepted and not yet applied) and its
        rejected one (a rejection is final); otherwise it gets a new pending item."""
        with self.wh.catalog(write=True) as con:
            row = con.execute("select id from act_reviews where proposal = ? and (status = 'rejected' or outcome is null) "
                              "order by id desc limit 1", [proposal["id"]]).fetchone()  # fmt: skip
            if row:
                return int(row[0]), False
            item = con.execute(
                "insert into act_reviews (ts, proposal, node, action, rule, why, detail) values (?,?,?,?,?,?,?) returning id",
                [dt.datetime.now(dt.timezone.utc), proposal["id"], proposal["node"], proposal["action"], proposal["rule"],
                 proposal.get("why"), proposal.get("reason")]).fetchone()[0]  # fmt: skip
        return int(item), True

    def act_item(self, item_id: int) -> dict | None:
        with self.wh.catalog() as con:
            df = con.execute("select * from act_reviews where id = ?", [int(item_id)]).df()
        return None if df.empty else df.iloc[0].to_dict()

    def act_items(self, status: str | None = "pending", open_only: bool = False) -> pd.DataFrame:
        """Act proposals' review items (``open_only``: not yet applied nor refused at apply)."""
        q, args = "select * from act_reviews where true", []
        if status:
            q += " and status = ?"
            args.append(status)
        if open_only:
            q += " and outcome is null"
        with self.wh.catalog() as con:
            return con.execute(q + " order by id", args).df()

    def act_outcome(self, item_id: int, outcome: str) -> None:
        """What ``didact act apply`` made of an accepted item (action, refused, failed, …): it is closed."""
        with self.wh.catalog(write=True) as con:
            con.execute("update act_reviews set outcome = ?, outcome_at = ? where id = ?",
                        [outcome, dt.datetime.now(dt.timezone.utc), int(item_id)])  # fmt: skip

    def _act_verdict(self, item_id: int, status: str, reason: str, actor: str) -> dict:
        with self.wh.catalog(write=True) as con:
            changed = con.execute("update act_reviews set status=?, verdict_by=?, verdict_at=?, reason=? "
                                  "where id=? and status='pending' returning id",
                                  [status, actor, dt.datetime.now(dt.timezone.utc), reason, item_id]).fetchall()  # fmt: skip
        item = self.act_item(item_id)
        if not changed:
            raise DidactError(f"review item {item_id} ({item['action']} {item['node']})",
                              f"was already {item['status']} by {item['verdict_by']} at {str(item['verdict_at'])[:19]}",
                              "verdicts are final; the next plan proposes it again if the condition recurs")  # fmt: skip
        self.wh.record("review", "act", partition=item["node"], version=item["proposal"], actor=actor,
                       reason=f"{status}: {item['action']} {item['node']} (review item {item_id}): {reason}")  # fmt: skip
        return item

    # -- training side ------------------------------------------------------------------
    def decided(self, until: dt.datetime | None = None) -> pd.DataFrame:
        """All accepted/rejected events (decided before ``until``)."""
        q, args = "select * from ood_events where status in ('accepted', 'rejected')", []
        if until is not None:
            q += " and verdict_at <= ?"
            args.append(until)
        with self.wh.catalog() as con:
            return con.execute(q + " order by id", args).df()

    def mark_trained(self, event_ids: list[int], model_version: int) -> None:
        if not event_ids:
            return
        with self.wh.catalog(write=True) as con:
            con.execute(f"update ood_events set trained_in_version=? where id in ({','.join('?' * len(event_ids))})",
                        [model_version, *map(int, event_ids)])  # fmt: skip


def rejected_mask(samples: pd.DataFrame, rejected: pd.DataFrame, window_s: float) -> np.ndarray:
    """Rows of ``samples`` (node, cpu, ts) that a rejected event covers: same node, same
    cpu (or any, for node-level events), ts within ``window_s`` of the event."""
    mask = np.zeros(len(samples), dtype=bool)
    if rejected.empty or samples.empty:
        return mask
    ts = pd.to_datetime(samples["ts"], utc=True)
    node = samples["node"].astype(str).to_numpy()
    cpu = samples["cpu"].to_numpy()
    for ev in rejected.to_dict("records"):
        t = pd.Timestamp(ev["ts"]).tz_convert("UTC") if pd.Timestamp(ev["ts"]).tzinfo else pd.Timestamp(ev["ts"], tz="UTC")
        near = (ts - t).abs() <= pd.Timedelta(seconds=window_s)
        m = near.to_numpy() & (node == ev["node"])
        if ev["cpu"] >= 0:
            m &= cpu == ev["cpu"]
        mask |= m
    return mask


def accepted_samples(accepted: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Accepted events' feature vectors, repeated ACCEPTED_WEIGHT times, as training rows."""
    rows = []
    for ev in accepted.to_dict("records"):
        f = json.loads(ev["features"] or "{}")
        if all(k in f for k in features):
            rows.append({k: float(f[k]) for k in features} | {"label": "accepted_ood", "review_id": ev["id"]})
    if not rows:
        return pd.DataFrame(columns=[*features, "label", "review_id"])
    df = pd.DataFrame(rows)
    return df.loc[df.index.repeat(ACCEPTED_WEIGHT)].reset_index(drop=True)


def _int(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)


def _float(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def snapshot(settings: Settings, day: str, run_id: str | None = None):
    """Save the verdicts known now as ``ood_review/<day>`` (what that day's training sees).

    Returns (VersionInfo, counts by status)."""
    queue = ReviewQueue(settings)
    with queue.wh.catalog() as con:
        events = con.execute("select * from ood_events order by id").df()
        counts = dict(con.execute("select status, count(*) from ood_events group by 1").fetchall())
    decided = events[events["status"] != "pending"].copy() if len(events) else events
    decided["features"] = decided["features"].astype(str) if len(decided) else decided.get("features")
    if decided.empty:
        decided = pd.DataFrame({"id": pd.Series([], dtype="int64"), "status": pd.Series([], dtype=str)})
    info = queue.wh.write("ood_review", day, {"events": decided}, run_id=run_id,
                          metadata={"counts": {s: int(counts.get(s, 0)) for s in STATUSES}})  # fmt: skip
    return info, {s: int(counts.get(s, 0)) for s in STATUSES}
