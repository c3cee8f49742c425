"""The testbed evaluation in words: per-seed figures → mean ± std, per-flavour rows with
their counts, and every flavour or segment left out of a mean with the reason.

Nothing here prints (the CLI and the bench print :func:`report_lines`); a figure that
cannot be computed is "–" with a note saying why, never ``nan``.
"""

from __future__ import annotations

import numpy as np

from didact_core.learn.separability import KNN_K
from didact_core.testbed.segments import Segments

__all__ = ["METRICS", "flavour_rows", "report_lines", "summarise"]

#: per-seed figures summarised as mean ± std
METRICS = (
    "latent_knn_accuracy_by_segment", "pca2_knn_accuracy_by_segment", "raw_knn_accuracy_by_segment",
    "openset_auc", "latent_knn_accuracy", "pca2_knn_accuracy", "raw_knn_accuracy",
)  # fmt: skip
#: starved segments named one by one at most (then counted)
MAX_SEGMENTS_NAMED = 8


def _stats(values: list) -> dict:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not v:
        return {"mean": None, "std": None, "values": [], "n": 0}
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(np.mean(v)), "std": std, "values": v, "n": len(v)}


def fmt(stat: dict | None, digits: int = 3) -> str:
    """``0.912 ± 0.030`` (± only with 2+ seeds), or ``–`` when there is no figure."""
    if not stat or stat.get("mean") is None:
        return "–"
    s = f"{stat['mean']:.{digits}f}"
    return s + (f" ± {stat['std']:.{digits}f}" if stat.get("n", 0) > 1 else "")


def summarise(per_seed: list[dict], seg_a: Segments, seg_b: Segments | None) -> dict:
    """One direction's per-seed figures → summary, per-flavour figures, table rows, warnings."""
    summary = {k: _stats([r.get(k) for r in per_seed]) for k in METRICS}
    fl_a = seg_a.flavours()
    fl_b = seg_b.flavours() if seg_b is not None else None
    flavours = sorted(set(fl_a.index) | (set(fl_b.index) if fl_b is not None else set()))
    knn = {f: _stats([r["latent_knn_by_segment_by_flavour"].get(f) for r in per_seed]) for f in flavours}
    per_sample = {f: _stats([r.get("latent_knn_by_flavour", {}).get(f) for r in per_seed]) for f in flavours}
    opens = {f: _stats([r["openset"].get(f, {}).get("auc") for r in per_seed]) for f in flavours}
    counted = {f: all(r["openset"].get(f, {}).get("counted", False) for r in per_seed) for f in flavours}
    why = {}
    for r in per_seed:
        for f, reason in r["not_scored"].items():
            why.setdefault(f, reason)
    rows, warnings = [], []
    for f in flavours:
        row = _row(f, fl_a, fl_b, per_seed, knn[f], opens[f], counted[f], why.get(f))
        rows.append(row)
    warnings += _segment_warnings(seg_a, "") + (_segment_warnings(seg_b, "test days: ") if seg_b else [])
    warnings += [f"{f}: not scored — {why[f]}" for f in flavours if f in why]
    for f in flavours:
        r0 = next((r["openset"][f] for r in per_seed if f in r["openset"]), None)
        if r0 is not None and not counted[f]:
            warnings.append(f"{f}: open-set AUC {fmt(opens[f])} {r0.get('why', 'not counted in every seed')}")
    first = per_seed[0]
    return {
        "summary": summary,
        "per_seed": per_seed,
        "by_flavour": {"knn": {f: s["mean"] for f, s in knn.items()}, "openset": {f: s["mean"] for f, s in opens.items()},
                       "knn_per_sample": {f: s["mean"] for f, s in per_sample.items() if s["mean"] is not None}},
        "flavour_rows": rows,
        "warnings": warnings,
        "flavours": flavours,
        "samples_by_flavour": {f: int(fl_a["samples"].get(f, 0)) for f in flavours},
        "segments": int(seg_a.table["usable"].sum()),
        "n_params": first["n_params"],
        "knn_scheme": (f"kNN (k = {KNN_K}) fit on the training segments' latents, judging the held-out "
                       f"segments ({first['test_segments']} of them, {first['test_samples']} samples, seed "
                       f"{first['seed']}); no segment on both sides; per-sample figure: 5-fold stratified over "
                       f"the held-out samples (flatters)"),
    }  # fmt: skip


