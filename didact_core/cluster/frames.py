"""The cluster model's inputs, validated: node scores, topology, job membership, and the
per-timestep arrays they become.

* **node scores** — one row per (ts, node): ``ts`` (UTC), ``node``, ``error`` (the node's
  reconstruction error; from serving's ``aggregate_nodes`` that is ``error_mean``),
  ``ood`` (bool), ``latent_0..latent_{d-1}``.  :func:`node_scores_from_interval` turns one
  :class:`~didact_core.serve.scoring.IntervalScores` ``nodes`` frame into these rows.
* **topology** — node → rack (:class:`RackMap`, from a frame/CSV/mapping/pattern); a node
  in two racks is an error, and so is a scored node the topology does not know.
* **jobs** — membership rows ``job_id, node, start, end`` (``flavour`` optional), [start, end).

:func:`to_tensor` lays a frame of node scores out as ``(T, N)`` / ``(T, N, d)`` arrays in
the topology's node order (NaN where a node was not scored); :func:`rack_aggregate`
reduces a ``(T, N)`` array to ``(T, R)`` per rack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError, DidactError
from didact_core.ingest.topology import Topology

SCORE_COLUMNS = ("ts", "node", "error", "ood")
JOB_COLUMNS = ("job_id", "node", "start", "end")


def latent_columns(frame: pd.DataFrame) -> list[str]:
    """``latent_<i>`` columns in index order."""
    cols = [c for c in frame.columns if re.fullmatch(r"latent_\d+", str(c))]
    return sorted(cols, key=lambda c: int(str(c).split("_")[1]))


def _utc(values, what: str) -> pd.Series:
    try:
        ts = pd.to_datetime(pd.Series(values), utc=True)
    except (ValueError, TypeError) as e:
        raise DidactError(what, f"holds values that are not timestamps ({e})", "give UTC timestamps") from None
    if ts.isna().any():
        raise DidactError(what, f"has {int(ts.isna().sum())} missing timestamps", "drop or fill those rows")
    return ts.dt.as_unit("ns").reset_index(drop=True)


def validate_node_scores(frame: pd.DataFrame, what: str = "node scores") -> pd.DataFrame:
    """A checked copy: ts UTC, node str, error float64 (> 0 finite or NaN), ood bool, latents
    float32; sorted by (ts, node); one row per (ts, node)."""
    if not isinstance(frame, pd.DataFrame):
        raise DidactError(what, f"is a {type(frame).__name__}, not a DataFrame", "pass a pandas DataFrame")
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise DidactError(what, f"lacks column(s) {missing} (has {list(frame.columns)[:12]})",
                          "give ts, node, error, ood and latent_<i> columns (see node_scores_from_interval)")
    lat = latent_columns(frame)
    out = pd.DataFrame({"ts": _utc(frame["ts"].to_numpy(), f"{what} column ts"),
                        "node": frame["node"].astype(str).to_numpy()})
    err = pd.to_numeric(frame["error"], errors="coerce").to_numpy(dtype=np.float64)
    if (err[np.isfinite(err)] < 0).any():
        raise DataQualityError(what, "has negative reconstruction errors", "pass the detector's errors (>= 0)")
    out["error"] = err
    out["ood"] = frame["ood"].fillna(False).astype(bool).to_numpy()
    for c in lat:
        out[c] = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float32)
    dup = out.duplicated(["ts", "node"])
    if dup.any():
        first = out.loc[dup, ["ts", "node"]].iloc[0].tolist()
        raise DataQualityError(what, f"has {int(dup.sum())} duplicate (ts, node) rows, e.g. {first}",
                               "aggregate to one row per node and interval (aggregate_nodes does)")
    return out.sort_values(["ts", "node"], kind="stable", ignore_index=True)


def node_scores_from_interval(nodes: pd.DataFrame, ts) -> pd.DataFrame:
    """Serving's per-node frame (``IntervalScores.nodes``: index node, error_mean, ood,
    latent_<i>) as node-score rows at ``ts``; ``error`` is the mean error over the node's CPUs."""
    lat = latent_columns(nodes)
    out = pd.DataFrame({"ts": pd.Timestamp(ts), "node": nodes.index.astype(str),
                        "error": nodes["error_mean"].to_numpy(dtype=np.float64),
                        "ood": nodes["ood"].to_numpy(dtype=bool)})
    for c in lat:
        out[c] = nodes[c].to_numpy(dtype=np.float32)
    return out


