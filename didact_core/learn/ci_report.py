"""The CI gate's records: the reference file, the code and data versions, the Markdown report.

``ci/reference.json`` holds one entry per profile — the metrics of main, the data versions
of the reference set, the code version that trained it, the model config and the machine —
and changes only when ``didact ci gate --accept`` writes it.  A report folder holds
``report.md`` (for a merge-request comment: pass/fail, what failed and by how much, every
metric against the baseline), ``metrics.json`` and the plots beside it as PNG files.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from didact_core.errors import DidactError
from didact_core.learn.evaluation import plot_error_hist, plot_latent, plot_losses
from didact_core.versioning import code_version

FORMAT = "didact-ci-reference"
FORMAT_VERSION = 1
_REPO = Path(__file__).resolve().parents[2]
#: what the code version of a gate run hashes: everything from telemetry to the model
CODE_MODULES = ("ingest", "data", "learn", "config", "schema")


def code_version_info() -> dict:
    """didact_core's source hash, and the git commit when this is a checkout (``+dirty``)."""
    out: dict = {"didact_core": code_version(*CODE_MODULES), "git": None, "git_dirty": None}
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=_REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        out.update(git=sha, git_dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (an installed wheel): the source hash still names the code
    return out


def environment_info() -> dict:
    import torch  # lazy: torch takes seconds to import

    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count()}  # fmt: skip


def reference_entry(profile, metrics: dict, versions: dict, cfg, settings, code: dict, env: dict) -> dict:
    """What ``--accept`` records for a profile."""
    return {
        "metrics": {k: (None if v is None else float(v)) for k, v in sorted(metrics.items())},
        "data_version": versions,
        "code_version": code,
        "model_config": cfg.to_dict(),
        "features": list(settings.features),
        "window": settings.window,
        "profile": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(profile).items()},
        "environment": env,
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DidactError(f"CI reference {path}", f"cannot be read as JSON ({e})",
                          "restore it from main (git checkout main -- ci/reference.json) or re-record it with "
                          "didact ci gate --accept") from None  # fmt: skip
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("profiles"), dict):
        raise DidactError(f"CI reference {path}", f"is not a {FORMAT} file",
                          "re-record it with didact ci gate --accept")  # fmt: skip
    return doc


def read_reference(path: str | Path | None, profile: str) -> dict:
    """The profile's entry of the reference file; a clear error when there is none."""
    if path is None:
        raise DidactError("CI reference", "was not given", "pass --reference FILE (ci/reference.json)")
    path = Path(path)
    if not path.is_file():
        raise DidactError(f"CI reference {path}", "does not exist",
                          f"record one on main with: didact ci gate --profile {profile} --accept")  # fmt: skip
    entry = _read(path)["profiles"].get(profile)
    if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
        raise DidactError(f"CI reference {path}", f"has no entry for profile {profile!r}",
                          f"record it on main with: didact ci gate --profile {profile} --accept")  # fmt: skip
    return entry


def write_reference(path: str | Path | None, profile: str, entry: dict) -> Path:
    """Replace the profile's entry (other profiles kept), atomically."""
    if path is None:
        raise DidactError("CI reference", "was not given", "pass --reference FILE to --accept into")
    path = Path(path)
    doc = _read(path) if path.is_file() else {"format": FORMAT, "format_version": FORMAT_VERSION, "profiles": {}}
    doc["profiles"][profile] = entry
    doc["profiles"] = dict(sorted(doc["profiles"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# -- the report ------------------------------------------------------------------------------------
def fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def verdict_rows(verdicts, only_failed: bool = False) -> list[dict]:
    """One dict per metric (metric, reference, this change, change, rule, status, why)."""
    return [
        {"metric": v.metric, "reference": fmt(v.baseline), "this change": fmt(v.value), "change": v.change(),
         "rule": v.rule.describe() if v.rule else "", "status": v.status, "why": "; ".join(v.broken)}
        for v in verdicts if v.failed or not only_failed
    ]  # fmt: skip


def _md_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return lines


def _versions_line(record: dict) -> str:
    code, data, env = record["code_version"], record["data_version"], record["environment"]
    git = f"git {code['git']}{'+dirty' if code['git_dirty'] else ''}" if code.get("git") else "no git"
    return (f"Trained: didact_core {code['didact_core']} ({git}) on reference set {data['reference_set']} "
            f"(AI-ready {data['ai_ready']}: {data['train_rows']:,} training rows, {data['test_rows']:,} held-out rows"
            f"{', fixture ' + data['fixture'] if data.get('fixture') else ''}) · features {','.join(record['features'])}"
            f" · torch {env['torch']} on {record['profile']['threads']} thread(s)")  # fmt: skip


def markdown(outcome) -> str:
    """The merge-request comment of a gate run."""
    gated = [v for v in outcome.verdicts if v.rule is not None and v.rule.gate]
    failed = outcome.failures
    head = "PASS" if outcome.passed else "FAIL"
    lines = [
        f"## didact ci gate: {head} (profile {outcome.profile})", "",
        f"Compared with: {outcome.baseline_source} · {len(failed)} of {len(gated)} gated metrics failed · "
        f"{outcome.seconds:.0f} s" + (" · reference recorded (--accept)" if outcome.accepted else ""), "",
        _versions_line(outcome.record), "",
    ]  # fmt: skip
    lines += [f"> warning: {w}" for w in outcome.warnings] + ([""] if outcome.warnings else [])
    if failed:
        lines += ["### What failed", "", *_md_table(verdict_rows(failed, only_failed=True)), ""]
    lines += ["### Metrics", "", *_md_table(verdict_rows(outcome.verdicts)), ""]
    lines += ["### Plots", "", "![latent space](latent.png) ![error histogram](error_hist.png)", "",
              "![error by flavour](error_by_flavour.png) ![training loss](losses.png)", ""]  # fmt: skip
    return "\n".join(lines)


def plot_flavour_errors(metrics: dict, baseline: dict | None) -> bytes:
    """Mean error per flavour: this change beside the baseline (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    key = "error_by_flavour."
    names = sorted(k[len(key):] for k in metrics if k.startswith(key))
    x = np.arange(len(names))
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [metrics.get(key + n) or np.nan for n in names], 0.4, label="this change")
    if baseline:
        ax.bar(x + 0.2, [baseline.get(key + n) or np.nan for n in names], 0.4, label="baseline")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("mean reconstruction error")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_report(folder: Path, outcome, det, ref, profile) -> Path:
    """``report.md``, ``metrics.json`` and the plots in ``folder``; the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    test = ref.test
    sample = test.sample(n=min(len(test), profile.eval_samples), random_state=profile.seed)
    plots = {
        "latent.png": plot_latent(det.embed(sample[ref.features]), sample["label"].to_numpy(), title="latent (held-out)"),
        "error_hist.png": plot_error_hist(det.score_samples(test[ref.features]), det.threshold_),
        "error_by_flavour.png": plot_flavour_errors(outcome.metrics, outcome.baseline),
        "losses.png": plot_losses(det.fit_result_.history),
    }
    for name, png in plots.items():
        (folder / name).write_bytes(png)
    summary = {"passed": outcome.passed, "profile": outcome.profile, "baseline_source": outcome.baseline_source,
               "warnings": outcome.warnings, "verdicts": verdict_rows(outcome.verdicts), "record": outcome.record}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    path = folder / "report.md"
    path.write_text(markdown(outcome))
    return path
