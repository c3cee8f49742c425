"""Power profiles: how much each node and each job flavour draws, and what to cap first.

Inputs are plain frames: power samples (``ts, node, source, watts``), optionally the
AI-ready CPU frame (``ts, node, cpu, idle, iowait, ...`` fractions) for utilisation, and
optionally job labels (``node, start, end, label``).  :func:`power_profiles` returns a
:class:`PowerProfiles` of DataFrames plus a summary dict; :func:`profile_plot` draws
them as a PNG (matplotlib, Agg) and returns the bytes.

Definitions
-----------
- **utilisation** of a node at ts = mean over its CPU threads of ``1 − Σ idle_modes``
  fractions; ``idle_modes`` defaults to ``("idle", "iowait")`` (a CPU waiting on IO is
  idle as far as power goes); pass ``("idle",)`` for the plain ``1 − idle``.
- **energy**: trapezoid rule between consecutive samples of a node; a step longer than
  ``max_gap_s`` (default 3 × the median sampling interval) is a **gap** and is not
  bridged: its time is reported (``gap_s``, ``coverage``) and ``energy_kwh`` covers only
  the sampled time; ``energy_kwh_filled`` scales it to the whole span at the node's mean
  power.
- **mean watts** are time-weighted (energy / covered time); **peak** is the largest sample.
- **idle baseline**: median watts over samples with utilisation ≤ ``idle_util``
  (≥ 10 such samples), else the fit's intercept (``idle_baseline_from`` says which).
- **fit**: least squares ``watts = intercept + slope × utilisation`` per node (slope =
  watts added at full load), with R².
- **jobs**: each labelled interval [start, end) on a node: wall time, energy (segments
  starting inside it), mean and peak watts; **flavours** aggregate jobs by label.
- **load shedding** (``shedding``): during the peak hours ``[peak_hours[0],
  peak_hours[1])`` (in ``peak_tz``), a node's *sheddable* watts are its mean peak-hour
  draw minus its idle baseline — the most a power cap can take from it without
  stopping it.  Nodes are capped in order of sheddable watts (largest first, ties by
  higher peak), until the capped nodes' sheddable watts reach ``shed_fraction`` of the
  cluster's peak-hour draw.  Idle-dominated nodes are left alone: capping them frees
  nothing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from didact_core.errors import DataQualityError
from didact_core.schema import TS_DTYPE, UNLABELLED

log = logging.getLogger(__name__)

#: which power source to profile when several are present (whole-node meters first)
SOURCE_PRIORITY = ("redfish", "hwmon", "simulator", "prometheus", "rapl", "nvml")
J_PER_KWH = 3.6e6


@dataclass
class PowerProfiles:
    """Power profile tables (see the module doc for every definition)."""

    nodes: pd.DataFrame
    flavours: pd.DataFrame
    jobs: pd.DataFrame
    shedding: pd.DataFrame
    #: per (node, ts): watts, utilisation, label, energy of the segment starting there
    samples: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def plot_png(self, **kw) -> bytes:
        return profile_plot(self, **kw)


def choose_source(power: pd.DataFrame, source: str | None = None) -> str:
    """The source to profile: ``source`` if given, else the highest in :data:`SOURCE_PRIORITY`."""
    present = sorted(set(power["source"].astype(str)))
    if source is not None:
        if source not in present:
            raise DataQualityError(
                f"power source {source!r}",
                f"has no samples (present: {present})",
                "pick one of the present sources",
            )
        return source
    for s in SOURCE_PRIORITY:
        if s in present:
            return s
    return present[0]


def node_utilisation(ai_ready: pd.DataFrame, idle_modes: Sequence[str] = ("idle", "iowait")) -> pd.DataFrame:
    """Per (node, ts) utilisation = mean over CPU threads of 1 − Σ idle_modes."""
    missing = [m for m in idle_modes if m not in ai_ready.columns]
    if missing:
        raise DataQualityError(
            "AI-ready frame",
            f"lacks feature column(s) {missing} needed for utilisation",
            f"preprocess with features including {list(idle_modes)} or pass idle_modes=",
        )
    busy = 1.0 - ai_ready[list(idle_modes)].astype(np.float64).sum(axis=1)
    df = pd.DataFrame(
        {
            "node": ai_ready["node"].astype(str).to_numpy(),
            "ts": pd.to_datetime(ai_ready["ts"], utc=True).astype(TS_DTYPE).array.asi8,
            "util": busy.to_numpy(),
        }
    )
    out = df.groupby(["node", "ts"], sort=True)["util"].mean().reset_index()
    return out


def _fit(g: pd.DataFrame) -> pd.DataFrame:
    """Vectorised per-node least squares of watts on util from grouped sums."""
    x, y = g["util"], g["watts"]
    d = pd.DataFrame({"node": g["node"], "n": 1.0, "x": x, "y": y, "xx": x * x, "xy": x * y, "yy": y * y})
    s = d.groupby("node").sum()
    n = s["n"]
    sxx = s["xx"] - s["x"] ** 2 / n
    sxy = s["xy"] - s["x"] * s["y"] / n
    syy = s["yy"] - s["y"] ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 1e-12, sxy / sxx, np.nan)
        intercept = (s["y"] - slope * s["x"]) / n
        r2 = np.where((sxx > 1e-12) & (syy > 1e-12), sxy**2 / (sxx * syy), np.nan)
    return pd.DataFrame(
        {"fit_samples": n.astype(np.int64), "slope_w_per_util": slope, "intercept_w": intercept, "r2": r2},
        index=s.index,
    )


def power_profiles(
    power: pd.DataFrame,
    ai_ready: pd.DataFrame | None = None,
    labels: pd.DataFrame | None = None,
    *,
    source: str | None = None,
    idle_modes: Sequence[str] = ("idle", "iowait"),
    max_gap_s: float | None = None,
    idle_util: float = 0.05,
    peak_hours: tuple[int, int] = (17, 21),
    peak_tz: str = "UTC",
    shed_fraction: float = 0.10,
) -> PowerProfiles:
    """Profile power samples; see the module doc.  Pure: inputs are not modified."""
    src = _check_power(power, source)
    df, dropped = _samples_of(power, src)
    med, gap_limit = _add_segments(df, max_gap_s)
    fits = _add_utilisation(df, ai_ready, idle_modes, med)
    jobs_in = _add_labels(df, labels)
    nodes = _node_table(df, fits, idle_util)
    jobs = _job_table(df, jobs_in)
    flavours = _flavour_table(df, jobs)
    shed = _shedding(df, nodes, peak_hours, peak_tz, shed_fraction)
    summary = {
        "source": src,
        "sources_present": sorted(set(power["source"].astype(str))),
        "nodes": len(nodes),
        "samples": len(df),
        **dropped,
        "interval_s": med,
        "max_gap_s": gap_limit,
        "gaps": int(nodes["gaps"].sum()),
        "energy_kwh": float(nodes["energy_kwh"].sum()),
        "energy_kwh_filled": float(nodes["energy_kwh_filled"].sum()),
        "mean_w": float(nodes["mean_w"].sum()),
        "peak_w": _cluster_peak_w(df, med),
        "idle_baseline_w": float(nodes["idle_baseline_w"].sum()),
        "utilisation_from": list(idle_modes) if fits is not None else None,
        "fit_all_nodes": _overall_fit(df) if fits is not None else None,
        "labelled_jobs": len(jobs),
        "flavours": int((flavours["label"] != UNLABELLED).sum()),
        "peak_hours": f"[{peak_hours[0]:02d}:00, {peak_hours[1]:02d}:00) {peak_tz}",
        "shed_fraction": shed_fraction,
        "cap_first": shed.loc[shed["capped"], "node"].tolist(),
        "cap_saves_w": float(shed.loc[shed["capped"], "sheddable_w"].sum()),
        "cluster_peak_hour_w": float(shed["peak_hour_mean_w"].sum()),
    }
    samples = df[["node", "ts", "watts", "util", "label", "segment_j", "dt_s"]].copy()
    samples["ts"] = pd.to_datetime(samples["ts"], unit="ms", utc=True).astype(TS_DTYPE)
    return PowerProfiles(
        nodes=nodes, flavours=flavours, jobs=jobs, shedding=shed, samples=samples, summary=summary
    )


def _check_power(power: pd.DataFrame, source: str | None) -> str:
    """The source to profile, after checking the frame has power samples at all."""
    need = {"ts", "node", "source", "watts"}
    if power is None or not need <= set(power.columns):
        raise DataQualityError(
            "power samples",
            f"need columns {sorted(need)}",
            "pass RawBlock.power or a PowerReader's read() result",
        )
    if len(power) == 0:
        raise DataQualityError(
            "power samples", "are empty", "read power for the day first (no source had any)"
        )
    return choose_source(power, source)


def _samples_of(power: pd.DataFrame, src: str) -> tuple[pd.DataFrame, dict]:
    """The source's samples as (node, ts in epoch ms, watts), sorted, without NaN watts
    or duplicate (node, ts); and how many of each were dropped."""
    p = power.loc[power["source"].astype(str) == src, ["ts", "node", "watts"]]
    df = pd.DataFrame(
        {
            "node": p["node"].astype(str).to_numpy(),
            "ts": pd.to_datetime(p["ts"], utc=True).astype(TS_DTYPE).array.asi8,
            "watts": p["watts"].astype(np.float64).to_numpy(),
        }
    )
    n_nan = int(df["watts"].isna().sum())
    df = df.dropna(subset=["watts"]).sort_values(["node", "ts"], kind="stable")
    n_dup = int(df.duplicated(["node", "ts"]).sum())
    df = df.drop_duplicates(["node", "ts"]).reset_index(drop=True)
    return df, {"nan_samples_dropped": n_nan, "duplicate_samples_dropped": n_dup}


def _add_segments(df: pd.DataFrame, max_gap_s: float | None) -> tuple[float, float]:
    """Segments between consecutive samples of a node (energy by the trapezoid rule, gaps
    not bridged) as columns of ``df``; returns the median interval and the gap limit."""
    node_arr = df["node"].to_numpy()
    ts = df["ts"].to_numpy()
    w = df["watts"].to_numpy()
    same = np.r_[node_arr[1:] == node_arr[:-1], False]  # row i starts a segment to row i+1
    dt_s = np.where(same, (np.r_[ts[1:], 0] - ts) / 1000.0, np.nan)
    med = float(np.nanmedian(dt_s)) if np.isfinite(dt_s).any() else float("nan")
    gap_limit = max_gap_s if max_gap_s is not None else 3.0 * med
    seg_ok = same & (dt_s <= gap_limit)
    seg_gap = same & ~seg_ok
    seg_j = np.where(seg_ok, 0.5 * (w + np.r_[w[1:], 0.0]) * np.nan_to_num(dt_s), 0.0)
    df["dt_s"] = np.where(same, dt_s, 0.0)
    df["segment_j"] = seg_j
    df["covered_s"] = np.where(seg_ok, dt_s, 0.0)
    df["gap_s"] = np.where(seg_gap, dt_s, 0.0)
    df["is_gap"] = seg_gap
    return med, gap_limit


def _add_utilisation(df: pd.DataFrame, ai_ready: pd.DataFrame | None, idle_modes, med: float) -> pd.DataFrame | None:
    """Utilisation joined on (node, ts), nearest within half an interval, as ``df["util"]``;
    returns the per-node fits (None without utilisation)."""
    if ai_ready is None or not len(ai_ready):
        df["util"] = np.nan
        return None
    util = node_utilisation(ai_ready, idle_modes)
    tol = int(max(1.0, 0.5 * med * 1000)) if np.isfinite(med) else 1
    m = pd.merge_asof(
        df[["ts", "node"]].reset_index().sort_values("ts"),
        util.sort_values("ts"),
        on="ts",
        by="node",
        direction="nearest",
        tolerance=tol,
    )
    df["util"] = m.set_index("index")["util"].reindex(df.index).to_numpy()
    have = df.dropna(subset=["util"])
    return _fit(have) if len(have) else None


def _add_labels(df: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame | None:
    """Each sample (and the segment starting at it) gets the label whose [start, end) holds
    it, as ``df["label"]`` and ``df["job"]`` (-1: none); returns the jobs (None without labels)."""
    df["label"] = UNLABELLED
    df["job"] = -1
    if labels is None or not len(labels):
        return None
    jobs_in = labels.loc[:, ["node", "start", "end", "label"]].reset_index(drop=True).copy()
    jobs_in["node"] = jobs_in["node"].astype(str)
    jobs_in["start_ms"] = pd.to_datetime(jobs_in["start"], utc=True).astype(TS_DTYPE).array.asi8
    jobs_in["end_ms"] = pd.to_datetime(jobs_in["end"], utc=True).astype(TS_DTYPE).array.asi8
    jobs_in["job"] = np.arange(len(jobs_in))
    right = (
        jobs_in[["node", "start_ms", "end_ms", "job"]]
        .rename(columns={"start_ms": "ts"})
        .sort_values("ts")
    )
    m = pd.merge_asof(
        df[["ts", "node"]].reset_index().sort_values("ts"),
        right,
        on="ts",
        by="node",
        direction="backward",
    )
    m = m.set_index("index").reindex(df.index)
    inside = m["end_ms"].notna().to_numpy() & (df["ts"].to_numpy() < m["end_ms"].fillna(0).to_numpy())
    job_idx = np.where(inside, m["job"].fillna(-1).to_numpy(), -1).astype(np.int64)
    df["job"] = job_idx
    lab = jobs_in["label"].astype(str).to_numpy()
    df["label"] = np.where(job_idx >= 0, lab[np.clip(job_idx, 0, None)], UNLABELLED)
    return jobs_in


def _node_table(df: pd.DataFrame, fits: pd.DataFrame | None, idle_util: float) -> pd.DataFrame:
    """Per node: samples, span, energy, coverage, mean/peak watts, fit and idle baseline."""
    g = df.groupby("node", sort=True)
    nodes = pd.DataFrame(
        {
            "samples": g.size(),
            "first": g["ts"].min(),
            "last": g["ts"].max(),
            "energy_j": g["segment_j"].sum(),
            "covered_s": g["covered_s"].sum(),
            "gap_s": g["gap_s"].sum(),
            "peak_w": g["watts"].max(),
            "p95_w": g["watts"].quantile(0.95),
            "min_w": g["watts"].min(),
            "gaps": g["is_gap"].sum().astype(np.int64),
        }
    )
    nodes["span_s"] = (nodes["last"] - nodes["first"]) / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        nodes["mean_w"] = np.where(
            nodes["covered_s"] > 0, nodes["energy_j"] / nodes["covered_s"], g["watts"].mean()
        )
        nodes["coverage"] = np.where(nodes["span_s"] > 0, nodes["covered_s"] / nodes["span_s"], np.nan)
    nodes["energy_kwh"] = nodes["energy_j"] / J_PER_KWH
    nodes["energy_kwh_filled"] = nodes["mean_w"] * nodes["span_s"] / J_PER_KWH
    if fits is not None:
        nodes = nodes.join(fits)
        idle_rows = df[df["util"] <= idle_util]
        idle_med = idle_rows.groupby("node")["watts"].agg(["median", "size"])
        enough = idle_med["size"] >= 10
        nodes["idle_baseline_w"] = idle_med.loc[enough, "median"].reindex(nodes.index)
        nodes["idle_baseline_from"] = np.where(
            nodes["idle_baseline_w"].notna(), "idle samples", "fit intercept"
        )
        nodes["idle_baseline_w"] = nodes["idle_baseline_w"].fillna(nodes["intercept_w"])
        nodes["mean_util"] = df.groupby("node")["util"].mean()
    else:
        nodes["idle_baseline_w"] = nodes["min_w"]
        nodes["idle_baseline_from"] = "minimum (no utilisation given)"
    for c in ("first", "last"):
        nodes[c] = pd.to_datetime(nodes[c], unit="ms", utc=True).astype(TS_DTYPE)
    nodes = nodes.drop(columns=["energy_j"])
    nodes.index.name = "node"
    return nodes.reset_index()


_JOB_COLUMNS = ["node", "start", "end", "label", "wall_s", "energy_kwh", "covered_s", "peak_w", "mean_w", "mean_util"]


def _job_table(df: pd.DataFrame, jobs_in: pd.DataFrame | None) -> pd.DataFrame:
    """Per labelled job: wall time, energy of the segments starting inside it, watts, utilisation."""
    if jobs_in is None:
        return pd.DataFrame(columns=_JOB_COLUMNS)
    jg = df[df["job"] >= 0].groupby("job")
    jobs = jobs_in[["job", "node", "start", "end", "label"]].copy()
    jobs["wall_s"] = (jobs_in["end_ms"] - jobs_in["start_ms"]) / 1000.0
    jobs["energy_kwh"] = (jg["segment_j"].sum() / J_PER_KWH).reindex(jobs["job"]).fillna(0.0).to_numpy()
    jobs["covered_s"] = jg["covered_s"].sum().reindex(jobs["job"]).fillna(0.0).to_numpy()
    jobs["peak_w"] = jg["watts"].max().reindex(jobs["job"]).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        jobs["mean_w"] = np.where(
            jobs["covered_s"] > 0, jobs["energy_kwh"] * J_PER_KWH / jobs["covered_s"], np.nan
        )
    jobs["mean_util"] = jg["util"].mean().reindex(jobs["job"]).to_numpy()
    return jobs.drop(columns="job")


def _flavour_table(df: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Per label (``UNLABELLED`` for samples outside every job): energy, node hours, watts, jobs."""
    fg = df.groupby("label", sort=True)
    flavours = pd.DataFrame(
        {
            "samples": fg.size(),
            "energy_kwh": fg["segment_j"].sum() / J_PER_KWH,
            "node_hours": fg["covered_s"].sum() / 3600.0,
            "peak_w": fg["watts"].max(),
            "mean_util": fg["util"].mean(),
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        flavours["mean_w"] = np.where(
            flavours["node_hours"] > 0, flavours["energy_kwh"] * 1000.0 / flavours["node_hours"], np.nan
        )
    if len(jobs):
        jf = jobs.groupby("label")
        flavours["jobs"] = jf.size().reindex(flavours.index).fillna(0).astype(np.int64)
        flavours["mean_wall_s"] = jf["wall_s"].mean().reindex(flavours.index)
        flavours["mean_job_kwh"] = jf["energy_kwh"].mean().reindex(flavours.index)
        # energy vs wall time through the origin: kWh per wall hour of a job of this flavour
        num = (jobs["wall_s"] / 3600.0 * jobs["energy_kwh"]).groupby(jobs["label"]).sum()
        den = ((jobs["wall_s"] / 3600.0) ** 2).groupby(jobs["label"]).sum()
        flavours["kwh_per_wall_hour"] = (num / den).reindex(flavours.index)
    else:
        flavours["jobs"] = 0
    flavours.index.name = "label"
    return flavours.reset_index()


def _shedding(df: pd.DataFrame, nodes: pd.DataFrame, peak_hours: tuple[int, int], peak_tz: str,
              shed_fraction: float) -> pd.DataFrame:  # fmt: skip
    """Load shedding at peak hours: nodes ranked by sheddable watts, the first ones capped."""
    local = pd.to_datetime(df["ts"], unit="ms", utc=True).dt.tz_convert(peak_tz)
    h0, h1 = peak_hours
    hour = local.dt.hour
    in_peak = (hour >= h0) & (hour < h1) if h0 <= h1 else (hour >= h0) | (hour < h1)
    pk = df[in_peak.to_numpy()].groupby("node")
    shed = pd.DataFrame(
        {
            "peak_hour_mean_w": (pk["segment_j"].sum() / pk["covered_s"].sum()).where(
                pk["covered_s"].sum() > 0
            ),
            "peak_hour_peak_w": pk["watts"].max(),
        }
    ).reindex(nodes["node"])
    shed["idle_baseline_w"] = nodes.set_index("node")["idle_baseline_w"]
    shed["sheddable_w"] = (shed["peak_hour_mean_w"] - shed["idle_baseline_w"]).clip(lower=0)
    shed = shed.dropna(subset=["peak_hour_mean_w"]).sort_values(
        ["sheddable_w", "peak_hour_peak_w"], ascending=[False, False]
    )
    target = shed_fraction * float(shed["peak_hour_mean_w"].sum())
    cum = shed["sheddable_w"].cumsum()
    shed["rank"] = np.arange(1, len(shed) + 1)
    shed["cumulative_sheddable_w"] = cum
    before = cum - shed["sheddable_w"]
    shed["capped"] = (before < target) & (shed["sheddable_w"] > 0)
    shed.index.name = "node"
    return shed.reset_index()


def _cluster_peak_w(df: pd.DataFrame, med: float) -> float:
    """The cluster's peak draw on a common time grid (samples floored to the median
    interval), over the slots where every node reported."""
    grid_ms = int(med * 1000) if np.isfinite(med) and med > 0 else 1000
    cluster = df.assign(slot=df["ts"] // grid_ms).groupby("slot")["watts"].agg(["sum", "size"])
    full = cluster[cluster["size"] == cluster["size"].max()]
    return float(full["sum"].max()) if len(full) else float("nan")


def _overall_fit(df: pd.DataFrame) -> dict | None:
    """One watts-vs-utilisation fit over every node's samples (None with too few)."""
    have_fit = df.dropna(subset=["util"])
    if len(have_fit) <= 2:
        return None
    return _fit(have_fit.assign(node="all")).iloc[0].to_dict()


def profile_plot(
    prof: PowerProfiles, title: str | None = None, max_points: int = 20_000, dpi: int = 100
) -> bytes:
    """A 2×2 PNG: cluster power over time, watts vs utilisation with fits, energy per node,
    and job wall time vs energy by flavour (or mean watts per flavour without jobs)."""
    # lazy: matplotlib is heavy to import; no pyplot: no global state, thread-safe
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=dpi)
    axes = fig.subplots(2, 2)
    s = prof.samples
    # 1. cluster power over time
    ax = axes[0, 0]
    grid = max(1, int(round(prof.summary.get("interval_s") or 1)))
    tot = s.set_index("ts")["watts"].groupby(level=0).sum()
    if len(tot):
        tot = tot.resample(f"{grid}s").sum(min_count=1)
        ax.plot(tot.index, tot.to_numpy() / 1000.0, lw=0.8)
    ax.set_title("cluster power")
    ax.set_ylabel("kW")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    # 2. watts vs utilisation
    ax = axes[0, 1]
    have = s.dropna(subset=["util"])
    if len(have):
        pts = have.sample(min(len(have), max_points), random_state=0)
        ax.scatter(pts["util"], pts["watts"], s=2, alpha=0.3)
        xs = np.linspace(0, 1, 2)
        for _, row in prof.nodes.dropna(subset=["slope_w_per_util"]).head(8).iterrows():
            ax.plot(xs, row["intercept_w"] + row["slope_w_per_util"] * xs, lw=0.8, label=row["node"])
        if len(prof.nodes) <= 8:
            ax.legend(fontsize=6)
        ax.set_xlabel("utilisation")
    else:
        ax.text(0.5, 0.5, "no utilisation given", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("watts vs utilisation")
    ax.set_ylabel("W")
    # 3. energy per node
    ax = axes[1, 0]
    top = prof.nodes.sort_values("energy_kwh", ascending=False).head(30)
    capped = set(prof.shedding.loc[prof.shedding["capped"], "node"])
    ax.bar(
        range(len(top)),
        top["energy_kwh"],
        color=["tab:red" if n in capped else "tab:blue" for n in top["node"]],
    )
    ax.set_xticks(range(len(top)), top["node"], rotation=90, fontsize=6)
    ax.set_title("energy per node (red: capped first at peak)")
    ax.set_ylabel("kWh")
    # 4. jobs: wall time vs energy
    ax = axes[1, 1]
    if len(prof.jobs):
        for label, g in prof.jobs.groupby("label"):
            ax.scatter(g["wall_s"] / 3600.0, g["energy_kwh"], s=8, label=label)
        ax.set_xlabel("wall time (h)")
        ax.set_ylabel("kWh")
        ax.legend(fontsize=6, ncol=2)
        ax.set_title("jobs: wall time vs energy")
    else:
        f = prof.flavours
        ax.bar(range(len(f)), f["mean_w"])
        ax.set_xticks(range(len(f)), f["label"], rotation=90, fontsize=6)
        ax.set_title("mean watts per flavour")
    fig.suptitle(
        title
        or f"power profile ({prof.summary.get('source')}, {prof.summary.get('nodes')} nodes, "
        f"{prof.summary.get('energy_kwh', 0):.1f} kWh)"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