@dataclass(frozen=True, eq=False)
class RackMap:
    """Node → rack, checked: every node in exactly one rack.  ``nodes`` sorted, ``racks``
    sorted; ``rack_of[i]`` the rack index of ``nodes[i]``."""

    nodes: tuple[str, ...]
    racks: tuple[str, ...]
    rack_of: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, what: str = "topology") -> "RackMap":
        if not {"node", "rack"} <= set(frame.columns):
            raise DidactError(what, f"lacks column node or rack (has {list(frame.columns)})",
                              "give one row per node with columns node, rack")
        df = frame[["node", "rack"]].astype(str).drop_duplicates()
        if df.empty:
            raise DidactError(what, "has no nodes", "give at least one node, rack row")
        racks_per_node = df.groupby("node")["rack"].nunique()
        two = racks_per_node[racks_per_node > 1]
        if len(two):
            node = two.index[0]
            racks = sorted(df.loc[df["node"] == node, "rack"])
            raise DidactError(what, f"puts {len(two)} node(s) in two racks, e.g. {node} in {racks}",
                              "give each node exactly one rack")
        df = df.sort_values("node", ignore_index=True)
        racks = tuple(sorted(df["rack"].unique()))
        idx = {r: i for i, r in enumerate(racks)}
        return cls(tuple(df["node"]), racks, np.array([idx[r] for r in df["rack"]], dtype=np.int64))

    @classmethod
    def from_any(cls, topology, what: str = "topology") -> "RackMap":
        """A RackMap from a RackMap, an ingest :class:`Topology`, a frame (node, rack), a
        mapping/Series node → rack, a CSV path, or any object with ``to_frame()``."""
        if isinstance(topology, RackMap):
            return topology
        if isinstance(topology, Topology):
            return cls.from_frame(topology.frame(), f"topology {topology.source}")
        if isinstance(topology, pd.Series):
            return cls.from_frame(pd.DataFrame({"node": topology.index, "rack": topology.to_numpy()}), what)
        if isinstance(topology, Mapping):
            return cls.from_frame(pd.DataFrame({"node": list(topology), "rack": list(topology.values())}), what)
        if isinstance(topology, (str, Path)):
            return cls.from_csv(topology)
        if isinstance(topology, pd.DataFrame):
            return cls.from_frame(topology, what)
        if hasattr(topology, "to_frame"):
            return cls.from_frame(topology.to_frame(), what)
        raise DidactError(what, f"is a {type(topology).__name__}", "give a RackMap, a node/rack frame or mapping, or a CSV path")

    @classmethod
    def from_csv(cls, path: str | Path) -> "RackMap":
        p = Path(path)
        try:
            frame = pd.read_csv(p, dtype=str, comment="#")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DidactError(f"topology file {p}", f"cannot be read as CSV ({e})",
                              "give a CSV with header node,rack") from None
        return cls.from_frame(frame, f"topology file {p}")

    @classmethod
    def from_pattern(cls, nodes, pattern: str) -> "RackMap":
        """Racks from node names: ``pattern`` is a regex with a group named ``rack`` (or a first group)."""
        rx = re.compile(pattern)
        rows = []
        for n in nodes:
            m = rx.search(str(n))
            if not m:
                raise DidactError(f"node {n}", f"does not match the rack pattern {pattern!r}",
                                  "fix the pattern, or give a node,rack CSV")
            rows.append((str(n), m.group("rack") if "rack" in rx.groupindex else m.group(1)))
        return cls.from_frame(pd.DataFrame(rows, columns=["node", "rack"]), f"rack pattern {pattern!r}")

    @property
    def n_racks(self) -> int:
        return len(self.racks)

    def index_of(self, nodes, what: str = "node scores") -> np.ndarray:
        """Positions of ``nodes`` in ``self.nodes``; an unknown node is a clear error."""
        pos = pd.Index(self.nodes).get_indexer(pd.Index(np.asarray(nodes, dtype=str)))
        if (pos < 0).any():
            unknown = sorted(set(np.asarray(nodes, dtype=str)[pos < 0]))
            raise DidactError(what, f"name {len(unknown)} node(s) the topology does not know, e.g. {unknown[:3]}",
                              "add them to the topology (node,rack CSV or pattern)")
        return pos

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"node": list(self.nodes), "rack": [self.racks[i] for i in self.rack_of]})