def _row(f, fl_a, fl_b, per_seed, knn, opens, counted, why) -> dict:
    def segs(fl):
        if fl is None or f not in fl.index:
            return "0"
        u, n = int(fl.loc[f, "usable_segments"]), int(fl.loc[f, "segments"])
        return f"{u}" if u == n else f"{u} of {n}"

    held = [r["test_by_flavour"].get(f, {}).get("segments", 0) for r in per_seed]
    notes = [why] if why else []
    if opens["mean"] is not None and not counted:
        notes.append("open-set AUC not in the mean (too few positives)")
    return {
        "flavour": f,
        "segments": segs(fl_a) if fl_b is None else f"{segs(fl_a)} → {segs(fl_b)}",
        "samples": int(fl_a["samples"].get(f, 0)) if fl_b is None else
        f"{int(fl_a['samples'].get(f, 0))} → {int(fl_b['samples'].get(f, 0))}",
        "judged segments": f"{np.mean(held):.3g}" if held else "0",
        "kNN by segment": fmt(knn),
        "open-set AUC": fmt(opens) + ("" if counted or opens["mean"] is None else " *"),
        "note": "; ".join(notes),
    }  # fmt: skip


def _segment_warnings(seg: Segments, prefix: str) -> list[str]:
    bad = seg.table[~seg.table["usable"]]
    if bad.empty:
        return []
    out = [f"{prefix}{len(bad)} segment(s) left out as starved (scrapes under "
           f"{bad['reason'].iloc[0].split('under ')[-1]} of length / {seg.interval_s:g} s):"]  # fmt: skip
    for _, r in bad.head(MAX_SEGMENTS_NAMED).iterrows():
        out.append(f"  {r['label']}: {r['reason']}")
    if len(bad) > MAX_SEGMENTS_NAMED:
        out.append(f"  … and {len(bad) - MAX_SEGMENTS_NAMED} more")
    return out


def flavour_rows(result: dict, run: int = 0) -> list[dict]:
    """The per-flavour table of one direction (``result["runs"][run]``)."""
    return result["runs"][run]["flavour_rows"]


def report_lines(result: dict) -> list[str]:
    """The evaluation in plain lines: per direction its headline (mean ± std over seeds), how
    kNN was folded, and every warning; the per-flavour tables are :func:`flavour_rows`."""
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [f"features {', '.join(result['features'])[:200]}; window {result['window']}; seeds {seeds}; "
             f"{result['n_params']} parameters"]  # fmt: skip
    for r in result["runs"]:
        s = r["summary"]
        lines.append(f"{r['name']}: latent-2 kNN by segment {fmt(s['latent_knn_accuracy_by_segment'])} "
                     f"(PCA-2 {fmt(s['pca2_knn_accuracy_by_segment'])}, raw {fmt(s['raw_knn_accuracy_by_segment'])}); "
                     f"open-set AUC {fmt(s['openset_auc'])}; per sample {fmt(s['latent_knn_accuracy'])} (flatters)")  # fmt: skip
        lines.append(f"  {r['knn_scheme']}")
        lines += [f"  note: {n}" for n in r.get("notes", [])]
        lines += [f"  warning: {w}" if not w.startswith("  ") else f"  {w}" for w in r["warnings"]]
    if len(result["runs"]) > 1:
        lines.append(f"both directions: latent-2 kNN by segment {_num(result.get('latent_knn_accuracy_by_segment'))}, "
                     f"open-set AUC {_num(result.get('openset_auc'))}")  # fmt: skip
    return lines


def _num(v) -> str:
    return "–" if v is None else f"{v:.3f}"