def validate_jobs(jobs: pd.DataFrame | None, racks: RackMap, what: str = "job membership") -> pd.DataFrame:
    """Membership rows job_id (str), node (str, known to the topology), start < end (UTC);
    an empty frame when ``jobs`` is None."""
    cols = ["job_id", "node", "start", "end", "node_index"]
    if jobs is None or len(jobs) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    missing = [c for c in JOB_COLUMNS if c not in jobs.columns]
    if missing:
        raise DidactError(what, f"lacks column(s) {missing}", "give job_id, node, start, end rows")
    out = pd.DataFrame({"job_id": jobs["job_id"].astype(str).to_numpy(), "node": jobs["node"].astype(str).to_numpy(),
                        "start": _utc(jobs["start"].to_numpy(), f"{what} column start"),
                        "end": _utc(jobs["end"].to_numpy(), f"{what} column end")})
    bad = out["end"] <= out["start"]
    if bad.any():
        raise DataQualityError(what, f"has {int(bad.sum())} rows with end <= start", "fix those rows")
    out["node_index"] = racks.index_of(out["node"], what)
    return out


@dataclass
class ScoreTensor:
    """Node scores as arrays over (time, node in the topology's order)."""

    ts: pd.DatetimeIndex
    #: (T, N) float64, NaN where the node was not scored
    error: np.ndarray
    #: (T, N) bool
    ood: np.ndarray
    #: (T, N, d) float32
    latent: np.ndarray
    racks: RackMap

    @property
    def shape(self) -> tuple[int, int]:
        return self.error.shape

    def features(self) -> np.ndarray:
        """(T, N, 2 + d): log error, ood, latents — the per-timestep node × feature tensor."""
        le = np.log(np.maximum(self.error, 1e-12))[..., None]
        return np.concatenate([le, self.ood[..., None].astype(np.float64), self.latent.astype(np.float64)], axis=2)


def to_tensor(scores: pd.DataFrame, racks: RackMap, what: str = "node scores") -> ScoreTensor:
    """Lay validated node scores out as (T, N[, d]) arrays in ``racks.nodes`` order."""
    lat = latent_columns(scores)
    ts = pd.DatetimeIndex(scores["ts"].unique()).as_unit("ns").sort_values()
    ti = ts.get_indexer(pd.DatetimeIndex(scores["ts"]))
    ni = racks.index_of(scores["node"], what)
    T, N = len(ts), len(racks.nodes)
    error = np.full((T, N), np.nan)
    error[ti, ni] = scores["error"].to_numpy(dtype=np.float64)
    ood = np.zeros((T, N), dtype=bool)
    ood[ti, ni] = scores["ood"].to_numpy(dtype=bool)
    latent = np.full((T, N, len(lat)), np.nan, dtype=np.float32)
    if lat:
        latent[ti, ni] = scores[lat].to_numpy(dtype=np.float32)
    return ScoreTensor(ts, error, ood, latent, racks)


def rack_aggregate(values: np.ndarray, rack_of: np.ndarray, n_racks: int, how: str = "mean") -> np.ndarray:
    """(T, N) → (T, R): per rack ``mean`` or ``max`` over its nodes, ignoring NaN (NaN for a rack
    with no value at a timestep)."""
    values = np.atleast_2d(values)
    T = values.shape[0]
    ok = np.isfinite(values)
    if how == "mean":
        sums = np.zeros((T, n_racks))
        counts = np.zeros((T, n_racks))
        np.add.at(sums.T, rack_of, np.where(ok, values, 0.0).T)
        np.add.at(counts.T, rack_of, ok.T.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if how == "max":
        out = np.full((T, n_racks), -np.inf)
        np.maximum.at(out.T, rack_of, np.where(ok, values, -np.inf).T)
        return np.where(np.isinf(out), np.nan, out)
    raise DidactError("rack aggregation", f"has unknown how={how!r}", "use 'mean' or 'max'")
